"""ACDC checkpoints: the search state written at destination boundaries, and read back
by ``--resume`` only when it is whole and belongs to this run.

ACDC (:mod:`circuitdag.acdc_search`, reference and fast) decides the edges into one destination
at a time, in :meth:`Graph.visit_order`. After a destination is finished the whole state
is ``(alive, scores, m_cur, next_dest, stats)`` (:class:`SearchState`); a resumed run
continues at ``next_dest`` with exactly that state, so it makes the same decisions as an
uninterrupted one (tested by killing runs at every destination boundary and inside
destinations, ``tests/test_resume.py``). A checkpoint is written atomically (temporary
file + rename), so a kill while writing leaves the previous one.

:func:`load_checkpoint` refuses, with one line that names the file and says what to do,
a file that is not JSON (empty, truncated), not a checkpoint, written by a run with other
settings (``info``), or whose contents do not fit the graph (an index out of range, a
score of an edge into a destination not yet visited, ...). Nothing is overwritten then.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from circuitdag.errors import CheckpointError
from circuitdag.files import write_json

CHECKPOINT_FORMAT = "circuitdag.acdc-checkpoint/1"

_WHAT_TO_DO = "delete it, or rerun without --resume to start over"


@dataclass
class SearchState:
    """Everything ACDC needs to continue: which destinations are done (``next_dest``, a
    position in ``graph.visit_order()``), the current circuit ``alive`` (bool, one per
    edge), the metric ``m_cur`` of that circuit, the scores measured so far (float64,
    NaN: not tested) and the run statistics."""

    alive: np.ndarray
    scores: np.ndarray
    m_cur: float
    next_dest: int = 0
    stats: dict[str, Any] = field(default_factory=dict)


def save_checkpoint(path: str | Path, state: SearchState, info: dict[str, Any]) -> None:
    """Write the search state and the run's identity ``info`` as JSON, atomically."""
    path = Path(path)
    doc = {
        "format": CHECKPOINT_FORMAT,
        "info": info,
        "next_dest": state.next_dest,
        "m_cur": state.m_cur,
        "removed": np.flatnonzero(~state.alive).tolist(),
        "scores": [None if math.isnan(s) else s for s in state.scores.tolist()],
        "stats": state.stats,
    }
    write_json(path, doc, indent=None, error=CheckpointError)


def _threads_now() -> int:
    import torch

    return torch.get_num_threads()


def checkpoint_threads(path: str | Path) -> int | None:
    """The torch thread count of the run that wrote the ACDC checkpoint ``path`` (its
    ``stats.threads``), or None when the file has none or cannot be read (the resume
    itself then says what is wrong with it). A resumed run that uses it computes the same
    floats as the uninterrupted run (docs/reproducibility.md)."""
    try:
        return _threads_of(json.loads(Path(path).read_text()))
    except (OSError, ValueError):
        return None


def _threads_of(doc: Any) -> int | None:
    """A checkpoint document's ``stats.threads`` when it is a thread count, else None."""
    stats = doc.get("stats") if isinstance(doc, dict) else None
    threads = stats.get("threads") if isinstance(stats, dict) else None
    return threads if isinstance(threads, int) and not isinstance(threads, bool) and threads >= 1 else None


def load_checkpoint(
    path: str | Path,
    info: dict[str, Any],
    tested_by: np.ndarray | None = None,
    n_destinations: int | None = None,
    subset_start: bool = True,
) -> SearchState:
    """Read a checkpoint written by :func:`save_checkpoint` for a run with identity
    ``info`` (``info["n_edges"]`` edges).

    ``tested_by`` (int, one per edge: the position in the visit order of the edge's
    destination) and ``n_destinations`` let the contents be checked against the graph: a
    score exists only for edges into visited destinations. With ``subset_start=False``
    (the run began from every edge) every removed edge must also have a score.

    Raises :class:`CheckpointError` (one line naming the file) for a damaged file, one
    from a run with other settings, or contents that do not fit the graph."""
    path = Path(path)
    try:
        doc = json.loads(path.read_bytes().decode("utf-8"))
    except OSError as exc:
        raise CheckpointError(f"cannot read checkpoint {path} ({exc.strerror or exc}); {_WHAT_TO_DO}") from None
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        what = "empty" if path.stat().st_size == 0 else f"not valid JSON ({exc})"
        raise CheckpointError(f"checkpoint {path} is damaged: {what} (a run killed before it was "
                              f"written whole?); {_WHAT_TO_DO}") from None  # fmt: skip
    if not isinstance(doc, dict) or doc.get("format") != CHECKPOINT_FORMAT:
        raise CheckpointError(f"{path} is not an ACDC checkpoint; {_WHAT_TO_DO}, or pick another --out")
    want = json.loads(json.dumps(info))
    have = doc.get("info")
    if have != want:
        have = have if isinstance(have, dict) else {}
        diff = {k: (have.get(k), want.get(k)) for k in sorted(set(have) | set(want)) if have.get(k) != want.get(k)}
        shown = ", ".join(f"{k}: {old!r} there, {new!r} now" for k, (old, new) in diff.items())
        threads, now = _threads_of(doc), _threads_now()
        if set(diff) == {"threshold"} and threads is not None and threads != now:
            shown += (f"; a relative threshold follows the metric gap, which {now} torch threads round "
                      f"differently from the checkpoint's {threads}: give --threads {threads}")  # fmt: skip
        raise CheckpointError(
            f"checkpoint {path} was written by a run with other settings ({shown}); "
            "rerun with those settings to continue, or without --resume to start over"
        )
    try:
        return _state_of(doc, int(info["n_edges"]), tested_by, n_destinations, subset_start)
    except (KeyError, TypeError, ValueError, IndexError) as exc:
        raise CheckpointError(f"checkpoint {path} is damaged: {exc}; {_WHAT_TO_DO}") from None


def _state_of(doc: dict[str, Any], n: int, tested_by: np.ndarray | None, n_destinations: int | None,
              subset_start: bool) -> SearchState:  # fmt: skip
    """The :class:`SearchState` in ``doc``, checked field by field (ValueError says what
    is wrong)."""
    next_dest, m_cur, removed, raw_scores, stats = (doc[k] for k in ("next_dest", "m_cur", "removed", "scores", "stats"))
    last = n_destinations if n_destinations is not None else math.inf
    if isinstance(next_dest, bool) or not isinstance(next_dest, int) or not 0 <= next_dest <= last:
        raise ValueError(f"next_dest {next_dest!r} is not a destination of this graph")
    if isinstance(m_cur, bool) or not isinstance(m_cur, (int, float)) or not math.isfinite(m_cur):
        raise ValueError(f"m_cur {m_cur!r} is not a finite number")
    if not isinstance(stats, dict):
        raise TypeError("stats is not an object")
    if not isinstance(removed, list) or not all(isinstance(i, int) and not isinstance(i, bool) for i in removed):
        raise ValueError("removed is not a list of edge indices")
    idx = np.asarray(removed, dtype=np.int64)
    if len(idx) and (idx.min() < 0 or idx.max() >= n):
        bad = int(idx[(idx < 0) | (idx >= n)][0])
        raise ValueError(f"removed holds edge {bad}, but the graph has edges 0..{n - 1}")
    if not isinstance(raw_scores, list) or len(raw_scores) != n:
        raise ValueError(f"scores must list one value per edge ({n})")
    if not all(s is None or (isinstance(s, (int, float)) and not isinstance(s, bool) and math.isfinite(s))
               for s in raw_scores):  # fmt: skip
        raise ValueError("scores holds a value that is neither a finite number nor null")
    scores = np.array([np.nan if s is None else s for s in raw_scores], dtype=np.float64)
    alive = np.ones(n, dtype=bool)
    alive[idx] = False
    if tested_by is not None:
        early = np.isfinite(scores) & (tested_by >= next_dest)
        if early.any():
            raise ValueError(f"edge {int(np.flatnonzero(early)[0])} has a score but its destination is not "
                             f"visited yet (next_dest {next_dest})")  # fmt: skip
        if not subset_start and (~alive & ~np.isfinite(scores)).any():
            raise ValueError(f"edge {int(np.flatnonzero(~alive & ~np.isfinite(scores))[0])} is removed but was "
                             "never tested, in a run that started from every edge")  # fmt: skip
    return SearchState(alive, scores, float(m_cur), next_dest, stats)


class Checkpointer:
    """Writes the state at destination boundaries, at most every ``every`` seconds, and
    always after the last destination. ``path=None`` writes nothing."""

    def __init__(self, path: str | Path | None, info: dict[str, Any], every: float) -> None:
        self.path, self.info, self.every = path, info, every
        self.last = time.monotonic()

    def boundary(self, state: SearchState, last: bool) -> None:
        """Called after each finished destination (``state.next_dest`` already advanced)."""
        if self.path is not None and (last or time.monotonic() - self.last >= self.every):
            save_checkpoint(self.path, state, self.info)
            self.last = time.monotonic()
