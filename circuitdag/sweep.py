"""Threshold sweeps: Optuna studies whose trials are ACDC runs, and their Pareto fronts.

A sweep is a multi-objective Optuna study. Each trial samples an ACDC threshold (on a log
scale; optionally also the metric and the ablation), runs fast ACDC once, saves the
circuit as ``<out>/trials/<number>/circuit.json`` and returns two objectives:

* ``edges`` -- the circuit's size, minimised;
* ``faithfulness`` -- :meth:`Circuit.faithfulness`, the fraction of the metric gap between
  the ablated and the full model that the circuit recovers, maximised.

The study lives in an Optuna RDB storage: by default an embedded SQLite file
``<out>/sweep.db``; a ``postgresql://`` URL makes it a shared study that
``circuitdag sweep-worker`` processes on any number of machines pull trials from. The
sweep's settings (task, model, metric, ablation, search space, output directory) are
stored as study user attributes when the study is created, so a worker needs only the
storage URL and the study name.

Interrupted trials. A trial whose process is killed stays ``RUNNING`` in the storage. Two
mechanisms turn it into ``FAIL``: every trial records ``worker = host:pid``, and any sweep
or worker starting on the same host fails the ``RUNNING`` trials whose process no longer
exists, at once; and Optuna's heartbeat (every :data:`HEARTBEAT_INTERVAL` s) lets any
process fail a trial whose heartbeat is older than :data:`GRACE_PERIOD` s, wherever its
worker ran. See docs/sweeps.md.
"""

from __future__ import annotations

import argparse
import contextlib
import html
import json
import logging
import math
import os
import shutil
import socket
import sys
import warnings
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, overload

from circuitdag.errors import CircuitDagError, ConfigError, MissingExtraError

if TYPE_CHECKING:
    import optuna

    from circuitdag.patching import Patcher

log = logging.getLogger("circuitdag")

SETTINGS_ATTR = "circuitdag.sweep"
TARGET_ATTR = "circuitdag.target_trials"
SETTINGS_FORMAT = "circuitdag.sweep/1"
PARETO_FORMAT = "circuitdag.pareto/1"
SEARCHABLE = ("threshold", "metric", "ablation")
ABLATIONS = ("resample", "zero", "mean")
DTYPES = ("float32", "float64", "float16", "bfloat16")
DIRECTIONS: tuple[Literal["minimize", "maximize"], ...] = ("minimize", "maximize")  # edges, faithfulness
#: Seconds between heartbeats of a running trial, and the silence after which any
#: process of the study may mark it failed (its worker is presumed dead).
HEARTBEAT_INTERVAL = 10
GRACE_PERIOD = 60
HOST = socket.gethostname()
DEFAULT_TASK = "tracr-reverse"  # the same as `discover`'s


# ---------------------------------------------------------------------- settings
@dataclass(frozen=True)
class SweepSettings:
    """What a sweep searches and on what; stored in the study so workers can rebuild it.

    ``metrics``/``ablations`` hold the choices of a searched parameter, or the one value
    used by every trial; ``threshold_range`` is sampled log-uniformly.
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
) -> SweepSettings:
    """Validate sweep options and resolve the task's defaults (raises :class:`ConfigError`).

    ``metric``/``ablation`` are one value, or (when searched) a comma-separated list of
    choices; a searched parameter without choices tries every metric / every ablation.
    """
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
    return SweepSettings(task=t.name, model=model, metrics=metrics, ablations=ablations,
                         threshold_range=(float(lo), float(hi)), search=searched, positions=positions,
                         seed=seed, dtype=dtype, out=str(Path(out).resolve()), prepend_bos=prepend_bos)  # fmt: skip


# ---------------------------------------------------------------------- storage
def default_storage(out: str | Path) -> str:
    """The embedded SQLite storage of a sweep writing to ``out``."""
    return f"sqlite:///{Path(out).resolve() / 'sweep.db'}"


def masked(url: str) -> str:
    """``url`` with its password hidden, for messages."""
    try:
        from sqlalchemy.engine import make_url

        return make_url(url).render_as_string(hide_password=True)
    except Exception:  # noqa: BLE001 -- a malformed URL is reported elsewhere
        return url


def _with_driver(url: str) -> str:
    """A plain ``postgresql://`` URL names SQLAlchemy's default driver, which is
    psycopg 3 since SQLAlchemy 2.1 but psycopg2 before; use whichever is installed."""
    import importlib.util

    scheme, sep, rest = url.partition("://")
    if sep and scheme in ("postgresql", "postgres"):
        for module, driver in (("psycopg", "psycopg"), ("psycopg2", "psycopg2")):
            if importlib.util.find_spec(module) is not None:
                return f"postgresql+{driver}://{rest}"
    return url


def _sqlite_file(url: str) -> Path | None:
    """The database file of a ``sqlite:///path`` URL (None for other URLs and ``:memory:``)."""
    from sqlalchemy.engine import make_url

    try:
        parsed = make_url(url)
    except Exception:  # noqa: BLE001 -- a malformed URL is reported by open_storage
        return None
    if not parsed.drivername.startswith("sqlite") or parsed.database in (None, "", ":memory:"):
        return None
    return Path(parsed.database).expanduser()


@contextlib.contextmanager
def _schema_lock(db: Path | None) -> Iterator[None]:
    """Held while Optuna creates (or checks) the schema of a SQLite file.

    Optuna's RDBStorage creates its tables and stamps ``alembic_version`` without a lock,
    so processes opening one new file at the same instant fail with "table studies already
    exists" or a UNIQUE constraint on ``alembic_version``. An exclusive lock on
    ``<file>.lock`` (POSIX ``flock``) lets one create the schema and the others find it.
    """
    if db is None:
        yield
        return
    try:
        import fcntl
    except ImportError:  # pragma: no cover - Windows: open_storage retries instead
        yield
        return
    try:
        db.parent.mkdir(parents=True, exist_ok=True)
        handle = open(db.with_name(db.name + ".lock"), "a")  # noqa: SIM115 -- held across the yield
    except OSError as exc:
        raise ConfigError(f"cannot create the SQLite file {db} ({exc.strerror or exc}); "
                          "choose a writable directory for --out or --storage") from exc  # fmt: skip
    with handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


#: Errors a SQLite schema race leaves (retried; see _schema_lock).
_SCHEMA_RACE = ("already exists", "UNIQUE constraint failed: alembic_version")


def open_storage(url: str) -> optuna.storages.RDBStorage:
    """An Optuna RDB storage with heartbeats, or a :class:`CircuitDagError` saying what
    to fix (missing driver, unreachable server, malformed URL, unwritable SQLite file).

    Any number of local processes may open one SQLite file at once, also a new one: the
    schema is created under a file lock (:func:`_schema_lock`)."""
    import time

    import optuna
    import sqlalchemy.exc

    url = _with_driver(url)
    db = _sqlite_file(url)

    engine_kwargs: dict[str, Any] = {"pool_pre_ping": True}
    if url.startswith("sqlite"):
        # Several local processes may share one SQLite file: wait for its lock.
        engine_kwargs = {"connect_args": {"timeout": 60}}
    for attempt in range(5):
        try:
            with warnings.catch_warnings(), _schema_lock(db):
                # heartbeat_interval is flagged experimental by Optuna; it is what we want.
                warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                return optuna.storages.RDBStorage(url, engine_kwargs=engine_kwargs,
                                                  heartbeat_interval=HEARTBEAT_INTERVAL,
                                                  grace_period=GRACE_PERIOD)  # fmt: skip
        except ImportError as exc:
            extra = "psycopg2-binary" if url.startswith("postgres") else "the database driver"
            raise MissingExtraError(
                f"storage {masked(url)} needs {extra} ({exc}); `pip install psycopg2-binary` "
                "(or `pip install circuitdag[postgres]`)"
            ) from exc
        except (sqlalchemy.exc.ArgumentError, ValueError) as exc:
            raise ConfigError(f"--storage {masked(url)} is not a database URL ({exc}); "
                              "use sqlite:///path/sweep.db or postgresql://user:pass@host:port/db") from exc  # fmt: skip
        except sqlalchemy.exc.SQLAlchemyError as exc:
            first = str(exc).splitlines()[0]
            if any(s in first for s in _SCHEMA_RACE) and attempt < 4:
                time.sleep(0.2 * (attempt + 1))  # another process created the schema meanwhile
                continue
            if db is not None:
                raise ConfigError(f"cannot use the SQLite file {db}: {first}; check that it is a sweep database "
                                  "and that its directory is writable, or choose another --out/--storage") from exc  # fmt: skip
            raise ConfigError(f"cannot open storage {masked(url)}: {first}; "
                              "is the database server running and the URL right?") from exc  # fmt: skip
    raise AssertionError("unreachable")  # pragma: no cover


def _load_settings(study: optuna.Study) -> SweepSettings:
    return SweepSettings.from_dict(study.user_attrs.get(SETTINGS_ATTR), f"study {study.study_name!r}")


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:  # a killed child not yet reaped by its parent is a zombie: dead for us
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return True


def fail_interrupted_trials(study: optuna.Study) -> list[int]:
    """Mark ``FAIL`` the running trials whose worker is dead: those of this host whose
    process no longer exists (at once), and, through Optuna's heartbeat, those anywhere
    whose heartbeat stopped more than :data:`GRACE_PERIOD` seconds ago. Returns the
    numbers of the trials failed here by the first rule."""
    import optuna
    from optuna.trial import TrialState

    failed = []
    for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        host, _, pid = str(t.user_attrs.get("worker", "")).rpartition(":")
        if host != HOST or not pid.isdigit() or _pid_alive(int(pid)):
            continue
        try:
            # FrozenTrial has no public id accessor; storages address trials by it.
            study._storage.set_trial_user_attr(t._trial_id, "error", f"its process {pid} on {host} ended "
                                               "while the trial ran (killed?); marked failed on restart")  # fmt: skip
            if study._storage.set_trial_state_values(t._trial_id, TrialState.FAIL):
                failed.append(t.number)
        except optuna.exceptions.UpdateFinishedTrialError:
            pass  # another process got there first
    if failed:
        log.warning("marked %d interrupted trial(s) failed: %s", len(failed), failed)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        optuna.storages.fail_stale_trials(study)
    return failed


def _finished(study: optuna.Study) -> int:
    from optuna.trial import TrialState

    return len(study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.FAIL, TrialState.PRUNED)))


def _sampler(seed: int | None, study: optuna.Study | None = None) -> optuna.samplers.BaseSampler:
    """Multi-objective TPE. A seeded sampler is offset by the number of trials already in
    the study, so a continued sweep does not replay the random start of the first run."""
    import optuna

    if seed is not None and study is not None:
        seed += len(study.get_trials(deepcopy=False))
    return optuna.samplers.TPESampler(seed=seed)


# ---------------------------------------------------------------------- trials
class TrialRunner:
    """The objective: one fast ACDC run per trial.

    Loads the task and the model once, and builds one :class:`Patcher` per
    (metric, ablation) on first use, reused by every later trial of this process.
    """

    def __init__(self, settings: SweepSettings, device: str = "cpu", study_name: str = "") -> None:
        import torch

        from circuitdag.models import load_model
        from circuitdag.tasks import get_task
        from circuitdag.tasks._lm import with_prepend_bos

        self.settings = settings
        self.study_name = study_name
        self.out = Path(settings.out)
        self.task = with_prepend_bos(get_task(settings.task), settings.prepend_bos)
        dtype = getattr(torch, settings.dtype)
        if settings.model:
            self.model = load_model(settings.model, device=device, dtype=dtype)
        else:
            self.model = self.task.load_model(device=device, dtype=dtype)
        self._patchers: dict[tuple[str, str], tuple[Patcher, dict[str, Any]]] = {}
        self.check()

    def check(self) -> None:
        """Build the patcher of every (metric, ablation) the study may sample and measure
        its metric gap, so that an option that cannot work (``--positions`` on a task
        without a token layout, a metric the task cannot compute, an ablation that changes
        nothing) is an error before any trial runs -- not a failure of every trial that
        samples it (the sampler learns nothing from failed trials and keeps choosing them)."""
        import numpy as np

        s = self.settings
        combos = [(m, a) for m in s.metrics for a in s.ablations]
        for metric, ablation in combos:
            try:
                patcher, _ = self.patcher(metric, ablation)
                n = patcher.graph.n_edges
                gap = patcher.circuit_metric(np.zeros(n, dtype=bool)) - patcher.circuit_metric(np.ones(n, dtype=bool))
            except CircuitDagError as exc:
                if len(combos) == 1:
                    raise
                raise ConfigError(f"metric {metric!r} with {ablation!r} ablation cannot run on task {s.task!r} "
                                  f"({exc}); leave it out of --metric/--ablation") from exc  # fmt: skip
            if not (math.isfinite(gap) and gap != 0):
                raise ConfigError(
                    f"under {ablation!r} ablation, metric {metric!r} is the same for the full and the fully "
                    f"ablated model (gap {gap}), so faithfulness is undefined; choose another metric or ablation"
                )

    def patcher(self, metric: str, ablation: str) -> tuple[Patcher, dict[str, Any]]:
        import inspect

        from circuitdag.acdc import prepare

        key = (metric, ablation)
        if key not in self._patchers:
            kwargs: dict[str, Any] = {}
            if self.settings.positions:
                if "positions" not in inspect.signature(prepare).parameters:
                    raise ConfigError("position-aware mode (--positions) is not available yet; run without it")
                kwargs["positions"] = True
            patcher, meta = prepare(self.model, self.task, metric=metric, ablation=ablation,
                                    seed=self.settings.seed, **kwargs)  # fmt: skip
            meta = {"positions": self.settings.positions, **meta}
            if self.settings.model:
                meta["model"] = self.settings.model
            self._patchers[key] = (patcher, meta)
        return self._patchers[key]

    def __call__(self, trial: optuna.Trial) -> tuple[int, float]:
        from circuitdag.acdc import run_acdc

        s = self.settings
        trial.set_user_attr("worker", f"{HOST}:{os.getpid()}")
        try:
            threshold = trial.suggest_float("threshold", *s.threshold_range, log=True)
            metric = trial.suggest_categorical("metric", s.metrics) if "metric" in s.search else s.metrics[0]
            ablation = trial.suggest_categorical("ablation", s.ablations) if "ablation" in s.search else s.ablations[0]
            trial.set_user_attr("metric", metric)
            trial.set_user_attr("ablation", ablation)
            patcher, meta = self.patcher(str(metric), str(ablation))
            circuit = run_acdc(patcher, threshold,
                               meta={**meta, "sweep": {"study": self.study_name, "trial": trial.number}})  # fmt: skip
            faith = circuit.faithfulness()
            if faith is None or not math.isfinite(faith):
                raise CircuitDagError(
                    f"faithfulness is undefined: metric {metric!r} is the same for the full model and "
                    f"under {ablation!r} ablation; choose another metric or ablation"
                )
            path = self.out / "trials" / str(trial.number) / "circuit.json"
            circuit.save(path)
            m = circuit.meta
            for k, v in {"circuit": str(path), "edges": circuit.n_edges, "faithfulness": faith,
                         "metric_full": m["metric_full"], "metric_circuit": m["metric_circuit"],
                         "metric_corrupted": m["metric_corrupted"],
                         "seconds": m["stats"]["seconds"]}.items():  # fmt: skip
                trial.set_user_attr(k, v)
            return circuit.n_edges, faith
        except KeyboardInterrupt:
            trial.set_user_attr("error", "interrupted (Ctrl-C)")
            raise
        except Exception as exc:
            # Optuna marks the trial FAIL (optimize(catch=...)); keep the reason with it.
            trial.set_user_attr("error", f"{type(exc).__name__}: {exc}")
            log.warning("trial %d failed: %s: %s", trial.number, type(exc).__name__, exc)
            raise


# ---------------------------------------------------------------------- running
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


def sweep(
    settings: SweepSettings,
    n_trials: int,
    storage: str | None = None,
    study_name: str | None = None,
    device: str = "cpu",
    sampler_seed: int | None = None,
    progress: bool = False,
    target_faithfulness: float | None = None,
) -> SweepReport:
    """Create (or continue) the study and run ``n_trials`` more trials in this process.

    Trials run by ``sweep-worker`` processes on the same study count towards the
    ``n_trials`` too: this process stops once the study holds as many finished trials as
    it had at the start plus ``n_trials``. Writes the report (see :func:`write_report`).
    """
    import optuna

    if n_trials < 0:
        raise ConfigError(f"--trials must be >= 0, got {n_trials}")
    out = Path(settings.out)
    url = storage or default_storage(out)
    name = study_name or settings.task
    runner = None
    db = _sqlite_file(url)
    if n_trials and db is not None and not db.exists():
        # A new SQLite study holds no settings to compare: load the model and check the task
        # first, so that a refused task or option leaves no half-made sweep behind.
        runner = TrialRunner(settings, device=device, study_name=name)
    _prepare_out(out)
    store = open_storage(url)
    existing = _existing(store, name)
    if existing is not None:
        old = _load_settings(existing)
        if not old.same_search(settings):
            raise ConfigError(
                f"study {name!r} in {masked(url)} was started with other settings "
                f"({_describe(old)}); rerun with those, or choose a new --study (or --out)"
            )
    # Load the model and build the first patcher before touching the study, so bad options
    # fail fast; --trials 0 (create the study, rewrite the report) needs no model.
    if n_trials and runner is None:
        runner = TrialRunner(settings, device=device, study_name=name)
    study = optuna.create_study(storage=store, study_name=name, directions=list(DIRECTIONS),
                                sampler=_sampler(sampler_seed, existing), load_if_exists=True)  # fmt: skip
    study.set_user_attr(SETTINGS_ATTR, settings.to_dict())
    fail_interrupted_trials(study)
    target = _finished(study) + n_trials
    if n_trials:  # (--trials 0 only rewrites the report: it leaves helping workers' goal alone)
        study.set_user_attr(TARGET_ATTR, target)
    try:
        _optimize(study, runner, n_trials, target, progress)
    except KeyboardInterrupt:  # Optuna has marked the running trial FAIL
        write_report(study, out, url)
        raise
    return write_report(study, out, url, target_faithfulness=target_faithfulness)


def work(
    storage: str,
    study_name: str | None = None,
    n_trials: int | None = None,
    out: str | Path | None = None,
    device: str = "cpu",
    sampler_seed: int | None = None,
    progress: bool = False,
) -> SweepReport:
    """Join a study started by :func:`sweep` and run trials for it: ``n_trials`` of them,
    or (``None``) until the study holds the number of finished trials its last ``sweep``
    asked for. ``out`` replaces the sweep's output directory (for a worker on a machine
    that does not share the sweep's file system)."""
    import optuna

    if n_trials is not None and n_trials < 0:
        raise ConfigError(f"--trials must be >= 0, got {n_trials}")
    store = open_storage(storage)
    names = [s.study_name for s in optuna.get_all_study_summaries(store, include_best_trial=False)]
    if study_name is None:
        if len(names) != 1:
            raise ConfigError(f"{masked(storage)} holds {len(names)} studies ({', '.join(names) or 'none'}); "
                              "name one with --study")  # fmt: skip
        study_name = names[0]
    if study_name not in names:
        raise ConfigError(
            f"no study {study_name!r} in {masked(storage)} (it has: {', '.join(names) or 'none'}); start it with "
            f"`circuitdag sweep --storage URL --study {study_name} --trials 0 ...`"
        )
    probe = optuna.load_study(study_name=study_name, storage=store)
    settings = _load_settings(probe)
    if out is not None:
        settings = SweepSettings(**{**asdict(settings), "out": str(Path(out).resolve())})
    _prepare_out(Path(settings.out))
    fail_interrupted_trials(probe)
    target = int(probe.user_attrs.get(TARGET_ATTR, 0))
    todo = max(0, target - _finished(probe)) if n_trials is None else n_trials
    runner = TrialRunner(settings, device=device, study_name=study_name) if todo else None
    study = optuna.load_study(study_name=study_name, storage=store, sampler=_sampler(sampler_seed, probe))
    try:
        if n_trials is None:  # help until the study holds what the sweep asked for
            _optimize(study, runner, None, target, progress, total=todo)
        else:
            _optimize(study, runner, n_trials, None, progress)
    except KeyboardInterrupt:
        write_report(study, Path(settings.out), storage)
        raise
    return write_report(study, Path(settings.out), storage)


def _existing(store: optuna.storages.BaseStorage, name: str) -> optuna.Study | None:
    import optuna

    try:
        return optuna.load_study(study_name=name, storage=store)
    except KeyError:
        return None


def _prepare_out(out: Path) -> None:
    try:
        (out / "trials").mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ConfigError(f"output directory {out} is not writable ({exc.strerror or exc}); choose another --out")


def _describe(s: SweepSettings) -> str:
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
    return ", ".join(parts)


def _optimize(study: optuna.Study, runner: TrialRunner | None, n_trials: int | None, target: int | None,
              progress: bool, total: int | None = None) -> None:  # fmt: skip
    """``study.optimize`` with failures caught (the trial is FAIL, the sweep goes on), a
    stop once the study holds ``target`` finished trials, and a tqdm bar that shows
    the size of the current front."""
    from optuna.trial import TrialState
    from tqdm.auto import tqdm

    if n_trials == 0 or runner is None:
        return
    bar = tqdm(total=n_trials if n_trials is not None else total, desc="sweep", unit="trial", disable=not progress)

    def after_trial(study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
        trials = study.get_trials(deepcopy=False)
        done = [t for t in trials if t.state == TrialState.COMPLETE]
        front = pareto_front([(t.values[0], t.values[1]) for t in done])
        failed = sum(t.state == TrialState.FAIL for t in trials)
        bar.set_postfix(front=len({(done[i].values[0], done[i].values[1]) for i in front}), failed=failed,
                        refresh=False)  # fmt: skip
        bar.update(1)
        if target is not None and _finished(study) >= target:
            study.stop()

    try:
        study.optimize(runner, n_trials=n_trials, catch=(Exception,), callbacks=[after_trial])
    finally:
        bar.close()


# ---------------------------------------------------------------------- the front
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


def _trial_rows(study: optuna.Study, out: Path) -> list[dict[str, Any]]:
    rows = []
    for t in study.get_trials(deepcopy=False):
        a = t.user_attrs
        path = a.get("circuit")
        rows.append({
            "trial": t.number, "state": t.state.name, "threshold": t.params.get("threshold"),
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


def _front_points(rows: list[dict[str, Any]], out: Path) -> list[dict[str, Any]]:
    """The front, one point per distinct (edges, faithfulness, metric, ablation): the
    earliest trial stands for the others, whose thresholds give the threshold range."""
    done = [r for r in rows if r["state"] == "COMPLETE"]
    front = [done[i] for i in pareto_front([(r["edges"], r["faithfulness"]) for r in done])]
    groups: dict[tuple[Any, ...], list[dict[str, Any]]] = {}
    for r in front:
        groups.setdefault((r["edges"], r["faithfulness"], r["metric"], r["ablation"]), []).append(r)
    points = []
    for members in groups.values():
        rep = min(members, key=lambda r: r["trial"])
        thresholds = [r["threshold"] for r in members]
        circuit = _local_circuit(rep, out)
        points.append({
            "trial": rep["trial"], "threshold": rep["threshold"], "metric": rep["metric"],
            "ablation": rep["ablation"], "edges": rep["edges"], "faithfulness": rep["faithfulness"],
            "circuit": circuit, "trials": sorted(r["trial"] for r in members),
            "threshold_range": [min(thresholds), max(thresholds)],
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


def write_report(study: optuna.Study, out: str | Path, storage: str = "",
                 target_faithfulness: float | None = None) -> SweepReport:  # fmt: skip
    """Write ``pareto.json``, ``sweep.svg`` and ``sweep.html`` into ``out`` (and, with
    ``target_faithfulness``, ``best/circuit.json`` + ``best/circuit.svg``: the smallest
    circuit of the front whose faithfulness reaches it)."""
    out = Path(out)
    settings = _load_settings(study)
    rows = _trial_rows(study, out)
    points = _front_points(rows, out)
    counts: dict[str, int] = {"total": len(rows)}
    for r in rows:
        counts[r["state"].lower()] = counts.get(r["state"].lower(), 0) + 1
    report = SweepReport(study.study_name, storage, settings, rows, points, counts)
    for p in points:
        p["svg"] = _render(out, p["circuit"], out / "trials" / str(p["trial"]) / "circuit.svg")
    if target_faithfulness is not None:
        report.best = pick_best(points, target_faithfulness)
        if report.best is not None:
            best = out / "best"
            best.mkdir(exist_ok=True)
            shutil.copyfile(out / report.best["circuit"], best / "circuit.json")
            report.best = {**report.best, "copied_to": "best/circuit.json",
                           "svg": _render(out, "best/circuit.json", best / "circuit.svg")}  # fmt: skip
    n_total = _n_edges_total(out, points)
    _write(out / "pareto.json", json.dumps(report.to_dict(), indent=1))
    svg = plot_svg(rows, n_total, f"{settings.task}: study {study.study_name}")
    _write(out / "sweep.svg", svg)
    _write(out / "sweep.html", _html(report, svg))
    report.files = {k: str(out / f) for k, f in (("pareto", "pareto.json"), ("svg", "sweep.svg"),
                                                  ("html", "sweep.html"))}  # fmt: skip
    if report.best is not None:
        report.files["best"] = str(out / "best" / "circuit.json")
    return report


def pick_best(points: list[dict[str, Any]], target: float) -> dict[str, Any] | None:
    """The smallest circuit of the front whose faithfulness is at least ``target``."""
    ok = [p for p in points if p["faithfulness"] >= target and p["circuit"]]
    return min(ok, key=lambda p: (p["edges"], -p["faithfulness"]), default=None)


def _render(out: Path, circuit: str | None, svg: Path) -> str | None:
    """Draw a front circuit (once); a missing ``dot`` only costs the picture."""
    from circuitdag.io import load_circuit

    if circuit is None or not (out / circuit).exists():
        return None
    if not svg.exists():
        try:
            load_circuit(out / circuit).to_svg(svg)
        except CircuitDagError as exc:
            log.warning("cannot draw %s: %s", circuit, exc)
            return None
    return str(svg.relative_to(out))


def _n_edges_total(out: Path, points: list[dict[str, Any]]) -> int | None:
    for p in points:
        if p["circuit"] and (out / p["circuit"]).exists():
            try:
                return int(json.loads((out / p["circuit"]).read_text())["n_edges_total"])
            except (OSError, ValueError, KeyError):
                pass
    return None


def _write(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


# ---------------------------------------------------------------------- pictures
_PALETTE = ("#1f77b4", "#2ca02c", "#9467bd", "#8c564b", "#e377c2", "#17becf", "#bcbd22", "#7f7f7f")


def _fmt(x: float | None, digits: int = 4) -> str:
    return "-" if x is None else f"{x:.{digits}g}"


def plot_svg(rows: list[dict[str, Any]], n_edges_total: int | None, title: str) -> str:
    """All completed trials as points (edges across, faithfulness up), the front in red
    joined by its staircase; each point's tooltip names the trial. Plain SVG."""
    W, H, L, R, T, B = 780, 420, 64, 160, 36, 48  # the legend lives in the right margin
    done = [r for r in rows if r["state"] == "COMPLETE"]
    xmax = max([n_edges_total or 0] + [r["edges"] for r in done] + [1])
    fs = [r["faithfulness"] for r in done]
    ylo, yhi = min([0.0, *fs]), max([1.0, *fs])
    log_x = xmax > 200  # big graphs: circuits are small, use log(1 + edges)

    def fx(e: float) -> float:
        u = math.log10(1 + e) / math.log10(1 + xmax) if log_x else e / xmax
        return L + u * (W - L - R)

    def fy(f: float) -> float:
        return H - B - (f - ylo) / ((yhi - ylo) or 1.0) * (H - T - B)

    combos = sorted({(r["metric"], r["ablation"]) for r in done}, key=str)
    colour = {c: _PALETTE[i % len(_PALETTE)] for i, c in enumerate(combos)}
    s = [(f'<svg xmlns="http://www.w3.org/2000/svg" width="{W}" height="{H}" viewBox="0 0 {W} {H}" '
          'font-family="Helvetica, Arial, sans-serif" font-size="11">'),
         f'<rect width="{W}" height="{H}" fill="white"/>',
         f'<text x="{(L + W - R) / 2}" y="20" text-anchor="middle" font-size="13">{html.escape(title)}</text>']  # fmt: skip
    xt = ([0] + [10**k for k in range(int(math.log10(xmax)) + 1)]) if log_x else _ticks(0, xmax)
    for v in xt:
        x = fx(v)
        s.append(f'<line x1="{x:.1f}" y1="{T}" x2="{x:.1f}" y2="{H - B}" stroke="#eee"/>'
                 f'<text x="{x:.1f}" y="{H - B + 14}" text-anchor="middle">{v:g}</text>')  # fmt: skip
    for v in _ticks(ylo, yhi):
        y = fy(v)
        s.append(f'<line x1="{L}" y1="{y:.1f}" x2="{W - R}" y2="{y:.1f}" stroke="#eee"/>'
                 f'<text x="{L - 6}" y="{y + 4:.1f}" text-anchor="end">{v:g}</text>')  # fmt: skip
    s.append(f'<rect x="{L}" y="{T}" width="{W - L - R}" height="{H - T - B}" fill="none" stroke="#888"/>')
    s.append(f'<text x="{(L + W - R) / 2}" y="{H - 10}" text-anchor="middle">circuit size (edges'
             f'{", log scale" if log_x else ""})</text>')  # fmt: skip
    s.append(f'<text transform="translate(16 {(T + H - B) / 2}) rotate(-90)" text-anchor="middle">'
             "faithfulness (fraction of the metric gap recovered)</text>")
    pts = sorted((done[i] for i in pareto_front([(r["edges"], r["faithfulness"]) for r in done])),
                 key=lambda r: (r["edges"], -r["faithfulness"]))  # fmt: skip
    if pts:
        steps = [f"M{fx(pts[0]['edges']):.1f} {fy(pts[0]['faithfulness']):.1f}"]
        steps += [f"H{fx(r['edges']):.1f} V{fy(r['faithfulness']):.1f}" for r in pts[1:]]
        s.append(f'<path d="{" ".join(steps)}" fill="none" stroke="#d62728" stroke-width="1.5"/>')
    on_front = {r["trial"] for r in pts}
    for r in sorted(done, key=lambda r: r["trial"] in on_front):
        tip = (f"trial {r['trial']}: threshold {_fmt(r['threshold'])}, metric {r['metric']}, "
               f"ablation {r['ablation']}, {r['edges']} edges, faithfulness {_fmt(r['faithfulness'], 6)}")  # fmt: skip
        big = r["trial"] in on_front
        fill = "#d62728" if big else colour[(r["metric"], r["ablation"])]
        s.append(f'<circle id="p{r["trial"]}" cx="{fx(r["edges"]):.1f}" cy="{fy(r["faithfulness"]):.1f}" '
                 f'r="{5 if big else 3.5}" fill="{fill}" fill-opacity="{1 if big else 0.6}" '
                 f'stroke="{"black" if big else "none"}"><title>{html.escape(tip)}</title></circle>')  # fmt: skip
    legend = [("#d62728", "Pareto front")] + ([(colour[c], f"{c[0]}, {c[1]}") for c in combos]
                                               if len(combos) > 1 else [("#1f77b4", "other trials")])  # fmt: skip
    for i, (c, label) in enumerate(legend):
        y = T + 14 + 15 * i
        s.append(f'<circle cx="{W - R + 16}" cy="{y - 4}" r="4" fill="{c}"/>'
                 f'<text x="{W - R + 26}" y="{y}">{html.escape(label)}</text>')  # fmt: skip
    s.append("</svg>")
    return "\n".join(s)


def _ticks(lo: float, hi: float, n: int = 5) -> list[float]:
    span = (hi - lo) or 1.0
    step = 10 ** math.floor(math.log10(span / n))
    for m in (1, 2, 5, 10):
        if span / (step * m) <= n:
            step *= m
            break
    start = math.ceil(lo / step) * step
    return [round(start + i * step, 10) for i in range(int((hi - start) / step + 1e-9) + 1)]


def _html(report: SweepReport, svg: str) -> str:
    """A self-contained page: the plot (hover a point or a row to see the trial, click a
    front point to open its circuit drawing) and the table of every trial."""
    s = report.settings
    front = {t for p in report.points for t in p["trials"]}
    svg_of = {p["trial"]: p.get("svg") for p in report.points}
    head = ["trial", "state", "threshold", "metric", "ablation", "edges", "faithfulness", "seconds", "circuit", "error"]
    body = []
    for r in sorted(report.trials, key=lambda r: (r["edges"] is None, r["edges"] or 0, -(r["faithfulness"] or 0))):
        trial_svg = svg_of.get(r["trial"])
        link = (f'<a href="{html.escape(r["circuit"])}">json</a>' if r["circuit"] else "") + (
            f' <a href="{html.escape(trial_svg)}">svg</a>' if trial_svg else "")
        cells = [r["trial"], r["state"], _fmt(r["threshold"]), r["metric"] or "", r["ablation"] or "",
                 "" if r["edges"] is None else r["edges"], _fmt(r["faithfulness"], 6), _fmt(r["seconds"], 3)]  # fmt: skip
        tds = "".join(f"<td>{html.escape(str(c))}</td>" for c in cells) + f"<td>{link}</td>"
        tds += f'<td class="err">{html.escape(r["error"] or "")}</td>'
        cls = ' class="front"' if r["trial"] in front else ""
        body.append(f'<tr data-trial="{r["trial"]}"{cls} title="trial {r["trial"]}">{tds}</tr>')
    points = "".join(
        f"<li>{p['edges']} edges, faithfulness {_fmt(p['faithfulness'], 6)} (trial {p['trial']}, thresholds "
        f"{_fmt(p['threshold_range'][0])}..{_fmt(p['threshold_range'][1])}, {p['metric']}, {p['ablation']})</li>"
        for p in report.points
    )
    best = ""
    if report.best:
        best = (f"<p><b>Best</b> (faithfulness &ge; target): trial {report.best['trial']}, {report.best['edges']} "
                f'edges &rarr; <a href="best/circuit.json">best/circuit.json</a></p>')  # fmt: skip
    links = json.dumps({str(k): v for k, v in svg_of.items() if v})
    counts = ", ".join(f"{v} {k}" for k, v in report.counts.items())
    return f"""<!DOCTYPE html>
<html><head><meta charset="utf-8"><title>circuitdag sweep {html.escape(report.study)}</title>
<style>
body {{ font-family: Helvetica, Arial, sans-serif; margin: 1.5em; }}
table {{ border-collapse: collapse; font-size: 12px; }}
td, th {{ border-bottom: 1px solid #ddd; padding: 2px 8px; text-align: right; }}
th {{ cursor: pointer; background: #f4f4f4; }}
tr.front td {{ font-weight: bold; color: #b01c1d; }}
tr.hl td {{ background: #ffe9a8; }}
td.err {{ text-align: left; color: #a00; font-weight: normal; max-width: 40em; }}
circle.hl {{ stroke: orange; stroke-width: 3; }}
</style></head><body>
<h2>Sweep {html.escape(report.study)} &mdash; {html.escape(s.task)}</h2>
<p>{html.escape(_describe(s))}. Trials: {html.escape(counts)}. Storage: <code>{html.escape(masked(report.storage))}</code></p>
{svg}
<h3>Pareto front</h3><ul>{points}</ul>{best}
<h3>Trials</h3>
<table id="trials"><thead><tr>{"".join(f"<th>{h}</th>" for h in head)}</tr></thead>
<tbody>{"".join(body)}</tbody></table>
<script>
const svgOf = {links};
function hl(n, on) {{
  const c = document.getElementById('p' + n); if (c) c.classList.toggle('hl', on);
  const r = document.querySelector('tr[data-trial="' + n + '"]'); if (r) r.classList.toggle('hl', on);
}}
document.querySelectorAll('tr[data-trial]').forEach(r => {{
  r.onmouseenter = () => hl(r.dataset.trial, true); r.onmouseleave = () => hl(r.dataset.trial, false);
}});
document.querySelectorAll('circle[id^="p"]').forEach(c => {{
  const n = c.id.slice(1);
  c.onmouseenter = () => hl(n, true); c.onmouseleave = () => hl(n, false);
  if (svgOf[n]) {{ c.style.cursor = 'pointer'; c.onclick = () => window.open(svgOf[n]); }}
}});
document.querySelectorAll('#trials th').forEach((th, i) => th.onclick = () => {{
  const tb = document.querySelector('#trials tbody'), rows = [...tb.rows];
  const key = r => {{ const t = r.cells[i].textContent, v = parseFloat(t); return isNaN(v) ? t : v; }};
  const dir = th.dataset.dir = th.dataset.dir === '1' ? '-1' : '1';
  rows.sort((a, b) => (key(a) > key(b) ? 1 : key(a) < key(b) ? -1 : 0) * dir).forEach(r => tb.appendChild(r));
}});
</script></body></html>
"""


# ---------------------------------------------------------------------- CLI
def _float(text: str, option: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise ConfigError(f"{option} must be a number, got {text!r}") from None
    if not math.isfinite(value):
        raise ConfigError(f"{option} must be finite, got {text}")
    return value


@overload
def _trials(text: str | int) -> int: ...
@overload
def _trials(text: None) -> None: ...
def _trials(text: str | int | None) -> int | None:
    if text is None:
        return None
    try:
        n = int(text)
    except ValueError:
        raise ConfigError(f"--trials must be a whole number >= 0, got {text!r}") from None
    if n < 0:
        raise ConfigError(f"--trials must be >= 0, got {n}")
    return n


def _set_optuna_verbosity(verbose: bool) -> None:
    import optuna

    # Optuna logs each failed trial with its traceback; circuitdag logs one line instead.
    optuna.logging.set_verbosity(optuna.logging.INFO if verbose else optuna.logging.ERROR)


def _print_report(report: SweepReport, target: float | None) -> None:
    c = report.counts
    print(f"{report.settings.task}: study {report.study!r} has {c['total']} trials "
          f"({c.get('complete', 0)} complete, {c.get('fail', 0)} failed, {c.get('running', 0)} running) "
          f"in {masked(report.storage)}")  # fmt: skip
    print("Pareto front (edges vs faithfulness):")
    extra = [k for k in ("metric", "ablation") if k in report.settings.search]
    print(f"  {'edges':>6}  {'faithfulness':>12}  {'trial':>5}  {'thresholds':<21}  "
          + "".join(f"{k:<10}  " for k in extra) + "circuit")  # fmt: skip
    for p in report.points:
        lo, hi = p["threshold_range"]
        print(f"  {p['edges']:>6}  {p['faithfulness']:>12.6f}  {p['trial']:>5}  {_fmt(lo) + '..' + _fmt(hi):<21}  "
              + "".join(f"{p[k]:<10}  " for k in extra) + str(p["circuit"]))  # fmt: skip
    print(f"-> {report.files['pareto']}, {report.files['svg']}, {report.files['html']}")
    if target is not None:
        b = report.best
        if b is None:
            top = max((p["faithfulness"] for p in report.points), default=None)
            raise CircuitDagError(
                f"no circuit on the front reaches faithfulness {target:g} (best {_fmt(top, 6)}); "
                "run more trials, widen --threshold-range or lower --target-faithfulness"
            )
        print(f"best (faithfulness >= {target:g}): trial {b['trial']}, {b['edges']} edges, "
              f"faithfulness {b['faithfulness']:.6f} -> {report.files['best']}")  # fmt: skip


def _interruptible(fn: Callable[[argparse.Namespace], int]) -> Callable[[argparse.Namespace], int]:
    """Ctrl-C ends a sweep cleanly: the running trial is FAIL, the report is written."""

    def run(args: argparse.Namespace) -> int:
        try:
            return fn(args)
        except KeyboardInterrupt:
            print("circuitdag: interrupted; the report is written and the same command continues the study",
                  file=sys.stderr)  # fmt: skip
            return 130

    return run


@_interruptible
def cmd_sweep(args: argparse.Namespace) -> int:
    _set_optuna_verbosity(args.verbose)
    rng = None
    if args.threshold_range:
        rng = (_float(args.threshold_range[0], "--threshold-range"), _float(args.threshold_range[1], "--threshold-range"))
    target = None if args.target_faithfulness is None else _float(args.target_faithfulness, "--target-faithfulness")
    trials = _trials(args.trials)
    task = args.task or DEFAULT_TASK  # (--task has no argparse default: discover may take --prompts instead)
    settings = make_settings(task, args.out or f"runs/{task}-sweep", model=args.model, metric=args.metric,
                             ablation=args.ablation, search=args.search, threshold_range=rng,
                             positions=args.positions, seed=args.seed, dtype=args.dtype,
                             prepend_bos=getattr(args, "prepend_bos", "auto"))  # fmt: skip
    report = sweep(settings, trials, storage=args.storage, study_name=args.study, device=args.device,
                   sampler_seed=args.sampler_seed, progress=not args.quiet, target_faithfulness=target)  # fmt: skip
    _print_report(report, target)
    return 0


@_interruptible
def cmd_sweep_worker(args: argparse.Namespace) -> int:
    _set_optuna_verbosity(args.verbose)
    report = work(args.storage, args.study, n_trials=_trials(args.trials), out=args.out, device=args.device,
                  sampler_seed=args.sampler_seed, progress=not args.quiet)  # fmt: skip
    _print_report(report, None)
    return 0


def register_cli(subparsers: Any, add_run_options: Callable[..., None]) -> None:
    """Add ``sweep`` and ``sweep-worker`` to the ``circuitdag`` command line;
    ``add_run_options`` adds the options every run takes (``--task``, ``--model``, ...),
    passed in by :mod:`circuitdag.cli` so that imports run one way."""

    p = subparsers.add_parser("sweep", help="Optuna study over the ACDC threshold: Pareto front of size vs faithfulness")
    add_run_options(p)
    p.add_argument("--trials", default="20", help="trials to add to the study (default 20; 0 only rewrites the report)")
    p.add_argument("--storage", help="Optuna storage URL (default sqlite:///<out>/sweep.db; postgresql://... to "
                   "share the study with sweep-worker processes)")  # fmt: skip
    p.add_argument("--study", help="study name (default: the task name)")
    p.add_argument("--search", default="threshold",
                   help="what to search, from threshold,metric,ablation (default threshold); a searched "
                        "--metric/--ablation takes a comma-separated list of choices (default: all)")  # fmt: skip
    p.add_argument("--threshold-range", nargs=2, metavar=("LO", "HI"),
                   help="thresholds sampled log-uniformly in [LO, HI] (default: the task's default threshold "
                        "/1000 .. *1000)")  # fmt: skip
    p.add_argument("--positions", action="store_true", help="position-aware circuits")
    p.add_argument("--target-faithfulness", metavar="F",
                   help="copy the smallest front circuit with faithfulness >= F to <out>/best/")
    p.add_argument("--sampler-seed", type=int, help="seed of the TPE sampler (default: random)")
    p.add_argument("--out", help="output directory (default runs/<task>-sweep)")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    p.set_defaults(fn=cmd_sweep)

    p = subparsers.add_parser("sweep-worker", help="run trials of a shared sweep study (e.g. on PostgreSQL)")
    p.add_argument("--storage", required=True, help="the study's storage URL")
    p.add_argument("--study", help="study name (default: the only study in the storage)")
    p.add_argument("--trials", help="trials to run (default: until the study has what `sweep` asked for)")
    p.add_argument("--out", help="write circuits here instead of the sweep's output directory")
    p.add_argument("--device", default="cpu", help="torch device, e.g. cpu or cuda")
    p.add_argument("--sampler-seed", type=int, help="seed of the TPE sampler (default: random)")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    p.set_defaults(fn=cmd_sweep_worker)
