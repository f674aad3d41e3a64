"""The bootstrap (circuitdag.bootstrap): interval coverage at the stated rate, and reruns on
the planted-circuit toy, whose held-out faithfulness is known (1)."""

from __future__ import annotations

import numpy as np
import pytest
from planted import planted_circuit, planted_data, planted_patcher

import circuitdag as cd
import circuitdag.discovery
from circuitdag.algorithms import Algorithm, Found, RunContext, get_algorithm
from circuitdag.bootstrap import bootstrap, interval, jaccard, ratio_interval
from circuitdag.errors import ConfigError
from circuitdag.holdout import patcher_on


@pytest.mark.parametrize("level", [0.95, 0.8])
def test_faithfulness_intervals_cover_the_true_value_at_the_stated_rate(level):
    # per-prompt metrics of the empty circuit, the full model and a circuit; population
    # faithfulness (E empty - E circuit) / (E empty - E full) = (10 - 3) / 10 = 0.7
    trials, n, covered = 300, 100, 0
    for seed in range(trials):
        rng = np.random.default_rng(seed)
        empty = rng.normal(10, 2, n)
        full = rng.normal(0, 1, n)
        circuit = 0.3 * empty + 0.7 * full + rng.normal(0, 1, n)
        lo, hi = ratio_interval(circuit, full, empty, np.ones(n), resamples=500, level=level, seed=seed)
        covered += lo <= 0.7 <= hi
    sd = (level * (1 - level) / trials) ** 0.5
    assert level - 4 * sd - 0.02 <= covered / trials <= level + 4 * sd  # percentile intervals run a bit short


def test_interval_and_jaccard():
    assert interval(np.arange(101.0)) == pytest.approx([2.5, 97.5])
    assert interval(np.array([np.nan])) == [None, None]
    a, b = np.array([1, 1, 0, 0], bool), np.array([1, 0, 1, 0], bool)
    assert jaccard([a, b]) == pytest.approx(1 / 3) and jaccard([a, a, a]) == 1.0 and jaccard([a]) is None


class Planted(Algorithm):
    """Finds the planted circuit whatever the prompts (a method whose answer is known)."""

    name = "planted-test"

    def run(self, patcher, ctx, **options):
        return Found(scores=np.where(planted_circuit(patcher.graph), 1.0, 0.0), in_circuit=planted_circuit(patcher.graph))


def test_reruns_of_a_method_that_finds_the_planted_circuit():
    p = planted_patcher(batch=16)
    alive = planted_circuit(p.graph)
    held = patcher_on(p, planted_data(p.model, data_seed=7, batch=16))
    out = bootstrap(p, Planted(), {}, 5, alive, held, seed=1)
    assert out["stability"] == {"edge_jaccard": 1.0, "node_jaccard": 1.0, "edges_mean": float(alive.sum())}
    assert out["faithfulness"]["heldout"]["values"] == pytest.approx([1.0] * 5, abs=1e-9)
    assert out["faithfulness"]["discovery"]["ci"] == pytest.approx([1.0, 1.0], abs=1e-9)
    assert out["circuit_faithfulness_ci"]["heldout"] == pytest.approx([1.0, 1.0], abs=1e-9)
    assert {k for k, r in out["edges"].items() if r["inclusion"] == 1.0} == {p.graph.edge_names[e] for e in np.flatnonzero(alive)}
    with pytest.raises(ConfigError, match="at least 2"):
        bootstrap(p, Planted(), {}, 1, alive)


def test_reruns_of_eap_vary_with_the_resample():
    p = planted_patcher(batch=16)
    eap = get_algorithm("eap")
    opts = eap.check({"edges": 12})
    alive = eap.run(p, RunContext(), **opts).in_circuit
    out = bootstrap(p, eap, opts, 4, alive, seed=0)
    inc = np.array([r["inclusion"] for r in out["edges"].values()])
    assert ((inc >= 0) & (inc <= 1)).all() and 0 < out["stability"]["edge_jaccard"] <= 1
    assert len(out["faithfulness"]["discovery"]["values"]) == 4 and "heldout" not in out["faithfulness"]
    for r in out["edges"].values():
        lo, hi = r["score_ci"]
        assert lo is None or lo <= hi


def test_the_explorer_shows_inclusion_as_opacity(tmp_path):
    from circuitdag.explore import explorer_data, explorer_html

    p = planted_patcher(batch=8)
    alive = planted_circuit(p.graph)
    circuit = cd.discovery.record(p, Planted(), Planted().run(p, RunContext()), {}, {"seconds": 0.0})
    names = [p.graph.edge_names[e] for e in np.flatnonzero(alive)]
    circuit.meta["bootstrap"] = {"resamples": 4, "edges": {names[0]: {"inclusion": 0.25, "score_ci": [0, 1]}}}
    edges = {e["id"]: e for e in explorer_data(circuit)["edges"]}
    assert edges[names[0]]["inclusion"] == 0.25 and edges[names[1]]["inclusion"] is None
    assert explorer_data(circuit)["bootstrap"] == 4 and "inclusion" in explorer_html(circuit)


@pytest.mark.parametrize("method", ["eap", "eap-ig"])
def test_per_prompt_scores_give_what_rerunning_the_method_gives(method):
    p = planted_patcher(batch=10, metric="logit_diff")
    alg = get_algorithm(method)
    opts = alg.check({"edges": 12, **({"ig_steps": 3} if method == "eap-ig" else {})})
    alive = alg.run(p, RunContext(), **opts).in_circuit
    held = patcher_on(p, planted_data(p.model, data_seed=9, batch=10))
    fast = bootstrap(p, alg, opts, 4, alive, held, seed=2)
    slow = bootstrap(p, alg, opts, 4, alive, held, seed=2, rerun=True)
    assert fast["reruns"] == "per-prompt scores" and slow["reruns"] == "method"
    assert fast["edges"].keys() == slow["edges"].keys()
    for name, row in fast["edges"].items():
        assert row["inclusion"] == slow["edges"][name]["inclusion"]
        assert row["score_ci"] == pytest.approx(slow["edges"][name]["score_ci"], rel=1e-9, abs=1e-12)
    for part in ("discovery", "heldout"):
        assert fast["faithfulness"][part]["values"] == pytest.approx(slow["faithfulness"][part]["values"], rel=1e-9)
    assert fast["stability"] == slow["stability"]
