"""information-flow-routes builds its circuit top-down from the logits (Ferrando & Voita's
routes): at its default size it is not empty (a global top-N of per-destination shares
kept 0 edges on every task: the fresh-user verification of issue 22)."""

from __future__ import annotations

import numpy as np
import pytest

import circuitdag as cd
from circuitdag.algorithms.information_flow import routes


@pytest.mark.parametrize("task", ["tracr-reverse", "pronoun"])
def test_the_default_circuit_is_a_route_to_the_logits(task: str) -> None:
    t = cd.tasks.get(task)
    c = cd.discover(t.load_model(), t, "information-flow-routes")
    g = c.graph
    assert c.n_edges > 0  # (no counterfactual: its faithfulness is whatever it is)
    kept = np.flatnonzero(c.in_circuit)
    srcs = {int(g.edges.src[e]) for e in kept}
    assert all(int(g.edges.dst[e]) == int(g.sink) or int(g.edges.dst[e]) in srcs for e in kept)


def test_routes_take_the_best_candidate_into_the_route_so_far() -> None:
    t = cd.tasks.get("tracr-reverse")
    g = cd.discover(t.load_model(), t, "eap", edges=3).graph
    scores = np.linspace(0.1, 0.9, g.n_edges)
    one = routes(g, scores, n_edges=1)
    into_logits = np.flatnonzero(g.edges.dst == g.sink)
    assert one.sum() == 1 and np.flatnonzero(one)[0] == into_logits[np.argmax(scores[into_logits])]
    flat = np.full(g.n_edges, 0.6)
    assert routes(g, flat, threshold=0.5).sum() == g.prune(np.ones(g.n_edges, dtype=bool)).sum()  # every route
    assert routes(g, flat, threshold=0.7).sum() == 0
