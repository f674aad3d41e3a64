"""The cached runs' captures (circuitdag.runs, issue 26's fixed costs): run without the
bridge's per-head input copies, and with the reference logits unembedded at the answer
positions only, they equal the plain capture (per-head inputs on, every position
unembedded); the patcher's kernel check reads a few prompts."""

import contextlib

import pytest
import torch
from randmodel import random_data, random_tiny

from circuitdag import runs
from circuitdag.graph import Graph
from circuitdag.models import spec_of
from circuitdag.patching import KERNEL_CHECK_PROMPTS, Patcher
from circuitdag.readout import at_answers


@pytest.fixture(scope="module")
def bridges(tiny_gpt2_dir, tiny_llama_dir):
    from circuitdag.models.bridge import load_bridge

    return {"gpt2": load_bridge(tiny_gpt2_dir), "llama": load_bridge(tiny_llama_dir)}


@pytest.mark.parametrize("name", ["gpt2", "llama"])
def test_capture_without_per_head_inputs_equals_the_plain_capture(bridges, name, monkeypatch):
    model = bridges[name]
    data = random_data(batch=4, vocab=model.cfg.d_vocab)
    p = Patcher(model, Graph(spec_of(model)), data, ablation="resample", metric="kl")
    d = p.graph.spec.d_model
    fast, logits, _ = runs.capture(model, data.clean, p.layout, p.table, d, {})
    assert model.cfg.use_split_qkv_input  # switched back on for the patched passes
    monkeypatch.setattr(runs, "unsplit_inputs", lambda model, names=(): contextlib.nullcontext())
    plain, want, _ = runs.capture(model, data.clean, p.layout, p.table, d, {})
    for got, ref in [(fast.slots, plain.slots), (fast.resid_final, plain.resid_final), (logits, want),
                     *zip(fast.resid_pre + fast.mlp_in, plain.resid_pre + plain.mlp_in)]:  # fmt: skip
        torch.testing.assert_close(got, ref, rtol=1e-6, atol=1e-6)
    # the cached reference: the unembedding of the answer positions only
    assert want is not None
    torch.testing.assert_close(p.ref.logits, at_answers(want.unsqueeze(0), data.answer_pos)[0], rtol=1e-5, atol=1e-5)


def test_unsplit_inputs_switches_back_when_the_pass_fails(bridges):
    model = bridges["llama"]
    with pytest.raises(RuntimeError), runs.unsplit_inputs(model):
        assert not model.cfg.use_split_qkv_input
        raise RuntimeError("a pass that fails")
    assert model.cfg.use_split_qkv_input


def test_reference_logits_equal_the_models_at_the_answers():
    model = random_tiny()
    data = random_data(vocab=model.cfg.d_vocab)
    p = Patcher(model, Graph(spec_of(model)), data, metric="kl")
    with torch.no_grad():
        want = at_answers(model(data.clean).unsqueeze(0), data.answer_pos)[0]
    torch.testing.assert_close(p.ref.logits, want, rtol=1e-12, atol=1e-12)
    assert p.circuit_metric(torch.ones(p.graph.n_edges, dtype=torch.bool).numpy()) == pytest.approx(0, abs=1e-12)


def test_kernels_are_checked_on_a_few_prompts(monkeypatch):
    """The kernels are checked on the first KERNEL_CHECK_PROMPTS prompts, and a kernel that
    does not reproduce the model is still caught there (then no node pass)."""
    from circuitdag.components import ComponentKernels

    model = random_tiny()
    p = Patcher(model, Graph(spec_of(model)), random_data(batch=20, vocab=model.cfg.d_vocab), metric="kl")
    seen = []
    verify, mlp = ComponentKernels.verify, ComponentKernels.mlp
    monkeypatch.setattr(ComponentKernels, "verify", lambda self, r, m, s, *a: seen.append(s.shape[0]) or verify(self, r, m, s, *a))
    assert p.kernels() is not None and seen == [KERNEL_CHECK_PROMPTS] and KERNEL_CHECK_PROMPTS < 20
    monkeypatch.setattr(ComponentKernels, "mlp", lambda self, L, x: mlp(self, L, x) * 1.01)
    q = Patcher(model, p.graph, p.data, metric="kl", runs=p.runs)
    assert q.kernels() is None and "MLP output" in str(q.kernel_problem)
    assert q.node_pass() is None


def test_the_hook_check_refuses_a_readout_that_misses_the_logits(monkeypatch):
    """The reference logits and every metric read the final residual stream through the final
    norm and the unembedding; the hook check refuses a model where that misses its logits
    (here: a soft cap its forward does not apply)."""
    from circuitdag.errors import ModelError
    from circuitdag.models import check

    model = random_tiny()
    assert check.check_hooks(model).margin < 1
    monkeypatch.setattr(check, "softcap", lambda model, logits: torch.tanh(logits))
    with pytest.raises(ModelError, match="final norm and the unembedding"):
        check.check_hooks(model)
