"""Draw a circuit as SVG with graphviz: layers top to bottom, edges coloured by input
(q/k/v/mlp/resid) and with width growing with the edge's ``|score|``. Position-aware circuits
are drawn as a grid: one column per token position, in token order, headed by the task's
position name.

Every SVG has a title (task, threshold, metric, ablation, edges, faithfulness) and a
legend below the drawing (:func:`add_legend`): the colour of each input, the width scale
in metric units, and the circuit's edges by name, largest ``|score|`` first, so no edge needs
hovering to be read.

Drawing time is bounded: graphviz's layout time grows steeply with the number of edges (a
40,000-edge attribution circuit kept ``dot`` busy for over 11 minutes), so a circuit larger
than :data:`MAX_EDGES` is drawn as its largest edges by ``|score|`` (:func:`drawn_edges`; the
title says so and names ``circuitdag explore`` for the whole circuit), and graphviz is
stopped after :data:`DOT_TIMEOUT_S` seconds with a :class:`CircuitDagError`."""

from __future__ import annotations

import html
import math
import os
import re
import shutil
import signal
import subprocess
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from circuitdag._options import DOT_TIMEOUT_S, MAX_EDGES  # defaults --help shows, so defined there
from circuitdag._plotting import write_svg
from circuitdag.errors import CircuitDagError, ConfigError
from circuitdag.graph import Input, NodeKind


class Circuit(Protocol):
    """What drawing needs of a :class:`circuitdag.circuit.Circuit` (named here so that
    imports run one way: circuit -> render)."""

    graph: Any
    in_circuit: np.ndarray
    scores: np.ndarray
    meta: dict[str, Any]

    @property
    def n_edges(self) -> int: ...

    def faithfulness(self) -> float | None: ...

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
    NodeKind.NEURON: {"shape": "box", "style": "filled,rounded", "fillcolor": "#efe3f7", "fontsize": "10"},
}


def _rank(node) -> tuple[int, int]:
    """Drawing row of a node: one per (layer, attention|MLP), top to bottom."""
    return (node.layer, 1 if node.kind in (NodeKind.MLP, NodeKind.NEURON) else 0)


def drawn_edges(circuit: Circuit, max_edges: int = MAX_EDGES) -> np.ndarray:
    """Indices of the edges a drawing shows, in edge-table order: every edge of the circuit,
    or with ``max_edges`` > 0 and a larger circuit its ``max_edges`` largest by ``|score|``
    (an untested edge counts as 0; ties go to the earlier edge)."""
    idx = np.flatnonzero(circuit.in_circuit)
    if max_edges <= 0 or idx.size <= max_edges:
        return idx
    mags = np.abs(circuit.scores[idx])
    mags = np.where(np.isfinite(mags), mags, 0.0)
    return np.sort(idx[np.argsort(-mags, kind="stable")[:max_edges]])


def to_dot(circuit: Circuit, max_edges: int = MAX_EDGES, json_path: str | Path | None = None):  # -> Digraph
    """The circuit as a ``graphviz.Digraph`` (only nodes touched by drawn edges): laid out
    by ``dot`` without positions, on a pinned grid (``neato``) with positions. A circuit of
    more than ``max_edges`` edges (0: no limit) is drawn as its largest by ``|score|``
    (:func:`drawn_edges`), and the title's second line says so and how to see the whole
    circuit (``circuitdag explore json_path``)."""
    import graphviz

    g = circuit.graph
    t = g.edges
    idx = drawn_edges(circuit, max_edges)
    used = sorted(set(t.src[idx].tolist()) | set(t.dst[idx].tolist()))
    title = circuit_title(circuit)
    if idx.size < circuit.n_edges:
        title += (f"\\ntop {idx.size} of {circuit.n_edges} edges by |score|; the whole circuit: "
                  f"circuitdag explore {json_path or 'circuit.json'}")  # fmt: skip
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
    top = _top_score(circuit)
    for e in idx:
        s = circuit.scores[e]
        width = _width(s, top)
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


def circuit_title(circuit: Circuit) -> str:
    """The one-line title of a circuit's drawings (task, threshold, metric, ablation, edges,
    faithfulness); the SVG and the explorer page share it."""
    meta = circuit.meta
    task = str(meta.get("task", ""))
    if task.startswith("prompts:"):  # a prompts file: its name, not its whole path
        task = "prompts:" + Path(task.removeprefix("prompts:")).name
    thr = meta.get("threshold")
    rel = meta.get("relative_threshold")
    f = circuit.faithfulness()
    return "  ".join([
        task,
        f"threshold={thr:.4g}" if isinstance(thr, (int, float)) else "",
        f"(= {rel:g} x metric gap)" if rel is not None else "",
        f"metric={meta.get('metric', '')}",
        f"ablation={meta.get('ablation', '')}",
        f"edges={circuit.n_edges}",
        f"faithfulness={f:.3f}" if f is not None else "faithfulness=n/a",
        _held_out(meta),
    ]).replace("    ", "  ").strip()  # fmt: skip


def _held_out(meta: dict[str, Any]) -> str:
    """``held-out=F [lo, hi]`` (:func:`heldout_text`) when circuit.json has a held-out
    faithfulness, else nothing: the number a drawing is trusted by (docs/evaluation.md)."""
    text = heldout_text(meta)
    return "" if text is None else f"held-out={text}"


def heldout_text(meta: dict[str, Any]) -> str | None:
    """A circuit's held-out faithfulness as ``0.621`` and, with ``--bootstrap``'s interval,
    ``0.621 [0.568, 0.675]`` (circuit.json's ``meta``); None when it has none."""
    held = meta.get("heldout")
    if not isinstance(held, dict) or not isinstance(held.get("faithfulness"), (int, float)):
        return None
    boot = meta.get("bootstrap")
    ci = ((boot.get("circuit_faithfulness_ci") or {}).get("heldout") if isinstance(boot, dict) else None)
    interval = f" [{ci[0]:.3f}, {ci[1]:.3f}]" if isinstance(ci, list) and len(ci) == 2 else ""
    return f"{held['faithfulness']:.3f}{interval}"


def _top_score(circuit: Circuit) -> float:
    """The largest ``|score|`` among the circuit's edges: the width scale's maximum."""
    s = circuit.scores[circuit.in_circuit]
    finite = np.abs(s[np.isfinite(s)])
    return float(finite.max()) if finite.size and finite.max() > 0 else 1.0


def _width(score: float, top: float) -> float:
    """Line width in points: 1 for ``|score|`` 0 or an untested edge, 4 for the largest ``|score|``."""
    return 1.0 + 3.0 * (abs(score) / top if math.isfinite(score) else 0.0)


def _text_width(text: str, bold: bool = False) -> float:
    """An upper estimate of ``text``'s width in points at font size 10 in Helvetica
    (about 5.6 points a character, 6.1 bold), so that the legend's band is wide enough."""
    return (6.1 if bold else 5.6) * len(text)


#: Edges listed by name in the legend (the rest are counted).
LEGEND_EDGES = 60


def add_legend(svg: str, circuit: Circuit) -> str:
    """Append the legend to graphviz's SVG: a band below the drawing with the input colours,
    the width scale (``|score|`` in metric units at 1, 2.5 and 4 points) and the circuit's
    edges by name with their scores, largest ``|score|`` first (the first
    :data:`LEGEND_EDGES`)."""
    m = re.search(r'<svg width="([\d.]+)pt" height="([\d.]+)pt"\s+viewBox="([\d.\s-]+)"', svg)
    if m is None:  # pragma: no cover - graphviz always writes these
        return svg
    width, height = float(m.group(1)), float(m.group(2))
    top = _top_score(circuit)
    g = circuit.graph
    used = set(g.edges.input[circuit.in_circuit].tolist())
    kinds = [k for k in Input if int(k) in used] or list(Input)
    esc = html.escape
    parts: list[str] = []
    y = height + 16.0
    x = 8.0
    parts.append(f'<text x="{x}" y="{y}" font-size="10" font-weight="bold">colour = the input the edge feeds:</text>')
    x += 200
    for kind in kinds:
        c = INPUT_COLOURS[kind]
        parts.append(f'<line x1="{x}" y1="{y - 3}" x2="{x + 22}" y2="{y - 3}" stroke="{c}" stroke-width="2.5"/>'
                     f'<text x="{x + 26}" y="{y}" font-size="10" fill="{c}">{esc(kind.label)}</text>')  # fmt: skip
        x += 26 + 7 * len(kind.label) + 12
    if any(len(v) for v in g.implicit_edges):
        implicit = "key/value head to its query heads (not an edge)"
        parts.append(f'<line x1="{x}" y1="{y - 3}" x2="{x + 22}" y2="{y - 3}" stroke="#999999" stroke-dasharray="5,2"/>'
                     f'<text x="{x + 26}" y="{y}" font-size="10">{implicit}</text>')  # fmt: skip
        x += 26 + _text_width(implicit)
    extent = x + 8  # the widest line of the legend's header, in points
    y += 18
    score = str(circuit.meta.get("score_meaning", "the metric change when the edge is removed")).split(" (")[0]
    scale = f"width = |score|, the {score}, in {circuit.meta.get('metric', 'metric')} units:"
    parts.append(f'<text x="8" y="{y}" font-size="10" font-weight="bold">{esc(scale)}</text>')
    extent = max(extent, 16 + _text_width(scale, bold=True))
    y += 16
    x = 8.0
    for frac, text in ((0.0, "0 or untested"), (0.5, f"{top / 2:.3g}"), (1.0, f"{top:.3g}")):
        parts.append(f'<line x1="{x}" y1="{y - 3}" x2="{x + 30}" y2="{y - 3}" stroke="#555555" '
                     f'stroke-width="{1 + 3 * frac:.2f}"/><text x="{x + 36}" y="{y}" font-size="10">{text}</text>')  # fmt: skip
        x += 36 + 6 * len(text) + 20
    idx = np.flatnonzero(circuit.in_circuit)
    order = sorted(idx.tolist(), key=lambda e: -abs(circuit.scores[e]) if math.isfinite(circuit.scores[e]) else 0.0)
    y += 20
    parts.append(f'<text x="8" y="{y}" font-size="10" font-weight="bold">edges, largest |score| first '
                 f"({len(order)}):</text>")  # fmt: skip
    names = [f"{g.edge_names[e]}  {circuit.scores[e]:.3g}" if math.isfinite(circuit.scores[e])
             else f"{g.edge_names[e]}  untested" for e in order[:LEGEND_EDGES]]  # fmt: skip
    if len(order) > LEGEND_EDGES:
        names.append(f"... and {len(order) - LEGEND_EDGES} more (circuit.json)")
    col_w = 6.0 * max((len(n) for n in names), default=10) + 24
    n_cols = max(1, int((max(width, 560) - 16) // col_w))
    rows = math.ceil(len(names) / n_cols) if names else 0
    for i, name in enumerate(names):
        cx, cy = 8 + (i // rows) * col_w, y + 14 * (1 + i % rows)
        parts.append(f'<text x="{cx:.1f}" y="{cy:.1f}" font-size="10" font-family="Courier,monospace">{esc(name)}</text>')
    y += 14 * rows + 10
    new_w = max(width, 8 + n_cols * col_w, 560.0, extent)
    band = (f'<g id="legend" font-family="Helvetica,sans-Serif"><rect x="0" y="{height}" width="{new_w}" '
            f'height="{y - height}" fill="white"/>' + "".join(parts) + "</g>\n</svg>")  # fmt: skip
    head = f'<svg width="{new_w:.0f}pt" height="{y:.0f}pt"\n viewBox="0.00 0.00 {new_w:.2f} {y:.2f}"'
    svg = svg[: m.start()] + head + svg[m.end() :]
    return svg[: svg.rindex("</svg>")] + band + "\n"


def dot_svg(dot: Any, timeout: float | None = None, hint: str = "") -> str:
    """Lay out a ``graphviz`` graph with its engine and return the SVG text. Raises
    :class:`CircuitDagError` saying how to install graphviz when its programs are missing,
    and when the engine fails or runs longer than ``timeout`` seconds (default
    :data:`DOT_TIMEOUT_S`; 0: no limit), after stopping it; ``hint`` ends that message."""
    engine = str(dot.engine)
    exe = shutil.which(engine)
    if exe is None:
        raise CircuitDagError(
            f"graphviz's `{engine}` program is not installed; install graphviz (Debian/Ubuntu: "
            "`apt-get install graphviz`, macOS: `brew install graphviz`) and rerun"
        )
    limit = DOT_TIMEOUT_S if timeout is None else timeout
    # A session of its own, so that stopping it stops anything it started.
    proc = subprocess.Popen([exe, "-Tsvg"], stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            start_new_session=True)  # fmt: skip
    try:
        out, err = proc.communicate(dot.source.encode("utf-8"), timeout=limit or None)
    except subprocess.TimeoutExpired:
        _stop(proc)
        raise CircuitDagError(f"graphviz's `{engine}` did not finish the drawing in {limit:g} s and was "
                              f"stopped{hint}") from None  # fmt: skip
    if proc.returncode != 0:
        first = (err.decode("utf-8", "replace").strip().splitlines() or ["no message"])[0]
        raise CircuitDagError(f"graphviz's `{engine}` failed (exit status {proc.returncode}): {first}")
    return out.decode("utf-8")


def _stop(proc: subprocess.Popen) -> None:
    """Kill ``proc`` and whatever it started, and reap it."""
    try:
        if hasattr(os, "killpg"):
            os.killpg(proc.pid, signal.SIGKILL)
        else:  # pragma: no cover - Windows
            proc.kill()
    except (ProcessLookupError, PermissionError):
        pass
    proc.communicate()


def render_svg(circuit: Circuit, path: str | Path, max_edges: int = MAX_EDGES, timeout: float | None = None,
               json_path: str | Path | None = None) -> Path:  # fmt: skip
    """Write the circuit's SVG, with its legend, to ``path`` (needs graphviz's ``dot``).

    A circuit of more than ``max_edges`` edges (0: no limit) is drawn as its largest by
    ``|score|``; the title names ``json_path`` (default: ``path`` with the suffix ``.json``)
    for ``circuitdag explore``, which shows the whole circuit. Graphviz is stopped after
    ``timeout`` seconds (:func:`dot_svg`) with a :class:`CircuitDagError`; nothing is
    written then."""
    if max_edges < 0:
        raise ConfigError(f"max_edges must be >= 0 (0 draws every edge), got {max_edges}")
    json_path = json_path if json_path is not None else Path(path).with_suffix(".json")
    hint = (f"; see the circuit with `circuitdag explore {json_path}`, or draw fewer edges with "
            f"`circuitdag render {json_path} --max-edges N`")  # fmt: skip
    svg = dot_svg(to_dot(circuit, max_edges, json_path), timeout, hint)
    return write_svg(add_legend(svg, circuit), path, None)


# The Circuit protocol above is what drawing needs, not a public type: circuitdag.circuit.Circuit
# is the one the API reference names (listing both made :class:`Circuit` ambiguous there).
__all__ = ["INPUT_COLOURS", "LEGEND_EDGES", "NODE_STYLE", "add_legend", "circuit_title", "dot_svg",
           "drawn_edges", "heldout_text", "render_svg", "to_dot"]  # fmt: skip
