"""UGS (circuitdag/algorithms/ugs.py): the modified-uniform sampler, one draw's gradient
against EAP at the full model, planted edges of a linear objective, a tracr ground truth,
and the method through ``circuitdag discover`` and ``cd.discover``."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from randmodel import random_data, random_tiny

import circuitdag as cd
from circuitdag.algorithms import ugs
from circuitdag.algorithms.edge_pruning import top_gates
from circuitdag.attribution import attribute
from circuitdag.cli import main
from circuitdag.discovery import run_algorithm
from circuitdag.evaluate import task_truth
from circuitdag.graph import Graph
from circuitdag.masked import masked_metric
from circuitdag.models import spec_of
from circuitdag.patching import Patcher
from circuitdag.prepare import prepare
from circuitdag.tasks import get_task


def test_modified_uniform_sampler() -> None:
    theta = torch.tensor([-2.0, 0.0, 1.0, 3.0], dtype=torch.float64)
    p = torch.sigmoid(theta)
    w = p * (1 - p)
    u = torch.rand(400_000, 4, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    z = ugs.sample_mask(theta, u)
    np.testing.assert_allclose(z.mean(0), p, atol=3e-3)  # E[z] = p
    np.testing.assert_allclose((z == 1).double().mean(0), p - w / 2, atol=3e-3)
    inside = (z > 0) & (z < 1)
    np.testing.assert_allclose(inside.double().mean(0), w, atol=3e-3)
    for e in range(4):  # uniform on [0, 1] inside the window
        assert abs(float(z[inside[:, e], e].mean()) - 0.5) < 0.01
    # The gradient of one draw: p (1 - p) inside the window, 0 outside.
    t = theta.clone().requires_grad_(True)
    u1 = torch.stack([p - w / 4, p + w, p - w, p]).diagonal()  # inside, above, below, centre
    (g,) = torch.autograd.grad(ugs.sample_mask(t, u1).sum(), t)
    np.testing.assert_allclose(g, (w * torch.tensor([1.0, 0.0, 0.0, 1.0], dtype=torch.float64)), rtol=1e-12)


@pytest.mark.parametrize("positions", [False, True])
def test_one_draw_at_the_full_model_is_minus_eap(positions) -> None:
    """A draw with every u at the bottom of its window has z = 1 (the full model) and the
    gradient dm/dz * p (1 - p): minus EAP's score times p (1 - p)."""
    from circuitdag.graph import Positions

    model = random_tiny()
    data = random_data(vocab=model.cfg.d_vocab)
    graph = Graph(spec_of(model), Positions(6, None, (5,)) if positions else None)
    p = Patcher(model, graph, data, metric="logit_diff")
    n = graph.n_edges
    theta = torch.linspace(-2, 2, n, dtype=torch.float64).requires_grad_(True)
    prob = torch.sigmoid(theta.detach())
    w = prob * (1 - prob)
    z = ugs.sample_mask(theta, prob - w / 2 + 1e-12)
    assert float((1 - z.detach()).abs().max()) < 1e-9
    (grad,) = torch.autograd.grad(masked_metric(p, z), theta)
    eap = torch.as_tensor(attribute(p, "eap").scores)
    np.testing.assert_allclose(grad, -eap * w, rtol=1e-6, atol=1e-10)
    assert float(eap.abs().max()) > 1e-3


def test_recovers_the_planted_edges_of_a_linear_model() -> None:
    rng = np.random.default_rng(0)
    n, k = 200, 12
    w = rng.uniform(0, 0.01, n)
    planted = rng.choice(n, k, replace=False)
    w[planted] = rng.uniform(0.5, 1.0, k)
    wt = torch.as_tensor(w)
    theta, rec = ugs.train_ugs(lambda z, draw: (wt * (1 - z)).sum(), n, steps=150, samples=4, lr=0.05)
    assert set(np.flatnonzero(top_gates(theta.numpy(), k))) == set(planted)
    assert rec["expected_edges"] < 0.6 * n


def test_tracr_ground_truth_and_discover(tmp_path, capsys) -> None:
    task = get_task("tracr-proportion")
    patcher, meta = prepare(task.load_model(), task)
    truth, _ = task_truth(task, meta["ablation"])
    want = patcher.graph.edges_by_name(truth)
    circuit = run_algorithm(patcher, "ugs", meta=meta, edges=int(want.sum()), steps=40, samples=4)
    assert np.array_equal(circuit.in_circuit, want) and circuit.faithfulness() == pytest.approx(1, abs=1e-4)

    out = tmp_path / "ugs"
    argv = ["discover", "--task", "tracr-proportion", "--algorithm", "ugs", "--edges", "3", "--option", "steps=40",
            "--option", "samples=4", "--out", str(out), "-q", "--no-svg", "--threads", "1"]  # fmt: skip
    assert main(argv) == 0
    doc = json.loads((out / "circuit.json").read_text())
    assert doc["algorithm"] == "ugs" and doc["samples"] == 4
    np.testing.assert_allclose([e["score"] for e in doc["edges"]], circuit.scores, rtol=1e-5)
    again = cd.discover(task.load_model(), task, "ugs", edges=3, steps=40, samples=4)
    np.testing.assert_allclose(again.scores, circuit.scores, rtol=1e-5)
    capsys.readouterr()
