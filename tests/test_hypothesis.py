"""Hypothesis tests (circuitdag.hypothesis) on the planted-circuit toy, and the per-prompt
metrics they stand on (circuitdag.per_prompt)."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
from planted import planted_circuit, planted_patcher

from circuitdag.hypothesis import (
    equivalence,
    hsic,
    independence,
    minimality,
    random_circuit,
    random_path,
    sufficiency,
)
from circuitdag.per_prompt import decomposes, prompt_metrics, prompt_weights, resample_mean


@pytest.fixture(scope="module")
def toy():
    p = planted_patcher(metric="logit_diff")
    return p, planted_circuit(p.graph)


@pytest.mark.parametrize("metric", ["kl", "logit_diff", "l2"])
def test_per_prompt_values_average_to_circuit_metric(metric):
    p = planted_patcher(metric=metric, batch=10)
    rng = np.random.default_rng(0)
    w = prompt_weights(p)
    for _ in range(3):
        alive = rng.random(p.graph.n_edges) < 0.5
        vals = prompt_metrics(p, alive)
        assert vals.shape == (10,)
        assert float(resample_mean(vals, w)) == pytest.approx(p.circuit_metric(alive), rel=1e-9, abs=1e-12)
        # a subset's mean is the metric of a patcher built on that subset alone
        sub = [1, 3, 3, 7]
        q = planted_patcher(metric=metric, batch=10)
        q.__init__(q.model, q.graph, p.data.subset(sub), metric=metric)
        assert float(resample_mean(vals, w, np.asarray(sub))) == pytest.approx(q.circuit_metric(alive), rel=1e-9)
    assert decomposes(p)


def test_the_planted_circuit_is_exactly_faithful(toy):
    p, planted = toy
    assert 10 < planted.sum() < p.graph.n_edges
    assert p.circuit_metric(planted) == pytest.approx(p.circuit_metric(np.ones(p.graph.n_edges, bool)), abs=1e-10)
    assert p.circuit_metric(planted) != pytest.approx(p.circuit_metric(np.zeros(p.graph.n_edges, bool)))


def test_random_paths_and_circuits(toy):
    p, _ = toy
    g, rng = p.graph, np.random.default_rng(1)
    for _ in range(20):
        path = random_path(g, rng)
        assert g.edges.dst[path[0]] == g.sink and g.edges.src[path[-1]] in g.sources
        assert all(g.edges.src[a] == g.edges.dst[b] for a, b in itertools.pairwise(path))
    for size in (1, 7, 30):
        assert random_circuit(g, size, rng).sum() == size


def test_minimality_accepts_the_planted_circuit_and_rejects_a_padded_one(toy):
    p, planted = toy
    good = minimality(p, planted)
    assert good.passed and good.detail["not_needed"] == []
    padded = planted.copy()
    extra = np.flatnonzero(~planted)[:5]  # edges touching a head that writes nothing
    padded[extra] = True
    bad = minimality(p, padded)
    assert not bad.passed
    assert set(bad.detail["not_needed"]) == {p.graph.edge_names[e] for e in extra}


def test_sufficiency_and_equivalence_of_the_planted_circuit(toy):
    p, planted = toy
    s = sufficiency(p, planted, circuits=40)
    assert s.passed and s.statistic == pytest.approx(1.0) and s.p_value == pytest.approx(1 / 41)
    e = equivalence(p, planted)
    assert e.passed and e.detail["ties"] == p.B  # identical to the model on every prompt
    # the model does the task on every prompt (its top token is the answer); without the
    # circuit it loses on nearly every prompt
    empty = equivalence(p, np.zeros(p.graph.n_edges, bool))
    assert not empty.passed and empty.detail["circuit_wins"] < p.B // 4


def test_independence(toy):
    p, planted = toy
    # without the planted circuit nothing is left: the complement is the corrupted run, which
    # does not depend on the clean prompts' scores -> independent (passes)
    assert independence(p, planted, permutations=200).passed
    # the empty circuit's complement is the full model: maximally dependent
    dep = independence(p, np.zeros(p.graph.n_edges, bool), permutations=200)
    assert not dep.passed and dep.p_value == pytest.approx(1 / 201)


def test_a_p_value_at_its_floor_says_so(toy):
    """The summary line marks a permutation or random-circuit p-value that is as small as its
    count allows (no random circuit as close, no permutation as dependent) as at its floor."""
    from circuitdag.trust import trust_summary

    p, planted = toy
    tests = {"sufficiency": sufficiency(p, planted, circuits=40).to_dict(),
             "independence": independence(p, np.zeros(p.graph.n_edges, bool), permutations=200).to_dict(),
             "equivalence": equivalence(p, planted).to_dict()}  # fmt: skip
    line = trust_summary({"tests": tests})
    assert "sufficiency p=0.0244 (its floor: 40 random circuits)" in line
    assert "independence p=0.00498 (its floor: 200 permutations) (fails)" in line
    assert "equivalence p=" in line and "equivalence p=1 (" not in line  # no floor for the binomial tests
    kept = independence(p, planted, permutations=200).to_dict()
    assert kept["p_value"] > kept["detail"]["p_floor"] and "floor" not in trust_summary({"tests": {"i": kept}})


def test_hsic_detects_dependence_and_not_chance():
    rng = np.random.default_rng(0)
    x = rng.normal(size=60)
    assert hsic(x, x**2) > 5 * hsic(x, rng.normal(size=60))
    assert hsic(x, np.zeros(60)) == 0.0


@pytest.mark.parametrize("positions", [False, True])
@pytest.mark.parametrize("path", ["layers", "components"])
def test_removal_metrics_equal_one_pass_per_circuit(positions, path):
    from planted import planted_data, planted_model

    from circuitdag.graph import Graph, Positions
    from circuitdag.models.spec import spec_of
    from circuitdag.patching import Patcher
    from circuitdag.per_prompt import removal_metrics

    model = planted_model()
    data = planted_data(model, batch=6)
    P = data.clean.shape[1]
    graph = Graph(spec_of(model), Positions(P, None, (P - 1,)) if positions else None)
    p = Patcher(model, graph, data, metric="logit_diff")
    rng = np.random.default_rng(3)
    alive = graph.prune(rng.random(graph.n_edges) < 0.4)
    edges = rng.choice(np.flatnonzero(alive), 12, replace=False)
    dst = graph.edges.dst[edges]
    assert max(np.unique(dst, return_counts=True)[1]) >= 2  # a batch of removals into one destination
    calls: list[int] = []
    got = removal_metrics(p, alive, edges, k=5, path=path, done=calls.append)
    assert sum(calls) == len(edges) and len(calls) >= 2  # progress reported as the edges go
    for e, row in zip(edges, got, strict=True):
        less = alive.copy()
        less[e] = False
        np.testing.assert_allclose(row, prompt_metrics(p, less), rtol=1e-9, atol=1e-10)
