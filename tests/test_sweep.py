"""Threshold sweeps: the Pareto front, failed trials, continuing a killed sweep, workers."""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
import time
import xml.etree.ElementTree as ET
from pathlib import Path

import optuna
import pytest
import torch

import circuitdag.discovery as RUNNER  # where a trial runs its method
from circuitdag.cli import main
from circuitdag.errors import ConfigError
from circuitdag.io import load_circuit
from circuitdag.sweep import (
    TARGET_ATTR,
    default_storage,
    make_settings,
    open_storage,
    pareto_front,
    sweep,
    work,
)
from circuitdag.tasks import get_task

torch.set_num_threads(1)
# Subprocesses share the machine with other jobs: one thread each.
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "NUMBA_NUM_THREADS": "1"}


def run(capsys, *argv):
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def load(out: Path, name: str = "tracr-reverse") -> optuna.Study:
    return optuna.load_study(study_name=name, storage=default_storage(out))


def test_pareto_front_keeps_exactly_the_non_dominated_points():
    points = [(8, 0.99), (8, 0.99), (10, 0.98), (0, 0.0), (77, 1.0), (5, 0.5), (6, 0.4), (8, 0.9)]
    assert pareto_front(points) == [0, 1, 3, 4, 5]
    assert pareto_front([]) == []


@pytest.mark.slow
def test_ground_truth_is_on_the_front(tmp_path, capsys):
    """20 trials on tracr-reverse (zero ablation): the compiled model's true circuit is a
    front point, and --target-faithfulness copies it to best/."""
    out = tmp_path / "sweep"
    code, stdout, err = run(capsys, "sweep", "--task", "tracr-reverse", "--ablation", "zero", "--trials", "20",
                            "--sampler-seed", "0", "--target-faithfulness", "0.99", "--out", str(out), "-q")  # fmt: skip
    assert code == 0, err
    assert "Pareto front (edges vs faithfulness)" in stdout and "best (faithfulness >= 0.99)" in stdout
    truth = get_task("tracr-reverse").ground_truth("zero")

    doc = json.loads((out / "pareto.json").read_text())
    assert doc["format"] == "circuitdag.pareto/1" and doc["trials"] == {"total": 20, "complete": 20}
    fronts = [load_circuit(out / p["circuit"]) for p in doc["points"]]
    assert any(c.edge_names == truth for c in fronts), [(p["edges"], p["faithfulness"]) for p in doc["points"]]
    edges = [p["edges"] for p in doc["points"]]
    assert edges == sorted(edges) and len(set(edges)) == len(edges)  # a front: fewer edges, less faithful
    for p in doc["points"]:
        assert set(p) >= {"trial", "threshold", "metric", "ablation", "edges", "faithfulness", "circuit"}
        assert p["ablation"] == "zero" and p["metric"] == "l2" and p["trial"] in p["trials"]

    best = load_circuit(out / "best" / "circuit.json")
    assert best.edge_names == truth and best.faithfulness() >= 0.99
    assert (out / "best" / "circuit.svg").read_text().lstrip().startswith("<?xml")
    assert (out / "best" / "circuit.html").read_text().startswith("<!DOCTYPE html>")  # the explorer page
    assert all(p["html"] == f"trials/{p['trial']}/circuit.html" and (out / p["html"]).exists() for p in doc["points"])

    study = load(out)
    assert study.directions == [optuna.study.StudyDirection.MINIMIZE, optuna.study.StudyDirection.MAXIMIZE]
    for t in study.trials:
        a = t.user_attrs
        c = load_circuit(a["circuit"])
        assert Path(a["circuit"]) == out.resolve() / "trials" / str(t.number) / "circuit.json"
        assert t.values == [c.n_edges, c.faithfulness()] == [a["edges"], a["faithfulness"]]
        assert 1e-6 <= t.params["threshold"] <= 1.0 and c.meta["threshold"] == t.params["threshold"]
    assert study.user_attrs["circuitdag.sweep"]["ablations"] == ["zero"]

    svg = ET.fromstring((out / "sweep.svg").read_text())  # well-formed, drawn by matplotlib
    front = svg.find(".//{http://www.w3.org/2000/svg}g[@id='front']")
    assert front is not None and len(list(front.iter("{http://www.w3.org/2000/svg}use"))) == len(doc["points"])
    page = (out / "sweep.html").read_text()
    assert 'id="pareto-plot"' in page and "Pareto front" in page and page.count('<tr data-trial="') == 20


def test_failed_trials_are_recorded_and_a_worker_stops_at_the_target(tmp_path, monkeypatch):
    """A trial that raises is FAIL with its error, the sweep goes on; a worker without
    --trials runs until the study holds the number of trials the sweep asked for."""
    out = tmp_path / "sweep"
    settings = make_settings("tracr-reverse", out, ablation="zero")
    sweep(settings, 0)  # creates the study, runs nothing (and loads no model)
    study = load(out)
    assert study.trials == [] and study.user_attrs.get(TARGET_ATTR, 0) == 0
    study.set_user_attr(TARGET_ATTR, 4)  # as if `sweep --trials 4` were running elsewhere

    real, calls = RUNNER.run_algorithm, []

    def flaky(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            raise RuntimeError("out of memory (simulated)")
        return real(*args, **kwargs)

    monkeypatch.setattr(RUNNER, "run_algorithm", flaky)
    report = work(default_storage(out), sampler_seed=0)
    states = [t.state.name for t in load(out).trials]
    assert states == ["COMPLETE", "FAIL", "COMPLETE", "COMPLETE"]
    failed = load(out).trials[1]
    assert failed.user_attrs["error"] == "RuntimeError: out of memory (simulated)"
    assert report.counts == {"total": 4, "complete": 3, "fail": 1}
    assert [r["error"] for r in report.trials if r["state"] == "FAIL"] == ["RuntimeError: out of memory (simulated)"]
    work(default_storage(out))  # target reached: nothing to do
    assert len(load(out).trials) == 4 and len(calls) == 4


def test_rerun_with_other_settings_is_refused(tmp_path, capsys):
    out = str(tmp_path / "s")
    code, _, err = run(capsys, "sweep", "--ablation", "zero", "--trials", "0", "--out", out, "-q")
    assert code == 0, err
    code, _, err = run(capsys, "sweep", "--ablation", "mean", "--trials", "1", "--out", out, "-q")
    assert code == 2 and "was started with other settings" in err and "ablation zero" in err
    assert err.count("\n") == 1
    # --trials 0 only rewrites the report, from the study's own settings whatever the flags say.
    code, _, err = run(capsys, "sweep", "--ablation", "mean", "--trials", "0", "--out", out, "-q")
    assert code == 0, err
    assert json.loads((tmp_path / "s" / "pareto.json").read_text())["settings"]["ablations"] == ["zero"]


@pytest.mark.parametrize(
    "argv,message",
    [
        (["--search", "threshold,layers"], "cannot search layers"),
        (["--metric", "kl,l2"], "add metric to --search"),
        (["--search", "threshold,metric", "--metric", "kl,accuracy"], "unknown metric 'accuracy'"),
        (["--search", "ablation", "--ablation", "zero,negate"], "unknown ablation 'negate'"),
        (["--threshold-range", "1", "0.1"], "--threshold-range needs 0 < LO < HI"),
        (["--threshold-range", "x", "1"], "--threshold-range must be a number"),
        (["--trials", "-1"], "--trials must be >= 0"),
        (["--trials", "many"], "--trials must be a whole number"),
        (["--target-faithfulness", "high"], "--target-faithfulness must be a number"),
        (["--task", "no-such-task"], "unknown task 'no-such-task'"),
    ],
)
def test_bad_sweep_options_give_one_line_errors(argv, message, tmp_path, capsys):
    code, _, err = run(capsys, "sweep", *argv, "--out", str(tmp_path / "s"), "-q")
    assert code == 2 and message in err and err.count("\n") == 1, err


def test_worker_needs_an_existing_study(tmp_path, capsys):
    storage = default_storage(tmp_path)
    code, _, err = run(capsys, "sweep-worker", "--storage", storage, "--study", "nope", "-q")
    assert code == 2 and "no study 'nope'" in err and "--trials 0" in err and "discover --bootstrap B" in err
    code, _, err = run(capsys, "sweep-worker", "--storage", "notadb://x", "-q")
    assert code == 2 and "circuitdag: error:" in err


def test_positions_reach_prepare(tmp_path, capsys, monkeypatch):
    """--positions is passed to prepare(); its refusal surfaces as the command's error."""
    seen = {}

    def fake_prepare(model, task, metric=None, ablation=None, seed=0, positions=False):
        seen["positions"] = positions
        raise ConfigError("task tracr-reverse has no named positions (fake)")

    monkeypatch.setattr(sys.modules["circuitdag.prepare"], "prepare", fake_prepare)
    code, _, err = run(capsys, "sweep", "--ablation", "zero", "--positions", "--trials", "1",
                       "--out", str(tmp_path / "s"), "-q")  # fmt: skip
    assert code == 2 and "has no named positions (fake)" in err and seen == {"positions": True}


def _count(db: Path, state: str) -> int:
    try:
        with sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=30) as con:
            return con.execute("SELECT count(*) FROM trials WHERE state = ?", (state,)).fetchone()[0]
    except sqlite3.OperationalError:  # not created yet
        return 0


def _running_with_worker(db: Path) -> int:
    try:
        with sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=30) as con:
            return con.execute(
                "SELECT count(*) FROM trials t JOIN trial_user_attributes a ON a.trial_id = t.trial_id "
                "WHERE t.state = 'RUNNING' AND a.key = 'worker'"
            ).fetchone()[0]
    except sqlite3.OperationalError:
        return 0


@pytest.mark.slow
def test_killed_sweep_continues(tmp_path):
    """Kill -9 a sweep in the middle of a trial, rerun the same command: the completed
    trials are untouched, the killed one is FAIL, and the new trials add up."""
    out = tmp_path / "sweep"
    db = out / "sweep.db"
    cmd = [sys.executable, "-m", "circuitdag.cli", "sweep", "--task", "tracr-reverse", "--ablation", "zero",
           "--sampler-seed", "0", "--out", str(out), "-q"]  # fmt: skip
    proc = subprocess.Popen([*cmd, "--trials", "200"], env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 150
        while not (_count(db, "COMPLETE") >= 3 and _running_with_worker(db)):
            assert proc.poll() is None, proc.stderr.read().decode() if proc.stderr else ""
            assert time.monotonic() < deadline, "the sweep made no progress"
            time.sleep(0.05)
    finally:
        proc.kill()
        proc.wait()
        if proc.stderr:
            proc.stderr.close()

    before = {t.number: t for t in load(out).trials}
    done = {n: t for n, t in before.items() if t.state.name == "COMPLETE"}
    killed = [n for n, t in before.items() if t.state.name == "RUNNING"]
    assert len(done) >= 3 and len(killed) == 1

    res = subprocess.run([*cmd, "--trials", "3"], check=False, env=ENV, capture_output=True, text=True, timeout=240)
    assert res.returncode == 0, res.stderr
    after = {t.number: t for t in load(out).trials}
    assert len(after) == len(before) + 3 and sorted(after) == list(range(len(after)))
    assert sum(t.state.name == "COMPLETE" for t in after.values()) == len(done) + 3
    assert after[killed[0]].state.name == "FAIL" and "ended while the trial ran" in after[killed[0]].user_attrs["error"]
    for n, t in done.items():
        a = after[n]
        assert (a.state, a.values, a.params, a.user_attrs, a.datetime_complete) == (
            t.state, t.values, t.params, t.user_attrs, t.datetime_complete)  # fmt: skip
    doc = json.loads((out / "pareto.json").read_text())
    assert doc["trials"]["total"] == len(after) and doc["trials"]["fail"] == 1


_OPEN_AT = """
import sys, time
from circuitdag.sweep import open_storage
print("ready", flush=True)  # imported: the test sends the instant of the first round
start, urls = float(sys.stdin.readline()), sys.argv[1:]
for i, url in enumerate(urls):
    time.sleep(max(0.0, start + 0.4 * i - time.time() - 0.005))
    while time.time() < start + 0.4 * i:  # the last 5 ms spinning: the three open at the same instant
        pass
    try:
        open_storage(url)
        print("ok", flush=True)
    except Exception as exc:
        print(f"{type(exc).__name__}: {exc}", flush=True)
"""


@pytest.mark.slow
def test_processes_open_a_new_sqlite_file_at_the_same_instant(tmp_path):
    """Three processes open the same new SQLite file at the same instant, six times over
    (before the schema lock, 5 of 6 rounds failed with 'table studies already exists' or
    a UNIQUE constraint on alembic_version); every open succeeds and the schema is usable."""
    urls = [f"sqlite:///{tmp_path / f'round{i}' / 'sweep.db'}" for i in range(6)]
    procs = [subprocess.Popen([sys.executable, "-c", _OPEN_AT, *urls], env=ENV, stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(3)]  # fmt: skip
    for p in procs:  # all three have imported (a fixed wait spun three processes for seconds)
        assert p.stdout is not None and p.stdout.readline() == "ready\n", p.communicate(timeout=120)
    start = time.time() + 0.2
    for p in procs:
        assert p.stdin is not None
        p.stdin.write(f"{start!r}\n")
        p.stdin.flush()
    results = [p.communicate(timeout=120) for p in procs]
    for out, err in results:
        assert out.splitlines() == ["ok"] * len(urls), out + err
    study = optuna.create_study(storage=urls[0], study_name="s", directions=["minimize"])
    assert study.study_name == "s"


def test_an_unusable_sqlite_file_is_named_as_a_file(tmp_path):
    bad = tmp_path / "sweep.db"
    bad.write_text("this is not a database")
    with pytest.raises(ConfigError, match=r"sweep\.db is not a SQLite database.*--out/--storage") as info:
        open_storage(f"sqlite:///{bad}")
    assert "server" not in str(info.value)


@pytest.mark.slow
def test_two_sweeps_start_on_a_new_directory_at_once(tmp_path):
    """The reported case: two `sweep --trials 6 --out D` started together on a new D. One
    used to die with an IntegrityError on alembic_version and a hint about "the database
    server"; both finish, and the study holds their trials."""
    out = tmp_path / "D"
    cmd = [sys.executable, "-m", "circuitdag.cli", "sweep", "--task", "tracr-reverse", "--ablation", "zero",
           "--trials", "6", "--out", str(out), "-q", "--threads", "1"]  # fmt: skip
    procs = [subprocess.Popen(cmd, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for _ in range(2)]  # fmt: skip
    results = [p.communicate(timeout=300) for p in procs]
    for p, (_, err) in zip(procs, results):
        assert p.returncode == 0, err
    study = load(out)
    assert sum(t.state.name == "COMPLETE" for t in study.trials) >= 6
    assert json.loads((out / "pareto.json").read_text())["trials"].get("fail", 0) == 0
