"""Smoke tests of benchmarks/acdc_speed.py and of the circuitdag side of
benchmarks/vs_auto_circuit.py (the auto-circuit side needs .venv-autocircuit and is not
run here). No timings are checked."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[1] / "benchmarks"


def _load(name: str):
    spec = importlib.util.spec_from_file_location(f"benchmark_{name}", BENCH / f"{name}.py")
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod  # dataclasses look their module up here
    spec.loader.exec_module(mod)
    return mod


@pytest.fixture(scope="module")
def speed():
    yield _load("acdc_speed")
    sys.modules.pop("benchmark_acdc_speed", None)


@pytest.fixture(scope="module")
def vs():
    yield _load("vs_auto_circuit")
    sys.modules.pop("benchmark_vs_auto_circuit", None)


def test_acdc_speed_best_of_n(speed, tmp_path, capsys) -> None:
    out = tmp_path / "rows.json"
    args = ["--only", "tracr-proportion/resample", "--reps", "2", "--layer-path", "--json", str(out)]
    assert speed.main(args) == 0
    printed = capsys.readouterr().out
    assert "tracr-proportion/resample" in printed and "identical on 1/1" in printed
    (row,) = json.loads(out.read_text())
    assert len(row["s_ref"]) == len(row["s_fast"]) == len(row["s_layers"]) == 2 and row["identical"] is True
    assert 0 < row["tested"] <= row["edges"] and row["fast_per_edge"] > 0


@pytest.mark.parametrize("positions", [False, True])
def test_vs_auto_circuit_circuitdag_side(vs, tmp_path, positions) -> None:
    """The dataset round trip (auto-circuit's JSON format -> circuitdag's TaskData) keeps
    circuitdag's own prompts, the MSE metric runs, and the projection of circuitdag's
    circuit onto auto-circuit's edges is closed under auto-circuit's path pruning."""
    case = vs.Case("xproportion", "tracr-proportion", "mse", 16, positions, (1, -3))
    path = tmp_path / "data.json"
    shape = vs.write_dataset(case, path)
    doc = json.loads(path.read_text())
    assert len(doc["prompts"]) == 16 and set(doc["prompts"][0]) == {
        "clean",
        "corrupt",
        "answers",
        "wrong_answers",
    }
    spec = {"task": case.task, "data": str(path), "metric": "mse", "n_prompts": 16, "positions": positions,
            "threshold": case.threshold, "dtype": "float64", "seed": 0}  # fmt: skip
    side = vs.CircuitdagCase(spec)
    fast, ref = side.run("fast"), side.run("reference")
    assert fast["kept"] == ref["kept"] and fast["n_kept"] > 0
    kept = vs.prune(fast["kept"], causal=False, n_pos=shape["seq_len"])
    if not positions:  # the same graph: circuitdag's circuit is already pruned to paths
        assert kept == {tuple(e) for e in fast["kept"]}
    assert vs.prune([list(e) for e in kept], causal=False, n_pos=shape["seq_len"]) == kept
    assert {e[2] for e in kept} <= {"q", "k", "v", "mlp", "resid"}
