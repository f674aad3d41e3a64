"""Writing figures: every static figure circuitdag draws (ROC curves, MIB faithfulness
curves, head maps, circuit comparisons, the sweep's Pareto plot) is a matplotlib
``Figure`` saved as SVG, and circuit drawings are graphviz SVG; both are written here."""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

from circuitdag.files import write_atomic


def svg_text(fig: Any) -> str:
    """The matplotlib figure ``fig`` as SVG text, without the creation date (so the same
    figure gives the same bytes)."""
    buf = io.StringIO()
    fig.savefig(buf, format="svg", metadata={"Date": None})
    return buf.getvalue()


def write_svg(svg: str, path: str | Path, option: str | None = "--out") -> Path:
    """Write SVG text to ``path``, creating its directory. Raises :class:`CircuitFileError`
    (naming ``option``, the command-line option that chose the path) when it cannot."""
    return write_atomic(path, svg, option=option)


def save_svg(fig: Any, path: str | Path, option: str | None = "--out") -> Path:
    """Write the matplotlib figure ``fig`` to ``path`` as SVG (:func:`write_svg`)."""
    return write_svg(svg_text(fig), path, option)
