"""A circuit: a subset of a graph's edges, with the scores and settings that produced it."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from circuitdag.graph import Graph, Input, NodeKind


@dataclass(eq=False)
class Circuit:
    """``in_circuit[e]`` says whether edge ``e`` of ``graph`` is kept; ``scores[e]`` is the
    metric change measured when ACDC tried removing it (NaN if never tested).

    ``meta`` holds what made it: model, task, threshold, metric, ablation, positions,
    seed, version, metric values (``metric_full``, ``metric_circuit``,
    ``metric_corrupted``) and run statistics.
    """

    graph: Graph
    in_circuit: np.ndarray
    scores: np.ndarray
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def n_edges(self) -> int:
        return int(self.in_circuit.sum())

    @property
    def edge_names(self) -> set[str]:
        return {self.graph.edge_names[e] for e in np.flatnonzero(self.in_circuit)}

    @property
    def node_names(self) -> set[str]:
        t = self.graph.edges
        idx = np.flatnonzero(self.in_circuit)
        return {self.graph.nodes[i].name for i in np.concatenate([t.src[idx], t.dst[idx]])}

    def faithfulness(self) -> float | None:
        """Fraction of the corrupted-vs-full metric gap the circuit recovers:
        ``(m_corrupted - m_circuit) / (m_corrupted - m_full)``; 1 is the full model."""
        m = self.meta
        try:
            gap = m["metric_corrupted"] - m["metric_full"]
            return float((m["metric_corrupted"] - m["metric_circuit"]) / gap) if gap else None
        except KeyError:
            return None

    def recovered(self) -> float | None:
        """The circuit's metric as a fraction of the full model's (``m_circuit / m_full``),
        the seed project's "65% as good": meaningful for metrics the model maximises
        (``logit_diff``, ``prob``, stored negated, so the ratio is unchanged); None when the
        full model's metric is 0 (``kl``, ``l2``, which compare with the full model)."""
        m = self.meta
        full, circ = m.get("metric_full"), m.get("metric_circuit")
        if full is None or circ is None or abs(full) < 1e-12:
            return None
        return float(circ / full)

    def head_positions(self) -> tuple[int, int]:
        """(attention heads used, heads in the graph); with positions these count
        (head, position) pairs. A head is used when a circuit edge starts or ends at it."""
        heads = [i for i, n in enumerate(self.graph.nodes) if n.kind == NodeKind.HEAD]
        t = self.graph.edges
        idx = np.flatnonzero(self.in_circuit)
        touched = set(t.src[idx].tolist()) | set(t.dst[idx].tolist())
        return sum(i in touched for i in heads), len(heads)

    def without_positions(self) -> Circuit:
        """The same circuit on the graph without positions: a component edge is in it when
        any of its position copies is (score: the largest ``|score|`` of those copies). Used to
        compare a position-aware circuit with a ground truth written without positions."""
        g = self.graph
        if g.positions is None:
            return self
        plain = g.plain
        idx = g.plain_edge
        in_circuit = np.zeros(plain.n_edges, dtype=bool)
        np.logical_or.at(in_circuit, idx, self.in_circuit)
        scores = np.full(plain.n_edges, np.nan)
        finite = np.isfinite(self.scores)
        mags = np.zeros(plain.n_edges)
        np.maximum.at(mags, idx[finite], np.abs(self.scores[finite]))
        tested = np.zeros(plain.n_edges, dtype=bool)
        tested[idx[finite]] = True
        scores[tested] = mags[tested]
        return Circuit(plain, in_circuit, scores, {**self.meta, "collapsed_from_positions": True})

    def __repr__(self) -> str:
        m = self.meta
        faith = self.faithfulness()
        parts = [f"{self.n_edges}/{self.graph.n_edges} edges", f"{len(self.node_names)} nodes"]
        for key in ("task", "algorithm", "metric", "threshold"):
            if m.get(key) is not None:
                value = m[key]
                parts.append(f"{key}={value:.4g}" if isinstance(value, float) else f"{key}={value}")
        if faith is not None:
            parts.append(f"faithfulness={faith:.3f}")
        return f"Circuit({', '.join(parts)})"

    def to_pandas(self, circuit_only: bool = False):  # -> pandas.DataFrame
        """One row per edge of the graph (or of the circuit, with ``circuit_only``): ``edge``
        (its name), ``src``, ``dst``, ``input`` (q, k, v, mlp, resid), ``src_pos``,
        ``dst_pos`` (-1 without positions), ``score`` (float, NaN: never scored) and
        ``in_circuit`` (bool), in edge-table order. Needs pandas
        (``pip install 'circuitdag[pandas]'``; raises MissingExtraError without it)."""
        try:
            import pandas as pd  # type: ignore[import-untyped,unused-ignore]
        except ImportError:
            from circuitdag.errors import MissingExtraError

            raise MissingExtraError("Circuit.to_pandas needs pandas: pip install 'circuitdag[pandas]'") from None
        g, t = self.graph, self.graph.edges
        rows = np.flatnonzero(self.in_circuit) if circuit_only else np.arange(g.n_edges)
        names = [n.name for n in g.nodes]
        return pd.DataFrame({
            "edge": [g.edge_names[e] for e in rows],
            "src": [names[i] for i in t.src[rows]],
            "dst": [names[i] for i in t.dst[rows]],
            "input": [Input(i).label for i in t.input[rows]],
            "src_pos": np.asarray(t.src_pos[rows], dtype=np.int64),
            "dst_pos": np.asarray(t.dst_pos[rows], dtype=np.int64),
            "score": np.asarray(self.scores[rows], dtype=np.float64),
            "in_circuit": np.asarray(self.in_circuit[rows], dtype=bool),
        })  # fmt: skip

    def to_networkx(self, all_nodes: bool = False):  # -> networkx.MultiDiGraph
        """The circuit as a networkx ``MultiDiGraph``: its edges (key: the input label;
        attributes ``name`` and ``score``, NaN when never scored) and, by default, only the
        nodes they touch (``all_nodes=True``: every node of the graph). Nodes carry
        ``kind``, ``layer``, ``head`` and ``pos``."""
        g = self.graph.to_networkx(self.in_circuit)
        names = self.graph.edge_names
        score = {names[e]: float(self.scores[e]) for e in np.flatnonzero(self.in_circuit)}
        for _, _, data in g.edges(data=True):
            data["score"] = score[data["name"]]
        if not all_nodes:
            g.remove_nodes_from([n for n in list(g.nodes) if g.degree(n) == 0])
        return g

    def save(self, path: str | Path) -> None:
        save_circuit(self, path)

    def to_svg(self, path: str | Path, max_edges: int | None = None, timeout: float | None = None,
               json_path: str | Path | None = None) -> Path:  # fmt: skip
        """Draw the circuit as SVG with graphviz (:func:`circuitdag.render.render_svg`): at
        most ``max_edges`` edges, the largest by ``|score|`` (default
        :data:`~circuitdag.render.MAX_EDGES`; 0: every edge), graphviz stopped after
        ``timeout`` seconds (default :data:`~circuitdag.render.DOT_TIMEOUT_S`) with a
        :class:`~circuitdag.errors.CircuitDagError`; ``json_path`` is the circuit.json the
        title names for ``circuitdag explore`` (default: ``path`` ending in ``.json``)."""
        from circuitdag.render import MAX_EDGES, render_svg

        return render_svg(self, path, MAX_EDGES if max_edges is None else max_edges, timeout, json_path)

    def to_html(self, path: str | Path | None = None) -> str:
        """The interactive explorer (:mod:`circuitdag.explore`): one self-contained HTML
        page; also written to ``path`` when given."""
        from circuitdag.explore import explorer_html, write_explorer

        if path is not None:
            return write_explorer(self, path).read_text(encoding="utf-8")
        return explorer_html(self)

    def _repr_html_(self) -> str:
        """The explorer in a notebook cell (an iframe holding :meth:`to_html`'s page)."""
        from circuitdag.explore import notebook_html

        return notebook_html(self)

    def same_as(self, other: Circuit) -> bool:
        return self.graph.edge_names == other.graph.edge_names and bool(
            np.array_equal(self.in_circuit, other.in_circuit)
        )


FORMAT = "circuitdag.circuit/1"


def circuit_to_dict(circuit: Circuit) -> dict[str, Any]:
    g = circuit.graph
    t = g.edges
    edges = []
    for e in range(g.n_edges):
        s = float(circuit.scores[e])
        edges.append({
            "name": g.edge_names[e],
            "src": g.nodes[t.src[e]].name,
            "dst": g.nodes[t.dst[e]].name,
            "input": Input(t.input[e]).label,
            "src_pos": None if t.src_pos[e] < 0 else int(t.src_pos[e]),
            "dst_pos": None if t.dst_pos[e] < 0 else int(t.dst_pos[e]),
            "score": None if math.isnan(s) else s,
            "in_circuit": bool(circuit.in_circuit[e]),
        })  # fmt: skip
    meta = dict(circuit.meta)
    return {
        "format": FORMAT,
        **meta,
        "graph": asdict(g.spec),
        "position_layout": None if g.positions is None else {
            "n": g.positions.n, "names": g.positions.names, "sink": list(g.positions.sink)},
        "n_edges_total": g.n_edges,
        "n_edges": circuit.n_edges,
        "edges": edges,
    }


def save_circuit(circuit: Circuit, path: str | Path) -> Path:
    """Write ``path`` atomically (temp file + rename); creates the parent directory."""
    from circuitdag.files import write_json

    return write_json(path, circuit_to_dict(circuit))
