"""The circuit explorer: one self-contained HTML page (every script inlined, nothing fetched
from the network) that draws a circuit with Cytoscape.js (vendored in ``circuitdag/_static``).

What the page shows (docs/explore.md):

* the circuit laid out by layer (rows: ``embed``, then per layer its heads and its MLP,
  ``logits`` last), and by token position (one column group per position, headed by the
  position's name) in position-aware circuits; edges coloured by input (q/k/v/mlp/resid,
  the SVG's colours) and wider for larger ``|score|``;
* hover: an edge's name, score and input; a node's kind, layer, position, and its
  in/out edges and summed scores among the edges drawn;
* click a node: its input and output edges are highlighted, and for a head its attention
  pattern on the first prompts of the task (stored in circuit.json when the circuit was
  made, :mod:`circuitdag.attention`), the clicked position's query row outlined;
* edge opacity: with ``--bootstrap``, the fraction of the reruns whose circuit holds the
  edge (its inclusion frequency; 0.85 for every edge otherwise);
* a threshold slider: the edges a stricter or looser threshold would keep, judged from the
  stored per-edge scores, with the edge count.

The slider's sets are computed here, exactly as the circuit's own: step ``i`` has a
threshold ``t_i`` (descending along :func:`slider_steps`), keeps the edges whose key is at
least ``t_i`` (the key is the score for ACDC, which keeps an edge when removing it changes
the metric by at least the threshold; ``|score|`` for attribution circuits, which keep the
largest ``|score|``) and prunes them to ``embed -> logits`` paths with
:meth:`circuitdag.graph.Graph.prune`. The sets grow as ``t`` falls, so each edge gets the
first step that keeps it and the page shows the edges whose step is at most the slider's.
For ACDC this is an estimate: an edge's score depends on the edges removed before it, so a
new run at another threshold can keep other edges. At the run's own threshold the set is
the circuit (the page says so when it is not, for example for an edited circuit).
"""

from __future__ import annotations

import html
import json
import math
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np

from circuitdag.graph import Input, NodeKind
from circuitdag.render import INPUT_COLOURS, Circuit, circuit_title, heldout_text

#: Version of the vendored Cytoscape.js (``circuitdag/_static/README.md``).
CYTOSCAPE_VERSION = "3.35.0"
#: Most edges the page carries: the circuit's, then the loosest slider step that fits.
MAX_DRAWN_EDGES = 1500
#: Most slider steps.
MAX_STEPS = 100
#: Algorithms whose circuits keep edges by ``|score|`` (attribution, circuitdag.attribution).
_BY_MAGNITUDE = ("eap", "eap-ig")


def _keys(circuit: Circuit) -> tuple[np.ndarray, bool]:
    """Per edge, the value a threshold is compared with (NaN: never kept), and whether it is
    ``|score|`` (attribution circuits, and circuits imported from the EAP-IG format)."""
    m = circuit.meta
    magnitude = m.get("algorithm") in _BY_MAGNITUDE or "source_format" in m
    scores = np.asarray(circuit.scores, dtype=np.float64)
    return (np.abs(scores) if magnitude else scores.copy()), magnitude


def run_threshold(circuit: Circuit) -> float | None:
    """The threshold the circuit was made with, on the slider's scale: ``meta["threshold"]``,
    or for a circuit of the top N edges the smallest key among its edges."""
    thr = circuit.meta.get("threshold")
    if isinstance(thr, (int, float)) and math.isfinite(thr):
        return float(thr)
    keys, _ = _keys(circuit)
    k = keys[circuit.in_circuit]
    k = k[np.isfinite(k)]
    return float(k.min()) if k.size else None


def slider_steps(circuit: Circuit, max_edges: int = MAX_DRAWN_EDGES,
                 max_steps: int = MAX_STEPS) -> tuple[list[float], np.ndarray, int | None]:  # fmt: skip
    """The slider: thresholds ``t_0 > t_1 > ...``, and per edge the first step whose set keeps
    it (``-1``: none). Step thresholds are the distinct keys (subsampled to ``max_steps``,
    the loosest keeping at most ``max_edges`` before pruning) plus the run's threshold;
    returns also the index of the run's step (None without a threshold)."""
    keys, _ = _keys(circuit)
    finite = np.isfinite(keys)
    distinct = np.unique(keys[finite])[::-1]  # descending
    ascending = np.sort(keys[finite])
    kept_before_prune = ascending.size - np.searchsorted(ascending, distinct, side="left")  # keys >= t
    distinct = distinct[kept_before_prune <= max(max_edges, circuit.n_edges)]
    if distinct.size > max_steps:
        distinct = distinct[np.unique(np.linspace(0, distinct.size - 1, max_steps).round().astype(int))]
    thr = run_threshold(circuit)
    values = sorted(set(distinct.tolist()) | ({thr} if thr is not None else set()), reverse=True)
    first = np.full(circuit.graph.n_edges, -1, dtype=np.int64)
    for i, t in enumerate(values):
        kept = circuit.graph.prune(finite & (keys >= t))
        first[kept & (first < 0)] = i
    return values, first, (values.index(thr) if thr is not None else None)


def explorer_data(circuit: Circuit, max_edges: int = MAX_DRAWN_EDGES) -> dict[str, Any]:
    """The JSON document the page reads: ``nodes`` (name, label, kind, layer, head,
    position, grid ``row``/``col``), ``edges`` (name, src, dst, input, colour, width in px,
    score, ``step``: the first slider step that keeps it, ``in_circuit``), the slider
    (``steps``: thresholds, ``run_step``), position names, the stored attention patterns
    and the circuit's settings."""
    g = circuit.graph
    t = g.edges
    values, first, run_step = slider_steps(circuit, max_edges)
    _, magnitude = _keys(circuit)
    shown = np.flatnonzero((first >= 0) | circuit.in_circuit)
    used = sorted(set(t.src[shown].tolist()) | set(t.dst[shown].tolist()))
    rows, cols, n_cols = _grid(circuit, used)
    top = _top(circuit.scores[shown])
    nodes = []
    for i in used:
        n = g.nodes[i]
        nodes.append({
            "id": n.name, "label": n.component if g.positions is not None else n.name,
            "kind": NodeKind(n.kind).name.lower(), "layer": n.layer, "head": n.head,
            "pos": n.pos, "pos_name": None if n.pos < 0 or g.positions is None else g.positions.label(n.pos),
            "row": rows[i], "col": cols[i],
        })  # fmt: skip
    inclusion = bootstrap_inclusion(circuit)  # --bootstrap: the edge's opacity
    edges = []
    for e in shown.tolist():
        s = float(circuit.scores[e])
        kind = Input(t.input[e])
        a, b = int(t.src[e]), int(t.dst[e])
        skip = rows[b] - rows[a] - 1  # rows between the ends
        bend = (
            {"bend": (1 if cols[a] % 4 else -1) * (24 + 8 * min(skip, 20))}
            if cols[a] == cols[b] and skip > 0
            else {}
        )
        edges.append({
            **bend,
            "id": g.edge_names[e], "source": g.nodes[t.src[e]].name, "target": g.nodes[t.dst[e]].name,
            "input": kind.label, "colour": INPUT_COLOURS[kind],
            "width": round(1.0 + 5.0 * (abs(s) / top if math.isfinite(s) else 0.0), 2),
            "score": s if math.isfinite(s) else None, "step": int(first[e]), "in_circuit": bool(circuit.in_circuit[e]),
            "inclusion": None if inclusion is None or not math.isfinite(inclusion[e]) else float(inclusion[e]),
        })  # fmt: skip
    heads_cols = []
    if g.positions is not None:
        for p, c in sorted(cols_of_positions(circuit, used, cols).items()):
            heads_cols.append({"pos": p, "name": g.positions.label(p), "col": c})
    run_set = {e for e in shown.tolist() if run_step is not None and 0 <= first[e] <= run_step}
    m = circuit.meta
    attention = m.get("attention")
    return {
        "title": circuit_title(circuit),
        "task": m.get("task"), "model": m.get("model"), "metric": m.get("metric"),
        "algorithm": m.get("algorithm"), "threshold": m.get("threshold"),
        "score_meaning": m.get("score_meaning", "the metric change when the edge is removed"),
        "key": "|score|" if magnitude else "score",
        "n_edges": circuit.n_edges, "n_edges_total": g.n_edges,
        "faithfulness": circuit.faithfulness(),
        "how_sure": how_sure(m),
        "bootstrap": (m.get("bootstrap") or {}).get("resamples"),
        "steps": values, "run_step": run_step,
        "run_step_is_circuit": run_step is not None and run_set == set(np.flatnonzero(circuit.in_circuit).tolist()),
        "positions": g.positions is not None, "position_columns": heads_cols,
        "grid": {"rows": max(rows.values(), default=0) + 1, "cols": n_cols},
        "gqa_group": g.spec.group,
        "nodes": nodes, "edges": edges,
        "attention": attention if isinstance(attention, dict) else None,
        "colours": {k.label: c for k, c in INPUT_COLOURS.items()},
    }  # fmt: skip


def how_sure(meta: dict[str, Any]) -> list[list[str]]:
    """What circuit.json says about how far to trust the circuit, as ``[label, text]`` rows
    for the explorer's summary (docs/evaluation.md): held-out faithfulness (with its
    interval under ``--bootstrap``), the reruns' stability, ``--verify-top`` and the
    hypothesis tests. Empty for a circuit saved without them."""
    rows: list[list[str]] = []
    nan = float("nan")
    held, boot = meta.get("heldout"), meta.get("bootstrap")
    ci = (boot.get("circuit_faithfulness_ci") or {}) if isinstance(boot, dict) else {}
    text = heldout_text(meta)
    if isinstance(held, dict) and text is not None:
        rows.append(["held-out faithfulness", f"{text} ({held.get('n_prompts')} prompts, {held.get('how')})"])
    elif isinstance(held, dict) and held.get("reason"):
        rows.append(["held-out faithfulness", f"none ({held['reason']})"])
    if isinstance(boot, dict) and isinstance(boot.get("stability"), dict):
        st, disc = boot["stability"], ci.get("discovery")
        interval = f"faithfulness [{disc[0]:.3f}, {disc[1]:.3f}], " if isinstance(disc, list) and len(disc) == 2 else ""
        jaccard = f"edge Jaccard {st.get('edge_jaccard', nan):.2f}, node Jaccard {st.get('node_jaccard', nan):.2f}"
        rows.append(["bootstrap", f"{boot.get('resamples')} resamples: {interval}{jaccard}"])
    ver = meta.get("verify")
    if isinstance(ver, dict) and ver.get("n_checked"):
        rho = ver.get("spearman")
        spearman = "n/a" if rho is None else f"{rho:.2f}"
        rows.append(["verify-top", f"Spearman {spearman}, {ver.get('n_off')}/{ver['n_checked']} estimates off by >2x"])
    tests = meta.get("tests")
    if isinstance(tests, dict) and tests:
        parts = []
        for name, t in tests.items():
            if isinstance(t, dict) and isinstance(t.get("p_value"), (int, float)):
                parts.append(f"{name} p={t['p_value']:.3g} ({'passed' if t.get('passed') else 'failed'})")
            elif isinstance(t, dict):
                parts.append(f"{name}: {t.get('reason', 'not run')}")
        rows.append(["tests", "; ".join(parts)])
    return rows


def bootstrap_inclusion(circuit: Circuit) -> np.ndarray | None:
    """Each edge's ``--bootstrap`` inclusion frequency (circuit.json's
    ``bootstrap.edges``; NaN where not recorded), or None without a bootstrap."""
    b = circuit.meta.get("bootstrap")
    if not isinstance(b, dict):
        return None
    idx = circuit.graph.edge_index
    out = np.full(circuit.graph.n_edges, np.nan)
    for name, row in (b.get("edges") or {}).items():
        if name in idx:
            out[idx[name]] = row["inclusion"]
    return out


def _rank(node) -> tuple[int, int]:
    """Row key of a node: (layer, 0) for attention, (layer, 1) for the MLP and its neurons."""
    return (node.layer, 1 if NodeKind(node.kind).name in ("MLP", "NEURON") else 0)


def _top(scores: np.ndarray) -> float:
    s = np.abs(scores[np.isfinite(scores)])
    return float(s.max()) if s.size and s.max() > 0 else 1.0


def _grid(circuit: Circuit, used: list[int]) -> tuple[dict[int, int], dict[int, int], int]:
    """Grid cell (row, column) of each node for Cytoscape's ``grid`` layout. Rows: one per
    (layer, attention|MLP), as in the SVG; a position-aware graph has its position names in
    row 0. Columns count half slots, so that rows with fewer nodes can be centred."""
    g = circuit.graph
    offset = 1 if g.positions is not None else 0
    ranks = {r: k + offset for k, r in enumerate(sorted({_rank(g.nodes[i]) for i in used}))}
    row = {i: ranks[_rank(g.nodes[i])] for i in used}
    col: dict[int, int] = {}
    cells: dict[tuple[int, int], list[int]] = {}
    for i in sorted(used, key=lambda i: (g.nodes[i].kind, g.nodes[i].head)):
        cells.setdefault((g.nodes[i].pos, row[i]), []).append(i)
    width: dict[int, int] = {}
    for (p, _), members in cells.items():
        if g.nodes[members[0]].kind != NodeKind.LOGITS:
            width[p] = max(width.get(p, 0), len(members))
    left, x = {}, 0
    for p in sorted(width):
        left[p] = x
        x += 2 * width[p] + 1  # one empty half-slot column between positions
    n_cols = max(x - 1, 1)
    for (p, _), members in cells.items():
        if g.nodes[members[0]].kind == NodeKind.LOGITS:
            for i in members:
                col[i] = (n_cols - 1) // 2
            continue
        start = left[p] + (width[p] - len(members))
        for j, i in enumerate(members):
            col[i] = start + 2 * j
    return row, col, n_cols


def cols_of_positions(circuit: Circuit, used: list[int], cols: dict[int, int]) -> dict[int, int]:
    """The column of each position's heading: the middle of its nodes' columns."""
    g = circuit.graph
    by_pos: dict[int, list[int]] = {}
    for i in used:
        if g.nodes[i].kind != NodeKind.LOGITS:
            by_pos.setdefault(g.nodes[i].pos, []).append(cols[i])
    return {p: (min(c) + max(c)) // 2 for p, c in by_pos.items()}


def _static(name: str) -> str:
    return resources.files("circuitdag").joinpath("_static", name).read_text(encoding="utf-8")


def _script_json(doc: Any) -> str:
    """JSON safe inside ``<script>``: ``</`` and HTML comment openers cannot end the element."""
    return json.dumps(doc, allow_nan=False).replace("</", "<\\/").replace("<!--", "<\\!--")


def explorer_html(circuit: Circuit) -> str:
    """The explorer page of ``circuit`` as one HTML document (Cytoscape.js, the page's
    script and style and the circuit's data inlined; about 500 KB plus the data)."""
    data = explorer_data(circuit)
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">\n'
        f"<title>circuitdag explorer: {html.escape(str(data['task'] or 'circuit'))}</title>\n"
        f"<style>\n{_static('explore.css')}</style>\n</head><body>\n"
        f"{_static('explore_body.html')}\n"
        f"<script>/* Cytoscape.js {CYTOSCAPE_VERSION}, MIT license (circuitdag/_static/cytoscape.LICENSE) */\n"
        f"{_static('cytoscape.min.js')}</script>\n"
        f'<script type="application/json" id="circuit-data">{_script_json(data)}</script>\n'
        f"<script>\n{_static('explore.js')}</script>\n</body></html>\n"
    )


def write_explorer(circuit: Circuit, path: str | Path) -> Path:
    """Write :func:`explorer_html` to ``path`` (creating its directory); raises
    :class:`~circuitdag.errors.CircuitFileError` when it cannot be written."""
    from circuitdag.files import write_atomic

    return write_atomic(path, explorer_html(circuit), option="-o")


def notebook_html(circuit: Circuit, height: int = 640) -> str:
    """The explorer for a notebook cell (``Circuit._repr_html_``): the page in an
    ``<iframe srcdoc>``, so its scripts run apart from the notebook's."""
    return (f'<iframe srcdoc="{html.escape(explorer_html(circuit), quote=True)}" '
            f'style="width:100%;height:{int(height)}px;border:1px solid #ddd" '
            'sandbox="allow-scripts"></iframe>')  # fmt: skip
