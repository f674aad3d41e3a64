"""Writing a sweep's report from its study: ``pareto.json``, ``sweep.svg`` (matplotlib),
``sweep.html`` (the interactive page, :mod:`circuitdag.sweep.page`), each front circuit's
SVG drawing and explorer page, and with ``--target-faithfulness`` the chosen circuit in
``best/``."""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path
from typing import TYPE_CHECKING, Any

from circuitdag.errors import CircuitDagError, ConfigError
from circuitdag.files import write_atomic
from circuitdag.sweep.figures import static_svg
from circuitdag.sweep.front import SweepReport, front_points, pick_best, trial_rows
from circuitdag.sweep.page import sweep_html
from circuitdag.sweep.storage import load_settings, masked

if TYPE_CHECKING:
    import optuna

log = logging.getLogger("circuitdag")

#: The report's files, relative to the sweep's output directory.
FILES = {"pareto": "pareto.json", "svg": "sweep.svg", "html": "sweep.html"}


def write_report(study: optuna.Study, out: str | Path, storage: str = "",
                 target_faithfulness: float | None = None) -> SweepReport:  # fmt: skip
    """Write ``pareto.json``, ``sweep.svg`` and ``sweep.html`` into ``out``, and each front
    circuit's ``trials/<n>/circuit.svg`` (and, with ``target_faithfulness``,
    ``best/circuit.json``, ``.svg`` and ``.html``: the smallest circuit of the front whose
    faithfulness reaches it). A front point links to its explorer page
    ``trials/<n>/circuit.html`` (:meth:`Circuit.to_html`), and to its SVG."""
    out = Path(out)
    settings = load_settings(study)
    rows = trial_rows(study, out)
    points = front_points(rows, out)
    counts: dict[str, int] = {"total": len(rows)}
    for r in rows:
        counts[r["state"].lower()] = counts.get(r["state"].lower(), 0) + 1
    report = SweepReport(study.study_name, storage, settings, rows, points, counts)
    report.files = {k: str(out / f) for k, f in FILES.items()}
    if not points and (kept := _old_front(out / FILES["pareto"])) is not None:
        # An empty front over one with points: the study lost its trials (its file was
        # replaced or cut short) or is another, new one. The old report is worth more.
        n, name = kept
        log.warning("kept %s (%d front point%s of study %r), %s and %s: study %r in %s has no completed trial; "
                    "rerun with the storage that holds those trials, or choose another --out for a new sweep",
                    report.files["pareto"], n, "s" * (n != 1), name, FILES["svg"], FILES["html"],
                    study.study_name, masked(storage))  # fmt: skip
        return report
    views: dict[int, dict[str, str]] = {}
    for p in points:
        views[p["trial"]] = _draw(out, p["circuit"], out / "trials" / str(p["trial"]))
        p.update(views[p["trial"]])
    if target_faithfulness is not None:
        report.best = pick_best(points, target_faithfulness)
        if report.best is not None:
            best = out / "best"
            best.mkdir(exist_ok=True)
            source = (out / report.best["circuit"]).read_bytes()
            if not (best / "circuit.json").exists() or (best / "circuit.json").read_bytes() != source:
                for old in ("circuit.svg", "circuit.html"):  # drawings of another circuit
                    (best / old).unlink(missing_ok=True)
                shutil.copyfile(out / report.best["circuit"], best / "circuit.json")
            report.best = {**report.best, "copied_to": "best/circuit.json", **_draw(out, "best/circuit.json", best)}
    n_total = _n_edges_total(out, points)
    _write(out / FILES["pareto"], json.dumps(report.to_dict(), indent=1))
    _write(out / FILES["svg"], static_svg(report, n_total, {t: v["svg"] for t, v in views.items() if "svg" in v}))
    _write(out / FILES["html"], sweep_html(report, n_total, views))
    if report.best is not None:
        report.files["best"] = str(out / "best" / "circuit.json")
    return report


def _draw(out: Path, circuit: str | None, where: Path) -> dict[str, str]:
    """Draw a front circuit (once) as ``where/circuit.svg`` and its explorer page
    ``where/circuit.html``; returns the paths written, relative to ``out``, by kind
    (``svg``, ``html``). A missing ``dot`` only costs the SVG."""
    from circuitdag.io import load_circuit

    if circuit is None or not (out / circuit).exists():
        return {}
    files = {"svg": where / "circuit.svg", "html": where / "circuit.html"}
    loaded = None
    for kind, path in files.items():
        if path.exists():
            continue
        try:
            loaded = loaded or load_circuit(out / circuit)
            if kind == "svg":
                loaded.to_svg(path)
            else:
                loaded.to_html(path)
        except CircuitDagError as exc:
            log.warning("cannot draw %s as %s: %s", circuit, kind.upper(), exc)
    return {kind: str(path.relative_to(out)) for kind, path in files.items() if path.exists()}


def _old_front(pareto: Path) -> tuple[int, str] | None:
    """The number of front points and the study of an existing ``pareto.json``; None when
    it is missing, unreadable or has no points."""
    try:
        doc = json.loads(pareto.read_text())
        points = doc["points"]
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return (len(points), str(doc.get("study"))) if isinstance(points, list) and points else None


def _n_edges_total(out: Path, points: list[dict[str, Any]]) -> int | None:
    for p in points:
        if p["circuit"] and (out / p["circuit"]).exists():
            try:
                return int(json.loads((out / p["circuit"]).read_text())["n_edges_total"])
            except (OSError, ValueError, KeyError):
                pass
    return None


def _write(path: Path, text: str) -> None:
    """Replace ``path`` atomically; processes of one study may write the report at once."""
    write_atomic(path, text, error=ConfigError)  # (a full disk among them: study.full_disk_stops names it)
