"""Draw a circuit as SVG with graphviz: layers top to bottom, edges coloured by input
(q/k/v/mlp/resid) and with width growing with the edge's score. Position-aware circuits
are drawn as a grid: one column per token position, in token order, headed by the task's
position name."""

from __future__ import annotations

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


def _rank(node) -> tuple[int, int]:
    """Drawing row of a node: one per (layer, attention|MLP), top to bottom."""
    return (node.layer, 1 if node.kind == NodeKind.MLP else 0)


def to_dot(circuit: Circuit):  # -> graphviz.Digraph
    """The circuit as a ``graphviz.Digraph`` (only nodes touched by circuit edges): laid out
    by ``dot`` without positions, on a pinned grid (``neato``) with positions."""
    import graphviz

    g = circuit.graph
    t = g.edges
    idx = np.flatnonzero(circuit.in_circuit)
    used = sorted(set(t.src[idx].tolist()) | set(t.dst[idx].tolist()))
    meta = circuit.meta
    title = f"{meta.get('task', '')}  threshold={meta.get('threshold', '')}  metric={meta.get('metric', '')}  " \
            f"ablation={meta.get('ablation', '')}  edges={len(idx)}"  # fmt: skip
    graph_attr = {"label": title, "labelloc": "t", "fontname": "Helvetica"}
    node_attr = {"fontname": "Helvetica", "fontsize": "11"}
    if g.positions is None:
        dot = graphviz.Digraph("circuit", graph_attr={**graph_attr, "rankdir": "TB", "nodesep": "0.25"},
                               node_attr=node_attr)  # fmt: skip
        ranks: dict[tuple[int, int], list[int]] = {}
        for i in used:
            ranks.setdefault(_rank(g.nodes[i]), []).append(i)
        for _, members in sorted(ranks.items()):
            with dot.subgraph() as sub:
                sub.attr(rank="same")
                for i in members:
                    sub.node(g.nodes[i].name, g.nodes[i].name, **NODE_STYLE[g.nodes[i].kind])
    else:
        dot = graphviz.Digraph("circuit", engine="neato", graph_attr={**graph_attr, "splines": "true"},
                               node_attr=node_attr)  # fmt: skip
        _position_grid(dot, circuit, used)
    finite = np.abs(circuit.scores[idx][np.isfinite(circuit.scores[idx])])
    top = float(finite.max()) if finite.size and finite.max() > 0 else 1.0
    for e in idx:
        s = circuit.scores[e]
        width = 1.0 + 3.0 * (abs(s) / top if math.isfinite(s) else 0.0)
        kind = Input(t.input[e])
        dot.edge(g.nodes[t.src[e]].name, g.nodes[t.dst[e]].name, color=INPUT_COLOURS[kind],
                 penwidth=f"{width:.2f}", tooltip=g.edge_names[e], label=kind.label if kind in (Input.Q, Input.K, Input.V) else "",
                 fontcolor=INPUT_COLOURS[kind], fontsize="9")  # fmt: skip
    # Grouped-query attention: a key/value head feeds its query heads (not an edge, never
    # patched); drawn dashed so a path through a25.kv0 to a25.2 can be followed.
    shown = set(used)
    for s, d in zip(*(x.tolist() for x in g.implicit_edges)):
        if s in shown and d in shown:
            dot.edge(g.nodes[s].name, g.nodes[d].name, style="dashed", color="#999999", arrowsize="0.5",
                     tooltip="key/value head read by its query head")  # fmt: skip
    return dot


#: Grid of the position-aware drawing, in inches: node slot width, gap between position
#: columns, row height.
_SLOT, _GAP, _ROW = 0.85, 0.45, 0.8


def _position_grid(dot, circuit: Circuit, used: list[int]) -> None:
    """Pin each node of a position-aware circuit to a grid: one column per token position,
    in token order, headed by the position's name; one row per (layer, attention|MLP);
    ``logits`` centred below. ``dot`` cannot keep clusters in token order when edges
    cross between them, so the layout is computed here and ``neato`` only routes edges."""
    g = circuit.graph
    positions = g.positions
    assert positions is not None  # render() calls this only for position-aware graphs
    nodes = [g.nodes[i] for i in used if g.nodes[i].kind != NodeKind.LOGITS]
    rows = {r: k for k, r in enumerate(sorted({_rank(n) for n in nodes}))}
    cols = sorted({n.pos for n in nodes})
    cells: dict[tuple[int, int], list] = {}
    for n in sorted(nodes, key=lambda n: (n.kind, n.head)):
        cells.setdefault((n.pos, rows[_rank(n)]), []).append(n)
    width = {p: max(len(v) for (q, _), v in cells.items() if q == p) for p in cols}
    left, x = {}, 0.0
    for p in cols:
        left[p] = x
        x += width[p] * _SLOT + _GAP
    total = x - _GAP
    y_top = (len(rows) + 1) * _ROW
    for p in cols:
        centre = left[p] + (width[p] - 1) * _SLOT / 2
        dot.node(f"pos_{p}", positions.label(p), shape="plaintext", fontname="Helvetica-Bold", fontsize="12",
                 tooltip=f"position {p}", pos=f"{centre:.3f},{y_top:.3f}!")  # fmt: skip
    for (p, r), members in cells.items():
        # Centre the cell's nodes in their column.
        offset = left[p] + (width[p] - len(members)) * _SLOT / 2
        for j, n in enumerate(members):
            dot.node(n.name, n.component, tooltip=n.name, pos=f"{offset + j * _SLOT:.3f},{y_top - (r + 1) * _ROW:.3f}!",
                     **NODE_STYLE[n.kind])  # fmt: skip
    if g.sink in used:
        dot.node("logits", "logits", pos=f"{(total - _SLOT) / 2:.3f},{y_top - (len(rows) + 1) * _ROW:.3f}!",
                 **NODE_STYLE[NodeKind.LOGITS])  # fmt: skip


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
