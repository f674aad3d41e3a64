"""Writing matplotlib figures: every static figure circuitdag draws (ROC curves, MIB
faithfulness curves, head maps, circuit comparisons, the sweep's Pareto plot) is a
matplotlib ``Figure`` saved as SVG."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from circuitdag.errors import CircuitFileError


def save_svg(fig: Any, path: str | Path, option: str = "--out") -> Path:
    """Write the matplotlib figure ``fig`` to ``path`` as SVG, creating its directory.

    Raises :class:`CircuitFileError` naming ``option`` (the command-line option that chose
    the path) when the file cannot be written."""
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(path, format="svg")
    except OSError as exc:
        raise CircuitFileError(f"cannot write {path}: {exc.strerror or exc}; choose another {option}") from exc
    return path
