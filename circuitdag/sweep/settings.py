"""What a sweep searches and on what (:class:`SweepSettings`), validated against the task.

The settings are stored in the study as a user attribute (:data:`SETTINGS_ATTR`) when the
study is created, so that a ``sweep-worker`` on another machine rebuilds the same trials
from the storage URL and the study name alone.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal

from circuitdag._options import DTYPES
from circuitdag.errors import ConfigError

SETTINGS_ATTR = "circuitdag.sweep"
TARGET_ATTR = "circuitdag.target_trials"
SETTINGS_FORMAT = "circuitdag.sweep/1"
SEARCHABLE = ("threshold", "metric", "ablation")
ABLATIONS = ("resample", "zero", "mean")
DIRECTIONS: tuple[Literal["minimize", "maximize"], ...] = ("minimize", "maximize")  # edges, faithfulness


@dataclass(frozen=True)
class SweepSettings:
    """What a sweep searches and on what; stored in the study so workers can rebuild it.

    ``metrics``/``ablations`` hold the choices of a searched parameter, or the one value
    used by every trial; ``threshold_range`` is sampled log-uniformly. ``algorithm``: any
    registered method with a size knob (:mod:`circuitdag.algorithms`): a threshold knob
    samples ``threshold_range``, an edges knob samples ``edges_range`` log-uniformly
    (default: 1 to the graph's edges).
    """

    task: str
    model: str | None
    metrics: tuple[str, ...]
    ablations: tuple[str, ...]
    threshold_range: tuple[float, float]
    search: tuple[str, ...] = ("threshold",)
    positions: bool = False
    seed: int = 0
    dtype: str = "float32"
    out: str = ""
    format: str = SETTINGS_FORMAT
    prepend_bos: str = "auto"
    algorithm: str = "acdc"
    edges_range: tuple[int, int] | None = None
    n_prompts: int | None = None
    #: The method's own options (``--option NAME=VALUE``), as given; every trial runs with them.
    options: tuple[tuple[str, str], ...] = ()

    def to_dict(self) -> dict[str, Any]:
        return json.loads(json.dumps(asdict(self)))

    @classmethod
    def from_dict(cls, doc: object, source: str) -> SweepSettings:
        if not isinstance(doc, dict) or doc.get("format") != SETTINGS_FORMAT:
            raise ConfigError(f"{source} holds no circuitdag sweep settings; start it with `circuitdag sweep`")
        try:
            return cls(
                task=doc["task"], model=doc["model"], metrics=tuple(doc["metrics"]),
                ablations=tuple(doc["ablations"]), threshold_range=tuple(doc["threshold_range"]),
                search=tuple(doc["search"]), positions=bool(doc["positions"]), seed=int(doc["seed"]),
                dtype=doc["dtype"], out=doc["out"], prepend_bos=doc.get("prepend_bos", "auto"),
                algorithm=doc.get("algorithm", "acdc"),
                edges_range=tuple(doc["edges_range"]) if doc.get("edges_range") else None,
                n_prompts=doc.get("n_prompts"),
                options=tuple((str(k), str(v)) for k, v in doc.get("options", ())),
            )  # fmt: skip
        except (KeyError, TypeError, ValueError) as exc:
            raise ConfigError(f"{source}: damaged sweep settings ({exc}); start a new study") from exc

    def same_search(self, other: SweepSettings) -> bool:
        """Equal apart from the output directory (which a rerun may move)."""
        a, b = self.to_dict(), other.to_dict()
        a.pop("out"), b.pop("out")
        return a == b


def default_threshold_range(default_threshold: float) -> tuple[float, float]:
    """Three decades either side of the task's default threshold (1e-6..1 for tracr)."""
    t = default_threshold if default_threshold > 0 else 1e-3
    return (t * 1e-3, t * 1e3)


def _choices(text: str | None, name: str, searched: bool, default: str, all_: Sequence[str]) -> tuple[str, ...]:
    values = [v.strip() for v in (text or "").split(",") if v.strip()]
    if not searched:
        if len(values) > 1:
            raise ConfigError(f"--{name} has several values ({text}); add {name} to --search to try them all")
        return (values[0] if values else default,)
    return tuple(dict.fromkeys(values or all_))


def make_settings(
    task: str,
    out: str | Path,
    model: str | None = None,
    metric: str | None = None,
    ablation: str | None = None,
    search: str | Iterable[str] = ("threshold",),
    threshold_range: tuple[float, float] | None = None,
    positions: bool = False,
    seed: int = 0,
    dtype: str = "float32",
    prepend_bos: str = "auto",
    algorithm: str = "acdc",
    edges_range: tuple[int, int] | None = None,
    n_prompts: int | None = None,
    options: Iterable[tuple[str, str]] = (),
) -> SweepSettings:
    """Validate sweep options and resolve the task's defaults (raises :class:`ConfigError`).

    ``metric``/``ablation`` are one value, or (when searched) a comma-separated list of
    choices; a searched parameter without choices tries every metric / every ablation.
    """
    from circuitdag.algorithms import all_algorithms, get_algorithm
    from circuitdag.metrics import METRICS, get_metric
    from circuitdag.patching import Ablation
    from circuitdag.tasks import get_task
    from circuitdag.tasks._lm import with_prepend_bos

    names = [s.strip() for s in (search.split(",") if isinstance(search, str) else search) if s.strip()]
    unknown = [s for s in names if s not in SEARCHABLE]
    if unknown:
        raise ConfigError(f"cannot search {', '.join(unknown)}; --search takes {','.join(SEARCHABLE)}")
    searched = tuple(s for s in SEARCHABLE if s in names or s == "threshold")
    t = get_task(task)
    t = (t.for_model(model) if model else None) or t  # the defaults of the task's own model (reversal)
    all_metrics = (*METRICS, *(("task",) if t.metric() is not None else ()))
    metrics = _choices(metric, "metric", "metric" in searched, t.default_metric, all_metrics)
    for m in metrics:
        if m == "task":
            if t.metric() is None:
                raise ConfigError(f"task {t.name!r} has no metric of its own; choose one of {', '.join(METRICS)}")
        else:
            get_metric(m)
    ablations = _choices(ablation, "ablation", "ablation" in searched, t.default_ablation, ABLATIONS)
    ablations = tuple(Ablation.parse(a).value for a in ablations)
    lo, hi = threshold_range or default_threshold_range(t.default_threshold)
    if not (0 < lo < hi < math.inf):
        raise ConfigError(f"--threshold-range needs 0 < LO < HI, got {lo} {hi}")
    if dtype not in DTYPES:
        raise ConfigError(f"dtype must be one of {', '.join(DTYPES)}, got {dtype!r}")
    with_prepend_bos(t, prepend_bos)  # refuses yes/no for a task without the option
    method = get_algorithm(algorithm)
    if method.size_knob not in ("threshold", "edges"):
        raise ConfigError(f"--algorithm {method.name} has no size knob (a threshold or a number of edges) for a sweep "
                          "to vary")  # fmt: skip
    options = tuple((str(k), str(v)) for k, v in options)
    names = [k for k, _ in options]
    if len(set(names)) != len(names):
        raise ConfigError(f"--option {next(k for k in names if names.count(k) > 1)}= is given twice")
    if method.size_knob in names:
        raise ConfigError(f"--option {method.size_knob}=: a sweep varies {method.name}'s {method.size_knob} itself "
                          f"(--{'threshold' if method.size_knob == 'threshold' else 'edges'}-range)")  # fmt: skip
    method.check(dict(options))  # an option the method does not take, a bad value: before any trial
    if positions and not method.positions:
        raise ConfigError(f"--algorithm {method.name} scores plain graphs only; drop --positions")
    if threshold_range is not None and method.size_knob == "edges":
        raise ConfigError(f"--threshold-range goes with a method whose size is a threshold; {method.name} varies its "
                          "number of edges: use --edges-range")  # fmt: skip
    if edges_range is not None:
        if method.size_knob != "edges":
            sized = ", ".join(m.name for m in all_algorithms() if m.size_knob == "edges")
            raise ConfigError(f"--edges-range goes with a method whose size is a number of edges ({sized}); "
                              f"{method.name} varies its threshold: use --threshold-range")  # fmt: skip
        if not (isinstance(edges_range[0], int) and isinstance(edges_range[1], int) and 1 <= edges_range[0] < edges_range[1]):
            raise ConfigError(f"--edges-range needs whole numbers 1 <= LO < HI, got {edges_range[0]} {edges_range[1]}")
    return SweepSettings(task=t.name, model=model, metrics=metrics, ablations=ablations,
                         threshold_range=(float(lo), float(hi)), search=searched, positions=positions,
                         seed=seed, dtype=dtype, out=str(Path(out).resolve()), prepend_bos=prepend_bos,
                         algorithm=method.name, edges_range=edges_range, n_prompts=n_prompts,
                         options=options)  # fmt: skip



def describe(s: SweepSettings) -> str:
    """The settings in one line, for messages and the report page."""
    parts = [f"task {s.task}", f"metric {','.join(s.metrics)}", f"ablation {','.join(s.ablations)}",
             f"threshold {s.threshold_range[0]:g}..{s.threshold_range[1]:g}", f"search {','.join(s.search)}"]  # fmt: skip
    if s.model:
        parts.append(f"model {s.model}")
    if s.positions:
        parts.append("positions")
    if s.seed:
        parts.append(f"seed {s.seed}")
    if s.dtype != "float32":
        parts.append(s.dtype)
    if s.prepend_bos != "auto":
        parts.append(f"prepend-bos {s.prepend_bos}")
    parts += [f"{k}={v}" for k, v in s.options]
    return ", ".join(parts)
