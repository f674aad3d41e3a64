"""Judging circuits: faithfulness, precision/recall and ROC AUC against ground truth."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from circuitdag.circuit import Circuit


@dataclass(frozen=True)
class Confusion:
    tp: int
    fp: int
    fn: int
    tn: int

    @property
    def precision(self) -> float:
        return self.tp / (self.tp + self.fp) if self.tp + self.fp else 1.0

    @property
    def recall(self) -> float:
        return self.tp / (self.tp + self.fn) if self.tp + self.fn else 1.0

    @property
    def tpr(self) -> float:
        return self.recall

    @property
    def fpr(self) -> float:
        return self.fp / (self.fp + self.tn) if self.fp + self.tn else 0.0


def confusion(circuit: Circuit, truth: set[str], ignore: Iterable[str] = ()) -> Confusion:
    """Edge-level confusion counts of ``circuit`` against the ``truth`` edge set.
    Edges in ``ignore`` (e.g. tracr edges that can never change the output) count as
    neither positives nor negatives. A position-aware circuit is compared with a truth
    written without positions (``a0.1->a1.0<k>``) on its component edges
    (:meth:`Circuit.without_positions`)."""
    if circuit.graph.positions is not None and truth and not any("@" in n for n in truth):
        circuit = circuit.without_positions()
    names = circuit.graph.edge_names
    ignore = set(ignore)
    counted = np.array([n not in ignore for n in names])
    truth_mask = circuit.graph.edges_by_name(truth)
    pred = circuit.in_circuit
    tp = int((pred & truth_mask & counted).sum())
    fp = int((pred & ~truth_mask & counted).sum())
    fn = int((~pred & truth_mask & counted).sum())
    tn = int((~pred & ~truth_mask & counted).sum())
    return Confusion(tp, fp, fn, tn)


def roc_auc(points: list[tuple[float, float]]) -> float:
    """Area under the ROC curve through ``(fpr, tpr)`` points, closed with (0,0), (1,1).

    Points are made monotone the way the ACDC paper does: sorted by fpr, each tpr taken
    as the best tpr reached at that fpr or less (a threshold sweep can only move along
    the curve's upper envelope). Points that share an fpr are all kept, so a vertical step
    is drawn where it is (``[(0, .5), (.5, .5), (.5, 1)]`` -> 0.75)."""
    pts = sorted(set(points) | {(0.0, 0.0), (1.0, 1.0)})  # by fpr, then tpr
    xs = [x for x, _ in pts]
    ys = list(np.maximum.accumulate([y for _, y in pts]))  # several points at one fpr: a vertical step
    if hasattr(np, "trapezoid"):
        return float(np.trapezoid(ys, xs))
    return float(np.trapz(ys, xs))  # type: ignore[attr-defined]  # numpy < 2 (newer stubs lack trapz)


def task_truth(task: Any, ablation: str) -> tuple[set[str] | None, set[str]]:
    """(ground-truth edges, edges to ignore) of a task for an ablation."""
    truth = task.ground_truth(ablation) if getattr(task, "has_ground_truth", False) else None
    inert_fn = getattr(task, "inert_edges", None)
    inert = set(inert_fn(ablation)) if (truth is not None and callable(inert_fn)) else set()
    return truth, inert


def summarize(circuit: Circuit, truth: set[str] | None = None, ignore: Iterable[str] = ()) -> dict[str, Any]:
    """The JSON summary ``circuitdag evaluate`` prints."""
    m = circuit.meta
    out: dict[str, Any] = {
        "task": m.get("task"),
        "model": m.get("model"),
        "threshold": m.get("threshold"),
        "relative_threshold": m.get("relative_threshold"),
        "metric": m.get("metric"),
        "metric_stored_as": m.get("metric_stored_as"),
        "ablation": m.get("ablation"),
        "edges": circuit.n_edges,
        "edges_total": circuit.graph.n_edges,
        "nodes": len(circuit.node_names),
        "metric_full": m.get("metric_full"),
        "metric_circuit": m.get("metric_circuit"),
        "metric_corrupted": m.get("metric_corrupted"),
        "faithfulness": circuit.faithfulness(),
        "recovered": circuit.recovered(),
    }
    used, total = circuit.head_positions()
    key = "head_positions" if circuit.graph.positions is not None else "heads"
    out.update({f"{key}_used": used, f"{key}_total": total, f"{key}_fraction": used / total if total else None})
    if truth is not None:
        c = confusion(circuit, truth, ignore)
        out.update(precision=c.precision, recall=c.recall, true_positives=c.tp,
                   false_positives=c.fp, false_negatives=c.fn,
                   matches_ground_truth=c.fp == 0 and c.fn == 0)  # fmt: skip
    return out


DEFAULT_ROC_THRESHOLDS = tuple([0.0] + [float(x) for x in np.logspace(-5, 1, 25)])


def roc_sweep(patcher: Any, truth: set[str], ignore: Iterable[str] = (),
              thresholds: Iterable[float] = DEFAULT_ROC_THRESHOLDS, progress: bool = False,
              meta: dict[str, Any] | None = None) -> dict[str, Any]:  # fmt: skip
    """Run fast ACDC at each threshold on one cached :class:`Patcher` and return the
    ROC points and AUC against ``truth``.

    Raises :class:`~circuitdag.errors.ConfigError` when the ground truth has no edge to
    find (``truth`` minus ``ignore`` is empty) or no edge to leave out: the true or false
    positive rate is then undefined, and an AUC of 1.0 would say nothing."""
    from circuitdag.discovery import run_acdc
    from circuitdag.errors import ConfigError

    points, rows = [], []
    ignore = set(ignore)
    if not set(truth) - ignore:
        raise ConfigError("the ground truth has no edges (after leaving out the inert ones), so there is no ROC: "
                          "every circuit would score AUC 1.0; try another ablation or inputs on which the output "
                          "can change")  # fmt: skip
    for thr in thresholds:
        c = run_acdc(patcher, thr, meta=meta)
        conf = confusion(c, truth, ignore)
        if conf.tp + conf.fn == 0 or conf.fp + conf.tn == 0:
            which = "none of the graph's edges is in" if conf.tp + conf.fn == 0 else "every edge of the graph is in"
            raise ConfigError(f"{which} the ground truth, so there is no ROC (AUC would be 1.0 whatever ACDC did)")
        points.append((conf.fpr, conf.tpr))
        rows.append({"threshold": thr, "edges": c.n_edges, "tpr": conf.tpr, "fpr": conf.fpr,
                     "exact": conf.fp == 0 and conf.fn == 0})  # fmt: skip
    return {"auc": roc_auc(points), "points": rows}


def plot_roc(result: dict[str, Any], path: str | Path, title: str = "") -> Path:
    """Draw the ROC curve of a :func:`roc_sweep` result (false positive rate across, true
    positive rate up; the points ACDC reached, each marked, and the monotone envelope whose
    area is the AUC) to an SVG file, with a legend."""
    from matplotlib.figure import Figure

    from circuitdag._plotting import save_svg

    pts = sorted({(p["fpr"], p["tpr"]) for p in result["points"]} | {(0.0, 0.0), (1.0, 1.0)})
    env = list(np.maximum.accumulate([y for _, y in pts]))
    fig = Figure(figsize=(5.2, 4.6))
    ax = fig.add_subplot()
    ax.plot([x for x, _ in pts], env, color="#1f77b4", label=f"ROC envelope (AUC {result['auc']:.3f})")
    ax.scatter([p["fpr"] for p in result["points"]], [p["tpr"] for p in result["points"]], color="#d62728",
               zorder=3, s=18, label=f"ACDC at {len(result['points'])} thresholds")  # fmt: skip
    ax.plot([0, 1], [0, 1], color="0.5", linestyle=":", linewidth=1, label="chance")
    ax.set_xlim(-0.02, 1.02)
    ax.set_ylim(-0.02, 1.02)
    ax.set_xlabel("false positive rate (edges kept that are not in the ground truth)")
    ax.set_ylabel("true positive rate (ground-truth edges kept)")
    ax.set_title(title or "edge ROC against the ground truth", fontsize=10)
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    return save_svg(fig, path, "--plot")
