"""--verify-top (circuitdag.verify): exact single-edge effects beside the estimates."""

from __future__ import annotations

import numpy as np
import pytest
from planted import planted_circuit, planted_patcher

from circuitdag.attribution import attribute
from circuitdag.errors import ConfigError
from circuitdag.verify import off_by, verify_top


def test_off_by():
    assert not off_by(1.0, 1.9) and off_by(1.0, 2.1) and off_by(-1.0, 1.0) and off_by(0.0, 1e-3)
    assert not off_by(0.0, 0.0) and off_by(3.0, 1.0) and not off_by(-0.6, -1.0)


def test_exact_values_are_single_edge_removals_and_groups_are_right():
    p = planted_patcher(batch=8)
    planted = planted_circuit(p.graph)
    att = attribute(p, "eap")
    out = verify_top(p, att.scores, planted, 4)
    full = np.ones(p.graph.n_edges, bool)
    names = p.graph.edge_index
    assert out["n_checked"] == 8
    rank = np.argsort(-np.abs(att.scores), kind="stable")
    assert [n for n, r in out["edges"].items() if r["group"] == "top"] == [p.graph.edge_names[e] for e in rank[:4]]
    below = [names[n] for n, r in out["edges"].items() if r["group"] == "below_cut"]
    assert not planted[below].any()
    for name, r in out["edges"].items():
        alive = full.copy()
        alive[names[name]] = False
        assert r["exact"] == pytest.approx(p.circuit_metric(alive) - p.circuit_metric(full), abs=1e-12)
        assert r["estimate"] == att.scores[names[name]] and r["off"] == off_by(r["estimate"], r["exact"])
    assert sorted(out["off"]) == sorted(n for n, r in out["edges"].items() if r["off"])


def test_exact_scores_verify_perfectly():
    p = planted_patcher(batch=8)
    full = np.ones(p.graph.n_edges, bool)
    exact = np.array([p.circuit_metric(np.where(np.arange(len(full)) == e, False, full)) for e in range(len(full))])
    exact -= p.circuit_metric(full)
    out = verify_top(p, exact, planted_circuit(p.graph), 5)
    assert out["spearman"] == pytest.approx(1.0) and out["n_off"] == 0
    with pytest.raises(ConfigError, match="verify-top"):
        verify_top(p, exact, full, 0)


@pytest.mark.parametrize("positions", [False, True])
def test_single_removals_equal_circuit_metric(positions):
    from planted import planted_data, planted_model

    from circuitdag.graph import Graph, Positions
    from circuitdag.models.spec import spec_of
    from circuitdag.patching import Patcher
    from circuitdag.verify import single_removals

    model = planted_model()
    data = planted_data(model, batch=6)
    graph = Graph(spec_of(model), Positions(data.clean.shape[1], None, (data.clean.shape[1] - 1,)) if positions else None)
    p = Patcher(model, graph, data)
    edges = np.random.default_rng(0).choice(graph.n_edges, 25, replace=False)
    full = np.ones(graph.n_edges, bool)
    got = single_removals(p, edges, k=3)
    for e, v in zip(edges, got, strict=True):
        assert v == pytest.approx(p.circuit_metric(np.where(np.arange(graph.n_edges) == e, False, full)) - p.circuit_metric(full), abs=1e-10)
