"""``sweep.html``: one self-contained page (plotly.js inlined, nothing fetched) with the
interactive Pareto plot, the front, and a sortable table of every trial.

What a browser (or a test driving one) finds on the page:

* ``div#pareto-plot``: the plotly graph div; ``document.getElementById("pareto-plot").data``
  holds the traces, the front's ``uid`` being ``"front"`` and each other trace's
  ``"trials-<metric>-<ablation>"``; every point's ``customdata`` is ``[trial, link]``.
  plotly draws a trace as ``g.trace<uid>`` (``g.tracefront``) with one ``path.point`` per
  point;
* clicking a point whose link is not empty opens the link (its circuit);
* ``table#trials``: one ``tr[data-trial=N]`` per trial, ``tr.front`` for front trials;
  hovering a row highlights its point and hovering a point highlights its rows (``hl``).
"""

from __future__ import annotations

import html
import json
from typing import TYPE_CHECKING, Any

from circuitdag.sweep.figures import knob_text, pareto_figure
from circuitdag.sweep.front import SweepReport, fmt
from circuitdag.sweep.settings import describe
from circuitdag.sweep.storage import masked

if TYPE_CHECKING:
    from collections.abc import Mapping

PLOT_ID = "pareto-plot"

_STYLE = """
body { font-family: Helvetica, Arial, sans-serif; margin: 1.5em; }
table { border-collapse: collapse; font-size: 12px; }
td, th { border-bottom: 1px solid #ddd; padding: 2px 8px; text-align: right; }
th { cursor: pointer; background: #f4f4f4; }
tr.front td { font-weight: bold; color: #b01c1d; }
tr.hl td { background: #ffe9a8; }
td.err { text-align: left; color: #a00; font-weight: normal; max-width: 40em; }
"""

# Runs after plotly has drawn the plot (plotly's post_script); {plot_id} is filled in by plotly.
_LINK_SCRIPT = """
const gd = document.getElementById('{plot_id}');
const pointOf = %s;  // trial -> the trial whose point stands for it
const where = {};    // trial drawn -> [curve, point]
gd.data.forEach((t, c) => (t.customdata || []).forEach((d, i) => { where[d[0]] = [c, i]; }));
const rows = () => document.querySelectorAll('tr[data-trial]');
const unhighlight = () => rows().forEach(r => r.classList.remove('hl'));
gd.on('plotly_hover', ev => {
  const n = ev.points[0].customdata[0];
  rows().forEach(r => r.classList.toggle('hl', String(pointOf[r.dataset.trial] ?? r.dataset.trial) === String(n)));
});
gd.on('plotly_unhover', unhighlight);
gd.on('plotly_click', ev => { const link = ev.points[0].customdata[1]; if (link) window.open(link); });
const wireRows = () => rows().forEach(r => {
  r.onmouseenter = () => {
    r.classList.add('hl');
    const w = where[pointOf[r.dataset.trial] ?? r.dataset.trial];
    if (w) Plotly.Fx.hover(gd, [{curveNumber: w[0], pointNumber: w[1]}]);
  };
  r.onmouseleave = () => { r.classList.remove('hl'); Plotly.Fx.unhover(gd); };
});
// The plot is drawn while the page is still loading: the table below it may not exist yet.
if (document.readyState === 'loading') document.addEventListener('DOMContentLoaded', wireRows); else wireRows();
"""

_SORT_SCRIPT = """
document.querySelectorAll('#trials th').forEach((th, i) => th.onclick = () => {
  const tb = document.querySelector('#trials tbody'), rows = [...tb.rows];
  const key = r => { const t = r.cells[i].textContent, v = parseFloat(t); return isNaN(v) ? t : v; };
  const dir = th.dataset.dir = th.dataset.dir === '1' ? '-1' : '1';
  rows.sort((a, b) => (key(a) > key(b) ? 1 : key(a) < key(b) ? -1 : 0) * dir).forEach(r => tb.appendChild(r));
});
"""

_HEAD = ("trial", "state", "threshold", "metric", "ablation", "edges", "faithfulness", "seconds", "circuit", "error")


def _link(href: str | None, text: str) -> str:
    return f'<a href="{html.escape(href)}">{text}</a>' if href else ""


def _table(report: SweepReport, views: Mapping[int, Mapping[str, str]]) -> str:
    front = {t for p in report.points for t in p["trials"]}
    body = []
    for r in sorted(report.trials, key=lambda r: (r["edges"] is None, r["edges"] or 0, -(r["faithfulness"] or 0))):
        v = views.get(r["trial"], {})
        links = " ".join(x for x in (_link(r["circuit"], "json"), _link(v.get("svg"), "svg"),
                                     _link(v.get("html"), "explore")) if x)  # fmt: skip
        cells = [r["trial"], r["state"], fmt(r["threshold"]) if r["threshold"] is not None else knob_text(r),
                 r["metric"] or "", r["ablation"] or "",
                 "" if r["edges"] is None else r["edges"], fmt(r["faithfulness"], 6), fmt(r["seconds"], 3)]  # fmt: skip
        tds = "".join(f"<td>{html.escape(str(c))}</td>" for c in cells) + f"<td>{links}</td>"
        tds += f'<td class="err">{html.escape(r["error"] or "")}</td>'
        cls = ' class="front"' if r["trial"] in front else ""
        body.append(f'<tr data-trial="{r["trial"]}"{cls} title="trial {r["trial"]}">{tds}</tr>')
    head = "".join(f"<th>{h}</th>" for h in _HEAD)
    return f'<table id="trials"><thead><tr>{head}</tr></thead>\n<tbody>{"".join(body)}</tbody></table>'


def sweep_html(report: SweepReport, n_edges_total: int | None, views: Mapping[int, Mapping[str, str]]) -> str:
    """The page. ``views`` maps a front point's trial to the files that show its circuit,
    relative to the page (``{"svg": ..., "html": ...}``, either may be missing); a click
    on the point opens the explorer page when there is one, else the SVG, else the JSON."""
    s = report.settings
    links: dict[int, str] = {}
    for p in report.points:
        v = views.get(p["trial"], {})
        link = v.get("html") or v.get("svg") or p["circuit"]
        if link:
            links[p["trial"]] = link
    fig = pareto_figure(report, n_edges_total, links)
    point_of: dict[str, Any] = {str(t): p["trial"] for p in report.points for t in p["trials"]}
    plot = fig.to_html(full_html=False, include_plotlyjs=True, div_id=PLOT_ID, post_script=_LINK_SCRIPT % json.dumps(point_of),
                       config={"displaylogo": False, "responsive": False})  # fmt: skip
    points = "".join(
        f"<li>{p['edges']} edges, faithfulness {fmt(p['faithfulness'], 6)} (trial {p['trial']}, {knob_text(p)}, "
        f"{p['metric']}, {p['ablation']}) "
        f"{_link(p['circuit'], 'json')} {_link(links.get(p['trial']), 'view')}</li>"
        for p in report.points
    )
    best = ""
    if report.best:
        best = (f"<p><b>Best</b> (faithfulness &ge; target): trial {report.best['trial']}, {report.best['edges']} "
                f'edges &rarr; <a href="best/circuit.json">best/circuit.json</a></p>')  # fmt: skip
    counts = ", ".join(f"{v} {k}" for k, v in report.counts.items())
    return f"""<!DOCTYPE html>
<html><head><meta charset="utf-8"><title>circuitdag sweep {html.escape(report.study)}</title>
<style>{_STYLE}</style></head><body>
<h2>Sweep {html.escape(report.study)}{"" if report.study == s.task else " &mdash; " + html.escape(s.task)}</h2>
<p>{html.escape(describe(s))}. Trials: {html.escape(counts)}. Storage: <code>{html.escape(masked(report.storage))}</code></p>
<p>Hover a point for its trial; click a front point to open its circuit; hover a table row to find its point.</p>
{plot}
<h3>Pareto front</h3><ul id="front">{points}</ul>{best}
<h3>Trials</h3>
{_table(report, views)}
<script>{_SORT_SCRIPT}</script></body></html>
"""
