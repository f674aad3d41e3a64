"""Draw a circuit as SVG with graphviz ``dot``: layers top to bottom, edges coloured by
input (q/k/v/mlp/resid) and with width growing with the edge's score. Position-aware
circuits are drawn in one labelled column (a graphviz cluster) per token position, in
token order, named by the task's position names."""

from __future__ import annotations

import itertools
import math
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from circuitdag.errors import CircuitDagError, CircuitFileError
from circuitdag.graph import Input, NodeKind

if TYPE_CHECKING:
    from circuitdag.circuit import Circuit

INPUT_COLOURS = {
    Input.Q: "#1f77b4",  # blue
    Input.K: "#2ca02c",  # green
    Input.V: "#ff7f0e",  # orange
    Input.MLP: "#9467bd",  # purple
    Input.RESID: "#555555",  # grey
}
NODE_STYLE = {
    NodeKind.EMBED: {"shape": "box", "style": "filled", "fillcolor": "#e8e8e8"},
    NodeKind.KV: {"shape": "ellipse", "style": "filled", "fillcolor": "#d9f0d3"},
    NodeKind.HEAD: {"shape": "ellipse", "style": "filled", "fillcolor": "#deebf7"},
    NodeKind.MLP: {"shape": "box", "style": "filled", "fillcolor": "#efe3f7"},
    NodeKind.LOGITS: {"shape": "box", "style": "filled", "fillcolor": "#e8e8e8"},
}


def to_dot(circuit: Circuit):  # -> graphviz.Digraph
    """The circuit as a ``graphviz.Digraph`` (only nodes touched by circuit edges)."""
    import graphviz

    g = circuit.graph
    t = g.edges
    idx = np.flatnonzero(circuit.in_circuit)
    used = sorted(set(t.src[idx].tolist()) | set(t.dst[idx].tolist()))
    meta = circuit.meta
    title = f"{meta.get('task', '')}  threshold={meta.get('threshold', '')}  metric={meta.get('metric', '')}  " \
            f"ablation={meta.get('ablation', '')}  edges={len(idx)}"  # fmt: skip
    dot = graphviz.Digraph("circuit", graph_attr={
        "rankdir": "TB", "label": title, "labelloc": "t", "fontname": "Helvetica", "nodesep": "0.25",
        "newrank": "true",  # ranks may span the position clusters
    }, node_attr={"fontname": "Helvetica", "fontsize": "11"})  # fmt: skip
    positions = g.positions
    if positions is None:
        for i in used:
            n = g.nodes[i]
            dot.node(n.name, n.name, **NODE_STYLE[n.kind])
    else:
        by_pos: dict[int, list[int]] = {}
        for i in used:
            by_pos.setdefault(g.nodes[i].pos, []).append(i)
        for p, members in sorted(by_pos.items()):
            if p < 0:  # logits: declared after the columns (below them, not among them)
                continue
            with dot.subgraph(name=f"cluster_pos{p}") as col:
                col.attr(label="", style="rounded", color="#bbbbbb")
                # The column's heading: a node on the top rank, so every column starts there.
                col.node(f"pos_{p}", positions.label(p), shape="plaintext", fontname="Helvetica-Bold",
                         fontsize="12", tooltip=f"position {p}")  # fmt: skip
                for i in members:
                    n = g.nodes[i]
                    col.node(n.name, n.component, tooltip=n.name, **NODE_STYLE[n.kind])
                    if n.kind == NodeKind.EMBED or n is g.nodes[min(members)]:
                        col.edge(f"pos_{p}", n.name, style="invis")
        for i in by_pos.get(-1, []):
            dot.node(g.nodes[i].name, g.nodes[i].name, **NODE_STYLE[g.nodes[i].kind])
        cols = [p for p in sorted(by_pos) if p >= 0]
        with dot.subgraph() as top:
            top.attr(rank="min")
            for p in cols:
                top.node(f"pos_{p}")
            for a, b in itertools.pairwise(cols):  # keep the columns in token order
                top.edge(f"pos_{a}", f"pos_{b}", style="invis", weight="10")
    # One rank per (layer, attention|mlp) so the drawing reads top to bottom.
    ranks: dict[tuple[int, int], list[int]] = {}
    for i in used:
        n = g.nodes[i]
        ranks.setdefault((n.layer, 1 if n.kind == NodeKind.MLP else 0), []).append(i)
    for _, members in sorted(ranks.items()):
        with dot.subgraph() as sub:
            sub.attr(rank="same")
            for i in members:
                sub.node(g.nodes[i].name)
    finite = np.abs(circuit.scores[idx][np.isfinite(circuit.scores[idx])])
    top = float(finite.max()) if finite.size and finite.max() > 0 else 1.0
    for e in idx:
        s = circuit.scores[e]
        width = 1.0 + 3.0 * (abs(s) / top if math.isfinite(s) else 0.0)
        kind = Input(t.input[e])
        dot.edge(g.nodes[t.src[e]].name, g.nodes[t.dst[e]].name, color=INPUT_COLOURS[kind],
                 penwidth=f"{width:.2f}", tooltip=g.edge_names[e], label=kind.label if kind in (Input.Q, Input.K, Input.V) else "",
                 fontcolor=INPUT_COLOURS[kind], fontsize="9")  # fmt: skip
    return dot


def render_svg(circuit: Circuit, path: str | Path) -> Path:
    """Write the circuit's SVG to ``path`` (needs the ``dot`` program from graphviz)."""
    import graphviz

    path = Path(path)
    try:
        svg = to_dot(circuit).pipe(format="svg")
    except graphviz.ExecutableNotFound as exc:
        raise CircuitDagError(
            "graphviz's `dot` program is not installed; install it (Debian/Ubuntu: "
            "`apt-get install graphviz`, macOS: `brew install graphviz`) and rerun"
        ) from exc
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(svg)
    except OSError as exc:
        raise CircuitFileError(f"cannot write {path}: {exc.strerror or exc}") from exc
    return path
