"""Neuron nodes: MLP layers split into one node per neuron (``ModelSpec.neuron_layers``).

Exactness is checked three ways: against the unsplit graph (a circuit that treats all
neurons of a layer alike is the same circuit as one with the whole MLP), against plain
hooks (removing a last-layer neuron's edge to logits is patching its activation), and
fast ACDC against the reference."""

import numpy as np
import pytest
import torch
from randmodel import random_data, random_tiny

from circuitdag.acdc_search import acdc_fast, acdc_reference
from circuitdag.attribution import attribute
from circuitdag.cli import main
from circuitdag.errors import ConfigError, ModelError
from circuitdag.graph import Graph, Input, ModelSpec, NodeKind, Positions
from circuitdag.models import spec_of
from circuitdag.patching import Patcher


def split_patcher(model, layers, ablation="resample", metric="kl", data=None):
    data = random_data(1) if data is None else data
    return Patcher(model, Graph(spec_of(model, layers)), data, ablation=ablation, metric=metric)


def test_graph_has_one_node_per_neuron_with_its_own_edges():
    spec = ModelSpec(n_layers=2, n_heads=3, n_kv_heads=3, d_model=16, neuron_layers=[1], d_mlp=5)
    g = Graph(spec)
    names = [n.name for n in g.nodes]
    assert "m0" in names and "m1" not in names
    assert [n for n in names if n.startswith("m1.")] == [f"m1.{i}" for i in range(5)]
    # Each neuron reads embed, the layer-0 heads, m0 and the layer-1 heads (8 senders)
    # and writes to logits.
    assert sum(g.edge_names[e].endswith("->m1.3<mlp>") for e in range(g.n_edges)) == 8
    assert "m1.3->logits<resid>" in g.edge_index
    plain = Graph(ModelSpec(n_layers=2, n_heads=3, n_kv_heads=3, d_model=16))
    assert g.n_edges == plain.n_edges + 4 * 8 + 4  # four more neurons, each with 8 inputs and 1 output


@pytest.mark.parametrize(
    "bad,match",
    [
        ({"neuron_layers": [2], "d_mlp": 4}, "do not exist"),
        ({"neuron_layers": [0]}, "needs d_mlp"),
        ({"neuron_layers": [0], "d_mlp": 4, "attn_only": True}, "attention-only"),
    ],
)
def test_bad_neuron_layers_are_refused(bad, match):
    with pytest.raises(ValueError, match=match):
        ModelSpec(n_layers=2, n_heads=3, n_kv_heads=3, d_model=16, **bad)


def test_neurons_and_positions_are_refused_together():
    spec = ModelSpec(n_layers=1, n_heads=1, n_kv_heads=1, d_model=4, neuron_layers=[0], d_mlp=2)
    with pytest.raises(ValueError, match="position-aware"):
        Graph(spec, Positions(3))


def _split_mask(split: Graph, plain: Graph, alive_plain: np.ndarray) -> np.ndarray:
    """The split graph's circuit that treats every neuron of a split MLP like the MLP."""
    out = np.empty(split.n_edges, dtype=bool)
    for e, name in enumerate(split.edge_names):
        src, rest = name.split("->")
        dst, inp = rest[:-1].split("<")
        src = src.split(".")[0] if src.startswith("m") else src
        dst = dst.split(".")[0] if dst.startswith("m") else dst
        out[e] = alive_plain[plain.edge_index[f"{src}->{dst}<{inp}>"]]
    return out


@pytest.mark.parametrize("ablation", ["resample", "zero", "mean"])
def test_split_graph_equals_the_unsplit_one_when_neurons_move_together(ablation):
    model = random_tiny(n_layers=2, d_mlp=6)
    plain = Patcher(model, Graph(spec_of(model)), random_data(1), ablation=ablation)
    split = split_patcher(model, [0, 1], ablation)
    rng = np.random.default_rng(0)
    for _ in range(4):
        alive = rng.random(plain.graph.n_edges) < 0.6
        want = plain.reference_metric(alive)
        mask = _split_mask(split.graph, plain.graph, alive)
        assert split.reference_metric(mask) == pytest.approx(want, rel=1e-10, abs=1e-12)
        assert split.circuit_metric(mask) == pytest.approx(want, rel=1e-10, abs=1e-12)


def test_removing_a_last_layer_neuron_is_patching_its_activation():
    model = random_tiny(n_layers=2, d_mlp=6)
    data = random_data(2)
    p = split_patcher(model, [1], data=data)
    n = 4
    alive = np.ones(p.graph.n_edges, dtype=bool)
    alive[p.graph.edge_index[f"m1.{n}->logits<resid>"]] = False
    corrupted: dict = {}
    with torch.no_grad():
        model.run_with_hooks(data.corrupted, fwd_hooks=[("blocks.1.mlp.hook_post",
                                                     lambda x, hook: corrupted.setdefault("h", x.clone()))])  # fmt: skip

    def patch(x, hook):
        x = x.clone()
        x[..., n] = corrupted["h"][..., n]
        return x

    with torch.no_grad():
        logits = model.run_with_hooks(data.clean, fwd_hooks=[("blocks.1.mlp.hook_post", patch)])
    want = float(p.metric_of_logits(logits.unsqueeze(0))[0])
    assert p.reference_metric(alive) == pytest.approx(want, rel=1e-10)
    assert p.circuit_metric(alive) == pytest.approx(want, rel=1e-10)


CASES = [
    ({}, "resample", "kl"),
    ({}, "zero", "logit_diff"),
    ({"act_fn": "relu", "n_layers": 3}, "mean", "kl"),
    ({"normalization": None, "causal": False}, "resample", "logit_diff"),
]


@pytest.mark.parametrize("arch,ablation,metric", CASES)
def test_fast_acdc_equals_the_reference_on_neuron_nodes(arch, ablation, metric):
    model = random_tiny(d_mlp=5, **arch)
    p = split_patcher(model, list(range(model.cfg.n_layers))[-2:], ablation, metric)
    for threshold in (0.02, 0.2):
        ref = acdc_reference(p, threshold)
        fast = acdc_fast(p, threshold, k_init=3)
        assert fast.stats["fast_path"] == "components"
        np.testing.assert_array_equal(fast.alive, ref.alive)
        np.testing.assert_allclose(fast.scores, ref.scores, rtol=1e-9, atol=1e-12)
    g = p.graph
    touches_neuron = [g.nodes[s].kind == NodeKind.NEURON or g.nodes[d].kind == NodeKind.NEURON
                      for s, d in zip(g.edges.src, g.edges.dst)]  # fmt: skip
    assert np.nanmax(np.abs(ref.scores[touches_neuron])) > 1e-4  # the neurons' edges matter here


def test_layer_path_and_attribution_refuse_neuron_nodes():
    model = random_tiny(d_mlp=4)
    p = split_patcher(model, [1])
    with pytest.raises(ConfigError, match="component fast path"):
        acdc_fast(p, 0.1, sparse=False)
    with pytest.raises(ConfigError, match="neuron"):
        attribute(p, "eap-ig")


def test_zoo_an_model_neuron_circuit_fast_equals_reference():
    """Issue 10: ``discover --task an-neuron --neurons 1`` on the zoo model keeps single
    neurons, and the fast path finds the reference's circuit."""
    from circuitdag.models import load_model
    from circuitdag.prepare import prepare
    from circuitdag.tasks import get_task

    model = load_model("an").to(torch.float64)
    p, meta = prepare(model, get_task("an-neuron"), neurons=[1], n_prompts=2)
    assert meta["neurons"] == [1]
    ref = acdc_reference(p, 0.3)
    fast = acdc_fast(p, 0.3)
    np.testing.assert_array_equal(fast.alive, ref.alive)
    np.testing.assert_allclose(fast.scores, ref.scores, rtol=1e-9, atol=1e-12)
    kept = {p.graph.nodes[s] for s in p.graph.edges.src[p.graph.prune(fast.alive)]}
    assert any(n.kind == NodeKind.NEURON for n in kept)
    assert all(n.kind != NodeKind.MLP or n.layer == 0 for n in kept)
    assert p.graph.edges.input[p.graph.prune(fast.alive)].tolist().count(int(Input.MLP)) > 0


def test_cli_discover_with_neurons(tmp_path, capsys):
    from circuitdag.io import load_circuit

    out = tmp_path / "run"
    assert main(["discover", "--task", "an-neuron", "--neurons", "1", "--n-prompts", "4", "-q",
                 "--out", str(out)]) == 0  # fmt: skip
    circuit = load_circuit(out / "circuit.json")
    assert circuit.graph.spec.neuron_layers == (1,)
    assert any(n.startswith("m1.") for n in circuit.node_names)
    assert "m1." in (out / "circuit.svg").read_text()
    assert main(["curve", str(out / "circuit.json"), "--out", str(tmp_path / "curve")]) == 0  # rebuilds the split graph
    assert "CPR" in capsys.readouterr().out
    for bad, msg in ((["--neurons", "x"], "layer numbers"), (["--neurons", "1", "--positions"], "cannot be combined"),
                     (["--neurons", "1", "--algorithm", "eap"], "does not score neurons"),
                     (["--neurons", "7"], "layers 0..1"), (["--neurons", ""], "layer numbers"),
                     (["--neurons", "1", "--prefilter", "eap-ig"], "drop --prefilter")):  # fmt: skip
        assert main(["discover", "--task", "an-neuron", "-q", "--out", str(tmp_path / "bad"), *bad]) == 2
        assert msg in capsys.readouterr().err


def test_a_model_whose_mlp_cannot_be_split_is_refused():
    model = random_tiny(d_mlp=4)
    model.blocks[1].mlp.hook_post = None  # no hidden activation to read, no output projection
    with pytest.raises(ModelError, match="cannot split MLP 1"):
        split_patcher(model, [1])
