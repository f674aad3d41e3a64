"""The component-level fast path (recompute only what a candidate changes) gives the
reference's circuit and scores, and refuses models its kernels do not reproduce."""

import numpy as np
import pytest
import torch
from randmodel import random_data, random_tiny, shared_prefix

from circuitdag.acdc_search import acdc_fast, acdc_reference
from circuitdag.components import ComponentKernels, KernelMismatch
from circuitdag.errors import ConfigError
from circuitdag.graph import Graph, NodeKind
from circuitdag.models import spec_of
from circuitdag.patching import Patcher
from circuitdag.recompute import SparseFastPath
from circuitdag.tasks.base import TaskData

ARCHS = {
    "ln-gelu-mlp": {},
    "attn-only": {"d_mlp": 0},
    "tracr-like (no LN, non-causal)": {"normalization": None, "causal": False},
    "relu, 3 layers": {"n_layers": 3, "act_fn": "relu"},
}


def ragged_answers(seed: int = 0, batch: int = 12, pos: int = 8, vocab: int = 12) -> TaskData:
    """Two answer slots per prompt, at positions that differ between prompts."""
    d = random_data(seed, batch=batch, pos=pos, vocab=vocab)
    g = torch.Generator().manual_seed(seed + 1)
    first = torch.randint(2, pos - 2, (batch, 1), generator=g)
    answer_pos = torch.cat([first, first + 2], dim=1)
    return TaskData(d.clean, d.corrupted, answer_pos=answer_pos,
                    correct=torch.randint(0, vocab, (batch, 2), generator=g),
                    wrong=torch.randint(0, vocab, (batch, 2), generator=g))  # fmt: skip


CASES = [(arch, "resample", metric) for arch in ARCHS for metric in ("kl", "logit_diff")]
CASES += [("ln-gelu-mlp", ablation, "kl") for ablation in ("zero", "mean")]
CASES += [("tracr-like (no LN, non-causal)", "mean", "logit_diff")]


@pytest.mark.parametrize("arch,ablation,metric", CASES)
def test_component_path_equals_reference(arch, ablation, metric):
    model = random_tiny(**ARCHS[arch])
    p = Patcher(model, Graph(spec_of(model)), ragged_answers(), ablation=ablation, metric=metric)
    for threshold in (0.02, 0.2):
        ref = acdc_reference(p, threshold)
        fast = acdc_fast(p, threshold, sparse=True, k_init=3)
        assert fast.stats["fast_path"] == "components"
        np.testing.assert_array_equal(fast.alive, ref.alive)
        np.testing.assert_allclose(fast.scores, ref.scores, rtol=1e-9, atol=1e-12)
        assert fast.m_cur == pytest.approx(ref.m_cur, rel=1e-9, abs=1e-12)


@pytest.mark.parametrize("positions_start", [False, True], ids=["full-start", "prefiltered-start"])
def test_component_path_from_a_prefiltered_start(positions_start):
    model = random_tiny(n_layers=3)
    p = Patcher(model, Graph(spec_of(model)), ragged_answers(3), metric="kl")
    rng = np.random.default_rng(0)
    start = rng.random(p.graph.n_edges) < (0.3 if positions_start else 1.0)
    ref = acdc_reference(p, 0.01, start=start)
    fast = acdc_fast(p, 0.01, start=start, sparse=True)
    np.testing.assert_array_equal(fast.alive, ref.alive)
    np.testing.assert_allclose(fast.scores, ref.scores, rtol=1e-9, atol=1e-12)


def test_only_needed_positions_of_an_mlp_are_recomputed():
    """An MLP read only by logits is recomputed at the answer positions alone, and the
    result is still exact (the test above); here: the needed sets are what the rule says."""
    model = random_tiny()
    data = random_data(batch=6, pos=6)  # answers at the last position
    p = Patcher(model, Graph(spec_of(model)), data, metric="kl")
    alive = np.zeros(p.graph.n_edges, dtype=bool)
    g = p.graph
    keep = [g.edge_index[n] for n in ("m1->logits<resid>", "a0.0->m1<mlp>", "embed->a0.0<q>",
                                      "embed->a0.0<k>", "embed->a0.0<v>", "a0.1->a1.2<k>",
                                      "embed->a0.1<v>", "a1.2->logits<resid>", "embed->a1.2<q>")]  # fmt: skip
    alive[keep] = True
    fast = SparseFastPath(p, p.kernels(), alive)
    fast.affected(g.node_index["embed"], alive)
    need = fast._need
    assert need[g.node_index["m1"]].tolist() == [5]  # read by logits only
    assert need[g.node_index["a1.2"]].tolist() == [5]
    assert need[g.node_index["a0.1"]].tolist() == [0, 1, 2, 3, 4, 5]  # a key of a1.2: every key position
    assert need[g.node_index["a0.0"]].tolist() == [5]  # read by m1 at the answer


def test_kernels_that_do_not_reproduce_the_model_are_refused():
    model = random_tiny()
    p = Patcher(model, Graph(spec_of(model)), random_data(), metric="kl")
    # A model whose attention scale the kernels get wrong: the check must notice.
    kern = ComponentKernels(model, p.graph.spec)
    kern.scale *= 1.5
    lay = p.layout
    with pytest.raises(KernelMismatch, match="head results of layer 0"):
        kern.verify(p.resid_pre, p.mlp_in, p.S_clean, lay.head_slot, lay.mlp_slots)
    # Patcher.kernels() then reports the problem; ACDC falls back to the layer path.
    p._kernels, p.kernel_problem = None, "KernelMismatch: test"
    state = acdc_fast(p, 0.05)
    assert state.stats["fast_path"] == "layers"
    with pytest.raises(ConfigError, match="sparse fast path cannot run"):
        acdc_fast(p, 0.05, sparse=True)
    np.testing.assert_array_equal(state.alive, acdc_reference(p, 0.05).alive)


POS_CASES = [(arch, "resample", "kl") for arch in ARCHS] + [("ln-gelu-mlp", "zero", "logit_diff"),
                                                            ("ln-gelu-mlp", "mean", "kl")]  # fmt: skip


@pytest.mark.parametrize("arch,ablation,metric", POS_CASES)
def test_position_aware_component_path_equals_reference(arch, ablation, metric):
    """Position-aware graphs: a node is a component at one position; K/V edges patch one
    (query, key) pair. Two answer positions, so ``logits`` reads two cells."""
    from circuitdag.graph import Positions

    model = random_tiny(**ARCHS[arch])
    d = random_data(batch=5, pos=5)
    data = TaskData(d.clean, d.corrupted, answer_pos=torch.tensor([[3, 4]] * 5),
                    correct=torch.randint(0, 12, (5, 2)), wrong=torch.randint(0, 12, (5, 2)))  # fmt: skip
    p = Patcher(
        model, Graph(spec_of(model), Positions(5, sink=(3, 4))), data, ablation=ablation, metric=metric
    )
    ref = acdc_reference(p, 0.02)
    fast = acdc_fast(p, 0.02, sparse=True, k_init=3)
    assert fast.stats["fast_path"] == "components"
    np.testing.assert_array_equal(fast.alive, ref.alive)
    np.testing.assert_allclose(fast.scores, ref.scores, rtol=1e-9, atol=1e-12)
    # and from a prefiltered start
    start = np.random.default_rng(1).random(p.graph.n_edges) < 0.4
    ref = acdc_reference(p, 0.02, start=start)
    np.testing.assert_array_equal(acdc_fast(p, 0.02, start=start, sparse=True).alive, ref.alive)


def test_full_and_ablated_metrics_cost_no_pass_on_a_plain_graph():
    model = random_tiny()
    p = Patcher(model, Graph(spec_of(model)), random_data(), metric="kl")
    n, f0 = p.graph.n_edges, p.n_forward
    full = [p.circuit_metric(np.ones(n, dtype=bool)) for _ in range(3)]
    none = [p.circuit_metric(np.zeros(n, dtype=bool)) for _ in range(3)]
    assert p.n_forward - f0 == 0  # both read off the cached runs (Patcher.final_of)
    assert full[0] == p.reference_metric(np.ones(n, dtype=bool))
    assert none[0] == pytest.approx(p.reference_metric(np.zeros(n, dtype=bool)), abs=1e-12)
    assert len({*full}) == 1 and len({*none}) == 1
    assert p.graph.nodes[p.graph.sink].kind == NodeKind.LOGITS


PREFIX_CASES = [("ln-gelu-mlp", "kl"), ("ln-gelu-mlp", "logit_diff"), ("attn-only", "kl"), ("relu, 3 layers", "kl")]


@pytest.mark.parametrize("arch,metric", PREFIX_CASES)
def test_positions_before_the_first_difference_are_skipped_exactly(arch, metric):
    """Clean and corrupted prompts share their first 4 tokens: under resample ablation in a
    causal model nothing there can change, so the component path leaves those positions
    out, and still gives the reference's circuit and scores (answers at positions 4-7)."""
    model = random_tiny(**ARCHS[arch], n_ctx=9)
    data = shared_prefix(ragged_answers(batch=10, pos=9), 4)
    data = TaskData(data.clean, data.corrupted, answer_pos=torch.tensor([[4, 6], [5, 7]] * 5),
                    correct=data.correct, wrong=data.wrong)  # fmt: skip
    p = Patcher(model, Graph(spec_of(model)), data, ablation="resample", metric=metric)
    fast_path = SparseFastPath(p, p.kernels(), np.ones(p.graph.n_edges, dtype=bool))
    assert fast_path.first == 4
    for threshold in (0.01, 0.1):
        ref = acdc_reference(p, threshold)
        fast = acdc_fast(p, threshold, sparse=True, k_init=3)
        assert fast.stats["fast_path"] == "components"
        np.testing.assert_array_equal(fast.alive, ref.alive)
        np.testing.assert_allclose(fast.scores, ref.scores, rtol=1e-9, atol=1e-12)
    assert 0 < ref.alive.sum() < p.graph.n_edges


def test_first_changing_position_rule():
    """0 without a shared prefix, under zero ablation, or without a causal mask; capped at
    the first answer position."""
    from circuitdag.recompute import first_changing_position

    data = shared_prefix(random_data(batch=6, pos=6), 3)
    model = random_tiny()
    assert first_changing_position(Patcher(model, Graph(spec_of(model)), data)) == 3
    assert first_changing_position(Patcher(model, Graph(spec_of(model)), random_data(batch=6, pos=6))) == 0
    assert first_changing_position(Patcher(model, Graph(spec_of(model)), data, ablation="zero")) == 0
    early = TaskData(data.clean, data.corrupted, answer_pos=torch.full((6, 1), 2))
    assert first_changing_position(Patcher(model, Graph(spec_of(model)), early)) == 2
    acausal = random_tiny(causal=False)
    assert first_changing_position(Patcher(acausal, Graph(spec_of(acausal)), data)) == 0


@pytest.mark.parametrize("threshold", [0.0, 0.02])
def test_position_aware_inert_edges_are_decided_without_evaluation(threshold):
    """Position-aware graph, clean and corrupted prompts equal before position 2: an edge
    from a sender at position 0 or 1 carries exactly nothing, so it gets score 0 and is
    removed (kept at threshold 0) unevaluated; the circuit and scores equal the reference."""
    from circuitdag.graph import Positions

    model = random_tiny()
    d = shared_prefix(random_data(batch=5, pos=5), 2)
    data = TaskData(d.clean, d.corrupted, answer_pos=torch.tensor([[3, 4]] * 5),
                    correct=torch.randint(0, 12, (5, 2)), wrong=torch.randint(0, 12, (5, 2)))  # fmt: skip
    p = Patcher(model, Graph(spec_of(model), Positions(5, sink=(3, 4))), data, metric="logit_diff")
    ref = acdc_reference(p, threshold)
    fast = acdc_fast(p, threshold, sparse=True, k_init=3)
    np.testing.assert_array_equal(fast.alive, ref.alive)
    np.testing.assert_allclose(fast.scores, ref.scores, rtol=1e-9, atol=1e-12)
    early = p.graph.edges.src_pos < 2
    tested = ~np.isnan(ref.scores)
    assert fast.stats["inert_edges"] == int((early & tested).sum()) > 0
    assert np.all(ref.scores[early & tested] == 0.0)
