"""The fused masked pass (circuitdag.masked_fused) against the reference masked pass
(autograd through circuitdag.passes.full_pass): the same values and gradients in float64,
plain and position-aware, every ablation, both backends; exact patching at 0/1 masks."""

import numpy as np
import pytest
import torch
from test_masked import CONFIGS, bridge, check_exact_at_01, tiny

from circuitdag.masked import absent_weights, masked_metric
from circuitdag.masked_fused import fused_pass
from circuitdag.models import load_model


@pytest.fixture(scope="module")
def bridges(tiny_gpt2_dir, tiny_llama_dir):
    return {name: load_model(str(path), dtype=torch.float64)
            for name, path in (("gpt2", tiny_gpt2_dir), ("llama-gqa", tiny_llama_dir))}  # fmt: skip


def value_and_grad(p, z0, **kw):
    z = z0.clone().requires_grad_(True)
    m = masked_metric(p, z, **kw)
    m.backward()
    return float(m.detach()), z.grad.numpy()


def check_same_as_reference(p, seed=0, low=0.0, high=1.0, **kw):
    """At a random interior mask, with some gates exactly 0 and 1 (as hard-concrete samples
    have): the fused and reference passes give the same value and gradient."""
    rng = np.random.default_rng(seed)
    z0 = rng.uniform(low, high, p.graph.n_edges)
    z0[rng.random(p.graph.n_edges) < 0.2] = 0.0
    z0[rng.random(p.graph.n_edges) < 0.2] = 1.0
    z0 = torch.as_tensor(z0)
    (v_ref, g_ref), (v, g) = value_and_grad(p, z0, reference=True, **kw), value_and_grad(p, z0, **kw)
    assert np.abs(g_ref).max() > 1e-3  # a gradient that could disagree
    assert v == pytest.approx(v_ref, rel=1e-10, abs=1e-12)
    np.testing.assert_allclose(g, g_ref, rtol=1e-8, atol=1e-10 * np.abs(g_ref).max())


@pytest.mark.parametrize("positions", [False, True], ids=["plain", "positions"])
@pytest.mark.parametrize("ablation", ["resample", "zero", "mean"])
@pytest.mark.parametrize("config", list(CONFIGS))
def test_values_and_gradients_equal_the_reference(config, ablation, positions):
    check_same_as_reference(tiny(config, positions, ablation, metric="kl"))


@pytest.mark.parametrize("positions", [False, True], ids=["plain", "positions"])
@pytest.mark.parametrize("name", ["gpt2", "llama-gqa"])
def test_values_and_gradients_equal_the_reference_on_bridges(bridges, name, positions):
    """Emulated hooks and grouped-query attention (k/v rows shared by heads)."""
    check_same_as_reference(bridge(bridges[name], positions))


@pytest.mark.parametrize("positions", [False, True], ids=["plain", "positions"])
def test_chunks_and_logits_equal_the_reference(positions):
    p = tiny(positions=positions, metric="logit_diff")
    check_same_as_reference(p, seed=1, low=-2.0, high=2.0, logits=True, prompts=slice(3, 8))


def test_reference_is_still_exact_at_01():
    """The reference pass the fused one is tested against stays tested itself."""
    p = tiny(positions=True, metric="kl")
    rng = np.random.default_rng(4)
    for frac in (0.0, 0.5, 1.0):
        alive = rng.random(p.graph.n_edges) < frac
        got = float(masked_metric(p, torch.as_tensor(alive, dtype=torch.float64), reference=True))
        assert got == pytest.approx(p.circuit_metric(alive), rel=1e-9, abs=1e-12)


def test_fused_pass_is_exact_at_01_and_refuses_neuron_nodes():
    check_exact_at_01(tiny(config="attn-only", positions=True), seed=5)
    p = tiny(neurons=[1])
    with pytest.raises(ValueError, match="neurons"):
        fused_pass(p, absent_weights(p, torch.ones(p.graph.n_edges, dtype=torch.float64)))
    check_exact_at_01(p)  # masked_metric runs the reference pass for them


def test_no_gradient_is_left_behind_between_passes():
    """Each pass owns its buffers: two passes backpropagated one after the other give each
    its own gradient (micro-batched Edge Pruning steps do this)."""
    p = tiny(metric="kl")
    z0 = torch.as_tensor(np.random.default_rng(6).uniform(size=p.graph.n_edges))
    _, once = value_and_grad(p, z0, prompts=slice(0, 4))
    z = z0.clone().requires_grad_(True)
    a, b = masked_metric(p, z, prompts=slice(0, 4)), masked_metric(p, z, prompts=slice(0, 4))
    a.backward()
    b.backward()
    np.testing.assert_allclose(z.grad.numpy(), 2 * once, rtol=1e-12, atol=1e-15)
