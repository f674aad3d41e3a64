"""The differentiable masked pass: exact at 0/1 masks, EAP at the full model, and its
gradient is the derivative of its value."""

import numpy as np
import pytest
import torch
from randmodel import random_data, random_tiny

from circuitdag.attribution import attribute
from circuitdag.errors import ConfigError
from circuitdag.graph import Graph, Input, Positions
from circuitdag.masked import masked_metric
from circuitdag.models import load_model, spec_of
from circuitdag.patching import Patcher
from circuitdag.tasks.base import TaskData

CONFIGS = {"ln": {}, "attn-only": {"d_mlp": 0}, "noncausal": {"normalization": None, "causal": False}}


def tiny(config="ln", positions=False, ablation="resample", metric="logit_diff", neurons=None):
    model = random_tiny(**CONFIGS[config])
    data = random_data(vocab=model.cfg.d_vocab)
    n = data.clean.shape[1]
    spec = spec_of(model, neurons) if neurons else spec_of(model)
    graph = Graph(spec, Positions(n, None, (n - 1,)) if positions else None)
    return Patcher(model, graph, data, ablation=ablation, metric=metric)


@pytest.fixture(scope="module")
def bridges(tiny_gpt2_dir, tiny_llama_dir):
    return {name: load_model(str(path), dtype=torch.float64)
            for name, path in (("gpt2", tiny_gpt2_dir), ("llama-gqa", tiny_llama_dir))}  # fmt: skip


def bridge(model, positions=False, ablation="resample", metric="logit_diff"):
    g = torch.Generator().manual_seed(3)
    vocab = int(model.cfg.d_vocab)
    clean, corrupted = torch.randint(2, vocab, (6, 5), generator=g), torch.randint(2, vocab, (6, 5), generator=g)
    correct, wrong = torch.randint(2, vocab, (6, 2), generator=g), torch.randint(2, vocab, (6, 2), generator=g)
    data = TaskData(clean, corrupted, answer_pos=torch.tensor([[3, 4]] * 6), correct=correct, wrong=wrong)
    graph = Graph(spec_of(model), Positions(5, sink=(3, 4)) if positions else None)
    return Patcher(model, graph, data, ablation=ablation, metric=metric)


def as_mask(alive: np.ndarray) -> torch.Tensor:
    return torch.as_tensor(alive, dtype=torch.float64)


def check_exact_at_01(p: Patcher, seed: int = 0) -> None:
    rng = np.random.default_rng(seed)
    for frac in (0.0, 0.2, 0.6, 0.95, 1.0):
        alive = rng.random(p.graph.n_edges) < frac
        got = float(masked_metric(p, as_mask(alive)))
        assert got == pytest.approx(p.circuit_metric(alive), rel=1e-9, abs=1e-12), frac


@pytest.mark.parametrize("positions", [False, True], ids=["plain", "positions"])
@pytest.mark.parametrize("ablation", ["resample", "zero", "mean"])
@pytest.mark.parametrize("config", list(CONFIGS))
def test_equals_circuit_metric_at_a_01_mask(config, ablation, positions):
    check_exact_at_01(tiny(config, positions, ablation, metric="kl" if config == "ln" else "logit_diff"))


@pytest.mark.parametrize("positions", [False, True], ids=["plain", "positions"])
@pytest.mark.parametrize("ablation", ["resample", "zero", "mean"])
@pytest.mark.parametrize("name", ["gpt2", "llama-gqa"])
def test_equals_circuit_metric_at_a_01_mask_on_bridges(bridges, name, ablation, positions):
    check_exact_at_01(bridge(bridges[name], positions, ablation, metric="kl"))


def test_equals_circuit_metric_with_neuron_nodes():
    check_exact_at_01(tiny(neurons=[1]))


def check_gradient_is_minus_eap(p: Patcher) -> None:
    z = torch.ones(p.graph.n_edges, dtype=torch.float64, requires_grad=True)
    masked_metric(p, z).backward()
    eap = attribute(p, "eap").scores
    assert np.abs(eap).max() > 1e-3  # not two vanishing gradients
    np.testing.assert_allclose(-z.grad.numpy(), eap, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("positions", [False, True], ids=["plain", "positions"])
@pytest.mark.parametrize("ablation", ["resample", "zero", "mean"])
@pytest.mark.parametrize("config", list(CONFIGS))
def test_gradient_at_the_full_model_is_minus_eap(config, ablation, positions):
    check_gradient_is_minus_eap(tiny(config, positions, ablation))


@pytest.mark.parametrize("positions", [False, True], ids=["plain", "positions"])
@pytest.mark.parametrize("name", ["gpt2", "llama-gqa"])
def test_gradient_at_the_full_model_is_minus_eap_on_bridges(bridges, name, positions):
    check_gradient_is_minus_eap(bridge(bridges[name], positions))


@pytest.mark.parametrize("positions", [False, True], ids=["plain", "positions"])
def test_gradient_is_the_finite_difference_at_an_interior_mask(positions):
    """Central differences (float64, h = 1e-5) of the masked metric around a mask near 0.5,
    on edges of every input kind (with positions, K/V edges across positions)."""
    p = tiny(positions=positions, metric="kl")
    n = p.graph.n_edges
    rng = np.random.default_rng(1)
    z0 = torch.as_tensor(rng.uniform(0.3, 0.7, n))
    z = z0.clone().requires_grad_(True)
    masked_metric(p, z).backward()
    t, grad = p.graph.edges, z.grad.abs().numpy()
    # Per input kind (and with positions K/V across positions) an edge the metric depends on.
    kinds = [t.input == int(kind) for kind in Input]
    if positions:
        kinds += [np.isin(t.input, [int(Input.K), int(Input.V)]) & (t.src_pos != t.dst_pos)]
    edges = [int(rng.choice(np.flatnonzero(kind & (grad > 1e-3 * grad.max())))) for kind in kinds]
    h = 1e-5
    for e in edges:
        up, down = z0.clone(), z0.clone()
        up[e] += h
        down[e] -= h
        with torch.no_grad():
            fd = (float(masked_metric(p, up)) - float(masked_metric(p, down))) / (2 * h)
        assert abs(fd) > 1e-6, p.graph.edge_names[e]
        assert float(z.grad[e]) == pytest.approx(fd, rel=1e-5, abs=1e-9), p.graph.edge_names[e]


def test_logits_are_a_sigmoid_mask():
    p = tiny(metric="kl")
    logits = torch.as_tensor(np.random.default_rng(2).normal(size=p.graph.n_edges)).requires_grad_(True)
    z = torch.sigmoid(logits.detach()).requires_grad_(True)
    a, b = masked_metric(p, logits, logits=True), masked_metric(p, z)
    assert float(a.detach()) == pytest.approx(float(b.detach()), rel=1e-12)
    a.backward()
    b.backward()
    torch.testing.assert_close(logits.grad, z.grad * z.detach() * (1 - z.detach()), rtol=1e-9, atol=1e-14)


@pytest.mark.parametrize("positions", [False, True], ids=["plain", "positions"])
def test_per_prompt_values_and_chunks(positions):
    p = tiny(positions=positions, metric="kl")
    z = torch.as_tensor(np.random.default_rng(3).uniform(size=p.graph.n_edges))
    whole = masked_metric(p, z)
    each = masked_metric(p, z, per_prompt=True)
    assert each.shape == (p.B,) and float(each.std()) > 0
    assert float(each.mean()) == pytest.approx(float(whole), rel=1e-12)
    chunk = masked_metric(p, z, prompts=slice(4, 9))
    assert float(chunk) == pytest.approx(float(each[4:9].mean()), rel=1e-12)
    torch.testing.assert_close(masked_metric(p, z, per_prompt=True, prompts=slice(4, 9)), each[4:9])


def test_parameters_get_no_gradient_and_bad_masks_are_refused():
    p = tiny()
    z = torch.ones(p.graph.n_edges, dtype=torch.float64, requires_grad=True)
    masked_metric(p, z).backward()
    assert all(q.grad is None for q in p.model.parameters())
    assert all(q.requires_grad for q in p.model.parameters())  # restored
    with pytest.raises(ConfigError, match="one value per edge"):
        masked_metric(p, torch.ones(p.graph.n_edges + 1))
