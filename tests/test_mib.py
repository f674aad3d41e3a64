"""MIB-style evaluation (circuitdag.mib) and the EAP-IG graph JSON (circuitdag.eapig_json)."""

import argparse
import json

import numpy as np
import pytest
import torch
from randmodel import random_data, random_tiny

from circuitdag.circuit import Circuit
from circuitdag.cli.circuits import register as register_cli
from circuitdag.eapig_json import eapig_edge_names, load_eapig_json, save_eapig_json, to_eapig_json
from circuitdag.errors import CircuitFileError, ConfigError
from circuitdag.graph import Graph, ModelSpec, Positions
from circuitdag.mib import (
    EDGE_PERCENTS,
    cmd,
    cpr,
    edge_counts,
    faithfulness_curve,
    fractions,
    mib_curves,
    plot_curve,
    ranking,
    select_top,
)
from circuitdag.models import spec_of
from circuitdag.patching import Patcher

MIB_FRACTIONS = (0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1)  # evaluation.py's literals


# ---------------------------------------------------------------------- grid, CPR, CMD
def test_grid_is_mibs_to_the_bit() -> None:
    assert fractions(EDGE_PERCENTS) == MIB_FRACTIONS
    for n in (77, 1000, 32491, 123457):
        assert edge_counts(EDGE_PERCENTS, n) == tuple(int(x * n) for x in MIB_FRACTIONS)
    assert edge_counts(EDGE_PERCENTS, 32491) == (32, 64, 162, 324, 649, 1624, 3249, 6498, 16245, 32491)


def mib_area(fracs, f):
    """MIB's loop (evaluation.py, evaluate_area_under_curve), for comparison."""
    under = from_1 = 0.0
    for i in range(len(f) - 1):
        under += (fracs[i + 1] - fracs[i]) * ((f[i] + f[i + 1]) / 2)
        from_1 += (fracs[i + 1] - fracs[i]) * ((abs(1.0 - f[i]) + abs(1.0 - f[i + 1])) / 2)
    return under, from_1


def test_cpr_cmd_by_hand() -> None:
    ones = [1.0] * len(EDGE_PERCENTS)
    # The trapezoids start at 0.1 %, not 0: a perfect curve scores 1 - 0.001.
    assert cpr(EDGE_PERCENTS, ones) == pytest.approx(0.999, abs=1e-15)
    assert cmd(EDGE_PERCENTS, ones) == 0.0
    # f = the edge fraction on 10 %, 50 %, 100 %: exact for a linear function.
    assert cpr([10, 50, 100], [0.1, 0.5, 1.0]) == pytest.approx((1 - 0.01) / 2, abs=1e-15)
    assert cmd([10, 50, 100], [0.1, 0.5, 1.0]) == pytest.approx(0.9 - 0.495, abs=1e-15)
    # Piecewise linear with overshoot: |1 - f| counts above 1 as well as below.
    assert cpr([0.1, 50, 100], [0.0, 1.0, 0.5]) == pytest.approx(0.499 * 0.5 + 0.5 * 0.75, abs=1e-15)
    assert cmd([0.1, 50, 100], [0.0, 1.5, 0.5]) == pytest.approx(0.499 * 0.75 + 0.5 * 0.5, abs=1e-15)
    f = np.random.default_rng(0).normal(0.5, 0.6, len(EDGE_PERCENTS)).tolist()
    assert (cpr(EDGE_PERCENTS, f), cmd(EDGE_PERCENTS, f)) == mib_area(MIB_FRACTIONS, f)  # same rounding
    assert cpr(EDGE_PERCENTS, f) == pytest.approx(np.trapezoid(f, MIB_FRACTIONS), rel=1e-12)


@pytest.mark.parametrize("bad", [[], [0, 10], [10, 5], [5, 5], [50, 101], [float("nan")]])
def test_bad_grids_are_refused(bad) -> None:
    with pytest.raises(ConfigError, match="percents"):
        fractions(bad)


def test_trapezoid_needs_one_value_per_point() -> None:
    with pytest.raises(ConfigError, match="grid points"):
        cpr([1, 2, 3], [0.5, 0.5])


# ---------------------------------------------------------------------- selection
GRAPH = Graph(ModelSpec(2, 2, 2, 8))


def test_ranking_signed_absolute_ties_nan() -> None:
    s = np.array([1.0, np.nan, -5.0, 1.0, 3.0, np.nan, 0.0, 1.0])
    assert ranking(s).tolist() == [4, 0, 3, 7, 6, 2, 1, 5]  # ties in table order, NaN last
    assert ranking(s, absolute=True).tolist() == [2, 4, 0, 3, 7, 6, 1, 5]
    assert ranking(np.array([-np.inf, np.nan, np.inf])).tolist() == [2, 0, 1]


def test_ranking_matches_a_plain_sort() -> None:
    rng = np.random.default_rng(1)
    s = rng.integers(-3, 4, GRAPH.n_edges).astype(float)  # many ties
    s[rng.random(GRAPH.n_edges) < 0.2] = np.nan
    for absolute in (False, True):

        def key(e, absolute=absolute):
            v = s[e]
            return (np.isnan(v), 0.0 if np.isnan(v) else -(abs(v) if absolute else v), e)

        assert ranking(s, absolute).tolist() == sorted(range(GRAPH.n_edges), key=key)


def test_selection_is_pruned_to_embed_logits_paths() -> None:
    g = GRAPH
    idx = g.edge_index
    s = np.zeros(g.n_edges)
    for rank, name in enumerate(["a0.0->a1.0<q>", "embed->a0.0<v>", "a0.0->logits<resid>", "a0.1->m1<mlp>"]):
        s[idx[name]] = 10 - rank
    one = select_top(g, s, 1)
    assert one.n_selected == 1 and one.n_alive == 0  # a1.0 reaches nothing, a0.0 is unreached
    four = select_top(g, s, 4)
    assert four.n_selected == 4
    assert {g.edge_names[e] for e in np.flatnonzero(four.alive)} == {"embed->a0.0<v>", "a0.0->logits<resid>"}
    s[idx["a1.0->logits<resid>"]] = 5
    five = select_top(g, s, 5)
    assert five.n_alive == 4 and not five.alive[idx["a0.1->m1<mlp>"]]
    assert select_top(g, s, g.n_edges).alive.all()
    assert select_top(g, s, 0).n_selected == 0


def test_selection_through_shared_key_value_heads() -> None:
    g = Graph(ModelSpec(2, 4, 2, 8))
    s = np.zeros(g.n_edges)
    for rank, name in enumerate(["embed->a1.kv1<k>", "a1.3->logits<resid>"]):
        s[g.edge_index[name]] = 2 - rank
    # a1.kv1 feeds the query heads a1.2 and a1.3 (always-present links): a path.
    assert select_top(g, s, 2).n_alive == 2


def test_selection_errors() -> None:
    with pytest.raises(ConfigError, match="shape"):
        select_top(GRAPH, np.zeros(3), 1)
    with pytest.raises(ConfigError, match="cannot select"):
        select_top(GRAPH, np.zeros(GRAPH.n_edges), GRAPH.n_edges + 1)


# ---------------------------------------------------------------------- curves
@pytest.fixture(scope="module")
def patcher():
    model = random_tiny()
    return Patcher(model, Graph(spec_of(model)), random_data(vocab=model.cfg.d_vocab), metric="kl")


@pytest.fixture(scope="module")
def positional_patcher():
    model = random_tiny()
    data = random_data(batch=6, pos=4, vocab=model.cfg.d_vocab)
    return Patcher(model, Graph(spec_of(model), Positions(4, sink=(3,))), data, metric="logit_diff")


def test_curve_points_are_exact_patching(patcher) -> None:
    g = patcher.graph
    scores = np.random.default_rng(2).normal(size=g.n_edges)
    scores[:5] = np.nan
    c = faithfulness_curve(patcher, scores)
    n = g.n_edges
    m_full = patcher.circuit_metric(np.ones(n, bool))
    m_empty = patcher.circuit_metric(np.zeros(n, bool))
    assert (c.m_full, c.m_empty, c.n_total, c.absolute) == (m_full, m_empty, n, False)
    assert c.n_selected == edge_counts(EDGE_PERCENTS, n)
    for i, k in enumerate(c.n_selected):
        sel = select_top(g, scores, k)
        assert c.n_edges[i] == sel.n_alive
        m = patcher.circuit_metric(sel.alive)
        assert c.metric[i] == pytest.approx(m, rel=1e-12, abs=1e-15)  # small points: the node pass's sums
        assert c.faithfulness[i] == pytest.approx((m - m_empty) / (m_full - m_empty), abs=1e-12)
    # Endpoints: the grid's 0-edge points and 100 % are exact.
    assert c.n_selected[0] == 0 and c.faithfulness[0] == 0.0
    assert c.faithfulness[-1] == 1.0 and c.metric[-1] == m_full
    assert (c.cpr, c.cmd) == (cpr(EDGE_PERCENTS, c.faithfulness), cmd(EDGE_PERCENTS, c.faithfulness))
    assert c.mean_faithfulness == pytest.approx(np.mean(c.faithfulness))
    d = c.to_dict()
    assert d["fractions"] == list(MIB_FRACTIONS) and json.loads(json.dumps(d))["cpr"] == c.cpr


def test_signed_and_absolute_curves(patcher) -> None:
    g = patcher.graph
    # The most negative scores are the "best" edges under |score|, the worst signed.
    scores = -np.abs(np.random.default_rng(3).normal(size=g.n_edges))
    both = mib_curves(patcher, scores, percents=[10, 50, 100])
    assert not both["signed"].absolute and both["absolute"].absolute
    assert (
        both["absolute"].faithfulness
        == faithfulness_curve(patcher, scores, [10, 50, 100], absolute=True).faithfulness
    )
    assert both["signed"].faithfulness != both["absolute"].faithfulness


def test_position_aware_curve(positional_patcher) -> None:
    p = positional_patcher
    scores = np.random.default_rng(4).normal(size=p.graph.n_edges)
    c = faithfulness_curve(p, scores, percents=[0.1, 20, 100])
    assert c.n_total == p.graph.n_edges and c.n_selected[-1] == p.graph.n_edges
    assert c.n_edges[-1] < c.n_total  # last-layer nodes off the answer position reach nothing
    assert c.faithfulness[-1] == 1.0 and c.faithfulness[0] == 0.0


def test_curve_errors(patcher) -> None:
    n = patcher.graph.n_edges
    with pytest.raises(CircuitFileError, match="no ranking"):
        faithfulness_curve(patcher, np.full(n, np.nan))
    with pytest.raises(ConfigError, match="shape"):
        faithfulness_curve(patcher, np.zeros(n + 1))
    with pytest.raises(ConfigError, match="percents"):
        faithfulness_curve(patcher, np.zeros(n), percents=[5, 1])
    flat = Patcher(patcher.model, patcher.graph, patcher.data,
                   metric=lambda logits, ref: torch.zeros(logits.shape[0], dtype=logits.dtype))  # fmt: skip
    with pytest.raises(ConfigError, match="undefined"):
        faithfulness_curve(flat, np.zeros(n))


def test_plot(patcher, tmp_path) -> None:
    scores = np.random.default_rng(5).normal(size=patcher.graph.n_edges)
    out = plot_curve(mib_curves(patcher, scores, [1, 10, 100]), tmp_path / "sub" / "curve.svg")
    text = out.read_text()
    assert text.lstrip().startswith("<?xml") and "<svg" in text and "CPR" in text and "10%" in text


# ---------------------------------------------------------------------- EAP-IG graph JSON
def random_circuit(graph: Graph, seed: int = 0) -> Circuit:
    rng = np.random.default_rng(seed)
    return Circuit(graph, rng.random(graph.n_edges) < 0.3, rng.normal(size=graph.n_edges))


def test_edge_set_is_eapigs() -> None:
    # EAP-IG's Graph.from_model on GPT-2 small has 32491 edges (MIB's circuits/ioi-eap-ig.json).
    names = eapig_edge_names(Graph(ModelSpec(12, 12, 12, 768)))
    flat = [n for group in names for n in group]
    assert len(flat) == len(set(flat)) == 32491
    assert {"input->a0.h0<q>", "a0.h1->a3.h2<k>", "a3.h2->m3", "input->m0", "m11->logits"} <= set(flat)
    assert "m3->a3.h0<q>" not in flat and "a3.h2->a3.h0<v>" not in flat


@pytest.mark.parametrize("spec", [ModelSpec(2, 3, 3, 16), ModelSpec(2, 4, 2, 16), ModelSpec(2, 2, 1, 8, parallel_attn_mlp=True)],
                         ids=["gpt2-like", "gqa", "parallel-mqa"])  # fmt: skip
def test_round_trip(spec, tmp_path) -> None:
    graph = Graph(spec)
    c = random_circuit(graph)
    path = save_eapig_json(c, tmp_path / "graph.json")
    doc = json.loads(path.read_text())
    assert set(doc) == {"cfg", "nodes", "edges"}
    back = load_eapig_json(path, graph)
    np.testing.assert_array_equal(back.in_circuit, c.in_circuit)
    if spec.gqa:
        np.testing.assert_allclose(back.scores, c.scores, rtol=1e-12, atol=1e-15)
    else:
        np.testing.assert_array_equal(back.scores, c.scores)
    assert back.meta == {"source": str(path), "source_format": "eap-ig"}


def test_gqa_kv_edges_split_and_sum() -> None:
    g = Graph(ModelSpec(1, 4, 2, 8))
    c = Circuit(g, np.zeros(g.n_edges, bool), np.zeros(g.n_edges))
    e = g.edge_index["embed->a0.kv1<v>"]
    c.scores[e], c.in_circuit[e] = 3.0, True
    doc = to_eapig_json(c)
    assert doc["cfg"] == {
        "n_layers": 1,
        "n_heads": 4,
        "parallel_attn_mlp": False,
        "d_model": 8,
        "n_key_value_heads": 2,
    }
    assert (
        doc["edges"]["input->a0.h2<v>"] == doc["edges"]["input->a0.h3<v>"] == {"score": 1.5, "in_graph": True}
    )
    assert doc["edges"]["input->a0.h1<v>"]["in_graph"] is False
    doc["edges"]["input->a0.h3<v>"] = {"score": 0.5, "in_graph": False}  # one query head only
    back = load_eapig_json(doc, g)
    assert back.scores[e] == 2.0 and back.in_circuit[e]
    del doc["cfg"]["n_key_value_heads"]  # MIB's own files do not record it
    assert load_eapig_json(doc, g).scores[e] == 2.0


# A complete file in EAP-IG's format for a 1-layer, 1-head model (written by hand).
HAND = """{"cfg": {"n_layers": 1, "n_heads": 1, "parallel_attn_mlp": false, "d_model": 4},
 "nodes": {"input": {"in_graph": true}, "a0.h0": {"in_graph": true}, "m0": {"in_graph": false},
           "logits": {"in_graph": true}},
 "edges": {"input->a0.h0<q>": {"score": 0.5, "in_graph": true},
           "input->a0.h0<k>": {"score": -0.25, "in_graph": false},
           "input->a0.h0<v>": {"score": 2.0, "in_graph": true},
           "input->m0": {"score": 0.125, "in_graph": false},
           "a0.h0->m0": {"score": -1.0, "in_graph": false},
           "input->logits": {"score": 0.0, "in_graph": false},
           "a0.h0->logits": {"score": 4.0, "in_graph": true},
           "m0->logits": {"score": -3.0, "in_graph": false}}}"""
HAND_OURS = {"embed->a0.0<q>": (0.5, True), "embed->a0.0<k>": (-0.25, False), "embed->a0.0<v>": (2.0, True),
             "embed->m0<mlp>": (0.125, False), "a0.0->m0<mlp>": (-1.0, False), "embed->logits<resid>": (0.0, False),
             "a0.0->logits<resid>": (4.0, True), "m0->logits<resid>": (-3.0, False)}  # fmt: skip


def test_hand_written_file(tmp_path) -> None:
    g = Graph(ModelSpec(1, 1, 1, 4))
    path = tmp_path / "hand.json"
    path.write_text(HAND)
    c = load_eapig_json(path, g)
    assert {
        n: (float(c.scores[g.edge_index[n]]), bool(c.in_circuit[g.edge_index[n]])) for n in g.edge_names
    } == HAND_OURS
    assert to_eapig_json(c) == json.loads(HAND)  # nodes too, as EAP-IG's prune derives them


def test_files_without_scores_and_untested_edges() -> None:
    g = Graph(ModelSpec(1, 1, 1, 4))
    doc = json.loads(HAND)
    for info in doc["edges"].values():
        del info["score"]  # MIB's "binary circuit" submissions
    c = load_eapig_json(doc, g)
    assert np.isnan(c.scores).all() and c.in_circuit.sum() == 3
    c.scores[:] = np.nan
    c.scores[0] = 1.0
    out = to_eapig_json(c)["edges"]
    assert sorted(v["score"] for v in out.values()) == [0.0] * 7 + [1.0]  # NaN is written as 0.0


def bad(doc_edit):
    doc = json.loads(HAND)
    doc_edit(doc)
    return doc


@pytest.mark.parametrize("doc,match", [
    ([], "not an EAP-IG graph"),
    ({"cfg": {}, "edges": {}}, "not an EAP-IG graph"),
    (bad(lambda d: d["cfg"].update(n_heads=2)), "another model: cfg n_heads=2"),
    (bad(lambda d: d["cfg"].update(n_key_value_heads=2)), "another model"),
    (bad(lambda d: d["cfg"].pop("d_model")), "cfg d_model=None"),
    (bad(lambda d: d["edges"].update({"embed->a0.h0<q>": {"score": 1, "in_graph": True}})), "not in this model's graph.*'input'"),
    (bad(lambda d: d["edges"].update({"a0.h0->m0<q>": {"score": 1, "in_graph": True}})), "not in this model's graph"),
    (bad(lambda d: d["edges"].pop("m0->logits")), "missing, e.g. 'm0->logits'"),
    (bad(lambda d: d["edges"].update({"m0->logits": {"score": "big", "in_graph": True}})), "not a number"),
    (bad(lambda d: d["edges"].update({"m0->logits": {"score": 1.0, "in_graph": 1}})), "boolean 'in_graph'"),
    (bad(lambda d: d["edges"].update({"m0->logits": 1.0})), "boolean 'in_graph'"),
])  # fmt: skip
def test_bad_files(doc, match) -> None:
    with pytest.raises(CircuitFileError, match=match) as info:
        load_eapig_json(doc, Graph(ModelSpec(1, 1, 1, 4)))
    assert "\n" not in str(info.value)


def test_unreadable_files(tmp_path) -> None:
    g = Graph(ModelSpec(1, 1, 1, 4))
    with pytest.raises(CircuitFileError, match="cannot read"):
        load_eapig_json(tmp_path / "nope.json", g)
    (tmp_path / "x.json").write_text("{oops")
    with pytest.raises(CircuitFileError, match="not JSON"):
        load_eapig_json(tmp_path / "x.json", g)


def test_graphs_without_an_mib_counterpart() -> None:
    pos = Graph(ModelSpec(1, 2, 2, 4), Positions(3))
    c = random_circuit(pos)
    with pytest.raises(CircuitFileError, match="position-aware.*without_positions"):
        to_eapig_json(c)
    flat = to_eapig_json(c, collapse_positions=True)
    plain = c.without_positions()
    back = load_eapig_json(flat, pos.plain)
    np.testing.assert_array_equal(back.in_circuit, plain.in_circuit)
    np.testing.assert_array_equal(back.scores, plain.scores)
    with pytest.raises(CircuitFileError, match="position-aware"):
        load_eapig_json(flat, pos)
    with pytest.raises(CircuitFileError, match="attention-only"):
        to_eapig_json(random_circuit(Graph(ModelSpec(1, 2, 2, 4, attn_only=True))))


# ---------------------------------------------------------------------- command line
def run_cli(argv):
    parser = argparse.ArgumentParser(prog="circuitdag")
    register_cli(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    return args.fn(args)


@pytest.fixture(scope="module")
def tracr_run(tmp_path_factory):
    from circuitdag.prepare import prepare
    from circuitdag.tasks import get_task

    task = get_task("tracr-reverse")
    patcher, meta = prepare(task.load_model(), task)
    scores = np.random.default_rng(6).normal(size=patcher.graph.n_edges)
    scores[-3:] = np.nan
    circuit = Circuit(
        patcher.graph, np.zeros(patcher.graph.n_edges, bool), scores, {**meta, "algorithm": "acdc"}
    )
    out = tmp_path_factory.mktemp("run")
    circuit.save(out / "circuit.json")
    return patcher, circuit, out


def test_cli_curve(tracr_run, capsys) -> None:
    patcher, circuit, out = tracr_run
    assert run_cli(["curve", str(out / "circuit.json"), "-q"]) == 0
    line = capsys.readouterr().out.strip()
    assert "\n" not in line and line.startswith("tracr-reverse: CPR") and "100%:1.000" in line
    doc = json.loads((out / "curve.json").read_text())
    assert (
        doc["format"] == "circuitdag.curve/1" and doc["method"] == "acdc" and doc["model"] == "tracr-reverse"
    )
    assert (doc["task"], doc["metric"], doc["ablation"], doc["positions"]) == (
        "tracr-reverse",
        "l2",
        "resample",
        False,
    )
    want = mib_curves(patcher, circuit.scores)
    assert doc["cpr"] == want["signed"].cpr and doc["cmd"] == want["absolute"].cmd
    assert doc["curves"]["absolute"]["faithfulness"] == list(want["absolute"].faithfulness)
    assert (out / "curve.svg").read_text().count("<svg") == 1
    # The same scores as an EAP-IG file (rank-equivalent: NaN -> 0.0 sits among the real
    # scores only under the signed ranking), with the task given on the command line.
    save_eapig_json(
        Circuit(circuit.graph, circuit.in_circuit, np.nan_to_num(circuit.scores)), out / "mib" / "g.json"
    )
    with pytest.raises(ConfigError, match="--task"):
        run_cli(["curve", str(out / "mib" / "g.json")])
    assert run_cli(["curve", str(out / "mib" / "g.json"), "--task", "tracr-reverse", "--percents", "5", "50", "100",
                    "--method", "eap-ig", "-q"]) == 0  # fmt: skip
    doc = json.loads((out / "mib" / "curve.json").read_text())
    assert doc["source_format"] == "eap-ig" and doc["method"] == "eap-ig" and doc["percents"] == [5, 50, 100]
    assert doc["cpr"] == mib_curves(patcher, np.nan_to_num(circuit.scores), [5, 50, 100])["signed"].cpr


def test_cli_errors(tracr_run, tmp_path) -> None:
    _, circuit, _ = tracr_run
    Circuit(circuit.graph, circuit.in_circuit, np.full(circuit.graph.n_edges, np.nan), circuit.meta).save(
        tmp_path / "c.json")  # fmt: skip
    with pytest.raises(CircuitFileError, match="no edge scores"):
        run_cli(["curve", str(tmp_path / "c.json")])
    (tmp_path / "other.json").write_text('{"format": "something/1"}')
    with pytest.raises(CircuitFileError, match="neither"):
        run_cli(["curve", str(tmp_path / "other.json")])
    with pytest.raises(ConfigError, match="percents"):
        run_cli(["curve", str(tmp_path / "other.json"), "--percents", "ten"])


def test_main_cli_registers_curve(capsys) -> None:
    from circuitdag.cli import build_parser

    args = build_parser().parse_args(["curve", "circuit.json", "--percents", "1", "100"])
    assert args.fn.__name__ == "cmd_curve" and args.percents == ["1", "100"]
