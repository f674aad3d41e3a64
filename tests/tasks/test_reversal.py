"""The ``reversal`` task: one task, the compiled (tracr) and the trained (zoo) model."""

import json

import pytest
import torch

from circuitdag.cli import main
from circuitdag.discovery import run_acdc
from circuitdag.errors import TaskError
from circuitdag.prepare import prepare
from circuitdag.tasks import get_task
from circuitdag.tasks.reversal import ReversalTask


def test_model_names_select_the_variant_and_others_are_refused():
    task = get_task("reversal")
    assert task.variant == "trained"
    assert task.for_model("compiled").variant == "compiled"
    assert task.for_model("tracr-reverse").variant == "compiled"
    assert task.for_model("trained").variant == "trained"
    with pytest.raises(TaskError, match="--model compiled .* or --model trained"):
        task.for_model("gpt2")


def test_cli_refuses_another_model_before_loading(capsys, tmp_path):
    assert main(["discover", "--task", "reversal", "--model", "gpt2", "--out", str(tmp_path), "-q"]) == 2
    assert "runs on --model compiled" in capsys.readouterr().err


def test_compiled_data_and_circuit_are_tracr_reverse(tmp_path, capsys):
    task = ReversalTask("compiled")
    model = task.load_model(dtype=torch.float64)
    mine, theirs = task.data(model), get_task("tracr-reverse").data(model)
    for field in ("clean", "corrupted", "answer_pos", "correct"):
        assert torch.equal(getattr(mine, field), getattr(theirs, field))
    patcher, meta = prepare(model, task, ablation="zero")
    circuit = run_acdc(patcher, task.default_threshold, meta=meta)
    truth, inert = task.ground_truth("zero"), task.inert_edges("zero")
    assert circuit.edge_names - inert == truth - inert
    # evaluate finds the compiled model's ground truth from the file's model name
    circuit.save(tmp_path / "circuit.json")
    capsys.readouterr()
    assert main(["evaluate", str(tmp_path / "circuit.json")]) == 0
    assert json.loads(capsys.readouterr().out)["matches_ground_truth"] is True


def test_trained_model_answers_every_slot_and_slots_line_up():
    task = ReversalTask("trained")
    model = task.load_model()
    data = task.data(model)
    assert data.position_names[:6] == ("bos", "x1", "x2", "x3", "x4", "x5")
    assert data.clean.shape == (100, 11)
    with torch.no_grad():
        logits = model(data.clean)
    pred = logits.gather(1, data.answer_pos.unsqueeze(-1).expand(-1, -1, logits.shape[-1])).argmax(-1)
    assert torch.equal(pred, data.correct)
    # slot i answers x_{6-i} in both layouts: the trained answer is the token at position 6 - i
    assert torch.equal(data.correct, data.clean[:, 1:6].flip(1))
    compiled = ReversalTask("compiled").data(ReversalTask("compiled").load_model())
    assert torch.equal(compiled.correct + 2, data.correct)  # output ids 0..2 are the zoo's tokens 2..4


def test_sweep_and_curve_load_the_tasks_own_model(tmp_path, capsys):
    """``sweep`` and ``curve`` resolve ``--model compiled`` through the task, as discover does."""
    out = tmp_path / "sweep"
    assert main(["sweep", "--task", "reversal", "--model", "compiled", "--trials", "2", "-q", "--out", str(out)]) == 0
    front = json.loads((out / "pareto.json").read_text())
    assert front, "the sweep wrote no Pareto front"
    circuit = next(out.glob("trials/*/circuit.json"))
    assert json.loads(circuit.read_text())["metric"] == "l2"  # the compiled variant's default metric
    assert main(["curve", str(circuit), "--out", str(tmp_path / "curve")]) == 0
    assert "CPR" in capsys.readouterr().out
