"""A sweep shared through a real PostgreSQL server (scripts/ci_postgres.sh): two
``sweep-worker`` processes pull trials from one study, and every trial is recorded once."""

from __future__ import annotations

import collections
import json
import os
import subprocess
import sys
from pathlib import Path

import optuna
import pytest

from circuitdag.cli import main
from circuitdag.sweep import open_storage

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "scripts" / "ci_postgres.sh"
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "NUMBA_NUM_THREADS": "1"}
CANNOT_INSTALL = 3  # the script's exit status when PostgreSQL is missing and cannot be installed


@pytest.fixture(scope="module")
def postgres_url():
    res = subprocess.run(["bash", str(SCRIPT), "start"], check=False, capture_output=True, text=True, timeout=600)
    if res.returncode == CANNOT_INSTALL:
        pytest.fail(f"the PostgreSQL tests need PostgreSQL, which cannot be installed here: {res.stderr.strip()}",
                    pytrace=False)
    assert res.returncode == 0, res.stderr
    found = dict(line.split("=", 1) for line in res.stdout.splitlines() if "=" in line)
    try:
        yield found["POSTGRES_URL"]
    finally:
        subprocess.run(["bash", str(SCRIPT), "stop", found["POSTGRES_DIR"]], check=True, capture_output=True,
                       timeout=120)  # fmt: skip


@pytest.mark.slow
def test_two_workers_share_one_study(postgres_url, tmp_path, capsys):
    out = tmp_path / "shared"
    sweep = ["sweep", "--task", "tracr-reverse", "--ablation", "zero", "--trials", "0", "--storage", postgres_url,
             "--study", "shared", "--out", str(out), "-q"]  # fmt: skip
    assert main(sweep) == 0, capsys.readouterr().err  # creates the study, runs no trial

    per_worker = (3, 4)
    cmd = [sys.executable, "-m", "circuitdag.cli", "sweep-worker", "--storage", postgres_url, "--study", "shared", "-q"]
    procs = [subprocess.Popen([*cmd, "--trials", str(n)], env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              text=True) for n in per_worker]  # fmt: skip
    results = [p.communicate(timeout=300) for p in procs]
    for p, (_, err) in zip(procs, results):
        assert p.returncode == 0, err

    study = optuna.load_study(study_name="shared", storage=open_storage(postgres_url))
    trials = study.get_trials(deepcopy=False)
    assert len(trials) == sum(per_worker)
    assert sorted(t.number for t in trials) == list(range(sum(per_worker)))
    assert all(t.state.name == "COMPLETE" for t in trials), [(t.number, t.state.name) for t in trials]
    # Each worker ran exactly the trials it was asked for, in its own process.
    by_worker = collections.Counter(t.user_attrs["worker"] for t in trials)
    assert sorted(by_worker.values()) == sorted(per_worker)
    for t in trials:
        assert Path(t.user_attrs["circuit"]) == out.resolve() / "trials" / str(t.number) / "circuit.json"
        assert json.loads(Path(t.user_attrs["circuit"]).read_text())["n_edges"] == t.values[0]
    # The settings came from the study: the workers were told only the storage and its name.
    assert {t.user_attrs["ablation"] for t in trials} == {"zero"}
    # Rerunning the sweep with --trials 0 rewrites the report from the shared storage.
    assert main(sweep) == 0 and "has 7 trials (7 complete, 0 failed, 0 running)" in capsys.readouterr().out
    doc = json.loads((out / "pareto.json").read_text())
    assert doc["storage"] == postgres_url and doc["trials"]["complete"] == sum(per_worker)
