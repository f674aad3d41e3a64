"""What every circuit-discovery algorithm is: one signature, its own options, one result.

A method is a subclass of :class:`Algorithm` in one file. It declares its options
(:class:`Option`: name, type, default, range, help) and implements :meth:`Algorithm.run`,
which gets the prepared run (a :class:`~circuitdag.patching.Patcher`: the model, the
graph, the cached clean and corrupted runs, the metric), a :class:`RunContext` (progress
bar, checkpoint) and its checked options, and returns a :class:`Found`: a score per edge
of the one edge table and the chosen circuit. Everything after that (the metric values,
the run record, circuit.json, curves, the explorer, sweeps) is the same for every method
(:func:`circuitdag.discovery.record`).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from circuitdag.errors import ConfigError

#: Options ``circuitdag discover`` has a flag of its own for (``--threshold``, ...); a
#: method's other options go in ``--option NAME=VALUE``.
FLAGGED = frozenset({"threshold", "edges", "ig_steps", "prefilter", "batch_size", "k_max"})


@dataclass(frozen=True)
class Option:
    """One option of a method: ``name`` (the keyword argument; the CLI flag is ``--name``
    with dashes), ``kind`` (int, float or str), ``default`` (None: unset), an inclusive
    range for numbers, and the help line."""

    name: str
    kind: type
    default: Any
    help: str
    minimum: float | None = None
    maximum: float | None = None

    @property
    def flag(self) -> str:
        """How a user gives it: ``--name`` for the options ``discover`` has a flag for
        (:data:`FLAGGED`), else ``--option name=``."""
        return "--" + self.name.replace("_", "-") if self.name in FLAGGED else f"--option {self.name}="

    def check(self, value: Any) -> Any:
        """``value`` as this option's type, or :class:`ConfigError` naming the flag. A string
        (``--option NAME=VALUE`` on the command line) is parsed as the declared type."""
        if value is None:
            return None
        if self.kind is str:
            return str(value)
        if isinstance(value, str):
            try:
                value = float(value.strip())  # then checked as any number (whole for int)
            except ValueError:
                raise ConfigError(f"{self.flag} must be a number, got {value!r}") from None
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{self.flag} must be a number, got {value!r}")
        if self.kind is int:
            if isinstance(value, float) and not value.is_integer():
                raise ConfigError(f"{self.flag} must be a whole number, got {value!r}")
            value = int(value)
        else:
            value = float(value)
            if not math.isfinite(value):
                raise ConfigError(f"{self.flag} must be a finite number, got {value!r}")
        if self.minimum is not None and value < self.minimum:
            raise ConfigError(f"{self.flag} must be >= {self.minimum:g}, got {value!r}")
        if self.maximum is not None and value > self.maximum:
            raise ConfigError(f"{self.flag} must be at most {self.maximum:g}, got {value!r}")
        return value


@dataclass(frozen=True)
class RunContext:
    """How a run is carried out, not what it computes: a progress bar, and where the
    checkpoint goes for methods that write one (ACDC). ``identity`` holds the fields a
    checkpoint must share with the run that resumes it
    (:data:`circuitdag.provenance.RESUME_KEYS`)."""

    progress: bool = False
    checkpoint: Path | None = None
    resume: bool = False
    checkpoint_every: float = 30.0
    identity: dict[str, Any] = field(default_factory=dict)


@dataclass
class Found:
    """What a method returns. ``scores`` (float64, one per edge in edge-table order; NaN:
    not scored) in the metric's units, positive = removing the edge hurts; ``in_circuit``
    (bool, one per edge) the circuit it chose; ``record``: entries for circuit.json that
    say how it chose (threshold, edges requested, prefilter, ...); ``stats``: run
    statistics (seconds, passes, ...)."""

    scores: np.ndarray
    in_circuit: np.ndarray
    record: dict[str, Any] = field(default_factory=dict)
    stats: dict[str, Any] = field(default_factory=dict)


class Algorithm:
    """Base class of a discovery method (see the module docstring).

    Class attributes: ``name`` (what ``--algorithm`` takes), ``summary`` (one line for
    ``circuitdag algorithms``), ``source`` (the paper), ``exact`` (True when the circuit
    is what exact patching decides, False for estimates), ``score_meaning`` (what a score
    is, written into circuit.json), ``options``, and ``size_knob``: the option that sets
    the circuit's size, which a sweep varies (``"threshold"`` in metric units, or
    ``"edges"``; None: not sweepable). A method with a ``threshold`` option also accepts a
    relative threshold (``--relative-threshold``: a fraction of the full-vs-corrupted metric
    gap), resolved before :meth:`run`. ``neurons``: whether it scores neuron nodes
    (``--neurons``); ``positions``: whether it scores position-aware graphs;
    ``metric_scores``: whether its scores are in the metric's units (``--verify-top``);
    ``checkpoints``: whether it writes and resumes ``ctx.checkpoint``.
    """

    name: str = ""
    summary: ClassVar[str] = ""
    source: ClassVar[str] = ""
    exact: ClassVar[bool] = False
    score_meaning: ClassVar[str] = ""
    options: ClassVar[tuple[Option, ...]] = ()
    size_knob: ClassVar[str | None] = None
    neurons: ClassVar[bool] = False  # scores neuron nodes (--neurons)
    positions: ClassVar[bool] = True  # scores position-aware graphs (--positions)
    #: Whether a score estimates the metric change of removing the edge (what
    #: ``--verify-top`` compares with exact patching); False for gate probabilities, shares.
    metric_scores: ClassVar[bool] = True
    #: What to say when an option of another method is given (option name -> message).
    refusals: ClassVar[dict[str, str]] = {}
    checkpoints: ClassVar[bool] = False  # writes and resumes RunContext.checkpoint

    def option_names(self) -> list[str]:
        return [o.name for o in self.options]

    def check(self, given: dict[str, Any]) -> dict[str, Any]:
        """The options of a run: ``given`` checked (type, range) and completed with the
        defaults. Raises :class:`ConfigError` for an option this method does not take."""
        known = {o.name: o for o in self.options}
        unknown = [k for k, v in given.items() if k not in known and v is not None]
        for k in unknown:
            if k in self.refusals:
                raise ConfigError(self.refusals[k])
        if unknown:
            flags = ", ".join("--" + k.replace("_", "-") for k in unknown)
            takes = ", ".join(o.flag for o in self.options) or "no options"
            raise ConfigError(f"{flags} does not apply to --algorithm {self.name} (it takes {takes})")
        return {name: opt.check(opt.default if given.get(name) is None else given[name]) for name, opt in known.items()}

    #: ``run(patcher, ctx, **options) -> Found``: the method itself, with its options as
    #: keyword arguments (each subclass names its own, so the base declares only the type).
    run: Callable[..., Found]

    def __repr__(self) -> str:
        return f"<algorithm {self.name}: {self.summary}>"
