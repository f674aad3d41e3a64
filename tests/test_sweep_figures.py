"""The sweep report's figures hold the trials' data: the matplotlib SVG (one marker per
point, in its series' group, front points linked to their circuits), the plotly figure
(traces, coordinates, links) and the self-contained page around it."""

from __future__ import annotations

import json
import re
import xml.etree.ElementTree as ET

from circuitdag.sweep import SweepReport, SweepSettings
from circuitdag.sweep.figures import pareto_figure, series, static_svg
from circuitdag.sweep.page import PLOT_ID, sweep_html

SVG = "{http://www.w3.org/2000/svg}"
XLINK = "{http://www.w3.org/1999/xlink}href"


def _row(trial, edges, faith, metric="kl", ablation="resample", state="COMPLETE", threshold=0.01):
    return {"trial": trial, "state": state, "threshold": threshold, "metric": metric, "ablation": ablation,
            "edges": edges, "faithfulness": faith, "circuit": f"trials/{trial}/circuit.json" if edges is not None
            else None, "seconds": 0.5, "worker": "h:1", "error": None if state == "COMPLETE" else "boom"}  # fmt: skip


def _point(rep, members):
    return {"trial": rep["trial"], "threshold": rep["threshold"], "metric": rep["metric"], "ablation": rep["ablation"],
            "edges": rep["edges"], "faithfulness": rep["faithfulness"], "circuit": rep["circuit"],
            "trials": [m["trial"] for m in members], "threshold_range": [0.001, 0.01]}  # fmt: skip


def report(n_total=60):
    """Seven trials: a front of two points (trial 3 stands for itself and trial 4), three
    other completed trials in two (metric, ablation) groups, one failed trial."""
    rows = [_row(0, 30, 0.5), _row(1, 12, 0.55, "l2", "zero"), _row(2, 40, 0.9), _row(3, 20, 0.95),
            _row(4, 20, 0.95), _row(5, 4, 0.6), _row(6, None, None, state="FAIL")]  # fmt: skip
    points = [_point(rows[5], [rows[5]]), _point(rows[3], [rows[3], rows[4]])]
    settings = SweepSettings(task="tracr-reverse", model=None, metrics=("kl", "l2"), ablations=("resample", "zero"),
                             threshold_range=(1e-6, 1.0), search=("threshold", "metric", "ablation"), out="/x")  # fmt: skip
    counts = {"total": 7, "complete": 6, "fail": 1}
    return SweepReport("study", "sqlite:////x/sweep.db", settings, rows, points, counts)


def _markers(root, gid):
    group = root.find(f".//{SVG}g[@id='{gid}']")
    assert group is not None, gid
    return [(float(u.get("x")), float(u.get("y"))) for u in group.iter(f"{SVG}use")], group


def test_series_split_the_trials():
    groups, front = series(report())
    assert [(s.key, [r["trial"] for r in s.rows]) for s in groups] == [
        ("trials-kl-resample", [0, 2]), ("trials-l2-zero", [1])]  # trial 4 is drawn as front point 3
    assert [p["trial"] for p in front.rows] == [5, 3]


def test_static_svg_has_one_marker_per_point_where_the_data_puts_it():
    links = {5: "trials/5/circuit.svg", 3: "trials/3/circuit.svg"}
    root = ET.fromstring(static_svg(report(), 60, links))
    front, group = _markers(root, "front")
    assert len(front) == 2
    assert [a.get(XLINK) for a in group.iter(f"{SVG}a")] == ["trials/5/circuit.svg", "trials/3/circuit.svg"]
    kl, _ = _markers(root, "trials-kl-resample")
    l2, _ = _markers(root, "trials-l2-zero")
    assert len(kl) == 2 and len(l2) == 1
    # The axes are linear here (60 edges): pixel positions are an affine map of the data.
    pts = {5: front[0], 3: front[1], 0: kl[0], 2: kl[1], 1: l2[0]}
    data = {r["trial"]: (r["edges"], r["faithfulness"]) for r in report().trials if r["edges"] is not None}
    (x0, y0), (x1, y1) = pts[5], pts[2]
    (e0, f0), (e1, f1) = data[5], data[2]
    for t, (x, y) in pts.items():
        e, f = data[t]
        assert abs(x - (x0 + (e - e0) * (x1 - x0) / (e1 - e0))) < 0.01, t
        assert abs(y - (y0 + (f - f0) * (y1 - y0) / (f1 - f0))) < 0.01, t  # SVG y grows downwards: y1 < y0
    assert y1 < y0
    text = static_svg(report(), 60, links)
    assert "circuit size (edges)" in text and "faithfulness" in text  # labels are text (svg.fonttype none)
    assert static_svg(report(), 60, links) == text  # deterministic


def test_static_svg_on_a_big_graph_uses_a_log_axis():
    text = static_svg(report(), 32000, {})
    assert "log scale" in text
    root = ET.fromstring(text)
    (x5, _), (x3, _) = _markers(root, "front")[0]
    _, (x2, _) = _markers(root, "trials-kl-resample")[0]
    # log(1 + e) spacing: 4 -> 20 edges is wider than 20 -> 40 edges
    assert (x3 - x5) > (x2 - x3) > 0


def test_pareto_figure_traces_carry_the_trials():
    fig = pareto_figure(report(), 60, {3: "trials/3/circuit.html"})
    traces = {t.uid: t for t in fig.data}
    assert list(traces) == ["trials-kl-resample", "trials-l2-zero", "front"]
    front = traces["front"]
    assert list(front.x) == [4, 20] and list(front.y) == [0.6, 0.95] and front.line.shape == "hv"
    assert [list(c) for c in front.customdata] == [[5, ""], [3, "trials/3/circuit.html"]]
    assert "click to open its circuit" in front.hovertext[1] and "thresholds 0.001..0.01" in front.hovertext[1]
    assert list(traces["trials-kl-resample"].x) == [30, 40]
    assert fig.layout.xaxis.type == "linear" and tuple(fig.layout.xaxis.range) == (-1.2, 61.2)
    big = pareto_figure(report(), 32000, {})
    assert big.layout.xaxis.type == "log" and list(big.data[-1].x) == [5, 21]  # edges + 1


def test_page_is_self_contained_and_links_points_to_circuits():
    views = {3: {"svg": "trials/3/circuit.svg", "html": "trials/3/circuit.html"}, 5: {"svg": "trials/5/circuit.svg"}}
    page = sweep_html(report(), 60, views)
    assert f'<div id="{PLOT_ID}"' in page
    assert not re.search(r"<(script|link|img)[^>]*\b(src|href)=\"?https?:", page)  # nothing fetched
    assert "plotly.js v" in page  # the library itself is inlined
    assert page.count("<tr data-trial=") == 7 and page.count('class="front"') == 3
    call = re.search(r'Plotly\.newPlot\(\s*"pareto-plot",\s*(\[.*?\]),\s*\{', page, re.DOTALL)
    assert call is not None
    data = json.loads(call.group(1))
    front = next(t for t in data if t["uid"] == "front")
    # a click opens the explorer page when there is one, else the drawing
    assert front["customdata"] == [[5, "trials/5/circuit.svg"], [3, "trials/3/circuit.html"]]
    assert "plotly_click" in page and '"4": 3' in page  # trial 4's row finds front point 3
