"""EAP and EAP-IG against exact single-edge patching (the quantity they estimate)."""

import numpy as np
import pytest
import torch
from randmodel import random_data, random_tiny

from circuitdag.attribution import attribute, top_edges
from circuitdag.discovery import attribution_circuit
from circuitdag.errors import ConfigError
from circuitdag.graph import Graph, Input, Positions
from circuitdag.models import spec_of
from circuitdag.patching import Patcher


def make(metric="logit_diff", positions=False, ablation="resample", **kw):
    model = random_tiny(**kw)
    data = random_data(vocab=model.cfg.d_vocab)
    n = data.clean.shape[1]
    graph = Graph(spec_of(model), Positions(n, None, (n - 1,)) if positions else None)
    return Patcher(model, graph, data, ablation=ablation, metric=metric)


def scale_corruption(p: Patcher, eps: float) -> Patcher:
    """Move every sender's ablated value to within ``eps`` of its clean value."""
    p.S_corr = p.S_clean - eps * p.D_clean
    p.D_clean = p.S_clean - p.S_corr
    return p


def exact_scores(p: Patcher, edges) -> np.ndarray:
    """m(G - {e}) - m(G) by exact patching, one full forward pass per edge."""
    full = p.reference_metric(np.ones(p.graph.n_edges, bool))
    out = []
    for e in edges:
        alive = np.ones(p.graph.n_edges, bool)
        alive[e] = False
        out.append(p.reference_metric(alive) - full)
    return np.array(out)


CASES = [({}, False), ({}, True), ({"d_mlp": 0}, False), ({"normalization": None, "causal": False}, True)]


@pytest.mark.parametrize("kw,positions", CASES, ids=["ln", "ln-pos", "attn-only", "noncausal-pos"])
def test_eap_is_exact_patching_to_first_order(kw, positions):
    """With the corruption scaled by eps, EAP's error against exact patching shrinks like
    eps^2 while the scores shrink like eps: the relative error is O(eps)."""
    edges = np.random.default_rng(0).choice(make(**kw, positions=positions).graph.n_edges, 40, replace=False)
    rel = []
    for eps in (1e-3, 1e-4):
        p = scale_corruption(make(**kw, positions=positions), eps)
        ex = exact_scores(p, edges)
        got = attribute(p, "eap").scores[edges]
        rel.append(np.abs(got - ex).max() / np.abs(ex).max())
    assert rel[1] < 3e-3
    assert rel[1] < rel[0] / 5  # first-order agreement, not a coincidence


def test_eap_is_exact_where_the_metric_is_linear_in_the_edge():
    """Without a final LayerNorm, logit_diff is linear in the final residual, so the edges
    into logits are scored exactly by EAP for a full-size corruption."""
    p = make(normalization=None)
    into_logits = np.flatnonzero(p.graph.edges.input == int(Input.RESID))
    np.testing.assert_allclose(attribute(p, "eap").scores[into_logits], exact_scores(p, into_logits),
                               rtol=1e-9, atol=1e-12)  # fmt: skip


def only_direct_path(p: Patcher) -> Patcher:
    """Heads and MLPs write nothing: the metric depends on the embedding through the
    direct ``embed -> logits`` edge alone (a nonlinear function of it: KL, final LN)."""
    with torch.no_grad():
        for name, w in p.model.named_parameters():
            if name.endswith(("attn.W_O", "attn.b_O", "mlp.W_out", "mlp.b_out")):
                w.zero_()
    return Patcher(p.model, p.graph, p.data, ablation=p.ablation, metric=p.metric_fn)


def test_eap_ig_approaches_exact_patching_where_eap_fails():
    p = only_direct_path(make(metric="kl"))
    e = p.graph.edge_index["embed->logits<resid>"]
    exact = exact_scores(p, [e])[0]
    assert exact > 0.1
    eap = attribute(p, "eap").scores[e]
    assert abs(eap) < 1e-9 * exact  # KL's gradient vanishes at the clean run: EAP sees nothing
    errors = [abs(attribute(p, "eap-ig", steps=s).scores[e] - exact) / exact for s in (2, 8, 32)]
    assert errors[0] > errors[1] > errors[2]
    assert errors[2] < 0.05


@pytest.mark.parametrize("method,positions", [("eap", False), ("eap-ig", False), ("eap-ig", True)])
def test_scores_do_not_depend_on_batch_size(method, positions):
    p = make(metric="kl", positions=positions)
    runs = [attribute(p, method, steps=3, batch_size=b).scores for b in (1, 5, p.B)]
    for other in runs[1:]:
        np.testing.assert_allclose(other, runs[0], rtol=1e-9, atol=1e-14)
    assert np.abs(runs[0]).max() > 0


def test_eap_on_a_grouped_query_bridge(tiny_llama_dir):
    """A real TransformerBridge (Llama: RMSNorm, rotary, grouped-query attention), with
    positions: EAP equals the derivative of exact patching, K/V (q, p) edges included.
    (HF's RMSNorm computes in float32, so eps cannot go much lower than 1e-3.)"""
    from circuitdag.models import load_model

    model = load_model(str(tiny_llama_dir), dtype=torch.float64)
    data = random_data(batch=4, pos=5, vocab=int(model.cfg.d_vocab))
    graph = Graph(spec_of(model), Positions(5, None, (4,)))
    t = graph.edges
    kv = np.flatnonzero(np.isin(t.input, [int(Input.K), int(Input.V)]) & (t.src_pos != t.dst_pos))
    edges = np.concatenate([np.random.default_rng(1).choice(graph.n_edges, 20, replace=False), kv[:: len(kv) // 10]])
    # Central difference of exact patching: second-order terms cancel.
    eps = 1e-3
    plus = exact_scores(scale_corruption(Patcher(model, graph, data, metric="logit_diff"), eps), edges)
    minus = exact_scores(scale_corruption(Patcher(model, graph, data, metric="logit_diff"), -eps), edges)
    p = scale_corruption(Patcher(model, graph, data, metric="logit_diff"), eps)
    got = attribute(p, "eap", batch_size=3).scores[edges]
    np.testing.assert_allclose(got, (plus - minus) / 2, rtol=0, atol=5e-3 * np.abs(got).max())


def test_attribution_circuit_keeps_the_top_edges_on_paths():
    p = make(metric="kl")
    c = attribution_circuit(p, "eap-ig", steps=2, n_edges=10)
    assert 0 < c.n_edges <= 10
    assert c.meta["algorithm"] == "eap-ig" and c.meta["ig_steps"] == 2 and c.meta["edges_selected"] == 10
    mag = np.abs(c.scores)
    assert mag[c.in_circuit].min() >= np.sort(mag)[-10]
    np.testing.assert_array_equal(p.graph.prune(c.in_circuit), c.in_circuit)
    assert c.meta["metric_circuit"] == pytest.approx(p.reference_metric(c.in_circuit))
    assert attribution_circuit(p, "eap", n_edges=0).n_edges == 0


def test_top_edges_rule():
    s = np.array([0.5, -2.0, np.nan, 1.0, -1.0])
    assert top_edges(s, n_edges=2).tolist() == [False, True, False, True, False]
    assert top_edges(s, n_edges=3).tolist() == [False, True, False, True, True]
    assert top_edges(s, n_edges=5).tolist() == [True, True, False, True, True]  # NaN never kept
    assert top_edges(s, threshold=1.0).tolist() == [False, True, False, True, True]
    with pytest.raises(ConfigError, match="exactly one"):
        top_edges(s)
    for bad in (float("inf"), float("nan"), -1.0):  # an infinite threshold would keep nothing
        with pytest.raises(ConfigError, match="finite number >= 0"):
            top_edges(s, threshold=bad)


def test_bad_options_are_refused():
    p = make()
    with pytest.raises(ConfigError, match="unknown attribution method"):
        attribute(p, "eap-gradient")
    with pytest.raises(ConfigError, match="ig-steps"):
        attribute(p, "eap-ig", steps=0)


@pytest.mark.parametrize("positions", [False, True])
def test_ig_gradients_summed_over_steps_give_the_per_step_scores(positions):
    """EAP-IG sums each input's gradient over the steps and multiplies by the sender
    differences once per chunk; scoring every step on its own and averaging (the EAP-IG
    paper's loop) gives the same scores."""
    from circuitdag.attribution import _accumulate
    from circuitdag.passes import frozen

    p = make(metric="kl", positions=positions)
    got = attribute(p, "eap-ig", steps=4, batch_size=p.B).scores
    lay = p.layout
    per_step = []
    with frozen(p.model):
        for alpha in (0.0, 0.25, 0.5, 0.75):
            dense = torch.zeros(lay.shape, dtype=torch.float64)
            _accumulate(p, dense, slice(0, p.B), [alpha], 1.0, lambda: None)
            per_step.append(dense[lay.edge_row, lay.edge_view, lay.edge_pos, lay.edge_slot].numpy())
    want = np.mean(per_step, axis=0)
    np.testing.assert_allclose(got, want, rtol=1e-9, atol=1e-12)
    assert np.abs(want).max() > 0 and not np.allclose(per_step[0], per_step[3])
