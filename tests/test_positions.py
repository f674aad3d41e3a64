"""Position-aware graphs and patching (DESIGN.md, "Position-aware edges")."""

import json

import numpy as np
import pytest
import torch
from randmodel import nested_candidates, random_data, random_tiny

from circuitdag.acdc_search import _live_positions, acdc_fast, acdc_reference
from circuitdag.errors import ConfigError
from circuitdag.graph import Graph, Input, ModelSpec, NodeKind, Positions
from circuitdag.models import spec_of
from circuitdag.patching import Patcher

P = 5


# ---------------------------------------------------------------------- graph
def test_edges_follow_the_position_rules() -> None:
    spec = ModelSpec(2, 2, 2, 8)
    g = Graph(spec, Positions(3, ("bos", "x", "end"), (2,)))
    t = g.edges
    assert "embed@bos->a0.0@end<k>" in g.edge_index
    assert "a0.1@x->a1.0@end<v>" in g.edge_index
    assert "a0.1@end->a1.0@x<v>" not in g.edge_index  # keys never come from the future
    assert "m0@x->a1.0@x<q>" in g.edge_index and "m0@bos->a1.0@x<q>" not in g.edge_index
    assert "m1@end->logits<resid>" in g.edge_index and "m1@x->logits<resid>" not in g.edge_index
    for e in range(g.n_edges):
        kind = Input(t.input[e])
        if kind in (Input.K, Input.V):
            assert t.src_pos[e] <= t.dst_pos[e]
        elif kind == Input.RESID:
            assert t.src_pos[e] == 2 and t.dst_pos[e] == -1
        else:
            assert t.src_pos[e] == t.dst_pos[e]
    # Counting: each non-positional edge into a head's q, an MLP: P copies; k/v: P(P+1)/2.
    flat = Graph(spec)
    per = {Input.Q: 3, Input.K: 6, Input.V: 6, Input.MLP: 3, Input.RESID: 1}
    assert g.n_edges == sum(per[Input(i)] for i in flat.edges.input)
    assert np.all(g.edges.src < g.edges.dst)


def test_non_causal_models_read_every_position() -> None:
    g = Graph(ModelSpec(1, 1, 1, 4, attn_only=True, causal=False), Positions(3))
    assert "embed@2->a0.0@0<k>" in g.edge_index


def test_gqa_kv_nodes_carry_positions() -> None:
    g = Graph(ModelSpec(2, 4, 2, 8), Positions(2))
    assert "a0.3@0->a1.kv1@1<k>" in g.edge_index
    src, dst = g.implicit_edges
    assert (g.node_index["a1.kv1@1"], g.node_index["a1.2@1"]) in set(zip(src.tolist(), dst.tolist()))


@pytest.mark.parametrize("names", [("a", "a"), ("a", "b-c"), ("a",), ("0", "1")])
def test_bad_position_names_are_refused(names) -> None:
    with pytest.raises(ValueError, match="position names"):
        Positions(2, names)


# ---------------------------------------------------------------------- patching
def naive_positional_logits(model, graph, data, alive, S_corr):
    """Sequential over query positions: pass q computes position q with the keys and
    values that q sees, taking earlier positions' inputs from earlier passes. Shares
    nothing with Patcher but the hook names; causal models only."""
    n = model.cfg.n_layers
    B = data.clean.shape[0]
    t = graph.edges
    absent = np.flatnonzero(~alive)
    raw = {}  # hook name -> batch pos ... (the true pre-patch value at each position)
    out = {}  # node component name -> batch pos d_model (true output)
    logits = []

    def comp_out(node_index):
        node = graph.nodes[node_index]
        return node.component

    per_layer = model.cfg.n_heads + (0 if model.cfg.attn_only else 1)

    def corr_of(name, p):
        node = graph.nodes[graph.node_index[f"{name}@{p}"]]
        if node.kind == NodeKind.EMBED:
            return S_corr[:, p, 0]
        first = 1 + node.layer * per_layer
        return S_corr[:, p, first + (model.cfg.n_heads if node.kind == NodeKind.MLP else node.head)]

    def run_pass(q):
        def patch(hook_name, layer, kind):
            def fn(x, hook):
                r = raw.setdefault(hook_name, torch.zeros_like(x))
                r[:, q] = x[:, q]
                x = r.clone()
                for e in absent:
                    dst = graph.nodes[t.dst[e]]
                    if Input(t.input[e]).label != kind or dst.layer != layer:
                        continue
                    view = t.dst_pos[e] if t.dst_pos[e] >= 0 else t.src_pos[e]
                    if view != q:
                        continue
                    p = t.src_pos[e]
                    name = comp_out(t.src[e])
                    delta = out[name][:, p] - corr_of(name, p)
                    if kind in "qkv":
                        x[:, p, dst.head] -= delta
                    else:
                        x[:, p] -= delta
                return x
            return fn

        def record(name, head=None):
            def fn(x, hook):
                if head is None:
                    out.setdefault(name, torch.zeros_like(x))[:, q] = x[:, q]
                else:
                    for h in range(x.shape[2]):
                        out.setdefault(f"a{head}.{h}", torch.zeros_like(x[:, :, h]))[:, q] = x[:, q, h]
            return fn

        hooks = [("blocks.0.hook_resid_pre", record("embed"))]
        for L in range(n):
            hooks += [(f"blocks.{L}.hook_{k}_input", patch(f"blocks.{L}.hook_{k}_input", L, k)) for k in "qkv"]
            hooks.append((f"blocks.{L}.attn.hook_result", record(None, head=L)))
            if not model.cfg.attn_only:
                hooks.append((f"blocks.{L}.hook_mlp_in", patch(f"blocks.{L}.hook_mlp_in", L, "mlp")))
                hooks.append((f"blocks.{L}.hook_mlp_out", record(f"m{L}")))
        hooks.append((f"blocks.{n - 1}.hook_resid_post", patch("final", n, "resid")))
        with torch.no_grad():
            logits.append(model.run_with_hooks(data.clean, fwd_hooks=hooks)[:, q])

    for q in range(P):
        run_pass(q)
    return torch.stack(logits, 1).reshape(B, P, -1)


ARCHS = {"ln-mlp": {}, "attn-only": {"d_mlp": 0}, "noln-noncausal": {"normalization": None, "causal": False}}


@pytest.fixture(scope="module", params=list(ARCHS), ids=list(ARCHS))
def setup(request):
    model = random_tiny(**ARCHS[request.param])
    data = random_data(pos=P, batch=6)
    return model, Graph(spec_of(model), Positions(P, sink=(P - 1,))), data


@pytest.mark.parametrize("ablation", ["resample", "zero", "mean"])
def test_extremes(setup, ablation) -> None:
    model, graph, data = setup
    p = Patcher(model, graph, data, ablation=ablation)
    full = p.reference_logits(p.absent_matrix(np.ones(graph.n_edges, bool)))
    torch.testing.assert_close(full, model(data.clean), rtol=0, atol=1e-12)
    if ablation == "resample":
        none = p.reference_logits(p.absent_matrix(np.zeros(graph.n_edges, bool)))
        # Every edge into the answer position's inputs is absent; earlier positions
        # only matter through the keys and values the answer reads, all corrupted too.
        torch.testing.assert_close(none[:, -1], model(data.corrupted)[:, -1], rtol=0, atol=1e-10)


CAUSAL = [a for a, kw in ARCHS.items() if kw.get("causal", True)]  # the sequential implementation needs one


@pytest.mark.parametrize("ablation", ["resample", "mean"])
@pytest.mark.parametrize("setup", CAUSAL, ids=CAUSAL, indirect=True)
def test_reference_matches_sequential_implementation(setup, ablation) -> None:
    model, graph, data = setup
    assert model.cfg.causal
    p = Patcher(model, graph, data, ablation=ablation)
    rng = np.random.default_rng(0)
    for _ in range(2):
        alive = rng.random(graph.n_edges) < 0.7
        got = p.reference_logits(p.absent_matrix(alive))
        want = naive_positional_logits(model, graph, data, alive, p.S_corr)
        torch.testing.assert_close(got, want, rtol=1e-9, atol=1e-9)


def test_one_k_edge_changes_only_its_query_key_pair() -> None:
    model = random_tiny(n_layers=2, n_heads=3)
    data = random_data(pos=P, batch=4)
    graph = Graph(spec_of(model), Positions(P, sink=(P - 1,)))
    p = Patcher(model, graph, data)
    hooks = ("blocks.1.attn.hook_attn_scores", "blocks.1.attn.hook_pattern", "blocks.1.attn.hook_z",
             "blocks.0.attn.hook_attn_scores")  # fmt: skip

    def run(removed):
        alive = np.ones(graph.n_edges, bool)
        if removed:
            alive[graph.edge_index[removed]] = False
        cap = dict.fromkeys(hooks)
        p.reference_logits(p.absent_matrix(alive), capture=cap)
        # What query q really computes is in view q: scores[b, h, q, :] from view q.
        rows = {k: [v[:, i, i] if k.endswith("hook_z") else v[:, i, :, i] for i in range(P)]
                for k, v in cap.items()}  # fmt: skip
        return {k: torch.stack(r, dim=1 if k.endswith("hook_z") else 2) for k, r in rows.items()}

    base = run(None)
    got = run("a0.1@1->a1.2@3<k>")
    s0, s1 = base["blocks.1.attn.hook_attn_scores"], got["blocks.1.attn.hook_attn_scores"]
    changed = ~torch.isclose(s0, s1, rtol=0, atol=1e-12) & torch.isfinite(s0)
    assert changed.any(dim=0).nonzero().tolist() == [[2, 3, 1]]  # head 2, query 3, key 1 only
    torch.testing.assert_close(got["blocks.0.attn.hook_attn_scores"], base["blocks.0.attn.hook_attn_scores"])
    p0, p1 = base["blocks.1.attn.hook_pattern"], got["blocks.1.attn.hook_pattern"]
    rows = (~torch.isclose(p0, p1, rtol=0, atol=1e-12)).any(dim=(0, 3)).nonzero().tolist()
    assert rows == [[2, 3]]  # only head 2's attention row of query 3
    # A V edge changes the head's output at its query position only.
    got_v = run("a0.1@1->a1.2@3<v>")
    z0, z1 = base["blocks.1.attn.hook_z"], got_v["blocks.1.attn.hook_z"]  # batch pos head d
    moved = (~torch.isclose(z0, z1, rtol=0, atol=1e-12)).any(dim=(0, 3)).nonzero().tolist()
    assert moved == [[3, 2]]
    torch.testing.assert_close(got_v["blocks.1.attn.hook_pattern"], p0)


def test_candidate_batch_matches_reference(setup) -> None:
    model, graph, data = setup
    p = Patcher(model, graph, data, ablation="resample", metric="kl")
    rng = np.random.default_rng(1)
    order = graph.visit_order()
    reach = graph.reach
    pruned = 0
    for at in [0, 1, len(order) // 3, len(order) // 2, len(order) - 1]:
        dest = order[at]
        alive = np.ones(graph.n_edges, bool)
        for d in order[:at]:
            es = graph.incoming[d]
            alive[es[rng.random(len(es)) < 0.5]] = False
        if not reach.reaches_sink(alive, graph.sink)[dest]:
            continue  # ACDC never evaluates a destination that no longer matters
        inc = graph.incoming[dest]
        absent, layer, rows, cands, views, refs = nested_candidates(p, dest, alive, inc[rng.permutation(len(inc))[:5]])
        got = p.candidate_metrics(absent, layer, rows, cands, views).tolist()
        np.testing.assert_allclose(got, refs, rtol=1e-9, atol=1e-12)
        # Views only for the positions that still matter; the others come from the caches.
        live = _live_positions(graph, reach.reaches_sink(alive, graph.sink), layer)
        pruned += len(live) < P
        got = p.candidate_metrics(absent, layer, rows, cands, views, live).tolist()
        np.testing.assert_allclose(got, refs, rtol=1e-9, atol=1e-12)
    assert pruned  # the cached-position path was exercised


@pytest.mark.parametrize("ablation", ["resample", "zero"])
def test_fast_acdc_equals_reference(setup, ablation) -> None:
    model, graph, data = setup
    p = Patcher(model, graph, data, ablation=ablation, metric="kl")
    for threshold in (1e-4, 3e-3):
        ref = acdc_reference(p, threshold)
        fast = acdc_fast(p, threshold, k_init=3)
        np.testing.assert_array_equal(fast.alive, ref.alive)
        np.testing.assert_allclose(fast.scores, ref.scores, rtol=1e-7, atol=1e-10)
        assert 0 < ref.alive.sum() < graph.n_edges


def test_layout_must_fit_the_graph() -> None:
    model = random_tiny()
    data = random_data(pos=P)
    with pytest.raises(ConfigError, match="positions"):
        Patcher(model, Graph(spec_of(model), Positions(P + 1)), data)
    with pytest.raises(ConfigError, match="logits read"):
        Patcher(model, Graph(spec_of(model), Positions(P, sink=(1,))), data)


def test_position_layout_cuts_after_the_answer_and_refuses_ragged_answers() -> None:
    from circuitdag.errors import TaskError
    from circuitdag.prepare import position_layout
    from circuitdag.tasks.base import TaskData

    data = random_data(pos=P, batch=3)
    names = ("bos", "a", "b", "c", "d")
    early = TaskData(data.clean, data.corrupted, torch.full((3, 1), 2), data.correct, data.wrong, names)
    cut, layout = position_layout(early, spec_of(random_tiny()))
    assert cut.clean.shape == (3, 3) and layout == Positions(3, ("bos", "a", "b"), (2,))
    kept, _ = position_layout(early, spec_of(random_tiny(causal=False)))  # later tokens matter
    assert kept.clean.shape == (3, P)
    ragged = TaskData(data.clean, data.corrupted, torch.tensor([[4], [4], [3]]))
    with pytest.raises(TaskError, match=r"prompt 2 at \[3\]"):
        position_layout(ragged, spec_of(random_tiny()))


def test_tracr_reverse_position_aware_circuit_is_the_mirror() -> None:
    """Position-aware ACDC on tracr's reverse: the output head at query q reads its key and
    value at the mirrored position 6 - q (the program's reverse selector), and compared
    on component edges the circuit is a subset of the ground truth (evaluate collapses
    positions)."""
    from circuitdag.discovery import acdc
    from circuitdag.evaluate import confusion, task_truth
    from circuitdag.tasks import get_task

    task = get_task("tracr-reverse")
    circuit = acdc(task.load_model(), task, ablation="zero", positions=True)
    names = circuit.edge_names
    for q in range(1, 6):
        assert f"embed@{6 - q}->a3.0@{q}<k>" in names and f"embed@{6 - q}->a3.0@{q}<v>" in names
        assert f"a3.0@{q}->logits<resid>" in names
    assert not any(n.startswith("embed@") and "a3.0@" in n and n.split("->")[0][6:] != str(6 - int(n.split("a3.0@")[1][0]))
                   for n in names if "<k>" in n or "<v>" in n)  # fmt: skip
    truth, ignore = task_truth(task, "zero")
    c = confusion(circuit, truth, ignore)
    assert c.fp == 0 and c.tp >= 7
    plain = circuit.without_positions()
    assert plain.graph.positions is None and plain.edge_names <= truth


def test_position_aware_run_resumes_to_the_identical_circuit(tmp_path) -> None:
    model = random_tiny()
    data = random_data(pos=P, batch=6)
    p = Patcher(model, Graph(spec_of(model), Positions(P, sink=(P - 1,))), data)
    whole = acdc_fast(p, 1e-3)
    ck = tmp_path / "checkpoint.json"
    acdc_fast(p, 1e-3, checkpoint=ck, max_destinations=7)  # stops early, as if interrupted
    assert 0 < json.loads(ck.read_text())["next_dest"] < len(p.graph.visit_order())
    resumed = acdc_fast(p, 1e-3, checkpoint=ck, resume=True)
    np.testing.assert_array_equal(resumed.alive, whole.alive)
    np.testing.assert_array_equal(np.isnan(resumed.scores), np.isnan(whole.scores))


def test_induction_position_aware_k_composition() -> None:
    """On the trained zoo induction model, position-aware ACDC finds K-composition at the
    positions induction needs: the induction head at r_i (holding S[i]) keys on s_{i+1},
    where the previous-token head wrote S[i]. Collapsed to components, the circuit is the
    ground truth derived from the attention scores."""
    from circuitdag.discovery import acdc
    from circuitdag.evaluate import confusion, task_truth
    from circuitdag.tasks.induction import InductionTask

    task = InductionTask(n_prompts=12, seq_len=5)
    circuit = acdc(task.load_model(), task, positions=True)
    k_edges = {n for n in circuit.edge_names if n.endswith("<k>") and n.startswith("a0.")}
    assert k_edges, "no K-composition found"
    for name in k_edges:  # a0.P@s{i+1} -> a1.I@r{i}<k>
        src, dst = name[:-3].split("->")
        assert src.split("@")[1] == f"s{int(dst.split('@r')[1]) + 1}", name
    truth, ignore = task_truth(task, "resample")
    c = confusion(circuit, truth, ignore)
    assert (c.fp, c.fn) == (0, 0)


def test_svg_columns_follow_token_order(tmp_path) -> None:
    import re

    from circuitdag.circuit import Circuit

    names = ("bos", "So", "name", "is", "'t")
    graph = Graph(ModelSpec(2, 2, 2, 8), Positions(5, names, (4,)))
    rng = np.random.default_rng(0)
    alive = rng.random(graph.n_edges) < 0.15
    circuit = Circuit(graph, alive, rng.random(graph.n_edges), {"task": "t"})
    svg = circuit.to_svg(tmp_path / "c.svg").read_text()
    heads = re.findall(r"<title>pos_(\d+)</title>\s*<g[^>]*><a[^>]*>\s*<text[^>]*x=\"([-0-9.]+)\"[^>]*>([^<]*)</text>", svg)
    assert [int(p) for p, _, _ in heads] == sorted(int(p) for p, _, _ in heads)
    xs = [float(x) for _, x, _ in heads]
    assert xs == sorted(xs) and len(xs) >= 3
    assert [label for _, _, label in heads] == [names[int(p)].replace("'", "&#39;") for p, _, _ in heads]
