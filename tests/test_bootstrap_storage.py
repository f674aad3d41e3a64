"""Bootstrap resamples as trials of an Optuna study (circuitdag.sweep.resamples): two
``sweep-worker`` processes take them from a SQLite storage, and the aggregate read back
from the storage equals the bootstrap computed here from the same resamples."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import circuitdag as cd
from circuitdag.algorithms import get_algorithm
from circuitdag.bootstrap import rerun_on, summarize
from circuitdag.errors import ConfigError
from circuitdag.holdout import heldout_patcher
from circuitdag.prepare import prepare
from circuitdag.sweep.resamples import (
    open_study,
    pack,
    read_back,
    resample_index,
    shared_bootstrap,
    study_name,
    study_spec,
    unpack,
)
from circuitdag.tasks import get_task

B = 4


@pytest.fixture(scope="module")
def run():
    task = get_task("pronoun")
    model = task.load_model()
    patcher, meta = prepare(model, task, n_prompts=40)
    circuit = cd.discover(model, task, "acdc", n_prompts=40)
    meta = {**circuit.meta, "heldout": {"how": "task"}}
    held = heldout_patcher(task, model, patcher, meta)
    assert held is not None and held.B == 40
    method = get_algorithm("acdc")
    options = method.check({"threshold": float(circuit.meta["threshold"])})
    return patcher, held, method, options, circuit.in_circuit, meta


def _worker(url: str, name: str) -> subprocess.Popen:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.Popen([sys.executable, "-m", "circuitdag.cli", "sweep-worker", "--storage", url, "--study",
                             name, "--trials", "2", "-q"], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)  # fmt: skip


def test_two_workers_share_the_resamples_and_the_aggregate_is_read_back(run, tmp_path):
    import optuna

    patcher, held, method, options, alive, meta = run
    url = f"sqlite:///{tmp_path / 'boot.db'}"
    spec = study_spec(meta, method.name, options, 0, alive)
    name = study_name(spec)
    open_study(url, name, spec, B)  # as discover creates it; the workers find it by name
    workers = [_worker(url, name) for _ in range(2)]
    for w in workers:
        out, err = w.communicate(timeout=600)
        assert w.returncode == 0, err
        assert f"bootstrap study {name!r}" in out
    study = optuna.load_study(study_name=name, storage=url)
    by = [t.user_attrs["worker"] for t in study.get_trials() if t.state.is_finished()]
    pids = {w.pid for w in workers}
    assert len(by) == B and {int(b.rsplit(":", 1)[1]) for b in by} == pids  # each worker ran 2 of the 4
    f0 = patcher.n_forward
    got = shared_bootstrap(patcher, held, method, options, B, alive, meta, url, seed=0)
    assert patcher.n_forward - f0 <= 3  # no rerun here: only the reported circuit's own intervals
    assert got["study"] == name and got["resamples"] == B and got["slots"] == list(range(B))
    assert sorted(got["trials"]) == list(range(B))  # one trial a slot, whichever worker claimed which
    # the same resamples computed in this process
    kept, scores, f_disc, f_held = [], [], [], []
    for k in got["slots"]:
        c, s, fd, fh = rerun_on(patcher, method, options, resample_index(0, k, patcher.B), held)
        kept.append(c), scores.append(s), f_disc.append(fd), f_held.append(fh)
    want = summarize(patcher, alive, kept, scores, f_disc, f_held, held, seed=0, reruns="method, one trial a resample")
    for key in ("faithfulness", "stability", "edges", "circuit_faithfulness_ci"):
        _close(got[key], want[key], key)
    # an interrupted discover: the study alone gives the summary of what it holds
    back = read_back(url, name, resamples=3)
    assert back["slots"] == [0, 1, 2] and back["trials"] == got["trials"][:3] and back["resamples"] == 3
    _close(back["faithfulness"]["discovery"]["values"], got["faithfulness"]["discovery"]["values"][:3], "values")


def _close(a, b, where):
    """Nested dicts and lists of numbers equal to rounding (None where None)."""
    if isinstance(a, dict):
        assert isinstance(b, dict) and a.keys() == b.keys(), where
        for k in a:
            _close(a[k], b[k], f"{where}.{k}")
    elif isinstance(a, list):
        assert isinstance(b, list) and len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b, strict=True)):
            _close(x, y, f"{where}[{i}]")
    elif a is None or b is None:
        assert a is b, where
    else:
        # float32 model; ACDC batches candidates by free memory, so rounding differs by process
        assert a == pytest.approx(b, rel=1e-5, abs=1e-5, nan_ok=True), where


def test_a_study_holding_another_bootstrap_is_refused(run, tmp_path):
    _, _, method, options, alive, meta = run
    url = f"sqlite:///{tmp_path / 'boot.db'}"
    spec = study_spec(meta, method.name, options, 0, alive)
    open_study(url, "mine", spec, B)
    with pytest.raises(ConfigError, match="another bootstrap"):
        open_study(url, "mine", {**spec, "seed": 1})


def test_a_rerun_whose_measured_values_differ_in_the_last_bits_finds_its_study(run, tmp_path):
    """The same command run again (e.g. with --resume, whose search reads the circuit's metric
    off another pass) measures the run's metrics to float precision only: it must find the
    same study and continue it (on SmolLM2 a resumed pronoun bootstrap started a new study,
    its 11 finished resamples left behind, for metric_circuit -3.211057424 vs -3.211056232)."""
    _, _, method, options, alive, meta = run
    url = f"sqlite:///{tmp_path / 'boot.db'}"
    spec = study_spec(meta, method.name, options, 0, alive)
    jitter = lambda v: v * (1 + 3e-7)
    held = {**meta.get("heldout", {}), "how": "seed", "metric_circuit": 1.0, "faithfulness": 0.5}
    again = study_spec({**meta, "heldout": {**held, "metric_circuit": jitter(1.0), "faithfulness": jitter(0.5)},
                        "metric_circuit": jitter(float(meta["metric_circuit"]))}, method.name, options, 0, alive)
    first = study_spec({**meta, "heldout": held}, method.name, options, 0, alive)
    assert again != first and study_name(again) == study_name(first)
    open_study(url, study_name(first), first, B)
    open_study(url, study_name(first), again, B)  # continues, no refusal
    other = alive.copy()
    other[np.flatnonzero(~alive)[0]] = True  # another circuit is another study
    assert study_name(study_spec(meta, method.name, options, 0, other)) != study_name(spec)
    with pytest.raises(ConfigError, match="another bootstrap"):
        open_study(url, study_name(first), {**first, "options": {**first["options"], "threshold": 0.123}})


def test_scores_survive_the_storage():
    x = np.array([0.1, -2.5e-9, np.nan, 3e7])
    np.testing.assert_array_equal(unpack(pack(x)), x)
    assert not np.array_equal(resample_index(0, 1, 50), resample_index(0, 2, 50))
    np.testing.assert_array_equal(resample_index(3, 1, 50), resample_index(3, 1, 50))


def test_discover_refuses_storage_without_bootstrap(tmp_path, capsys):
    from circuitdag.cli import main

    db = Path(tmp_path) / "b.db"
    assert main(["discover", "--task", "pronoun", "--storage", f"sqlite:///{db}", "--out", str(tmp_path)]) != 0
    assert "give --bootstrap B too" in capsys.readouterr().err
