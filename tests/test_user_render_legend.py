"""A fresh user's findings on the drawing (verify, stop 4): the legend's lines fit the SVG."""

from __future__ import annotations

import html
import re

import numpy as np

from circuitdag import render
from circuitdag.circuit import Circuit
from circuitdag.graph import Graph, ModelSpec

#: Helvetica at 10 points averages about 5.5 points a character in this line (measured on
#: the rendered PNG of an EAP-IG circuit.svg: "in lo" reached the edge of 563 points at 103
#: characters); a legend narrower than this cuts the line off.
POINTS_PER_CHAR = 5.5


def test_the_width_scale_line_of_an_attribution_circuit_is_not_cut_off() -> None:
    # Repro: `circuitdag discover --task pronoun --algorithm eap-ig` drew a 571-point wide
    # circuit.svg whose line "width = |score|, the attribution estimate of the metric change
    # when the edge alone is removed, in logit_diff units:" stopped at "in lo".
    g = Graph(ModelSpec(n_layers=2, n_heads=4, n_kv_heads=4, d_model=64))
    alive = np.zeros(g.n_edges, dtype=bool)
    alive[:3] = True
    meaning = "attribution estimate of the metric change when the edge alone is removed"
    circuit = Circuit(g, alive, np.arange(g.n_edges, dtype=float),
                      {"task": "pronoun", "metric": "logit_diff", "score_meaning": meaning})  # fmt: skip
    graphviz = '<svg width="300pt" height="200pt"\n viewBox="0.00 0.00 300.00 200.00" xmlns="x"><g/></svg>\n'
    svg = render.add_legend(graphviz, circuit)
    width = float(re.search(r'viewBox="0\.00 0\.00 ([\d.]+) ', svg).group(1))  # type: ignore[union-attr]
    lines = [html.unescape(t) for t in re.findall(r'font-weight="bold">([^<]*)</text>', svg)]
    scale = next(t for t in lines if t.startswith("width = |score|"))
    assert meaning in scale
    assert 8 + POINTS_PER_CHAR * len(scale) <= width
    assert re.search(r'<svg width="([\d.]+)pt"', svg).group(1) == f"{width:.0f}"  # type: ignore[union-attr]
