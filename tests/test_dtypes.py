"""Half precision end to end on a zoo model: the hook check's tolerance follows the dtype
(bfloat16 used to be refused: "max difference 0.213"), and the circuits are compared with
float32's (docs/reproducibility.md gives the numbers)."""

from __future__ import annotations

import json

import pytest
import torch

import circuitdag as cd
from circuitdag.cli import main

torch.set_num_threads(1)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_the_hook_check_accepts_half_types(dtype) -> None:
    model = cd.tasks.get("pronoun").load_model(dtype=dtype)  # runs the hook check
    assert next(model.parameters()).dtype == dtype


def _discover(tmp_path, capsys, dtype: str) -> dict:
    out = tmp_path / dtype
    code = main(["discover", "--task", "pronoun", "--dtype", dtype, "--threads", "1", "--out", str(out), "-q"])
    assert code == 0, capsys.readouterr().err
    return json.loads((out / "circuit.json").read_text())


def _edges(doc: dict) -> set[str]:
    return {e["name"] for e in doc["edges"] if e["in_circuit"]}


@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
def test_half_types_find_the_float32_circuit(tmp_path, capsys, dtype) -> None:
    ref = _discover(tmp_path, capsys, "float32")
    half = _discover(tmp_path, capsys, dtype)
    assert half["dtype"] == dtype and ref["dtype"] == "float32"
    assert _edges(half) == _edges(ref) and len(_edges(ref)) == 6
    assert half["metric_full"] == pytest.approx(ref["metric_full"], abs=0.05)
    assert half["metric_circuit"] == pytest.approx(ref["metric_circuit"], abs=0.05)
