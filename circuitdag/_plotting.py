"""Writing figures: every static figure circuitdag draws (ROC curves, MIB faithfulness
curves, head maps, circuit comparisons, the sweep's Pareto plot) is a matplotlib
``Figure`` saved as SVG, and circuit drawings are graphviz SVG; both are written here."""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

from circuitdag.errors import CircuitFileError


def svg_text(fig: Any) -> str:
    """The matplotlib figure ``fig`` as SVG text, without the creation date (so the same
    figure gives the same bytes)."""
    buf = io.StringIO()
    fig.savefig(buf, format="svg", metadata={"Date": None})
    return buf.getvalue()


def write_svg(svg: str, path: str | Path, option: str | None = "--out") -> Path:
    """Write SVG text to ``path``, creating its directory. Raises :class:`CircuitFileError`
    (naming ``option``, the command-line option that chose the path) when it cannot."""
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(svg, encoding="utf-8")
    except OSError as exc:
        hint = f"; choose another {option}" if option else ""
        raise CircuitFileError(f"cannot write {path}: {exc.strerror or exc}{hint}") from exc
    return path


def save_svg(fig: Any, path: str | Path, option: str | None = "--out") -> Path:
    """Write the matplotlib figure ``fig`` to ``path`` as SVG (:func:`write_svg`)."""
    return write_svg(svg_text(fig), path, option)
