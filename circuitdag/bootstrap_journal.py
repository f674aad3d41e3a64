"""Finished bootstrap resamples kept on disk, so an interrupted ``discover --bootstrap B``
continues where it stopped (``--resume``) and ends with what an uninterrupted run gives.

``discover --bootstrap B --out DIR`` (in-process, no ``--storage``) appends one JSON line to
``DIR/bootstrap.partial.jsonl`` per finished resample -- its circuit (edge indices), its
scores (float64, compressed: :func:`pack`, exact) and its two
faithfulness values -- and, for the per-prompt (EAP, EAP-IG) path, one line per prompt's
scores. Each line is flushed and ``fsync``-ed before the next resample starts, so Ctrl-C,
SIGTERM or a hard kill (SIGKILL, power loss) loses at most the resample that was running; a
line cut short by a kill is ignored. The first line is a key: a digest of what makes the
resamples (the run record without its measured values, the method, its options, the seed,
the reported circuit, the kind of rerun: :func:`identity`, as a bootstrap study's name), so
``--resume`` of another command is refused rather than mixing resamples. Resample ``k`` is
the ``k``-th draw of the seed's generator, whatever ran before it, so the resamples read
back plus the ones run after them are the uninterrupted run's, bit for bit
(``tests/test_bootstrap_resume.py``). ``discover`` deletes the file once circuit.json holds
the bootstrap.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import zlib
from pathlib import Path
from typing import Any

import numpy as np

from circuitdag.errors import ConfigError

#: The format of a bootstrap study's spec (:mod:`circuitdag.sweep.resamples`).
BOOTSTRAP_FORMAT = "circuitdag.bootstrap/1"
#: Run-record entries a rerun does not need (large, or written after the search).
_NOT_RUN = ("attention", "stats", "verify", "tests", "bootstrap", "edges")
JOURNAL_NAME = "bootstrap.partial.jsonl"
FORMAT = "circuitdag.bootstrap-journal/1"


def pack(values: np.ndarray) -> str:
    """float64 values as compressed base64 text (a journal line, a trial user attribute):
    :func:`unpack` gives them back bit for bit."""
    return base64.b64encode(zlib.compress(np.asarray(values, dtype="<f8").tobytes(), 6)).decode("ascii")


def unpack(text: str) -> np.ndarray:
    """The float64 values ``(n,)`` of :func:`pack`'s text."""
    return np.frombuffer(zlib.decompress(base64.b64decode(text)), dtype="<f8").copy()


def study_spec(meta: dict[str, Any], method: str, options: dict[str, Any], seed: int,
               alive: np.ndarray) -> dict[str, Any]:  # fmt: skip
    """What makes a bootstrap's resamples, JSON-ready: the run record ``meta`` (less what a
    rerun does not need), the method, its options, the seed and the reported circuit
    ``alive``; a bootstrap study keeps it (:data:`circuitdag.sweep.resamples.BOOTSTRAP_ATTR`).
    Not the number of resamples: resample ``k`` is the same whatever it is, so a later
    ``--bootstrap 50`` continues the 20 of an earlier one."""
    run = {k: v for k, v in meta.items() if k not in _NOT_RUN}
    spec = {"format": BOOTSTRAP_FORMAT, "run": run, "algorithm": method, "options": options,
            "seed": int(seed), "circuit": np.flatnonzero(alive).tolist()}  # fmt: skip
    return json.loads(json.dumps(spec))


#: Run-record entries that are measurements, not settings: a rerun of the same command gets
#: them again to float precision only (a resumed search reads the circuit's metric off another
#: pass), so they are no part of what identifies a study.
_MEASURED = ("metric_full", "metric_circuit", "metric_corrupted", "faithfulness", "recovered")


def identity(spec: dict[str, Any]) -> dict[str, Any]:
    """What identifies a bootstrap (a study, a journal): ``spec`` without the run's measured values (the
    held-out entry keeps only where its prompts came from) and with every other number
    rounded to 6 significant digits (a threshold resolved from measured metrics)."""

    def rounded(v: Any) -> Any:
        if isinstance(v, float):
            return float(f"{v:.6g}")
        if isinstance(v, dict):
            return {k: rounded(x) for k, x in v.items()}
        if isinstance(v, list):
            return [rounded(x) for x in v]
        return v

    run = {k: v for k, v in spec.get("run", {}).items() if k not in _MEASURED}
    if isinstance(run.get("heldout"), dict):
        run["heldout"] = {k: v for k, v in run["heldout"].items() if k in ("how", "fraction", "n_prompts", "reason")}
    return rounded({**spec, "run": run})


def journal_key(meta: dict[str, Any], method: str, options: dict[str, Any], seed: int, alive: np.ndarray,
                reruns: str) -> str:  # fmt: skip
    """A digest of what makes the resamples (module docstring): the same command gives the
    same key, also when a resumed search measures the run's metrics in other last bits."""
    spec = {**identity(study_spec(meta, method, options, seed, alive)), "reruns": reruns}
    return hashlib.sha256(json.dumps(spec, sort_keys=True).encode()).hexdigest()[:16]


class Journal:
    """The append-only file of finished resamples (module docstring). ``resume``: read the
    resamples an earlier run left (a file of another key raises :class:`ConfigError`);
    otherwise an existing file is replaced. ``resamples``/``prompts``: what was read back,
    by resample number and by prompt."""

    def __init__(self, path: str | Path, key: str, resume: bool = False) -> None:
        self.path, self.key = Path(path), key
        self.resamples: dict[int, tuple[np.ndarray, np.ndarray, float, float | None]] = {}
        self.prompts: dict[int, np.ndarray] = {}
        if resume and self.path.exists():
            self._read()
        else:
            self.path.unlink(missing_ok=True)
        self._file: Any = None

    def _read(self) -> None:
        with open(self.path, encoding="utf-8") as f:
            try:
                head = json.loads(next(f, ""))
            except ValueError:
                head = {}
            if not isinstance(head, dict) or head.get("format") != FORMAT or head.get("key") != self.key:
                raise ConfigError(f"{self.path} holds bootstrap resamples of another run (other settings, method, "
                                  "options, seed or circuit); delete it, or rerun without --resume")  # fmt: skip
            for line in f:
                try:
                    row = json.loads(line)
                except ValueError:  # a line a kill cut short, or an empty one
                    continue
                if "resample" in row:
                    kept = np.asarray(row["kept"], dtype=np.int64)
                    self.resamples[int(row["resample"])] = (kept, unpack(row["scores"]), row["faithfulness"],
                                                            row["heldout_faithfulness"])  # fmt: skip
                elif "prompt" in row:
                    self.prompts[int(row["prompt"])] = unpack(row["scores"])

    def _write(self, row: dict[str, Any]) -> None:
        if self._file is None:
            fresh = not self.path.exists() or self.path.stat().st_size == 0
            self._file = open(self.path, "a", encoding="utf-8")  # noqa: SIM115 (open while the bootstrap runs)
            if fresh:
                self._file.write(json.dumps({"format": FORMAT, "key": self.key}) + "\n")
            else:
                self._file.write("\n")  # ends a line a kill may have cut short: the next one stays whole
        self._file.write(json.dumps(row) + "\n")
        self._file.flush()
        os.fsync(self._file.fileno())

    def add_resample(self, k: int, alive: np.ndarray, scores: np.ndarray, f_disc: float, f_held: float | None) -> None:
        """Keep finished resample ``k``: its circuit (boolean ``(edge,)``), scores ``(edge,)``,
        faithfulness on the resample and on the held-out prompts (None: none)."""
        self._write({"resample": int(k), "kept": np.flatnonzero(alive).tolist(), "scores": pack(scores),
                     "faithfulness": float(f_disc), "heldout_faithfulness": None if f_held is None else float(f_held)})  # fmt: skip

    def add_prompt(self, i: int, scores: np.ndarray) -> None:
        """Keep prompt ``i``'s own scores ``(edge,)`` (the per-prompt path)."""
        self._write({"prompt": int(i), "scores": pack(scores)})

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None


def open_journal(path: str | Path, meta: dict[str, Any], method: str, options: dict[str, Any], seed: int,
                 alive: np.ndarray, per_prompt: bool, resume: bool = False) -> Journal:  # fmt: skip
    """The journal of the bootstrap of run ``meta`` (its record), ``method`` with ``options``,
    circuit ``alive``, on per-prompt scores or reruns of the method (:class:`Journal`)."""
    reruns = "per-prompt scores" if per_prompt else "method"
    return Journal(path, journal_key(meta, method, options, seed, alive, reruns), resume)


def finished(path: str | Path) -> tuple[int, int]:
    """(finished resamples, per-prompt rows) in the journal at ``path`` ((0, 0) when there is
    none): what the interrupt message says ``--resume`` continues from."""
    p = Path(path)
    if not p.exists():
        return 0, 0
    n_res = n_prompt = 0
    with open(p, "rb") as f:  # line by line: a SmolLM2 journal can hold hundreds of MB
        next(f, None)  # the key
        for line in f:
            whole = line.rstrip(b"\n").endswith(b"}")
            n_res += whole and line.startswith(b'{"resample"')
            n_prompt += whole and line.startswith(b'{"prompt"')
    return n_res, n_prompt


__all__ = ["BOOTSTRAP_FORMAT", "FORMAT", "JOURNAL_NAME", "Journal", "finished", "identity", "journal_key", "open_journal",
           "pack", "study_spec", "unpack"]
