"""The Pareto front of a sweep and the data of its report (:class:`SweepReport`): one row
per trial, the front's points, the circuit chosen for ``--target-faithfulness``.

Objectives: circuit size in edges (minimised) and faithfulness (maximised). A trial is on
the front when no other completed trial found a circuit that is both smaller and at least
as faithful (:func:`pareto_front`).
"""

from __future__ import annotations

import math
import shutil
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from circuitdag.sweep.settings import SweepSettings
from circuitdag.sweep.storage import masked

if TYPE_CHECKING:
    import optuna

PARETO_FORMAT = "circuitdag.pareto/1"


@dataclass
class SweepReport:
    """What a sweep wrote: the front (``points``), every trial (``trials``), and the
    circuit picked for ``--target-faithfulness`` (``best``), plus the files."""

    study: str
    storage: str
    settings: SweepSettings
    trials: list[dict[str, Any]]
    points: list[dict[str, Any]]
    counts: dict[str, int]
    files: dict[str, str] = field(default_factory=dict)
    best: dict[str, Any] | None = None

    def to_dict(self) -> dict[str, Any]:
        return {"format": PARETO_FORMAT, "study": self.study, "storage": masked(self.storage),
                "task": self.settings.task, "settings": self.settings.to_dict(),
                "objectives": {"edges": "minimize", "faithfulness": "maximize"}, "trials": self.counts,
                "points": self.points, "best": self.best}  # fmt: skip


def pareto_front(points: Sequence[tuple[float, float]]) -> list[int]:
    """Indices of the non-dominated ``(edges, faithfulness)`` points (fewer edges and
    higher faithfulness are better); equal points are all kept."""
    order = sorted(range(len(points)), key=lambda i: (points[i][0], -points[i][1]))
    front: list[int] = []
    best = -math.inf
    i = 0
    while i < len(order):
        edges = points[order[i]][0]
        group = [j for j in order[i:] if points[j][0] == edges]
        top = points[group[0]][1]
        if top > best:
            front += [j for j in group if points[j][1] == top]
            best = top
        i += len(group)
    return sorted(front)


def trial_rows(study: optuna.Study, out: Path) -> list[dict[str, Any]]:
    """One dict per trial of ``study`` (every state): number, state, parameters, objectives,
    circuit path (relative to ``out`` when inside it), seconds, worker, error."""
    rows = []
    for t in study.get_trials(deepcopy=False):
        a = t.user_attrs
        path = a.get("circuit")
        rows.append({
            "trial": t.number, "state": t.state.name, "threshold": t.params.get("threshold"),
            "edges_requested": t.params.get("edges"),  # methods whose size knob is an edge count
            "metric": a.get("metric"), "ablation": a.get("ablation"),
            "edges": int(t.values[0]) if t.values else None,
            "faithfulness": float(t.values[1]) if t.values else None,
            "circuit": _rel(path, out) if path else None, "seconds": a.get("seconds"),
            "worker": a.get("worker"),
            "error": a.get("error") or ("no error recorded (its worker died?)" if t.state.name == "FAIL" else None),
        })  # fmt: skip
    return rows


def _rel(path: str, out: Path) -> str:
    p = Path(path)
    try:
        return str(p.resolve().relative_to(out.resolve()))
    except ValueError:
        return str(p)


def front_points(rows: list[dict[str, Any]], out: Path) -> list[dict[str, Any]]:
    """The front, one point per distinct (edges, faithfulness, metric, ablation): the
    earliest trial stands for the others, whose thresholds give the threshold range (None
    for methods whose size knob is an edge count: ``edges_requested_range`` instead)."""
    done = [r for r in rows if r["state"] == "COMPLETE"]
    front = [done[i] for i in pareto_front([(r["edges"], r["faithfulness"]) for r in done])]
    groups: dict[tuple[Any, ...], list[dict[str, Any]]] = {}
    for r in front:
        groups.setdefault((r["edges"], r["faithfulness"], r["metric"], r["ablation"]), []).append(r)
    points = []
    for members in groups.values():
        rep = min(members, key=lambda r: r["trial"])
        thresholds = [r["threshold"] for r in members if r["threshold"] is not None]
        asked = [r["edges_requested"] for r in members if r.get("edges_requested") is not None]
        circuit = _local_circuit(rep, out)
        points.append({
            "trial": rep["trial"], "threshold": rep["threshold"], "metric": rep["metric"],
            "ablation": rep["ablation"], "edges": rep["edges"], "faithfulness": rep["faithfulness"],
            "circuit": circuit, "trials": sorted(r["trial"] for r in members),
            "threshold_range": [min(thresholds), max(thresholds)] if thresholds else None,
            **({"edges_requested_range": [min(asked), max(asked)]} if asked else {}),
        })  # fmt: skip
    return sorted(points, key=lambda p: (p["edges"], -p["faithfulness"]))


def _local_circuit(row: dict[str, Any], out: Path) -> str | None:
    """The trial's circuit.json relative to ``out``; a circuit a worker wrote elsewhere
    (another ``--out``) is copied into ``out/trials/<n>/`` when this machine can read it."""
    path = row["circuit"]
    if path is None:
        return None
    if Path(path).is_absolute():
        here = out / "trials" / str(row["trial"]) / "circuit.json"
        if Path(path).exists() and not here.exists():
            here.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(path, here)
        if here.exists():
            return str(here.relative_to(out))
    return path


def pick_best(points: list[dict[str, Any]], target: float) -> dict[str, Any] | None:
    """The smallest circuit of the front whose faithfulness is at least ``target``."""
    ok = [p for p in points if p["faithfulness"] >= target and p["circuit"]]
    return min(ok, key=lambda p: (p["edges"], -p["faithfulness"]), default=None)


def fmt(x: float | None, digits: int = 4) -> str:
    """``x`` with ``digits`` significant digits, ``-`` for None (tables and tooltips)."""
    return "-" if x is None else f"{x:.{digits}g}"
