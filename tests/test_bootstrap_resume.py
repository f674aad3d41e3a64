"""An interrupted bootstrap resumed ends exactly as an uninterrupted one (fresh-user report D4,
D8): in-process, the finished resamples kept in the run's journal (circuitdag.bootstrap_journal)
survive Ctrl-C and a hard kill, and ``discover --resume`` continues from them; with
``--storage``, a resample is keyed by its slot, so the rerun of a failed trial draws the
failed one's resample. ACDC reruns use ``k_max=1``: with its default the candidate batch size
follows timings, and a float32 score then differs in the last bits from run to run,
interrupted or not."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import warnings

import numpy as np
import pytest

import circuitdag as cd
import circuitdag.attribution
import circuitdag.bootstrap
from circuitdag.algorithms import get_algorithm
from circuitdag.bootstrap import bootstrap
from circuitdag.bootstrap_journal import JOURNAL_NAME, Journal, finished
from circuitdag.errors import ConfigError
from circuitdag.holdout import heldout_patcher
from circuitdag.prepare import prepare
from circuitdag.sweep.resamples import claim_slot
from circuitdag.tasks import get_task

B = 6


@pytest.fixture(scope="module")
def run():
    task = get_task("pronoun")
    model = task.load_model()
    patcher, _ = prepare(model, task, n_prompts=16)
    circuit = cd.discover(model, task, "acdc", n_prompts=16)
    meta = {**circuit.meta, "heldout": {"how": "task"}}
    held = heldout_patcher(task, model, patcher, meta)
    return patcher, held, circuit.in_circuit, meta, float(circuit.meta["threshold"])


def _interrupt_at(monkeypatch, module, name: str, call: int) -> None:
    """``module.name`` raises KeyboardInterrupt on its ``call``-th call (1-based)."""
    orig, calls = getattr(module, name), [0]

    def wrapped(*a, **k):
        calls[0] += 1
        if calls[0] == call:
            raise KeyboardInterrupt
        return orig(*a, **k)

    monkeypatch.setattr(module, name, wrapped)


def _same(a: dict, b: dict) -> None:
    assert json.dumps(a, sort_keys=True) == json.dumps(b, sort_keys=True)


@pytest.mark.parametrize(("algorithm", "where", "call"), [
    ("acdc", "rerun_on", 4),  # during the 4th rerun
    ("eap-ig", "heldout_faithfulness", 3),  # per-prompt path, during the 3rd resample
    ("eap-ig", "attribute", 7),  # per-prompt path, before any resample: during prompt 7's scores
])  # fmt: skip
def test_an_interrupted_bootstrap_resumed_is_the_uninterrupted_one(run, tmp_path, monkeypatch, algorithm, where, call):
    patcher, held, alive, _, thr = run
    method = get_algorithm(algorithm)
    opts = method.check({"threshold": thr, "k_max": 1} if algorithm == "acdc" else {})
    want = bootstrap(patcher, method, opts, B, alive, held, seed=3)
    path = tmp_path / JOURNAL_NAME
    module = circuitdag.attribution if where == "attribute" else circuitdag.bootstrap
    with monkeypatch.context() as m:
        _interrupt_at(m, module, where, call)
        with pytest.raises(KeyboardInterrupt):
            bootstrap(patcher, method, opts, B, alive, held, seed=3, journal=Journal(path, "k"))
    resamples, prompts = finished(path)
    kept_before = {"rerun_on": (3, 0), "heldout_faithfulness": (2, patcher.B), "attribute": (0, 6)}
    assert (resamples, prompts) == kept_before[where]
    again = Journal(path, "k", resume=True)
    assert len(again.resamples) == resamples and len(again.prompts) == prompts
    if where == "rerun_on":  # only the missing resamples rerun
        _interrupt_at(monkeypatch, circuitdag.bootstrap, "rerun_on", B - resamples + 1)
    _same(bootstrap(patcher, method, opts, B, alive, held, seed=3, journal=again), want)


def test_a_line_a_hard_kill_cut_short_is_run_again(run, tmp_path):
    patcher, held, alive, _, thr = run
    method = get_algorithm("acdc")
    opts = method.check({"threshold": thr, "k_max": 1})
    path = tmp_path / JOURNAL_NAME
    want = bootstrap(patcher, method, opts, 4, alive, held, journal=Journal(path, "k"))
    assert finished(path) == (4, 0)
    lines = path.read_text().split("\n")
    path.write_text("\n".join(lines[:3]) + "\n" + lines[3][: len(lines[3]) // 2])  # resample 2 cut mid-line
    again = Journal(path, "k", resume=True)
    assert sorted(again.resamples) == [0, 1]
    _same(bootstrap(patcher, method, opts, 4, alive, held, journal=again), want)
    assert sorted(Journal(path, "k", resume=True).resamples) == [0, 1, 2, 3]  # the cut line did not spoil the next


def test_resume_refuses_the_resamples_of_another_run(tmp_path):
    path = tmp_path / JOURNAL_NAME
    j = Journal(path, "one")
    j.add_resample(0, np.array([True, False]), np.array([0.5, np.nan]), 1.0, None)
    j.close()
    with pytest.raises(ConfigError, match="another run.*rerun without --resume"):
        Journal(path, "other", resume=True)
    Journal(path, "other")  # without --resume: replaced
    assert not path.exists()


def _signal_at(monkeypatch, call: int, sig: int) -> None:
    """This process gets signal ``sig`` during its ``call``-th bootstrap rerun."""
    orig, calls = circuitdag.bootstrap.rerun_on, [0]

    def wrapped(*a, **k):
        calls[0] += 1
        if calls[0] == call:
            os.kill(os.getpid(), sig)
        return orig(*a, **k)

    monkeypatch.setattr(circuitdag.bootstrap, "rerun_on", wrapped)


def test_discover_killed_during_the_bootstrap_resumes_to_the_same_record(tmp_path, capsys, monkeypatch):
    """The CLI end to end: SIGKILL of a discover process (nothing of it runs after), then
    ``--resume`` twice ended by SIGTERM and by SIGINT (Ctrl-C), whose lines say what
    --resume continues from, then ``--resume`` to the end: the uninterrupted record."""
    from circuitdag.cli import main

    args = ["discover", "--task", "pronoun", "--n-prompts", "12", "--bootstrap", "8", "--k-max", "1", "--no-svg", "-q"]
    killed, journal = tmp_path / "killed", tmp_path / "killed" / JOURNAL_NAME
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "circuitdag.cli", *args, "--out", str(killed)], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
    try:
        deadline = time.monotonic() + 120
        while finished(journal)[0] < 2 and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.005)
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.wait()
    assert proc.returncode == -signal.SIGKILL and 2 <= finished(journal)[0] <= 4
    for sig, rc, how in ((signal.SIGTERM, 143, "terminated (SIGTERM)"), (signal.SIGINT, 130, "interrupted")):
        before = finished(journal)[0]
        with monkeypatch.context() as m:  # during the second rerun of the resumed run
            _signal_at(m, 2, sig)
            assert main([*args, "--out", str(killed), "--resume"]) == rc
        assert finished(journal)[0] == before + 1
        want_line = f"circuitdag: {how}; rerun with --resume to continue from the checkpoint and the {before + 1} " \
                    "finished bootstrap resamples\n"  # fmt: skip
        assert capsys.readouterr().err.endswith(want_line)
    assert main([*args, "--out", str(killed), "--resume"]) == 0
    assert not journal.exists()  # circuit.json holds the bootstrap now
    assert main([*args, "--out", str(tmp_path / "whole")]) == 0
    got, want = (json.loads((tmp_path / d / "circuit.json").read_text())["bootstrap"] for d in ("killed", "whole"))
    _same(got, want)


def _record(got: dict) -> dict:
    """A bootstrap record less where its trials ran (storage, study, trial numbers)."""
    return {k: v for k, v in got.items() if k not in ("storage", "study", "trials")}


BS = 4  # resamples of the storage tests (each trial commits a few SQLite transactions)


@pytest.fixture(scope="module")
def shared(run, tmp_path_factory):
    """(patcher, held-out patcher, circuit, run record, method, options, the uninterrupted
    storage bootstrap's record)."""
    from circuitdag.sweep.resamples import shared_bootstrap

    patcher, held, alive, meta, thr = run
    method = get_algorithm("acdc")
    opts = method.check({"threshold": thr, "k_max": 1})
    url = f"sqlite:///{tmp_path_factory.mktemp('whole') / 'whole.db'}"
    return patcher, held, alive, meta, method, opts, shared_bootstrap(patcher, held, method, opts, BS, alive, meta, url)


def test_a_storage_trial_failed_by_ctrl_c_is_rerun_on_its_own_resample(shared, tmp_path, monkeypatch):
    """D8: the rerun of the failed trial gets a new trial number but the failed one's slot,
    so the resumed study's record is the uninterrupted one's, bit for bit."""
    from circuitdag.sweep.resamples import shared_bootstrap

    patcher, held, alive, meta, method, opts, want = shared
    url = f"sqlite:///{tmp_path / 'cut.db'}"
    go = lambda: shared_bootstrap(patcher, held, method, opts, BS, alive, meta, url)
    with monkeypatch.context() as m:
        _interrupt_at(m, circuitdag.bootstrap, "rerun_on", 3)
        with pytest.raises(KeyboardInterrupt):
            go()
    got = go()
    assert got["slots"] == list(range(BS)) and got["trials"] == [0, 1, *range(3, BS + 1)]  # trial 2 failed
    _same(_record(got), _record(want))


def test_a_killed_sweep_worker_leaves_its_slot_to_the_next_trial(shared, tmp_path):
    """A ``sweep-worker`` SIGKILLed during slot 1 leaves what this test writes: slot 0
    finished, a RUNNING trial of slot 1 whose process is gone. ``discover`` (here
    :func:`shared_bootstrap`) fails that trial, reruns slot 1 in a new trial, and the record
    is the uninterrupted one's, bit for bit. (The storage state is made here rather than
    by killing a real worker: a worker process takes seconds to start.)"""
    import optuna

    from circuitdag.sweep.resamples import (
        ResampleRunner,
        open_study,
        shared_bootstrap,
        study_name,
        study_spec,
    )
    from circuitdag.sweep.storage import HOST

    patcher, held, alive, meta, method, opts, want = shared
    url = f"sqlite:///{tmp_path / 'killed.db'}"
    spec = study_spec(meta, method.name, opts, 0, alive)
    study = open_study(url, study_name(spec), spec, BS)
    study.optimize(ResampleRunner(patcher, held, method, opts, 0), n_trials=1)  # slot 0, as the worker ran it
    dead = subprocess.Popen(["sleep", "60"])
    dead.send_signal(signal.SIGKILL)
    dead.wait()
    with warnings.catch_warnings():  # "Heartbeat of storage is supposed to be used with Study.optimize"
        warnings.simplefilter("ignore", UserWarning)
        trial = study.ask()  # the killed worker's trial, left RUNNING with its slot claimed
    trial.set_user_attr("worker", f"{HOST}:{dead.pid}")
    assert trial.number == 1 and claim_slot(trial) == 1
    got = shared_bootstrap(patcher, held, method, opts, BS, alive, meta, url)
    assert study.get_trials()[1].state == optuna.trial.TrialState.FAIL
    assert got["slots"] == list(range(BS)) and got["trials"] == [0, *range(2, BS + 1)]
    _same(_record(got), _record(want))


def test_ctrl_c_in_a_storage_bootstrap_says_the_study_keeps_its_resamples(tmp_path, capsys, monkeypatch):
    from circuitdag.cli import main

    url = f"sqlite:///{tmp_path / 'b.db'}"
    _interrupt_at(monkeypatch, circuitdag.bootstrap, "rerun_on", 1)
    assert main(["discover", "--task", "pronoun", "--algorithm", "eap", "--n-prompts", "10", "--bootstrap", "2",
                 "--storage", url, "--no-svg", "-q", "--out", str(tmp_path / "o")]) == 130  # fmt: skip
    assert capsys.readouterr().err.endswith(f"continue from the finished resamples of the bootstrap study in {url}\n")
