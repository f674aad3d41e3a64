"""MIB-style evaluation of an edge ranking: the faithfulness curve, CPR and CMD.

Follows the circuit track of MIB (Mueller et al. 2025, "MIB: A Mechanistic
Interpretability Benchmark"), whose code is ``hannamw/MIB-circuit-track``
(``MIB_circuit_track/evaluation.py``, ``evaluate_area_under_curve``) on top of the EAP-IG
library (``hannamw/EAP-IG``, ``src/eap/graph.py``: ``apply_topn``, ``prune``):

1. Grid: a fraction ``x`` in (.001, .002, .005, .01, .02, .05, .1, .2, .5, 1) of all the
   graph's edges (:data:`EDGE_PERCENTS`, in percent); point ``x`` keeps
   ``n = int(x * n_edges)`` edges (truncated, as ``int()`` does there).
2. Selection (:func:`select_top`): the ``n`` edges with the highest score, signed
   (``absolute=False``) or by ``|score|`` (``absolute=True``); then the circuit is pruned
   to the edges on some path from ``embed`` to ``logits`` (EAP-IG's ``prune``, which
   repeatedly drops nodes without an incoming or outgoing in-graph edge, keeps exactly
   those). MIB reports the pruned count; the x-axis stays the nominal fraction.
3. Faithfulness of each circuit C: ``f(C) = (m(C) - m(empty)) / (m(full) - m(empty))``,
   ``m(empty)`` with every edge removed (all inputs from the ablation), ``m(full)`` the
   model itself. Here ``m`` is exact patching (:meth:`Patcher.circuit_metric`); MIB
   uses logit difference, and since ``f`` is a ratio of differences it is the same for a
   metric stored negated (circuitdag stores "lower is better").
4. CPR (circuit performance ratio, higher is better) is the area under ``f`` and CMD
   (circuit-model distance, lower is better) the area under ``|1 - f|``, both by the
   trapezoid rule over the fractions themselves (linear axis, 0.001 .. 1, no point added
   at 0, no rescaling), so ``f = 1`` everywhere gives CPR 0.999 and CMD 0.
   MIB's leaderboard (``print_results.py``) takes CPR from the signed ranking and CMD
   from the absolute-value ranking (``run_evaluation.py --absolute``);
   :func:`mib_curves` computes both.

Where this differs, because MIB does not say: ties are broken by edge table order (MIB's
``torch.argsort`` leaves them unspecified), and NaN scores (edges ACDC never tested) rank
after every scored edge (``torch.argsort`` would rank them first; MIB's own scores have
none). Position-aware graphs need nothing special: everything works on the edge table.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from fractions import Fraction
from itertools import pairwise
from pathlib import Path
from typing import Any

import numpy as np

from circuitdag._options import EDGE_PERCENTS  # MIB's grid; --help shows it, so defined there
from circuitdag.errors import CircuitFileError, ConfigError
from circuitdag.graph import Graph

CURVE_FORMAT = "circuitdag.curve/1"


def fractions(percents: Sequence[float]) -> tuple[float, ...]:
    """Percent -> fraction of edges, as the nearest double to ``p / 100`` (so 0.1 % is the
    same double as MIB's literal ``.001`` and ``int(x * n)`` truncates the same way).
    Raises :class:`ConfigError` unless the percents increase strictly within (0, 100]."""
    ps = [float(p) for p in percents]
    if not ps or any(not (0 < p <= 100) for p in ps) or any(a >= b for a, b in pairwise(ps)):
        raise ConfigError(f"edge percents must increase strictly within (0, 100], got {list(percents)}")
    return tuple(float(Fraction(repr(p)) / 100) for p in ps)


def edge_counts(percents: Sequence[float], n_edges: int) -> tuple[int, ...]:
    """Edges selected at each grid point: ``int(fraction * n_edges)``, as MIB does."""
    return tuple(int(x * n_edges) for x in fractions(percents))


# ---------------------------------------------------------------------- selection
@dataclass(frozen=True, eq=False)
class Selection:
    """One grid point's circuit. ``selected``: bool ``[n_edges]``, the top-n edges;
    ``alive``: bool ``[n_edges]``, those of them on an ``embed -> logits`` path."""

    selected: np.ndarray
    alive: np.ndarray

    @property
    def n_selected(self) -> int:
        return int(self.selected.sum())

    @property
    def n_alive(self) -> int:
        return int(self.alive.sum())


def ranking(scores: np.ndarray, absolute: bool = False) -> np.ndarray:
    """Edge indices, best first: by score (or ``|score|``) descending, NaN last, ties in
    edge table order. ``scores``: float ``[n_edges]``."""
    scores = np.asarray(scores, dtype=np.float64)
    nan = np.isnan(scores)
    key = -np.where(nan, 0.0, np.abs(scores) if absolute else scores)
    return np.lexsort((np.arange(scores.shape[0]), key, nan))


def select_top(graph: Graph, scores: np.ndarray, n_edges: int, absolute: bool = False) -> Selection:
    """The top ``n_edges`` edges of ``scores`` (float ``[graph.n_edges]``, higher = more
    important; :func:`ranking`), pruned to edges on an ``embed -> logits`` path (what
    MIB's ``apply_topn(n, absolute, prune=True)`` gives; :meth:`Graph.prune`, the same
    pruning ACDC ends with). Raises :class:`ConfigError` for a wrong-sized
    ``scores`` or ``n_edges`` outside ``0..graph.n_edges``."""
    scores = np.asarray(scores, dtype=np.float64)
    if scores.shape != (graph.n_edges,):
        raise ConfigError(f"scores have shape {scores.shape}, the graph has {graph.n_edges} edges")
    if not 0 <= n_edges <= graph.n_edges:
        raise ConfigError(f"cannot select {n_edges} edges of a graph with {graph.n_edges}")
    selected = np.zeros(graph.n_edges, dtype=bool)
    selected[ranking(scores, absolute)[:n_edges]] = True
    return Selection(selected, graph.prune(selected))


# ---------------------------------------------------------------------- curve
def cpr(percents: Sequence[float], f: Sequence[float]) -> float:
    """Circuit performance ratio: trapezoid area under faithfulness ``f`` over the edge
    fraction (``percents / 100``, linear axis, no added endpoints), as MIB's
    ``area_under``. Higher is better; ``f = 1`` on MIB's grid gives 0.999."""
    return _trapezoid(fractions(percents), [float(v) for v in f])


def cmd(percents: Sequence[float], f: Sequence[float]) -> float:
    """Circuit-model distance: trapezoid area under ``|1 - f|`` over the edge fraction, as
    MIB's ``area_from_1``. Lower is better; 0 when every point matches the model."""
    return _trapezoid(fractions(percents), [abs(1.0 - float(v)) for v in f])


def _trapezoid(x: Sequence[float], y: Sequence[float]) -> float:
    if len(x) != len(y):
        raise ConfigError(f"{len(y)} faithfulness values for {len(x)} grid points")
    area = 0.0
    for i in range(len(x) - 1):  # left to right, as MIB sums (same rounding)
        area += (x[i + 1] - x[i]) * ((y[i] + y[i + 1]) / 2)
    return area


@dataclass(frozen=True)
class Curve:
    """A faithfulness curve on one ranking.

    Per grid point (tuples of equal length): ``percents`` (% of the graph's edges),
    ``n_selected`` (edges taken from the ranking), ``n_edges`` (left after pruning; MIB's
    ``weighted_edge_counts``), ``metric`` (``m(C)``, lower is better) and
    ``faithfulness`` (``f``, 1 = the full model, 0 = everything ablated). Also the
    endpoints ``m_full``/``m_empty``, ``n_total`` (edges in the graph), whether the ranking
    used ``|score|`` (``absolute``), and ``cpr``/``cmd`` of this curve.
    """

    percents: tuple[float, ...]
    n_selected: tuple[int, ...]
    n_edges: tuple[int, ...]
    metric: tuple[float, ...]
    faithfulness: tuple[float, ...]
    m_full: float
    m_empty: float
    n_total: int
    absolute: bool
    cpr: float
    cmd: float

    @property
    def mean_faithfulness(self) -> float:
        """The plain mean of ``f`` over the grid (MIB's ``average``)."""
        return sum(self.faithfulness) / len(self.faithfulness)

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "fractions": list(fractions(self.percents)),
                "mean_faithfulness": self.mean_faithfulness}  # fmt: skip


class _Evaluator:
    """Exact metrics of circuits on one patcher, each distinct (pruned) circuit once."""

    def __init__(self, patcher: Any) -> None:
        self.patcher = patcher
        self.graph: Graph = patcher.graph
        n = self.graph.n_edges
        self.m_full = float(patcher.circuit_metric(np.ones(n, dtype=bool)))
        self.m_empty = float(patcher.circuit_metric(np.zeros(n, dtype=bool)))
        gap = self.m_full - self.m_empty
        if not (math.isfinite(gap) and gap != 0):
            raise ConfigError(
                f"the metric is the same with every edge and with none (full {self.m_full}, empty "
                f"{self.m_empty}), so faithfulness is undefined; choose another metric or ablation"
            )
        # Pruning the full graph only drops edges that cannot reach the logits, so it is
        # the full model; the empty circuit is the empty circuit.
        full = self.graph.prune(np.ones(n, dtype=bool))
        self.cache = {self._key(full): self.m_full, self._key(np.zeros(n, dtype=bool)): self.m_empty}
        from circuitdag.node_pass import node_pass_for

        # The small grid points on the circuit's own nodes (circuitdag.node_pass).
        self.fast = node_pass_for(patcher)

    @staticmethod
    def _key(mask: np.ndarray) -> bytes:
        return np.packbits(mask).tobytes()

    def metric(self, alive: np.ndarray) -> float:
        key = self._key(alive)
        if key not in self.cache:
            from circuitdag.node_pass import circuit_metrics

            self.cache[key] = circuit_metrics(self.patcher, [alive], self.fast)[0]
        return self.cache[key]

    def curve(self, scores: np.ndarray, percents: Sequence[float], absolute: bool, progress: bool) -> Curve:
        from tqdm.auto import tqdm

        counts = edge_counts(percents, self.graph.n_edges)
        sel, kept, ms = [], [], []
        label = "MIB curve (|score|)" if absolute else "MIB curve"
        for n in tqdm(counts, desc=label, unit="point", disable=not progress):
            s = select_top(self.graph, scores, n, absolute)
            sel.append(s.n_selected)
            kept.append(s.n_alive)
            ms.append(self.metric(s.alive))
        gap = self.m_full - self.m_empty
        f = tuple((m - self.m_empty) / gap + 0.0 for m in ms)  # + 0.0: no -0.0 at the empty circuit
        pcts = tuple(float(p) for p in percents)
        return Curve(pcts, tuple(sel), tuple(kept), tuple(ms), f, self.m_full, self.m_empty,
                     self.graph.n_edges, absolute, cpr(pcts, f), cmd(pcts, f))  # fmt: skip


def _check_scores(graph: Graph, scores: np.ndarray) -> np.ndarray:
    scores = np.asarray(scores, dtype=np.float64)
    if scores.shape != (graph.n_edges,):
        raise ConfigError(f"scores have shape {scores.shape}, the graph has {graph.n_edges} edges")
    if np.isnan(scores).all():
        raise CircuitFileError(
            "every edge score is NaN (a circuit without scores), so there is no ranking to evaluate"
        )
    return scores


def faithfulness_curve(patcher: Any, scores: np.ndarray, percents: Sequence[float] = EDGE_PERCENTS,
                       absolute: bool = False, progress: bool = False) -> Curve:  # fmt: skip
    """MIB's faithfulness curve of the ranking ``scores`` (float ``[n_edges]`` of
    ``patcher.graph``, higher = more important, NaN = untested) on a
    :class:`~circuitdag.patching.Patcher`: one exact forward pass per distinct circuit
    (:meth:`Patcher.circuit_metric`), plus the full and the empty one.

    Raises :class:`ConfigError` for bad ``percents`` or scores of the wrong size, or when
    the full and empty circuits have the same metric (``f`` undefined), and
    :class:`CircuitFileError` when every score is NaN."""
    scores = _check_scores(patcher.graph, scores)
    fractions(percents)
    return _Evaluator(patcher).curve(scores, percents, absolute, progress)


def mib_curves(patcher: Any, scores: np.ndarray, percents: Sequence[float] = EDGE_PERCENTS,
               progress: bool = False) -> dict[str, Curve]:  # fmt: skip
    """Both curves MIB's leaderboard uses: ``"signed"`` (its CPR) and ``"absolute"`` (its
    CMD), sharing the forward passes of identical circuits. Errors as
    :func:`faithfulness_curve`."""
    scores = _check_scores(patcher.graph, scores)
    fractions(percents)
    ev = _Evaluator(patcher)
    return {"signed": ev.curve(scores, percents, False, progress),
            "absolute": ev.curve(scores, percents, True, progress)}  # fmt: skip


# ---------------------------------------------------------------------- plot
def plot_curve(curves: dict[str, Curve], path: str | Path) -> Path:
    """Draw ``f`` against the edge fraction (log x-axis, one line per curve, named by its
    key with its CPR and CMD, a dotted line at f = 1) to an SVG file at ``path``."""
    from matplotlib.figure import Figure

    from circuitdag._plotting import save_svg

    fig = Figure(figsize=(6.4, 4.2))
    ax = fig.add_subplot()
    for name, c in curves.items():
        ax.plot(c.percents, c.faithfulness, marker="o", markersize=3,
                label=f"{name} (CPR {c.cpr:.3f}, CMD {c.cmd:.3f})")  # fmt: skip
    ax.axhline(1.0, color="0.4", linestyle=":", linewidth=1, label="full model (f = 1)")
    ax.set_xscale("log")
    ticks = sorted({p for c in curves.values() for p in c.percents})
    ax.set_xticks(ticks, [f"{p:g}%" for p in ticks])
    ax.minorticks_off()
    ax.set_xlabel("edges kept (% of the graph, log scale)")
    ax.set_ylabel("faithfulness f")
    ax.set_title("MIB faithfulness curve")
    ax.grid(True, which="major", alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    return save_svg(fig, path)


# ---------------------------------------------------------------------- a scored file
def _read_json(path: Path) -> Any:
    from circuitdag.files import read_json

    return read_json(path, "a circuit.json or an EAP-IG graph")


def _write(path: Path, text: str) -> None:
    from circuitdag.files import write_atomic

    write_atomic(path, text, error=ConfigError)


def _no_scores(path: Path) -> CircuitFileError:
    return CircuitFileError(
        f"{path} has no edge scores, so there is no ranking to evaluate; "
        "give a circuit.json from discover (ACDC scores) or a scored EAP-IG file"
    )


def write_curve(
    path: str | Path, out: str | Path, percents: Sequence[float] = EDGE_PERCENTS, *, task: str | None = None,
    model: str | None = None, metric: str | None = None, ablation: str | None = None, seed: int | None = None,
    method: str | None = None, device: str = "cpu", dtype: str = "float32", progress: bool = False,
) -> dict[str, Any]:  # fmt: skip
    """Both MIB curves of the ranking in ``path`` (a circuit.json, or an EAP-IG/MIB graph
    JSON): rebuild the run from the file's settings (``task``, ``model``, ``metric``,
    ``ablation``, ``seed`` override them; an EAP-IG file needs ``task``), compute the curves
    (:func:`mib_curves`), write ``curve.json`` and ``curve.svg`` into ``out``. Returns the
    report (curve.json's content); ``method`` names the ranking there and in the plot
    (default: from the circuit). ``dtype``: ``"float32"`` or ``"float64"``."""
    import json

    import torch

    from circuitdag._version import __version__
    from circuitdag.eapig_json import FORMAT_NAME, is_eapig_json, load_eapig_json
    from circuitdag.io import FORMAT, circuit_from_dict
    from circuitdag.reload import reload

    path = Path(path)
    fractions(percents)
    doc = _read_json(path)
    circuit = None
    source_format = FORMAT_NAME
    if isinstance(doc, dict) and doc.get("format") == FORMAT:
        source_format = FORMAT
        circuit = circuit_from_dict(doc, str(path))
        if np.isnan(circuit.scores).all():
            raise _no_scores(path)
    elif not is_eapig_json(doc):
        raise CircuitFileError(
            f"{path} is neither a circuitdag circuit.json ({FORMAT}) nor an EAP-IG graph JSON"
        )
    meta = circuit.meta if circuit is not None else {}
    # The circuit's BOS option and number of prompts rebuild the prompts it was found on.
    reloaded = reload(circuit if circuit is not None else meta, task=task, model=model, metric=metric, ablation=ablation,
                 seed=seed, device=device, dtype={"float32": torch.float32, "float64": torch.float64}[dtype],
                 source=str(path), purpose="this curve")  # fmt: skip
    patcher, run = reloaded.patcher, reloaded.run
    assert patcher is not None
    if circuit is None:
        circuit = load_eapig_json(path, patcher.graph)
        if np.isnan(circuit.scores).all():
            raise _no_scores(path)
    elif circuit.graph.edge_names != patcher.graph.edge_names:
        raise CircuitFileError(f"{path} was made on a graph of another model; pass the --model it was made with")
    curves = mib_curves(patcher, circuit.scores, percents, progress=progress)
    method = method or meta.get("method") or meta.get("algorithm") or "scores"
    out = Path(out)
    signed, absolute = curves["signed"], curves["absolute"]
    report = {
        "format": CURVE_FORMAT,
        "source": str(path),
        "source_format": source_format,
        "method": method,
        "threshold": meta.get("threshold"),
        "task": run["task"],
        "model": model or meta.get("model") or run["model"],
        **{k: run.get(k) for k in ("metric", "ablation", "seed", "positions", "n_prompts")},
        "dtype": dtype,
        "version": __version__,
        "evaluation": "MIB circuit track (Mueller et al. 2025; hannamw/MIB-circuit-track evaluation.py): "
                      "top-n edges at each grid point, pruned to embed->logits paths, exact patching; "
                      "CPR from the signed ranking, CMD from the |score| ranking",
        "percents": [float(p) for p in percents],
        "cpr": signed.cpr,
        "cmd": absolute.cmd,
        "curves": {k: c.to_dict() for k, c in curves.items()},
    }  # fmt: skip
    _write(out / "curve.json", json.dumps(report, indent=1))
    plot_curve({f"{method}, signed": signed, f"{method}, |score|": absolute}, out / "curve.svg")
    return report
