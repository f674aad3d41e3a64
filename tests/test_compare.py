"""circuitdag compare: a circuit against itself, and compiled vs trained reversal."""

import json

import pytest
import torch

from circuitdag.cli import main
from circuitdag.compare import Side, compare, load_side, sparsity
from circuitdag.discovery import run_acdc
from circuitdag.prepare import prepare
from circuitdag.tasks.reversal import ReversalTask


@pytest.fixture(scope="module")
def compiled_circuit():
    task = ReversalTask("compiled")
    patcher, meta = prepare(task.load_model(), task, ablation="zero", n_prompts=20)
    return run_acdc(patcher, task.default_threshold, meta=meta)


def test_a_circuit_compared_with_itself_has_overlap_one_and_the_identity_matching(compiled_circuit):
    a, b = load_side("A", compiled_circuit), load_side("B", compiled_circuit)
    report = compare(a, b)
    assert report["edge_overlap_jaccard"] == 1.0
    assert all(p["a"] == p["b"] for p in report["matched"])
    assert {p["a"] for p in report["matched"]} == set(report["circuits"]["A"]["components"])
    assert report["unmatched_a"] == report["unmatched_b"] == [] == report["edges_a_only"] == report["edges_b_only"]


def test_self_comparison_through_head_embeddings_is_the_identity(compiled_circuit):
    """Forced down the different-models path (another model name), the embedding match of a
    circuit with itself is still the identity, at distance 0."""
    other = type(compiled_circuit)(compiled_circuit.graph, compiled_circuit.in_circuit, compiled_circuit.scores,
                                   {**compiled_circuit.meta, "model": "a copy"})
    a = load_side("A", compiled_circuit)
    b = Side("B", other, a.model, a.data)
    report = compare(a, b)
    assert report["matching"].startswith("head embeddings")
    assert all(p["a"] == p["b"] and p.get("distance", 0) < 1e-9 for p in report["matched"])
    assert report["edge_overlap_jaccard"] == 1.0


def test_sparsity_of_one_hot_attention_and_relu_units():
    task = ReversalTask("compiled")
    model = task.load_model()
    data = task.data(model)
    sp = sparsity(model, data, ["a3.0", "m1", "embed", "logits"])
    assert set(sp) == {"a3.0", "m1"}
    assert sp["a3.0"] == pytest.approx(5 / 6, abs=1e-3)  # one key of six per query (BOS included)
    with torch.no_grad():
        _, cache = model.run_with_cache(data.clean, names_filter=lambda n: n == "blocks.1.mlp.hook_post")
    post = cache["blocks.1.mlp.hook_post"]
    assert sp["m1"] == pytest.approx(float((post.abs() <= 0.01 * post.abs().max()).double().mean()))


@pytest.mark.slow
def test_cli_compiled_vs_trained(tmp_path, capsys):
    for model in ("compiled", "trained"):
        assert main(["discover", "--task", "reversal", "--model", model, "--n-prompts", "30", "-q",
                     "--threads", "1", "--out", str(tmp_path / model)]) == 0
    assert main(["compare", str(tmp_path / "compiled/circuit.json"), str(tmp_path / "trained/circuit.json"),
                 "--labels", "compiled", "trained", "--out", str(tmp_path / "cmp")]) == 0
    report = json.loads((tmp_path / "cmp/compare.json").read_text())
    assert report["matching"].startswith("head embeddings")
    # the compiled copy head a3.0 is matched to a trained head that reads x_{6-j} at slot j
    assert {p["a"] for p in report["matched"]} >= {"a3.0"}
    assert report["circuits"]["compiled"]["sparsity"]["a3.0"] > 0.8
    for name in ("compare.svg", "patterns.svg"):
        assert (tmp_path / "cmp" / name).read_text().lstrip().startswith(("<?xml", "<svg"))
    assert "edge overlap" in capsys.readouterr().out
