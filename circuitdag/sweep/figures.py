"""The sweep's figures: every completed trial as a point (circuit size across, faithfulness
up), the Pareto front in red joined by its staircase.

Two renderings of the same series (:func:`series`): a static SVG drawn by matplotlib
(``sweep.svg``, for papers; each front point links to its circuit drawing) and an
interactive plotly figure (the plot of ``sweep.html``: hover a point for its trial, click
a front point to open its circuit).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from circuitdag._plotting import svg_text
from circuitdag.sweep.front import SweepReport, fmt

if TYPE_CHECKING:
    import plotly.graph_objects as go

#: Colours of the trial groups (one per (metric, ablation)); the front is :data:`FRONT_COLOUR`.
PALETTE = ("#1f77b4", "#2ca02c", "#9467bd", "#8c564b", "#e377c2", "#17becf", "#bcbd22", "#7f7f7f")
FRONT_COLOUR = "#d62728"
#: Above this many edges in the graph the size axis is logarithmic (circuits are small).
LOG_X_ABOVE = 200
X_LABEL = "circuit size (edges)"
Y_LABEL = "faithfulness (fraction of the metric gap recovered)"


@dataclass(frozen=True)
class Series:
    """One group of points: ``rows`` are trial rows (:func:`circuitdag.sweep.front.trial_rows`)
    or front points (:attr:`SweepReport.points`), in drawing order. ``key`` names the
    group in the figures (the SVG group id, the plotly trace uid)."""

    key: str
    label: str
    colour: str
    rows: list[dict[str, Any]]


def series(report: SweepReport) -> tuple[list[Series], Series]:
    """The completed trials off the front, one series per (metric, ablation), and the
    front (its points sorted by edges). Trials whose result is a front point are drawn as
    that point only."""
    on_front = {t for p in report.points for t in p["trials"]}
    done = [r for r in report.trials if r["state"] == "COMPLETE" and r["trial"] not in on_front]
    combos = sorted({(r["metric"], r["ablation"]) for r in report.trials if r["state"] == "COMPLETE"}, key=str)
    groups = []
    for i, (metric, ablation) in enumerate(combos):
        rows = [r for r in done if (r["metric"], r["ablation"]) == (metric, ablation)]
        label = f"{metric}, {ablation}" if len(combos) > 1 else "other trials"
        groups.append(Series(f"trials-{metric}-{ablation}", label, PALETTE[i % len(PALETTE)], rows))
    front = Series("front", "Pareto front", FRONT_COLOUR, sorted(report.points, key=lambda p: p["edges"]))
    return groups, front


def _x_max(report: SweepReport, n_edges_total: int | None) -> int:
    return max([n_edges_total or 0] + [r["edges"] for r in report.trials if r["edges"] is not None] + [1])


def knob_text(r: dict[str, Any]) -> str:
    """The size knob of a trial or front point: ``threshold X``, ``thresholds X..Y``, or for
    methods sized by an edge count ``edges asked N`` / ``edges asked N..M``."""
    if r.get("threshold_range") or r.get("threshold") is not None:
        lo, hi = r.get("threshold_range") or (r["threshold"], r["threshold"])
        return f"threshold {fmt(lo)}" if lo == hi else f"thresholds {fmt(lo)}..{fmt(hi)}"
    lo, hi = r.get("edges_requested_range") or (r.get("edges_requested"), r.get("edges_requested"))
    return f"edges asked {lo}" if lo == hi else f"edges asked {lo}..{hi}"


def _tip(r: dict[str, Any]) -> str:
    """A point's hover text; a front point names the thresholds of all the trials it stands for."""
    thresholds = knob_text(r)
    return (f"trial {r['trial']}: {thresholds}, metric {r['metric']}, ablation {r['ablation']}, "
            f"{r['edges']} edges, faithfulness {fmt(r['faithfulness'], 6)}")  # fmt: skip


def static_svg(report: SweepReport, n_edges_total: int | None, links: dict[int, str] | None = None) -> str:
    """The figure as SVG text, drawn by matplotlib. The x axis runs to ``n_edges_total``
    (the whole graph), on a symmetric-log scale above :data:`LOG_X_ABOVE` edges. Each
    series is an SVG group whose id is its :attr:`Series.key` (``front``,
    ``trials-<metric>-<ablation>``); a front point whose trial is in ``links`` (trial ->
    relative path) is a hyperlink to it."""
    import matplotlib
    from matplotlib.figure import Figure

    groups, front = series(report)
    xmax = _x_max(report, n_edges_total)
    with matplotlib.rc_context({"svg.hashsalt": "circuitdag", "svg.fonttype": "none"}):
        fig = Figure(figsize=(7.8, 4.2))
        ax = fig.add_subplot()
        for s in groups:
            if s.rows:
                ax.scatter([r["edges"] for r in s.rows], [r["faithfulness"] for r in s.rows], s=14, color=s.colour,
                           alpha=0.6, linewidths=0, label=s.label, gid=s.key, zorder=2)  # fmt: skip
        if front.rows:
            xs, ys = [p["edges"] for p in front.rows], [p["faithfulness"] for p in front.rows]
            ax.step(xs, ys, where="post", color=front.colour, linewidth=1.5, zorder=3, gid="front-line")
            dots = ax.scatter(xs, ys, s=36, color=front.colour, edgecolors="black", linewidths=0.8,
                              label=front.label, gid=front.key, zorder=4)  # fmt: skip
            dots.set_urls([(links or {}).get(p["trial"]) for p in front.rows])
        fs = [r["faithfulness"] for r in report.trials if r["faithfulness"] is not None]
        lo, hi = min([0.0, *fs]), max([1.0, *fs])
        pad = 0.04 * (hi - lo)
        ax.set_ylim(lo - pad, hi + pad)
        if xmax > LOG_X_ABOVE:
            ax.set_xscale("symlog", linthresh=1)
            ax.set_xlim(-0.1, xmax * 1.3)
        else:
            ax.set_xlim(-0.02 * xmax, xmax * 1.02)
        ax.set_xlabel(X_LABEL + (", log scale" if xmax > LOG_X_ABOVE else ""))
        ax.set_ylabel(Y_LABEL, fontsize=9)
        ax.set_title(f"{report.settings.task}: study {report.study}", fontsize=11)
        ax.grid(True, alpha=0.3)
        if groups or front.rows:
            ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0), frameon=False)
        fig.tight_layout()
        return svg_text(fig)


def pareto_figure(report: SweepReport, n_edges_total: int | None, links: dict[int, str] | None = None) -> go.Figure:
    """The interactive figure (plotly). One trace per series, its ``uid`` the series key
    (``front`` for the Pareto front, drawn as a staircase); every point's ``customdata``
    is ``[trial, link]``, the link being ``links[trial]`` (the circuit to open on a click)
    or ``""``. Above :data:`LOG_X_ABOVE` edges the x axis is ``edges + 1`` on a log scale
    (plotly has no symmetric-log axis, and the empty circuit must show)."""
    import plotly.graph_objects as go

    groups, front = series(report)
    xmax = _x_max(report, n_edges_total)
    log_x = xmax > LOG_X_ABOVE
    shift = 1 if log_x else 0
    fig = go.Figure()
    for s in [*groups, front]:
        if not s.rows and s is not front:
            continue
        is_front = s is front
        fig.add_trace(go.Scatter(
            x=[r["edges"] + shift for r in s.rows], y=[r["faithfulness"] for r in s.rows], uid=s.key, name=s.label,
            mode="lines+markers" if is_front else "markers", line={"shape": "hv", "color": s.colour, "width": 1.5},
            marker={"color": s.colour, "size": 10 if is_front else 7, "opacity": 1 if is_front else 0.6,
                    "line": {"color": "black", "width": 1 if is_front else 0}},
            customdata=[[r["trial"], (links or {}).get(r["trial"], "")] for r in s.rows],
            hovertext=[_tip(r) + (" (click to open its circuit)" if (links or {}).get(r["trial"]) else "")
                       for r in s.rows],
            hoverinfo="text",
        ))  # fmt: skip
    fig.update_layout(
        title={"text": f"{report.settings.task}: study {report.study}", "font": {"size": 14}},
        xaxis={"title": {"text": "circuit size (edges + 1, log scale)" if log_x else X_LABEL},
               "type": "log" if log_x else "linear",  # to the whole graph's size, as in the SVG
               "range": [-0.05, math.log10(xmax + 1) * 1.02] if log_x else [-0.02 * xmax, xmax * 1.02]},
        showlegend=True,
        yaxis={"title": {"text": Y_LABEL}}, template="plotly_white", hovermode="closest",
        width=820, height=440, margin={"l": 70, "r": 20, "t": 50, "b": 50},
    )  # fmt: skip
    return fig
