"""Compare two circuits of one task: match their components, measure the edge overlap, what
has no counterpart, each circuit's faithfulness and how on/off its nodes' activations are.

Matching (:func:`compare`):

* **same graph** (one model, recorded under one name, same positions setting): components
  and edges are matched by name, positions included;
* **same model**, one circuit position-aware: both are compared on component edges
  (:meth:`Circuit.without_positions`), by name;
* **different models** (compiled vs trained, two training seeds; any other model name, even
  with the same architecture): both are compared
  on component edges, and the circuits' heads and MLPs are paired by an optimal
  assignment on head-embedding distances (:func:`circuitdag.heads.match`: heads with heads,
  MLPs with MLPs, within the two circuits' components); ``embed`` and ``logits`` match
  themselves.

Edge overlap is the Jaccard index ``|A' ∩ B| / |A' ∪ B|`` of B's edges and A's edges
renamed through the matching (an edge of A with an unmatched end keeps its own name, so it
counts in the union only). A circuit compared with itself has overlap 1 and the identity
matching.

Activation sparsity (:func:`sparsity`): the fraction of a node's activations on the task's
clean prompts that are near zero, ``|a| <= 0.01 * max |a|`` over that node's activations
(a relative threshold, so models of any scale are comparable). A head's activations are
its attention weights (every query position, the keys it may attend to); an MLP's are its
hidden units after the nonlinearity (``hook_post``). An on/off mechanism (one-hot
attention, ReLU units) scores near 1; a diffuse one lower.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from circuitdag.circuit import Circuit
from circuitdag.errors import CircuitFileError, ConfigError
from circuitdag.files import write_json
from circuitdag.graph import Input, NodeKind
from circuitdag.tasks.base import TaskData

FORMAT = "circuitdag.compare/1"
#: An activation is near zero when ``|a| <= SPARSITY_THRESHOLD * max |a|`` of its node.
SPARSITY_THRESHOLD = 0.01


@dataclass
class Side:
    """One circuit of a comparison, with the model and data it was found on (loaded from
    its ``meta``: task, model, seed, number of prompts)."""

    label: str
    circuit: Circuit
    model: Any = None
    data: TaskData | None = None


def load_side(label: str, circuit: Circuit, device: str = "cpu") -> Side:
    """The circuit's model and clean prompts, rebuilt from ``circuit.meta``
    (:func:`circuitdag.reload.reload`, with the circuit's BOS decision)."""
    from circuitdag.reload import reload

    if not circuit.meta.get("task"):
        raise CircuitFileError(f"circuit {label} does not name its task, so its model cannot be run")
    run = reload(circuit, device=device, source=f"circuit {label}", prompts_only=True)
    return Side(label, circuit, run.model, run.data)


def components(circuit: Circuit) -> list[str]:
    """The circuit's component nodes (positions dropped), in graph order."""
    g = circuit.graph if circuit.graph.positions is None else circuit.without_positions().graph
    used = (circuit if circuit.graph.positions is None else circuit.without_positions()).node_names
    return [n.name for n in g.nodes if n.name in used]


def _edge_tuples(circuit: Circuit) -> set[tuple[str, str, str]]:
    g, t = circuit.graph, circuit.graph.edges
    return {(g.nodes[t.src[e]].name, g.nodes[t.dst[e]].name, Input(t.input[e]).label)
            for e in np.flatnonzero(circuit.in_circuit)}  # fmt: skip


def _name(edge: tuple[str, str, str]) -> str:
    return f"{edge[0]}->{edge[1]}<{edge[2]}>"


def sparsity(model: Any, data: TaskData, nodes: list[str]) -> dict[str, float]:
    """Fraction of near-zero activations of each head (``a{L}.{H}``) and MLP (``m{L}``) in
    ``nodes`` on the clean prompts (module doc; threshold :data:`SPARSITY_THRESHOLD`)."""
    hooks = {}
    for n in nodes:
        if m := re.fullmatch(r"a(\d+)\.(\d+)", n):
            hooks[n] = f"blocks.{m.group(1)}.attn.hook_pattern"
        elif m := re.fullmatch(r"m(\d+)", n):
            hooks[n] = f"blocks.{m.group(1)}.mlp.hook_post"
    if not hooks:
        return {}
    device = next(model.parameters()).device
    with torch.no_grad():
        _, cache = model.run_with_cache(data.clean.to(device), names_filter=lambda h: h in set(hooks.values()))
    causal = bool(getattr(model.cfg, "causal", True))
    out = {}
    for n, hook in hooks.items():
        act = cache[hook].double()
        if n.startswith("a"):
            h = int(n.split(".")[1])
            act = act[:, h]  # b q k
            q = act.shape[1]
            allowed = torch.ones(q, q, dtype=torch.bool, device=act.device)
            if causal:
                allowed = allowed.tril()
            vals = act[:, allowed]
        else:
            vals = act.flatten()
        top = vals.abs().max()
        out[n] = float((vals.abs() <= SPARSITY_THRESHOLD * top).double().mean()) if top > 0 else 1.0
    return out


def compare(a: Side, b: Side) -> dict[str, Any]:
    """The comparison report (``compare.json``) of two circuits; see the module doc.
    Sides without a model skip the embedding match (only possible for one model) and the
    sparsity."""
    ca, cb = a.circuit, b.circuit
    same_model = ca.meta.get("model") == cb.meta.get("model") and ca.graph.spec == cb.graph.spec
    same_graph = same_model and ca.graph.edge_names == cb.graph.edge_names
    if not same_graph:
        ca, cb = ca.without_positions(), cb.without_positions()
    comps_a, comps_b = components(a.circuit), components(b.circuit)
    distances: dict[str, float] = {}
    if same_model:
        method = "by name" + (", positions included" if ca.graph.positions is not None else "")
        mapping = {c: c for c in comps_a if c in comps_b}
    else:
        if a.model is None or b.model is None or a.data is None or b.data is None:
            raise ConfigError("circuits of different models are matched through head embeddings, which need "
                              "both models")  # fmt: skip
        from circuitdag.heads import embed, match, profile

        emb = embed([profile(a.model, a.data, a.label), profile(b.model, b.data, b.label)])
        m = match(emb, a.label, b.label, comps_a, comps_b)
        mapping = {x: y for x, y, _ in m.pairs}
        distances = {x: d for x, _, d in m.pairs}
        for fixed in ("embed", "logits"):
            if fixed in comps_a and fixed in comps_b:
                mapping[fixed] = fixed
        method = "head embeddings (circuitdag.heads), optimal assignment (scipy linear_sum_assignment)"
    ta = _edge_tuples(ca)

    def _rename(e: tuple[str, str, str]) -> str:  # an end without a match keeps A's name, marked
        return _name((mapping.get(e[0], f"{a.label}:{e[0]}"), mapping.get(e[1], f"{a.label}:{e[1]}"), e[2]))

    if same_graph:
        ea, eb = ca.edge_names, cb.edge_names
        mapped = ea
    else:
        ea, eb = {_name(e) for e in ta}, {_name(e) for e in _edge_tuples(cb)}
        mapped = {_rename(e) for e in ta}
    union = mapped | eb
    inverse = {v: k for k, v in mapping.items()}
    report: dict[str, Any] = {
        "format": FORMAT,
        "matching": method,
        "circuits": {},
        "matched": [{"a": x, "b": y, **({"distance": round(distances[x], 4)} if x in distances else {})}
                    for x, y in mapping.items()],
        "unmatched_a": [c for c in comps_a if c not in mapping],
        "unmatched_b": [c for c in comps_b if c not in inverse],
        "edges_a_only": sorted(ea - eb) if same_graph else sorted(_name(e) for e in ta if _rename(e) not in eb),
        "edges_b_only": sorted(eb - mapped),
        "edge_overlap_jaccard": len(mapped & eb) / len(union) if union else 1.0,
        "edges_shared": len(mapped & eb),
        "sparsity_threshold": f"|a| <= {SPARSITY_THRESHOLD} x max |a| of the node (attention weights for heads, "
                              "hidden units after the nonlinearity for MLPs), clean prompts",
    }
    for side, comps in ((a, comps_a), (b, comps_b)):
        c = side.circuit
        sp = sparsity(side.model, side.data, comps) if side.model is not None and side.data is not None else {}
        heads = [v for k, v in sp.items() if k.startswith("a")]
        mlps = [v for k, v in sp.items() if k.startswith("m")]
        report["circuits"][side.label] = {
            "task": c.meta.get("task"), "model": c.meta.get("model"), "algorithm": c.meta.get("algorithm"),
            "threshold": c.meta.get("threshold"), "metric": c.meta.get("metric"), "ablation": c.meta.get("ablation"),
            "positions": c.graph.positions is not None, "edges": c.n_edges, "edges_total": c.graph.n_edges,
            "nodes": len(c.node_names), "components": comps, "faithfulness": c.faithfulness(),
            "sparsity": {k: round(v, 4) for k, v in sp.items()},
            "sparsity_heads_mean": float(np.mean(heads)) if heads else None,
            "sparsity_mlps_mean": float(np.mean(mlps)) if mlps else None,
        }  # fmt: skip
    return report


#: Fill colours of matched components (cycled); unmatched ones are white.
MATCH_COLOURS = ["#aec7e8", "#ffbb78", "#98df8a", "#ff9896", "#c5b0d5", "#c49c94", "#f7b6d2", "#dbdb8d",
                 "#9edae5", "#fdd0a2", "#c7e9c0", "#dadaeb"]  # fmt: skip


def side_by_side_svg(a: Side, b: Side, report: dict[str, Any], path: str | Path) -> Path:
    """Both circuits (component edges) next to each other, drawn by graphviz ``dot``;
    matched components share a fill colour, unmatched ones are white; edges coloured by
    input as in :mod:`circuitdag.render`."""
    import graphviz

    from circuitdag._plotting import write_svg
    from circuitdag.render import INPUT_COLOURS, dot_svg

    colour: dict[tuple[str, str], str] = {}
    k = 0
    for pair in report["matched"]:
        if pair["a"] in ("embed", "logits"):
            continue
        colour[("a", pair["a"])] = colour[("b", pair["b"])] = MATCH_COLOURS[k % len(MATCH_COLOURS)]
        k += 1
    dot = graphviz.Digraph("compare", graph_attr={"rankdir": "TB", "fontname": "Helvetica", "label":
                           f"edge overlap (Jaccard) {report['edge_overlap_jaccard']:.3f}; matching: {report['matching']}",
                           "labelloc": "t"}, node_attr={"fontname": "Helvetica", "fontsize": "11"})  # fmt: skip
    for tag, side in (("a", a), ("b", b)):
        c = side.circuit.without_positions()
        with dot.subgraph(name=f"cluster_{tag}") as sub:
            info = report["circuits"][side.label]
            f = info["faithfulness"]
            sub.attr(label=f"{side.label}: {info['model']}, {info['edges']} edges"
                     + (f", faithfulness {f:.3f}" if f is not None else ""), style="rounded")  # fmt: skip
            for node in c.graph.nodes:
                if node.name not in c.node_names:
                    continue
                components = (NodeKind.HEAD, NodeKind.MLP, NodeKind.NEURON)
                fill = colour.get((tag, node.name), "#ffffff" if node.kind in components else "#e8e8e8")
                sub.node(f"{tag}_{node.name}", node.name, shape="ellipse" if node.kind == NodeKind.HEAD else "box",
                         style="filled", fillcolor=fill)  # fmt: skip
            t = c.graph.edges
            for e in np.flatnonzero(c.in_circuit):
                kind = Input(t.input[e])
                sub.edge(f"{tag}_{c.graph.nodes[t.src[e]].name}", f"{tag}_{c.graph.nodes[t.dst[e]].name}",
                         color=INPUT_COLOURS[kind], label=kind.label if kind in (Input.Q, Input.K, Input.V) else "",
                         fontcolor=INPUT_COLOURS[kind], fontsize="9")  # fmt: skip
    return write_svg(dot_svg(dot), path)


def mean_pattern(model: Any, data: TaskData, head: str) -> np.ndarray:
    """Mean attention pattern (query x key) of ``head`` over the clean prompts."""
    L, h = (int(x) for x in head[1:].split("."))
    hook = f"blocks.{L}.attn.hook_pattern"
    device = next(model.parameters()).device
    with torch.no_grad():
        _, cache = model.run_with_cache(data.clean.to(device), names_filter=lambda n: n == hook)
    return cache[hook][:, h].double().mean(0).cpu().numpy()


def patterns_svg(a: Side, b: Side, report: dict[str, Any], path: str | Path) -> Path | None:
    """The mean attention patterns of every matched head pair side by side (matplotlib):
    one row per pair, A left, B right, queries down, keys across, labelled with the
    task's position names. None when no heads are matched."""
    from matplotlib.figure import Figure

    from circuitdag._plotting import save_svg
    from circuitdag.heads import _key_names

    pairs = [(p["a"], p["b"]) for p in report["matched"] if p["a"].startswith("a") and "." in p["a"]]
    if not pairs or a.model is None or b.model is None or a.data is None or b.data is None:
        return None
    fig = Figure(figsize=(9, 3.6 * len(pairs)))
    axes = fig.subplots(len(pairs), 2, squeeze=False)
    for row, (ha, hb) in enumerate(pairs):
        for col, (side, head) in enumerate(((a, ha), (b, hb))):
            assert side.data is not None
            pat = mean_pattern(side.model, side.data, head)
            names = _key_names(side.data)
            ax = axes[row][col]
            im = ax.imshow(pat, vmin=0, vmax=1, cmap="Blues")
            ax.set_xticks(range(len(names)), names, rotation=90, fontsize=7)
            ax.set_yticks(range(len(names)), names, fontsize=7)
            ax.set_title(f"{side.label} {head}", fontsize=9)
            ax.set_xlabel("key", fontsize=8)
            ax.set_ylabel("query", fontsize=8)
        fig.colorbar(im, ax=axes[row].tolist(), shrink=0.8, label="mean attention")
    return save_svg(fig, path)


def write_comparison(a: str | Path, b: str | Path, out: str | Path, labels: tuple[str, str] = ("A", "B"),
                     device: str = "cpu") -> tuple[dict[str, Any], Path | None]:  # fmt: skip
    """Compare the circuits in files ``a`` and ``b`` (one task): write ``compare.json``,
    ``compare.svg`` and, where both have attention heads in common, ``patterns.svg`` into
    ``out``. Returns the report (compare.json's content) and the patterns figure's path
    (None when there is none)."""
    from circuitdag.io import load_circuit

    ca, cb = load_circuit(a), load_circuit(b)
    la, lb = labels
    if la == lb:
        raise ConfigError(f"--labels must differ, got {la!r} twice")
    if ca.meta.get("task") != cb.meta.get("task"):
        raise ConfigError(f"the circuits are of different tasks ({ca.meta.get('task')!r}, {cb.meta.get('task')!r}); "
                          "compare circuits of one task")  # fmt: skip
    side_a, side_b = load_side(la, ca, device), load_side(lb, cb, device)
    report = compare(side_a, side_b)
    report["files"] = {la: str(a), lb: str(b)}
    out = Path(out)
    write_json(out / "compare.json", report, error=ConfigError)
    side_by_side_svg(side_a, side_b, report, out / "compare.svg")
    return report, patterns_svg(side_a, side_b, report, out / "patterns.svg")
