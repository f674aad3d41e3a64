"""Where a study lives: Optuna RDB storages (embedded SQLite, or PostgreSQL shared by
workers on many machines) and the recovery of trials whose worker died.

Interrupted trials. A trial whose process is killed stays ``RUNNING`` in the storage. Two
mechanisms turn it into ``FAIL``: every trial records ``worker = host:pid``, and any sweep
or worker starting on the same host fails the ``RUNNING`` trials whose process no longer
exists, at once (:func:`fail_interrupted_trials`); and Optuna's heartbeat (every
:data:`HEARTBEAT_INTERVAL` s) lets any process fail a trial whose heartbeat is older than
:data:`GRACE_PERIOD` s, wherever its worker ran. Either way the trial's ``error`` user
attribute says why, written while the trial still runs: Optuna lets nobody change a
finished trial. See docs/sweeps.md.
"""

from __future__ import annotations

import contextlib
import errno
import functools
import logging
import os
import socket
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from circuitdag.errors import ConfigError, MissingExtraError
from circuitdag.sweep.settings import SETTINGS_ATTR, SweepSettings

if TYPE_CHECKING:
    import optuna

log = logging.getLogger("circuitdag")

#: Seconds between heartbeats of a running trial, and the silence after which any
#: process of the study may mark it failed (its worker is presumed dead).
HEARTBEAT_INTERVAL = 10
GRACE_PERIOD = 60
HOST = socket.gethostname()


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


def sqlite_file(url: str) -> Path | None:
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


@functools.cache
def _storage_class() -> type[optuna.storages.RDBStorage]:
    """Optuna's RDB storage, recording why the heartbeat rule fails a trial.

    ``optuna.storages.fail_stale_trials`` (which Optuna also runs before every trial)
    fails the running trials whose heartbeat is older than the grace period, and records
    nothing: their worker may only be paused (SIGSTOP, a suspended job, a sleeping laptop)
    and later finds its trial failed with no reason given. It asks the storage for those
    trials first (``_get_stale_trial_ids``, the hook of Optuna's ``BaseHeartbeat`` that
    storages implement); this storage answers, and writes each one's ``error`` while it
    still runs. (Made on first use: circuitdag imports Optuna lazily.)"""
    import optuna

    class SweepStorage(optuna.storages.RDBStorage):
        def record_heartbeat(self, trial_id: int) -> None:
            # Runs in Optuna's heartbeat thread, where an error (a full disk) would only print
            # a traceback and end the heartbeats; the trial's own writes meet it and report it.
            try:
                super().record_heartbeat(trial_id)
            except optuna.exceptions.StorageInternalError as exc:
                log.debug("heartbeat of trial id %d not recorded: %s", trial_id, exc.__cause__ or exc)

        def _get_stale_trial_ids(self, study_id: int) -> list[int]:
            stale = super()._get_stale_trial_ids(study_id)
            for trial_id in stale:
                trial = self.get_trial(trial_id)
                worker = trial.user_attrs.get("worker", "unknown")
                log.warning("trial %d: no heartbeat from its worker %s for over %s s; marking it failed",
                            trial.number, worker, self.grace_period)  # fmt: skip
                try:
                    self.set_trial_user_attr(trial_id, "error", f"no heartbeat from its worker {worker} for over "
                                             f"{self.grace_period} s (paused, suspended or lost); marked failed "
                                             f"by {HOST}:{os.getpid()}")  # fmt: skip
                except optuna.exceptions.UpdateFinishedTrialError:
                    pass  # finished meanwhile, by its worker or another process
            return stale

    return SweepStorage


def stored_trial(trial: optuna.Trial) -> optuna.trial.FrozenTrial:
    """``trial`` as the storage holds it now: another process may have finished it."""
    # Trial has no public id accessor; storages address trials by it.
    return trial.study._storage.get_trial(trial._trial_id)


def disk_full(exc: BaseException) -> BaseException | None:
    """The error in ``exc``'s chain (causes, contexts, SQLAlchemy's ``orig``) that says a
    disk is full, or None: an ``OSError`` ENOSPC, EDQUOT or EFBIG (the file size limit,
    ``ulimit -f``), SQLite's "database or disk is full" (or its "disk I/O error" under a
    file size limit), PostgreSQL's ``disk_full`` (SQLSTATE 53100)."""
    todo: list[BaseException | None] = [exc]
    seen: set[int] = set()
    while todo:
        e = todo.pop()
        if e is None or id(e) in seen:
            continue
        seen.add(id(e))
        if isinstance(e, OSError) and e.errno in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG):
            return e
        if getattr(e, "sqlite_errorname", None) == "SQLITE_FULL" or (
            type(e).__module__ == "sqlite3" and "database or disk is full" in str(e)
        ):
            return e
        if type(e).__module__ == "sqlite3" and "disk I/O error" in str(e) and size_limit() is not None:
            return e  # SQLite's word for EFBIG
        if "53100" in (getattr(e, "pgcode", None), getattr(e, "sqlstate", None)):
            return e
        todo += [e.__cause__, e.__context__, getattr(e, "orig", None)]
    return None


def size_limit() -> int | None:
    """This process's file size limit in bytes (``ulimit -f``), or None when unlimited."""
    try:
        import resource
    except ImportError:  # pragma: no cover - not on POSIX
        return None
    soft = resource.getrlimit(resource.RLIMIT_FSIZE)[0]
    return None if soft == resource.RLIM_INFINITY else int(soft)


@contextlib.contextmanager
def full_disk_stops(url: str, out: str | Path) -> Iterator[None]:
    """Turn a full disk met anywhere in a sweep (the storage, a circuit, the report) into one
    :class:`ConfigError` naming what could not be written. Left alone, SQLite's error
    arrives as three chained tracebacks (sqlite3, SQLAlchemy, Optuna's "invalid data in the
    commit") that say nothing a user can act on. Nothing completed is lost: every trial
    is committed on its own, and a failed commit changes nothing."""
    try:
        yield
    except Exception as exc:
        full = disk_full(exc)
        if full is None:
            raise
        tail = "free some space, then rerun the same command to continue the study"
        limit = size_limit()
        if limit is not None and (getattr(full, "errno", None) == errno.EFBIG or "disk I/O error" in str(full)):
            what = full.filename if isinstance(full, OSError) and full.filename else f"storage {masked(url)}"
            raise ConfigError(f"the file size limit (ulimit -f: {limit} bytes) is reached: cannot write {what}; "
                              "the completed trials are kept: raise the limit, then rerun the same command to "
                              "continue the study") from exc  # fmt: skip
        if isinstance(full, OSError):
            raise ConfigError(f"the disk is full: cannot write {full.filename or f'into {out}'} "
                              f"({full.strerror or full}); the completed trials are kept in {masked(url)}: "
                              f"{tail}") from exc  # fmt: skip
        reason = str(full).splitlines()[0] if str(full) else type(full).__name__
        raise ConfigError(f"the disk is full: storage {masked(url)} cannot be written ({reason}); "
                          f"its completed trials are kept: {tail}") from exc  # fmt: skip


def _check_sqlite_file(db: Path) -> None:
    """Refuse a SQLite file that exists but holds no database (called under the schema lock,
    so a file another process is creating has its schema by now).

    SQLite takes a 0-byte file for an empty database, and Optuna would create a new, empty
    study in it: in a finished sweep's directory (whose study file was cut short by a full
    disk or a failed copy) the report would then lose its front. A file that is not SQLite
    at all would end in SQLAlchemy's "file is not a database"."""
    try:
        with open(db, "rb") as handle:
            head = handle.read(16)
    except FileNotFoundError:
        return  # a new study
    except OSError as exc:
        raise ConfigError(f"cannot read the SQLite file {db} ({exc.strerror or exc}); "
                          "check its permissions, or choose another --out/--storage") from exc  # fmt: skip
    wal = db.with_name(db.name + "-wal")  # (in WAL mode a new database may live there alone)
    if not head and not (wal.exists() and wal.stat().st_size):
        raise ConfigError(f"{db} is empty (0 bytes): no study can be read from it (cut short by a full disk or "
                          "a failed copy?); restore it from a backup, or delete it to start a new study there, or "
                          "choose another --out/--storage")  # fmt: skip
    if head and head != b"SQLite format 3\x00":
        raise ConfigError(f"{db} is not a SQLite database, so not a sweep's study file; move it away, or "
                          "choose another --out/--storage")  # fmt: skip


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
    db = sqlite_file(url)

    engine_kwargs: dict[str, Any] = {"pool_pre_ping": True}
    if url.startswith("sqlite"):
        # Several local processes may share one SQLite file: wait for its lock.
        engine_kwargs = {"connect_args": {"timeout": 60}}
    for attempt in range(5):
        try:
            with warnings.catch_warnings(), _schema_lock(db):
                if db is not None:
                    _check_sqlite_file(db)
                # heartbeat_interval is flagged experimental by Optuna; it is what we want.
                warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                return _storage_class()(url, engine_kwargs=engine_kwargs,
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


def load_settings(study: optuna.Study) -> SweepSettings:
    """The settings stored in ``study`` when ``sweep`` created it (raises :class:`ConfigError`)."""
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


def finished_trials(study: optuna.Study, trials: list | None = None) -> int:
    """How many trials of ``study`` are complete, failed or pruned (counted in ``trials``,
    the study's trials when already fetched)."""
    from optuna.trial import TrialState

    done = (TrialState.COMPLETE, TrialState.FAIL, TrialState.PRUNED)
    if trials is None:
        return len(study.get_trials(deepcopy=False, states=done))
    return sum(t.state in done for t in trials)
