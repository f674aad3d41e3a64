"""ACDC: the fast path returns exactly the reference circuit."""

import numpy as np
import pytest
from randmodel import random_data, random_tiny

from circuitdag.acdc_search import acdc_fast, acdc_reference
from circuitdag.checkpoint import load_checkpoint
from circuitdag.discovery import run_acdc
from circuitdag.errors import ConfigError
from circuitdag.graph import Graph
from circuitdag.models import spec_of
from circuitdag.patching import Patcher


def make_patcher(ablation="resample", metric="kl", **kw):
    model = random_tiny(**kw)
    return Patcher(model, Graph(spec_of(model)), random_data(vocab=model.cfg.d_vocab), ablation=ablation, metric=metric)


@pytest.mark.parametrize(
    "ablation,metric,threshold,kw",
    [
        ("resample", "kl", 0.002, {}),
        ("resample", "kl", 0.02, {}),
        ("zero", "kl", 0.01, {}),
        ("mean", "logit_diff", 0.05, {}),
        ("resample", "nll", 0.01, {"d_mlp": 0}),
        ("resample", "prob", 0.001, {}),
        ("resample", "kl", 0.01, {"normalization": None, "causal": False}),
    ],
)
def test_fast_equals_reference(ablation, metric, threshold, kw):
    p = make_patcher(ablation, metric, **kw)
    ref = acdc_reference(p, threshold)
    for k_init, k_max in [(1, 1), (8, None), (3, 5)]:
        fast = acdc_fast(p, threshold, k_init=k_init, k_max=k_max)
        np.testing.assert_array_equal(fast.alive, ref.alive)
        np.testing.assert_allclose(fast.scores, ref.scores, rtol=1e-9, atol=1e-12)
        assert fast.m_cur == pytest.approx(ref.m_cur, abs=1e-12)
    assert 0 < ref.alive.sum() < p.graph.n_edges  # a nontrivial circuit, or the test proves little


def test_threshold_zero_keeps_everything_that_matters_and_huge_removes_all():
    p = make_patcher()
    assert acdc_fast(p, 1e9).alive.sum() == 0
    assert acdc_fast(p, 0.0).alive.sum() > acdc_fast(p, 0.01).alive.sum()


def test_negative_threshold_is_refused():
    p = make_patcher()
    with pytest.raises(ConfigError, match=">= 0"):
        run_acdc(p, -0.1)


def test_fast_path_uses_fewer_passes_and_layers():
    p = make_patcher()
    c_ref = run_acdc(p, 0.05, algorithm="acdc-reference")
    c_fast = run_acdc(p, 0.05)
    assert c_fast.same_as(c_ref)
    assert c_fast.meta["stats"]["forward_passes"] < c_ref.meta["stats"]["forward_passes"]
    # Without speculation (K = 1) every saving is from starting at the destination's layer.
    l0 = p.n_layer_evals
    acdc_fast(p, 0.05, k_init=1, k_max=1)
    assert p.n_layer_evals - l0 < c_ref.meta["stats"]["layer_evaluations"]


def test_checkpoint_resume_gives_identical_circuit(tmp_path):
    p = make_patcher()
    full = acdc_fast(p, 0.002)
    ck = tmp_path / "ck.json"
    # Run, then rewind the checkpoint to a mid-way destination by replaying a partial run.
    partial = acdc_fast(p, 0.002, checkpoint=ck, checkpoint_every=0.0)
    assert ck.exists()
    state = load_checkpoint(ck, {"threshold": 0.002, "n_edges": p.graph.n_edges, "algorithm": "acdc"})
    assert state.next_dest == len(p.graph.visit_order())
    np.testing.assert_array_equal(partial.alive, full.alive)


@pytest.mark.parametrize(
    "ablation,metric,kw,positions",
    [("resample", "kl", {}, False), ("zero", "logit_diff", {}, False), ("resample", "kl", {}, True),
     ("mean", "kl", {"normalization": None, "causal": False}, True)],
)  # fmt: skip
def test_fast_equals_reference_from_a_prefiltered_start(ablation, metric, kw, positions):
    """ACDC started from a circuit with most edges removed (prefiltered ACDC): the fast
    path resumes from the run of that circuit (Patcher.rebase) and stays exact."""
    from circuitdag.graph import Positions

    model = random_tiny(**kw)
    data = random_data(vocab=model.cfg.d_vocab)
    n = data.clean.shape[1]
    graph = Graph(spec_of(model), Positions(n, None, (n - 1,)) if positions else None)
    p = Patcher(model, graph, data, ablation=ablation, metric=metric)
    start = np.random.default_rng(3).random(graph.n_edges) < 0.3
    ref = acdc_reference(p, 0.01, start=start)
    assert not ref.alive[~start].any()  # edges outside the start are never put back
    assert np.isnan(ref.scores[~start]).all()
    for k_init, k_max in [(1, 1), (8, None)]:
        fast = acdc_fast(p, 0.01, k_init=k_init, k_max=k_max, start=start)
        np.testing.assert_array_equal(fast.alive, ref.alive)
        np.testing.assert_allclose(fast.scores, ref.scores, rtol=1e-9, atol=1e-12)
    assert 0 < ref.alive.sum() < graph.prune(start).sum()


def test_prefiltered_run_acdc_records_how_it_was_made():
    p = make_patcher("resample", "kl")
    c = run_acdc(p, 0.005, prefilter="eap-ig:20", ig_steps=3)
    pre = c.meta["prefilter"]
    assert pre["method"] == "eap-ig" and pre["edges"] == 20 and pre["ig_steps"] == 3
    assert pre["kept"] == c.n_edges <= pre["tested"] <= pre["edges_on_paths"] <= 20
    assert np.isfinite(c.scores).sum() == pre["tested"]
    ref = run_acdc(p, 0.005, algorithm="acdc-reference", prefilter="eap-ig:20", ig_steps=3)
    assert ref.same_as(c)
    with pytest.raises(ConfigError, match="METHOD"):
        run_acdc(p, 0.005, prefilter="eap-ig:many")
    with pytest.raises(ConfigError, match="prefilter method"):
        run_acdc(p, 0.005, prefilter="acdc:10")


def test_roc_auc_keeps_vertical_steps():
    from circuitdag.evaluate import roc_auc

    assert roc_auc([(0.0, 0.5), (0.5, 0.5), (0.5, 1.0)]) == pytest.approx(0.75)
    assert roc_auc([(0.5, 0.5)]) == pytest.approx(0.5)
    assert roc_auc([(0.0, 1.0)]) == pytest.approx(1.0)
    # (0.3, 0.2) lies under the envelope: 0.6 from fpr 0.1 on
    assert roc_auc([(0.3, 0.2), (0.1, 0.6)]) == pytest.approx(0.1 * 0.6 / 2 + 0.2 * 0.6 + 0.7 * (0.6 + 1) / 2)
