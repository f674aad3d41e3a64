"""The circuit metric computed on the circuit's own nodes (circuitdag.node_pass) equals
the full sparse pass (Patcher.sparse_final) and the dense reference pass; the run record's
final residual streams (Patcher.final_of) use it on plain graphs; the MIB curve built on
it is unchanged."""

import numpy as np
import pytest
import torch
from randmodel import random_data, random_tiny

from circuitdag.graph import Graph, Positions
from circuitdag.mib import edge_counts, faithfulness_curve, mib_curves, select_top
from circuitdag.models import spec_of
from circuitdag.node_pass import NodePass, circuit_metrics
from circuitdag.patching import Patcher


def sparse_metric(p: Patcher, alive: np.ndarray) -> float:
    """The metric of the full pass with sparse sums, the node pass's reference."""
    with torch.no_grad():
        return float(p.final_metric(p.sparse_final(alive).unsqueeze(0))[0])


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
        want = sparse_metric(p, alive)
        assert fast.metric(alive) == pytest.approx(want, rel=1e-9, abs=1e-12)
        checked += want != p.circuit_metric(np.ones_like(alive))
    assert checked >= 4  # the circuits are not all the full model


@pytest.mark.parametrize("kw,ablation", MODELS[:3])
def test_final_of_uses_the_node_pass_and_equals_the_full_passes(kw, ablation):
    """Patcher.final_of (the run record, the held-out and trust checks) computes a circuit
    on its own nodes on plain graphs: the same final residual stream as the full pass with
    sparse sums, at every position, and the same metric as the dense reference; one
    counted pass, no slot buffers kept."""
    p = make(ablation=ablation, **kw)
    assert p.node_pass() is not None and p.node_pass() is p.node_pass()
    for alive in circuits(p, seed=2)[2:6]:
        f0 = p.n_forward
        got = p.final_of(alive)
        assert p.n_forward == f0 + 1 and not hasattr(p.node_pass(), "_cur")
        torch.testing.assert_close(got, p.sparse_final(alive), rtol=1e-9, atol=1e-10)
        assert p.circuit_metric(alive) == pytest.approx(p.reference_metric(alive), rel=1e-9, abs=1e-12)
    assert sparse_metric(p, alive) == pytest.approx(p.reference_metric(alive), rel=1e-9, abs=1e-12)


def test_final_of_checks_the_kernels_and_takes_the_node_pass(monkeypatch):
    """Before anything checked the kernels (an EAP-IG run), the run record's circuit checks
    them (on a few prompts, tests/test_prepare_captures.py) and takes the node pass."""
    p = make()
    alive = circuits(p, seed=3)[4]
    called = []
    final = NodePass.final
    monkeypatch.setattr(NodePass, "final", lambda self, a: called.append(1) or final(self, a))
    got = p.final_of(alive)
    assert called == [1] and p.kernels() is not None
    torch.testing.assert_close(got, p.sparse_final(alive), rtol=1e-9, atol=1e-10)


def test_node_pass_on_a_grouped_query_bridge_with_rotary(tiny_llama_dir):
    from circuitdag.models.bridge import load_bridge

    model = load_bridge(tiny_llama_dir, dtype=torch.float64)
    data = random_data(vocab=model.cfg.d_vocab)
    p = Patcher(model, Graph(spec_of(model)), data, ablation="resample", metric="kl")
    fast = NodePass(p)
    for alive in circuits(p, seed=1):  # the bridge computes its rotary angles in float32
        assert fast.metric(alive) == pytest.approx(sparse_metric(p, alive), rel=1e-7, abs=1e-12)


def test_positions_and_full_circuits_fall_back_to_the_full_pass():
    p = make(positions=True)
    with pytest.raises(ValueError, match="without positions"):
        NodePass(p)
    assert p.node_pass() is None
    alive = circuits(p)[3]
    assert circuit_metrics(p, [alive]) == [p.circuit_metric(alive)]
    other, f0 = circuits(p)[5], p.n_forward
    torch.testing.assert_close(p.final_of(other), p.sparse_final(other))  # the sparse pass, both
    assert p.n_forward == f0 + 2


@pytest.mark.parametrize("kw", [{}, {"d_mlp": 0}])
def test_curve_is_unchanged(kw):
    """The MIB curve (on the node pass where it applies) equals one computed point by point
    with the full sparse pass."""
    p = make(metric="logit_diff", **kw)
    scores = np.random.default_rng(3).standard_normal(p.graph.n_edges)
    percents = (1, 2, 5, 10, 20, 50, 100)
    curves = mib_curves(p, scores, percents)
    for absolute, curve in ((False, curves["signed"]), (True, curves["absolute"])):
        want = [sparse_metric(p, select_top(p.graph, scores, n, absolute).alive)
                for n in edge_counts(percents, p.graph.n_edges)]  # fmt: skip
        np.testing.assert_allclose(curve.metric, want, rtol=1e-9, atol=1e-12)
    assert faithfulness_curve(p, scores, percents).metric == curves["signed"].metric


def test_a_circuit_that_changes_nothing_gives_the_clean_run_bit_for_bit():
    """The planted toy (tests/planted.py): its dead heads write nothing, so the planted
    circuit (every edge among the live nodes) changes nothing. The node pass hands back the
    clean final residual stream exactly, as the full pass does (the equivalence test counts
    ties, tests/test_hypothesis.py); a circuit without one live edge does differ."""
    from planted import planted_circuit, planted_patcher

    p = planted_patcher(metric="logit_diff")
    planted = planted_circuit(p.graph)
    assert torch.equal(p.sparse_final(planted), p.resid_final)
    assert torch.equal(p.node_pass().final(planted), p.resid_final)
    changed = planted.copy()
    changed[np.flatnonzero(planted)[0]] = False
    assert not torch.equal(p.node_pass().final(changed), p.resid_final)
    assert p.node_pass().metric(changed) == pytest.approx(sparse_metric(p, changed), rel=1e-9, abs=1e-12)
