"""Smoke test of benchmarks/methods.py (every method side by side) on one tiny tracr task,
and its rank-based ROC AUC against a brute-force threshold sweep."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from circuitdag.discovery import run_acdc
from circuitdag.prepare import prepare
from circuitdag.tasks import get_task

BENCH = Path(__file__).resolve().parents[1] / "benchmarks" / "methods.py"


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location("benchmark_methods", BENCH)
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod  # dataclasses look their module up here
    try:
        spec.loader.exec_module(mod)
        yield mod
    finally:
        sys.modules.pop(spec.name, None)


def test_rank_auc_is_the_area_under_every_threshold(bench) -> None:
    rng = np.random.default_rng(0)
    for _ in range(20):
        n = 30
        scores = rng.choice([-2.0, -0.5, 0.0, 0.5, 1.0, 3.0, np.nan], n)  # ties, signs and NaN
        truth = rng.random(n) < 0.3
        counted = rng.random(n) < 0.8
        truth[np.flatnonzero(counted)[:1]] = True
        truth[np.flatnonzero(counted)[1:2]] = False
        mag = np.where(np.isnan(scores), -np.inf, np.abs(scores))[counted]
        y = truth[counted]
        # Keep every edge with |score| >= t, for every distinct t from the highest down: the
        # ROC's corners (fpr and tpr both grow), joined by straight lines from (0, 0).
        fpr = [0.0] + [(mag[~y] >= t).mean() for t in np.unique(mag)[::-1]]
        tpr = [0.0] + [(mag[y] >= t).mean() for t in np.unique(mag)[::-1]]
        area = sum((fpr[i + 1] - fpr[i]) * (tpr[i] + tpr[i + 1]) / 2 for i in range(len(fpr) - 1))
        # ... = the probability that a true edge outranks a false one, ties counted half.
        pairs = np.mean([(p > q) + 0.5 * (p == q) for p in mag[y] for q in mag[~y]])
        auc = bench.rank_auc(scores, truth, counted)
        assert auc == pytest.approx(area, abs=1e-12) and auc == pytest.approx(pairs, abs=1e-12)
    assert bench.rank_auc(np.ones(4), np.ones(4, dtype=bool), np.ones(4, dtype=bool)) is None


def test_quick_run_on_a_tracr_task(bench, tmp_path, capsys) -> None:
    out = tmp_path / "methods.json"
    assert bench.main(["--quick", "--tasks", "tracr-proportion", "--ugs-steps", "10", "--json", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "== tracr-proportion" in printed and "== summary over 1 tasks" in printed
    for m in bench.METHODS:
        assert sum(line.startswith(f"{m} ") for line in printed.splitlines()) == 2  # task table + summary

    doc = json.loads(out.read_text())
    assert doc["settings"]["threads"] == torch.get_num_threads()
    (task,) = doc["tasks"]
    rows = {r["method"]: r for r in task["rows"]}
    assert list(rows) == list(bench.METHODS)
    k = task["k"]
    assert 0 < k < task["n_edges"]
    assert task["prefilter"] == min(task["n_edges"], 3 * k)

    # Full ACDC: the same circuit and faithfulness as a separate run on a fresh patcher.
    t = get_task("tracr-proportion")
    patcher, _ = prepare(t.load_model(dtype=torch.float32), t)
    ref = run_acdc(patcher, t.default_threshold)
    acdc = rows["acdc"]
    assert acdc["edges"] == acdc["selected"] == ref.n_edges == k
    assert acdc["faithfulness"] == pytest.approx(ref.faithfulness(), abs=1e-6)
    assert acdc["faithfulness"] == pytest.approx(1.0, abs=1e-3)  # tracr: the exact ground truth
    assert acdc["jaccard"] == acdc["recall"] == 1.0
    assert acdc["auc"] == 1.0 and acdc["sweep_auc"] is None  # --quick: no sweep
    assert acdc["tested"] > 0

    for m in bench.METHODS[1:]:  # every method but ACDC: top-k, k = ACDC's size, then pruned
        if m != "acdc-pre":
            assert rows[m]["selected"] == k and rows[m]["edges"] <= k
            assert rows[m]["tested"] is None and rows[m]["sweep_auc"] is None
    assert rows["acdc"]["precision"] == rows["acdc"]["truth_recall"] == 1.0  # ACDC finds the ground truth
    assert rows["edge-pruning"]["precision"] == rows["edge-pruning"]["truth_recall"] == 1.0  # at its size
    assert rows["acdc-pre"]["tested"] <= task["prefilter"]
    for r in rows.values():
        assert 0 <= r["jaccard"] <= r["recall"] <= 1
        assert 0 <= r["auc"] <= 1
        assert -1 <= r["cpr"] <= 1 and r["cmd"] >= 0
        assert r["seconds"] > 0 and r["stable"]
        assert 0 <= r["truth_recall"] <= 1
        assert (r["precision"] is None) == (r["edges"] == 0) and (r["precision"] is None or 0 <= r["precision"] <= 1)
