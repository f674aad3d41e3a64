"""The same ACDC code on Hugging Face models booted through TransformerBridge from a local
directory: a tiny GPT-2 and a tiny Llama with grouped-query attention."""

import numpy as np
import pytest
import torch
from randmodel import shared_prefix

from circuitdag.acdc_search import acdc_fast, acdc_reference
from circuitdag.graph import Graph, NodeKind
from circuitdag.models import load_model, spec_of
from circuitdag.patching import Patcher
from circuitdag.tasks.base import TaskData


def data_for(vocab: int) -> TaskData:
    g = torch.Generator().manual_seed(3)
    clean = torch.randint(2, vocab, (8, 6), generator=g)
    corrupted = torch.randint(2, vocab, (8, 6), generator=g)
    return TaskData(clean, corrupted, answer_pos=torch.tensor([[4, 5]] * 8))


@pytest.fixture(scope="module", params=["gpt2", "llama-gqa"])
def bridge_patcher(request, tiny_gpt2_dir, tiny_llama_dir):
    path = tiny_gpt2_dir if request.param == "gpt2" else tiny_llama_dir
    model = load_model(str(path), dtype=torch.float64)
    graph = Graph(spec_of(model))
    return request.param, Patcher(model, graph, data_for(model.cfg.d_vocab), ablation="resample", metric="kl")


def test_graph_shape(bridge_patcher):
    name, p = bridge_patcher
    kv = [n.name for n in p.graph.nodes if n.kind == NodeKind.KV]
    if name == "llama-gqa":
        assert p.graph.spec.n_kv_heads == 2 and kv[:2] == ["a0.kv0", "a0.kv1"]
        assert "a0.3->a1.kv1<k>" in p.graph.edge_index
    else:
        assert kv == []


def test_patched_extremes(bridge_patcher):
    _, p = bridge_patcher
    n = p.graph.n_edges
    full = p.reference_logits(p.absent_matrix(np.ones(n, bool)))
    torch.testing.assert_close(full, p.model(p.data.clean), rtol=0, atol=1e-9)
    none = p.reference_logits(p.absent_matrix(np.zeros(n, bool)))
    torch.testing.assert_close(none, p.model(p.data.corrupted), rtol=0, atol=1e-8)


def test_fast_equals_reference(bridge_patcher):
    """The component path and the layer-by-layer path, each against one reference run per
    threshold."""
    _, p = bridge_patcher
    for threshold in (1e-5, 3e-4):
        ref = acdc_reference(p, threshold)
        for sparse in (True, False):
            fast = acdc_fast(p, threshold, sparse=sparse)
            assert fast.stats["fast_path"] == ("components" if sparse else "layers")
            np.testing.assert_array_equal(fast.alive, ref.alive)
            np.testing.assert_allclose(fast.scores, ref.scores, rtol=1e-7, atol=1e-10)
    assert 0 < ref.alive.sum() < p.graph.n_edges


def test_component_kernels_reproduce_the_model(bridge_patcher):
    name, p = bridge_patcher
    kern = p.kernels()
    assert kern is not None, p.kernel_problem
    assert bool(kern.rotary) == (name == "llama-gqa")  # the Llama's rotary cos/sin were captured
    lay = p.layout
    err = kern.verify(p.resid_pre, p.mlp_in, p.S_clean, lay.head_slot, lay.mlp_slots)
    assert err < 1e-7  # float64; the Llama differs by ~3e-9 (its rotary tables are float32)


@pytest.fixture(scope="module", params=["gpt2", "llama-gqa"])
def positional_patcher(request, tiny_gpt2_dir, tiny_llama_dir):
    from circuitdag.graph import Positions

    path = tiny_gpt2_dir if request.param == "gpt2" else tiny_llama_dir
    model = load_model(str(path), dtype=torch.float64)
    data = data_for(model.cfg.d_vocab)
    data = TaskData(data.clean[:4, :5], data.corrupted[:4, :5], answer_pos=torch.tensor([[3, 4]] * 4))
    graph = Graph(spec_of(model), Positions(5, sink=(3, 4)))
    return Patcher(model, graph, data, ablation="resample", metric="kl")


def test_positional_extremes_and_fast_equals_reference(positional_patcher):
    """Position-aware mode through the bridge: rotary embeddings (Llama) and grouped-query
    key/value heads are the model's own business; the views only patch its inputs."""
    p = positional_patcher
    n = p.graph.n_edges
    full = p.reference_logits(p.absent_matrix(np.ones(n, bool)))
    torch.testing.assert_close(full, p.model(p.data.clean), rtol=0, atol=1e-9)
    none = p.reference_logits(p.absent_matrix(np.zeros(n, bool)))
    torch.testing.assert_close(none[:, 3:], p.model(p.data.corrupted)[:, 3:], rtol=0, atol=1e-8)
    ref = acdc_reference(p, 1e-4)
    for sparse in (True, False):  # the component path and the layer-by-layer path
        fast = acdc_fast(p, 1e-4, k_init=4, sparse=sparse)
        assert fast.stats["fast_path"] == ("components" if sparse else "layers")
        np.testing.assert_array_equal(fast.alive, ref.alive)
        # atol 1e-9: the Llama's rotary tables are float32, so a head recomputed on its own
        # agrees with the model's to ~3e-9 (test_component_kernels_reproduce_the_model)
        np.testing.assert_allclose(fast.scores, ref.scores, rtol=1e-7, atol=1e-9)
    assert 0 < ref.alive.sum() < n


def test_shared_prefix_is_skipped_exactly(bridge_patcher):
    """Clean and corrupted prompts equal before position 3: the component path leaves those
    positions out (rotary angles of the later ones kept) and equals the reference."""
    from circuitdag.recompute import SparseFastPath

    _, p0 = bridge_patcher
    p = Patcher(p0.model, p0.graph, shared_prefix(data_for(p0.model.cfg.d_vocab), 3), metric="kl")
    assert SparseFastPath(p, p.kernels(), np.ones(p.graph.n_edges, dtype=bool)).first == 3
    ref = acdc_reference(p, 1e-4)
    fast = acdc_fast(p, 1e-4, sparse=True)
    np.testing.assert_array_equal(fast.alive, ref.alive)
    np.testing.assert_allclose(fast.scores, ref.scores, rtol=1e-7, atol=1e-10)
    assert 0 < ref.alive.sum() < p.graph.n_edges


def test_prefiltered_start_equals_reference(bridge_patcher):
    """From a start circuit with edges removed everywhere (a prefiltered or resumed run) the
    fast path rebuilds its cached run in one patched pass. TransformerBridge fires
    ``hook_resid_mid`` after ``hook_mlp_in``, with the patched value; the cached MLP input
    must be the unpatched one (read at ``hook_mlp_in`` before the patch), or every MLP
    destination is scored against the wrong base (issue 21: a resumed run kept 766 edges
    where the uninterrupted one kept 164)."""
    _, p = bridge_patcher
    start = np.random.default_rng(1).random(p.graph.n_edges) < 0.7
    threshold = 1e-3 * p.circuit_metric(np.zeros(p.graph.n_edges, dtype=bool))  # 0.1% of the KL gap
    ref = acdc_reference(p, threshold, start=start)
    for sparse in (True, False):  # the component path and the layer-by-layer path
        fast = acdc_fast(p, threshold, start=start, sparse=sparse)
        np.testing.assert_array_equal(fast.alive, ref.alive)
        np.testing.assert_allclose(fast.scores, ref.scores, rtol=1e-7, atol=1e-9)  # atol: the Llama's float32 rotary
    assert 0 < ref.alive.sum() < start.sum()


def test_patched_run_caches_the_unpatched_mlp_input(bridge_patcher):
    """In a patched pass the cached MLP input is the residual stream after the layer's
    heads (plus the attention's constant, as in the clean run), before the MLP's own absent
    edges are subtracted."""
    _, p = bridge_patcher
    alive = np.zeros(p.graph.n_edges, dtype=bool)  # every MLP input patched
    raw: dict = {}
    p._full_pass(p.absent_matrix(alive), raw=raw, sparse=True)
    lay = p.layout
    for L in range(lay.n_layers):
        heads = slice(lay.head_slot(L, 0), lay.head_slot(L, 0) + lay.n_heads)
        const = p.mlp_in[L] - p.resid_pre[L] - p.S_clean[:, :, heads].sum(2)  # e.g. GPT-2's b_O
        got = raw["mlp_in"][L] - raw["resid_pre"][L] - raw["slots"][:, :, heads].sum(2)
        torch.testing.assert_close(got, const, rtol=0, atol=1e-9)
