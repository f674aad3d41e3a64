"""The circuit metric computed on the circuit's own nodes (circuitdag.node_pass) equals
the full sparse pass (Patcher.circuit_metric), and the MIB curve built on it is unchanged."""

import numpy as np
import pytest
import torch
from randmodel import random_data, random_tiny

from circuitdag.graph import Graph, Positions
from circuitdag.mib import edge_counts, faithfulness_curve, mib_curves, select_top
from circuitdag.models import spec_of
from circuitdag.node_pass import NodePass, circuit_metrics
from circuitdag.patching import Patcher


def make(ablation="resample", metric="kl", positions=False, **kw):
    model = random_tiny(**kw)
    data = random_data(vocab=model.cfg.d_vocab)
    n = data.clean.shape[1]
    graph = Graph(spec_of(model), Positions(n, None, (n - 1,)) if positions else None)
    return Patcher(model, graph, data, ablation=ablation, metric=metric)


def circuits(p: Patcher, seed: int = 0) -> list[np.ndarray]:
    """Random circuits of several densities, raw and pruned to embed -> logits paths."""
    rng = np.random.default_rng(seed)
    out = []
    for density in (0.02, 0.1, 0.3, 0.6, 0.95):  # both ways of summing an input group
        alive = rng.random(p.graph.n_edges) < density
        out += [alive, p.graph.prune(alive)]
    return out


MODELS = [({}, "resample"), ({}, "zero"), ({}, "mean"), ({"d_mlp": 0}, "resample"),
          ({"normalization": None, "causal": False, "act_fn": "relu"}, "resample"),
          ({"n_layers": 3}, "mean")]  # fmt: skip


@pytest.mark.parametrize("kw,ablation", MODELS)
def test_node_pass_equals_the_full_pass(kw, ablation):
    p = make(ablation=ablation, **kw)
    fast = NodePass(p)
    checked = 0
    for alive in circuits(p):
        want = p.circuit_metric(alive)
        assert fast.metric(alive) == pytest.approx(want, rel=1e-9, abs=1e-12)
        checked += want != p.circuit_metric(np.ones_like(alive))
    assert checked >= 4  # the circuits are not all the full model


def test_node_pass_on_a_grouped_query_bridge_with_rotary(tiny_llama_dir):
    from circuitdag.models.bridge import load_bridge

    model = load_bridge(tiny_llama_dir, dtype=torch.float64)
    data = random_data(vocab=model.cfg.d_vocab)
    p = Patcher(model, Graph(spec_of(model)), data, ablation="resample", metric="kl")
    fast = NodePass(p)
    for alive in circuits(p, seed=1):  # the bridge computes its rotary angles in float32
        assert fast.metric(alive) == pytest.approx(p.circuit_metric(alive), rel=1e-7, abs=1e-12)


def test_positions_and_full_circuits_fall_back_to_the_full_pass():
    p = make(positions=True)
    with pytest.raises(ValueError, match="without positions"):
        NodePass(p)
    alive = circuits(p)[3]
    assert circuit_metrics(p, [alive]) == [p.circuit_metric(alive)]


@pytest.mark.parametrize("kw", [{}, {"d_mlp": 0}])
def test_curve_is_unchanged(kw):
    """The MIB curve (on the node pass where it applies) equals one computed point by point
    with the full sparse pass."""
    p = make(metric="logit_diff", **kw)
    scores = np.random.default_rng(3).standard_normal(p.graph.n_edges)
    percents = (1, 2, 5, 10, 20, 50, 100)
    curves = mib_curves(p, scores, percents)
    for absolute, curve in ((False, curves["signed"]), (True, curves["absolute"])):
        want = [p.circuit_metric(select_top(p.graph, scores, n, absolute).alive)
                for n in edge_counts(percents, p.graph.n_edges)]  # fmt: skip
        np.testing.assert_allclose(curve.metric, want, rtol=1e-9, atol=1e-12)
    assert faithfulness_curve(p, scores, percents).metric == curves["signed"].metric
