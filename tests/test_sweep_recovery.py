"""Sweeps that meet trouble: a worker paused past the heartbeat's grace period, a full
disk, a study file that is empty or not SQLite. Each ends in one line and loses no
completed trial (helpers shared with test_sweep.py)."""

from __future__ import annotations

import json
import os
import shutil
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pytest
import torch
from test_sweep import ENV, RUNNER, _count, load, run

from circuitdag.cli import main
from circuitdag.sweep import (
    default_storage,
    fail_interrupted_trials,
    make_settings,
    open_storage,
    sweep,
    work,
)

torch.set_num_threads(1)
STUDY = sys.modules["circuitdag.sweep.study"]  # (`circuitdag.sweep.sweep` is the function)
WORKERS = sys.modules["circuitdag.sweep.workers"]


def _pause_and_fail_elsewhere(out: Path) -> None:
    """What another worker does to a trial whose process has been stopped for longer than
    the grace period: its heartbeat is old, and that worker fails it (at start-up, or
    before each of its trials)."""
    with sqlite3.connect(out / "sweep.db", timeout=30) as con:
        con.execute("UPDATE trial_heartbeats SET heartbeat = datetime('now', '-600 seconds')")
    other = optuna.load_study(study_name="tracr-reverse", storage=open_storage(default_storage(out)))
    fail_interrupted_trials(other)  # (this process is alive: only the heartbeat rule applies)


@pytest.mark.parametrize("when", ["in ACDC", "after recording"])
def test_a_worker_whose_trial_was_failed_while_it_was_paused_goes_on(when, tmp_path, monkeypatch, caplog):
    """The paused-worker case, deterministically: during trial 0 another process marks it
    failed (stale heartbeat). The worker used to die with "Cannot tell a FAIL trial." and
    leave trials/0/circuit.json that no trial records; it says so on one line and runs its
    next trials, and the failed trial carries the reason. Paused in ACDC, the circuit it
    cannot record is removed; paused once it has recorded it (as trial attributes), the
    circuit stays with the failed trial."""
    out = tmp_path / "sweep"
    sweep(make_settings("tracr-reverse", out, ablation="zero"), 0)
    calls = []

    def pausing(real):
        def paused(*args, **kwargs):
            calls.append(1)
            if len(calls) == 1:
                _pause_and_fail_elsewhere(out)
            return real(*args, **kwargs)

        return paused

    if when == "in ACDC":
        monkeypatch.setattr(RUNNER, "run_algorithm", pausing(RUNNER.run_algorithm))
    else:  # just before the objective returns its values
        monkeypatch.setattr(WORKERS, "stored_trial", pausing(WORKERS.stored_trial))
    with caplog.at_level("WARNING", logger="circuitdag"):
        report = work(default_storage(out), n_trials=3, sampler_seed=0)
    trials = load(out).trials
    assert [t.state.name for t in trials] == ["FAIL", "COMPLETE", "COMPLETE"] and len(calls) == 3
    assert "no heartbeat" in trials[0].user_attrs["error"]
    if when == "in ACDC":
        assert "circuit" not in trials[0].user_attrs and not (out / "trials" / "0").exists()
    else:
        assert Path(trials[0].user_attrs["circuit"]) == out / "trials" / "0" / "circuit.json"
        assert (out / "trials" / "0" / "circuit.json").exists()
    lines = [r.getMessage() for r in caplog.records if "while this process was paused" in r.getMessage()]
    assert len(lines) == 1 and "trial 0 was marked failed by another worker" in lines[0], caplog.text
    assert report.counts == {"total": 3, "complete": 2, "fail": 1}


_PAUSABLE_WORKER = """
import pathlib, sys, time
import circuitdag.sweep.storage as storage
storage.HEARTBEAT_INTERVAL, storage.GRACE_PERIOD = 1, 2  # (60 s in real sweeps)
import circuitdag.discovery
runner = sys.modules["circuitdag.discovery"]
real, marker, nap = runner.run_algorithm, pathlib.Path(sys.argv[3]), float(sys.argv[4])
def slow(*args, **kwargs):
    marker.write_text("in a trial")
    time.sleep(nap)
    return real(*args, **kwargs)
runner.run_algorithm = slow
from circuitdag.cli import main
sys.exit(main(["sweep-worker", "--storage", sys.argv[1], "--trials", sys.argv[2], "-q"]))
"""


@pytest.mark.slow
def test_a_worker_stopped_with_sigstop_goes_on_after_sigcont(tmp_path):
    """The reported case with real processes: worker 1 is stopped (SIGSTOP) in a trial,
    worker 2 starts after the grace period and fails that trial, worker 1 continues
    (SIGCONT): one warning line, no traceback, its next trial runs, and the failed trial
    records why (the grace period is 2 s here)."""
    import signal

    out = tmp_path / "sweep"
    sweep(make_settings("tracr-reverse", out, ablation="zero"), 0)
    db, marker, url = out / "sweep.db", tmp_path / "in-trial", default_storage(out)

    def worker(trials: str, nap: str, log: str) -> subprocess.Popen:
        with open(tmp_path / log, "w") as err:  # (the child keeps its own copy of the handle)
            return subprocess.Popen([sys.executable, "-c", _PAUSABLE_WORKER, url, trials, str(marker), nap],
                                    env=ENV, stdout=subprocess.DEVNULL, stderr=err)  # fmt: skip

    first = worker("2", "1", "first.err")
    try:
        deadline = time.monotonic() + 60
        while not (marker.exists() and _heartbeats(db)):
            assert first.poll() is None, (tmp_path / "first.err").read_text()
            assert time.monotonic() < deadline, "worker 1 never started a trial"
            time.sleep(0.02)
        first.send_signal(signal.SIGSTOP)
        time.sleep(3.5)  # past the grace period (heartbeats have a resolution of 1 s)
        second = worker("1", "0", "second.err")
        assert second.wait(timeout=60) == 0, (tmp_path / "second.err").read_text()
        assert _count(db, "FAIL") == 1
        first.send_signal(signal.SIGCONT)
        assert first.wait(timeout=60) == 0, (tmp_path / "first.err").read_text()
    finally:
        first.send_signal(signal.SIGCONT)
        first.kill()
        first.wait()
    err = (tmp_path / "first.err").read_text()
    assert "Traceback" not in err and err.count("\n") == 1, err
    assert "trial 0 was marked failed by another worker while this process was paused" in err
    trials = load(out).trials
    assert [t.state.name for t in trials] == ["FAIL", "COMPLETE", "COMPLETE"]
    assert "no heartbeat" in trials[0].user_attrs["error"] and not (out / "trials" / "0").exists()


def _heartbeats(db: Path) -> int:
    try:
        with sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=30) as con:
            return con.execute("SELECT count(*) FROM trial_heartbeats").fetchone()[0]
    except sqlite3.OperationalError:
        return 0


def _complete(out: Path) -> dict[int, tuple]:
    return {t.number: (t.values, t.params, t.user_attrs) for t in load(out).trials if t.state.name == "COMPLETE"}


def test_a_full_disk_under_the_storage_is_one_line(tmp_path, capsys, monkeypatch):
    """SQLite on a full disk ("database or disk is full", made real here by capping the
    file's size with PRAGMA max_page_count) used to fail every trial without a word, or
    end in three chained tracebacks (sqlite3, SQLAlchemy, Optuna's "invalid data in the
    commit"); the sweep stops with one line naming the storage, and the completed trials
    are kept."""
    import sqlalchemy

    out = tmp_path / "sweep"
    argv = ["sweep", "--task", "tracr-reverse", "--ablation", "zero", "--sampler-seed", "0", "--out", str(out), "-q"]
    code, _, err = run(capsys, *argv, "--trials", "3")
    assert code == 0, err
    before = _complete(out)
    real = STUDY.open_storage

    def on_a_full_disk(url):
        storage = real(url)

        @sqlalchemy.event.listens_for(storage.engine, "connect")
        def cap(con, _):  # the file may not grow by one page
            con.execute(f"PRAGMA max_page_count = {con.execute('PRAGMA page_count').fetchone()[0]}")

        storage.engine.dispose()  # (connections opened before the cap)
        return storage

    monkeypatch.setattr(STUDY, "open_storage", on_a_full_disk)
    code, _, err = run(capsys, *argv, "--trials", "30")
    assert code == 2 and err.count("\n") == 1, err
    assert "disk is full" in err and default_storage(out) in err and "database or disk is full" in err, err
    after = _complete(out)
    assert len(after) >= 3 and all(after[n] == t for n, t in before.items())


def test_a_full_disk_under_the_circuits_is_one_line(tmp_path, capsys, monkeypatch):
    """No space left for a trial's circuit.json: not a trial failure to go on from (every
    later trial would fail the same way), but one line naming the file, exit 2, and the
    trials completed before are kept."""
    import errno

    out = tmp_path / "sweep"
    real, saved = Path.write_text, []

    def write_text(self, *args, **kwargs):
        if self.name.startswith("circuit.json.") and self.name.endswith(".tmp"):  # files.write_atomic
            saved.append(self)
            if len(saved) > 2:
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(self))
        return real(self, *args, **kwargs)

    monkeypatch.setattr(Path, "write_text", write_text)
    code, _, err = run(capsys, "sweep", "--task", "tracr-reverse", "--ablation", "zero", "--trials", "10",
                       "--out", str(out), "-q")  # fmt: skip
    assert code == 2 and err.count("\n") == 1, err
    assert "disk is full" in err and "trials/2/circuit.json" in err and default_storage(out) in err, err
    states = [t.state.name for t in load(out).trials]
    assert states == ["COMPLETE", "COMPLETE", "FAIL"] and len(saved) == 3


def test_a_heartbeat_that_meets_a_full_disk_is_not_a_thread_traceback(tmp_path):
    """Heartbeats are written in Optuna's own thread, where a full disk would print a thread
    traceback and end the heartbeats; the trial's own writes report the full disk."""
    import sqlalchemy

    storage = open_storage(default_storage(tmp_path))
    with pytest.warns(UserWarning, match="Heartbeat of storage"):  # (a trial outside Study.optimize)
        trial = optuna.create_study(storage=storage, study_name="s", directions=["minimize"]).ask()

    @sqlalchemy.event.listens_for(storage.engine, "before_cursor_execute")
    def full(conn, cursor, statement, *args):
        if "trial_heartbeats" in statement and not statement.lstrip().startswith("SELECT"):
            raise sqlite3.OperationalError("database or disk is full")

    storage.record_heartbeat(trial._trial_id)  # no error
    with pytest.raises(optuna.exceptions.StorageInternalError):  # (what Optuna's own storage does)
        optuna.storages.RDBStorage.record_heartbeat(storage, trial._trial_id)


@pytest.fixture(scope="module")
def finished_sweep(tmp_path_factory) -> Path:
    """A small finished sweep with a front (copy it before changing it)."""
    out = tmp_path_factory.mktemp("finished") / "sweep"
    code = main(["sweep", "--task", "tracr-reverse", "--ablation", "zero", "--trials", "4", "--threshold-range",
                 "1e-9", "10", "--sampler-seed", "0", "--out", str(out), "-q"])  # fmt: skip
    assert code == 0 and json.loads((out / "pareto.json").read_text())["points"]
    return out


def _report_files(out: Path) -> dict[str, bytes]:
    return {name: (out / name).read_bytes() for name in ("pareto.json", "sweep.svg", "sweep.html")}


@pytest.mark.parametrize("content,message", [(b"", "is empty (0 bytes)"),
                                             (b"some notes, not a database", "is not a SQLite database")])  # fmt: skip
def test_an_empty_or_foreign_study_file_is_refused(content, message, finished_sweep, tmp_path, capsys):
    """A 0-byte sweep.db in a finished sweep directory used to become a new, empty study,
    and `--trials 0` replaced the report's front with nothing; such a file (or one that
    is no SQLite database) is refused with one line naming it, and the report stays."""
    out = tmp_path / "sweep"
    shutil.copytree(finished_sweep, out)
    (out / "sweep.db").write_bytes(content)
    report = _report_files(out)
    for argv in (["sweep", "--out", str(out), "--trials", "0", "-q"],
                 ["sweep", "--ablation", "zero", "--out", str(out), "--trials", "2", "-q"],
                 ["sweep-worker", "--storage", default_storage(out), "-q"]):  # fmt: skip
        code, _, err = run(capsys, *argv)
        assert code == 2 and err.count("\n") == 1, (argv, err)
        assert f"{out / 'sweep.db'} {message}" in err and "--storage" in err, err
        assert (out / "sweep.db").read_bytes() == content and _report_files(out) == report


def test_an_empty_front_never_replaces_a_report_with_points(finished_sweep, tmp_path, capsys, caplog):
    """Independently of the check above: a study with no completed trial (here a new one,
    sweep.db having gone) does not overwrite a report that has front points; the old
    report stays, and a warning says so."""
    out = tmp_path / "sweep"
    shutil.copytree(finished_sweep, out)
    (out / "sweep.db").unlink()
    report = _report_files(out)
    n = len(json.loads(report["pareto.json"])["points"])
    with caplog.at_level("WARNING", logger="circuitdag"):
        code, stdout, err = run(capsys, "sweep", "--ablation", "zero", "--out", str(out), "--trials", "0", "-q")
    assert code == 0, err
    assert _report_files(out) == report
    [warning] = [r.getMessage() for r in caplog.records]
    assert f"kept {out / 'pareto.json'} ({n} front point" in warning and "has no completed trial" in warning
    assert "has 0 trials" in stdout


def test_a_file_size_limit_is_named_as_such(tmp_path):
    """Under ``ulimit -f`` SQLite says "disk I/O error" and a file write EFBIG: the one line
    names the limit (it said "disk I/O error", which sends a user to check their disk)."""
    import subprocess
    import sys

    limit = 80_000
    out = tmp_path / "sweep"
    argv = ["sweep", "--task", "tracr-reverse", "--ablation", "zero", "--trials", "200", "--threads", "1", "-q",
            "--out", str(out)]  # fmt: skip
    # The limit is set inside the child (no preexec_fn: forking a process that has loaded JAX warns).
    code = (f"import resource, sys; resource.setrlimit(resource.RLIMIT_FSIZE, ({limit}, {limit})); "
            f"from circuitdag.cli import main; sys.exit(main({argv!r}))")  # fmt: skip
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=600, check=False)
    assert done.returncode == 2 and done.stderr.count("\n") == 1, done.stderr[-2000:]
    assert f"the file size limit (ulimit -f: {limit} bytes) is reached" in done.stderr, done.stderr
    assert "completed trials are kept" in done.stderr
