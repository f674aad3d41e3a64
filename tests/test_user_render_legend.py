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


def test_the_title_carries_the_held_out_faithfulness_when_there_is_one() -> None:
    # Repro: circuit.svg of `discover --task pronoun --algorithm eap-ig --bootstrap 4` said only
    # "faithfulness=1.007" (discovery prompts); circuit.json had held-out 1.008 [1.005, 1.010].
    g = Graph(ModelSpec(n_layers=1, n_heads=1, n_kv_heads=1, d_model=8))
    meta = {"task": "pronoun", "metric": "logit_diff", "ablation": "resample",
            "metric_full": -2.0, "metric_circuit": -1.5, "metric_corrupted": 0.0}  # fmt: skip
    plain = Circuit(g, np.ones(g.n_edges, dtype=bool), np.zeros(g.n_edges), meta)
    assert render.circuit_title(plain).endswith("faithfulness=0.750")
    held = {**meta, "heldout": {"how": "task", "n_prompts": 100, "faithfulness": 0.7012},
            "bootstrap": {"circuit_faithfulness_ci": {"heldout": [0.65, 0.75]}}}  # fmt: skip
    title = render.circuit_title(Circuit(g, plain.in_circuit, plain.scores, held))
    assert title.endswith("faithfulness=0.750  held-out=0.701 [0.650, 0.750]")
    none = {**meta, "heldout": {"how": "none", "reason": "--holdout 0"}}
    assert render.circuit_title(Circuit(g, plain.in_circuit, plain.scores, none)).endswith("faithfulness=0.750")
