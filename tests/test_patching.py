"""The patched forward pass against an independent, per-edge implementation."""

import numpy as np
import pytest
import torch
from randmodel import nested_candidates, random_data, random_tiny

from circuitdag.errors import ConfigError, MetricError
from circuitdag.graph import Graph, NodeKind
from circuitdag.models import spec_of
from circuitdag.patching import Patcher


def naive_patched_logits(model, graph, data, alive, ablation):
    """Per-edge loops over node names; shares nothing with Patcher but the hook names."""
    n = model.cfg.n_layers
    _, corr_cache = model.run_with_cache(data.corrupted)
    _, clean_cache = model.run_with_cache(data.clean)

    def out_of(cache, name):
        node = graph.nodes[graph.node_index[name]]
        if node.kind == NodeKind.EMBED:
            return cache["blocks.0.hook_resid_pre"]
        if node.kind == NodeKind.MLP:
            return cache[f"blocks.{node.layer}.hook_mlp_out"]
        return cache[f"blocks.{node.layer}.attn.hook_result"][:, :, node.head]

    def corrupted(name):
        if ablation == "zero":
            return 0.0
        if ablation == "mean":
            return out_of(clean_cache, name).mean(dim=(0, 1), keepdim=True)
        return out_of(corr_cache, name)

    now = {}
    absent = [graph.edge_names[e] for e in np.flatnonzero(~alive)]

    def patch(layer, inp):
        def fn(x, hook):
            x = x.clone()
            for name in absent:
                src, rest = name.split("->")
                dst, kind = rest[:-1].split("<")
                if kind != inp:
                    continue
                if inp == "resid" or inp == "mlp" and dst == f"m{layer}":
                    x -= now[src] - corrupted(src)
                elif inp in "qkv" and dst.startswith(f"a{layer}."):
                    x[:, :, int(dst.split(".")[1])] -= now[src] - corrupted(src)
            return x
        return fn

    def rec_heads(L):
        def fn(x, hook):
            for h in range(x.shape[2]):
                now[f"a{L}.{h}"] = x[:, :, h]
        return fn

    def rec(name):
        def fn(x, hook):
            now[name] = x
        return fn

    hooks = [("blocks.0.hook_resid_pre", rec("embed"))]
    for L in range(n):
        hooks += [(f"blocks.{L}.hook_{k}_input", patch(L, k)) for k in "qkv"]
        hooks.append((f"blocks.{L}.attn.hook_result", rec_heads(L)))
        if not model.cfg.attn_only:
            hooks.append((f"blocks.{L}.hook_mlp_in", patch(L, "mlp")))
            hooks.append((f"blocks.{L}.hook_mlp_out", rec(f"m{L}")))
    hooks.append((f"blocks.{n - 1}.hook_resid_post", patch("logits", "resid")))
    with torch.no_grad():
        return model.run_with_hooks(data.clean, fwd_hooks=hooks)


@pytest.fixture(scope="module", params=[{}, {"d_mlp": 0}, {"normalization": None, "causal": False}],
                ids=["ln-mlp", "attn-only", "noln-noncausal"])
def setup(request):
    model = random_tiny(**request.param)
    data = random_data()
    return model, Graph(spec_of(model)), data


@pytest.mark.parametrize("ablation", ["resample", "zero", "mean"])
def test_all_edges_present_is_the_clean_run(setup, ablation):
    model, graph, data = setup
    p = Patcher(model, graph, data, ablation=ablation)
    logits = p.reference_logits(p.absent_matrix(np.ones(graph.n_edges, bool)))
    torch.testing.assert_close(logits, model(data.clean), rtol=0, atol=1e-12)
    assert p.reference_metric(np.ones(graph.n_edges, bool)) == pytest.approx(0.0, abs=1e-12)


def test_no_edges_present_is_the_corrupted_run(setup):
    model, graph, data = setup
    p = Patcher(model, graph, data, ablation="resample")
    logits = p.reference_logits(p.absent_matrix(np.zeros(graph.n_edges, bool)))
    torch.testing.assert_close(logits, model(data.corrupted), rtol=0, atol=1e-10)


@pytest.mark.parametrize("ablation", ["resample", "zero", "mean"])
def test_reference_matches_per_edge_implementation(setup, ablation):
    model, graph, data = setup
    p = Patcher(model, graph, data, ablation=ablation)
    rng = np.random.default_rng(0)
    for _ in range(3):
        alive = rng.random(graph.n_edges) < 0.6
        got = p.reference_logits(p.absent_matrix(alive))
        want = naive_patched_logits(model, graph, data, alive, ablation)
        torch.testing.assert_close(got, want, rtol=1e-9, atol=1e-9)


def test_candidate_batch_matches_reference(setup):
    """The fast batched pass equals the reference for circuits where all edges into
    nodes before the destination are present (the situation ACDC guarantees)."""
    model, graph, data = setup
    p = Patcher(model, graph, data, ablation="resample", metric="kl")
    rng = np.random.default_rng(1)
    order = graph.visit_order()
    for pos in [0, 1, len(order) // 2, len(order) - 1]:
        dest = order[pos]
        alive = np.ones(graph.n_edges, bool)
        visited = [d for d in order[:pos]]
        for d in visited:
            es = graph.incoming[d]
            alive[es[rng.random(len(es)) < 0.5]] = False
        absent, layer, rows, cands, views, refs = nested_candidates(p, dest, alive, graph.incoming[dest][:4])
        got = p.candidate_metrics(absent, layer, rows, cands, views).tolist()
        np.testing.assert_allclose(got, refs, rtol=1e-9, atol=1e-12)


def test_bad_ablation_and_metric(setup):
    model, graph, data = setup
    with pytest.raises(ConfigError, match="unknown ablation"):
        Patcher(model, graph, data, ablation="negate")
    with pytest.raises(MetricError, match="unknown metric"):
        Patcher(model, graph, data, metric="accuracy")


def test_nan_metric_is_refused(setup):
    model, graph, data = setup
    p = Patcher(model, graph, data, metric=lambda logits, ref: torch.full(logits.shape[:1], float("nan")))
    with pytest.raises(MetricError, match="not finite"):
        p.reference_metric(np.ones(graph.n_edges, bool))


@pytest.mark.parametrize("positions", [False, True])
@pytest.mark.parametrize("ablation", ["resample", "zero", "mean"])
def test_circuit_metric_equals_reference(setup, ablation, positions):
    """The sparse full pass every result is reported with equals the dense reference, for
    dense and sparse circuits alike; its run of a circuit (rebase) is the reference's."""
    from circuitdag.graph import Positions

    model, graph, data = setup
    if positions:
        graph = Graph(graph.spec, Positions(data.clean.shape[1], None, (data.clean.shape[1] - 1,)))
    p = Patcher(model, graph, data, ablation=ablation)
    rng = np.random.default_rng(2)
    for frac in (0.0, 0.1, 0.5, 0.9, 1.0):
        alive = rng.random(graph.n_edges) < frac
        assert p.circuit_metric(alive) == pytest.approx(p.reference_metric(alive), rel=1e-9, abs=1e-12)
    raw: dict = {}
    p._full_pass(p.absent_matrix(alive), raw=raw, sparse=True)
    cap: dict = dict.fromkeys(["blocks.1.hook_resid_pre"])
    p.reference_logits(p.absent_matrix(alive), capture=cap)
    torch.testing.assert_close(raw["resid_pre"][1], p._diagonal(cap["blocks.1.hook_resid_pre"].flatten(0, 1), 1)[0])
