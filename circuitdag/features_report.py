"""The files of ``circuitdag features``: report.json (every number), report.md (generated
from it), coherence.svg (share of coherent neurons per layer; the z-scores of every tested
neuron in both spaces), index.html and one page per described neuron in ``neurons/``
(the explorer's stylesheet, ``circuitdag/_static/explore.css``; the top contexts with the
token marked, the held-out chunks coloured by activation, the substitution test)."""

from __future__ import annotations

import html
from importlib import resources
from pathlib import Path
from typing import Any

from circuitdag.errors import ConfigError

_EXTRA_CSS = """
body { overflow-y: auto; } #page { max-width: 1100px; padding: 10px 18px; }
table.t { border-collapse: collapse; } table.t td, table.t th { padding: 2px 8px; border-bottom: 1px solid #eee; text-align: left; }
.ctx { font-family: Courier, monospace; font-size: 12px; white-space: pre-wrap; }
.hit { background: #f4a261; font-weight: bold; } .after { color: #888; }
.tok { border-radius: 2px; }
"""


def _fmt(x: Any, spec: str = ".3f") -> str:
    return "-" if x is None else format(x, spec)


def _count(report: dict[str, Any]) -> str:
    """ "n of N (x%)": the coherent neurons of every layer scanned."""
    total = sum(r["neurons"] for r in report["by_layer"])
    coherent = sum(r["coherent"] for r in report["by_layer"])
    return f"{coherent} of {total} ({coherent / max(total, 1):.1%})"


def markdown(report: dict[str, Any]) -> str:
    """report.md: the per-layer table and the described neurons, from the numbers."""
    c, s = report["corpus"], report["settings"]
    lines = [f"# Feature neurons of {report['model']}", "",
             (f"Corpus: {c['source']}; {c['tokens']} tokens in chunks of {c['chunk']} "
              f"({c['held_out_chunks']} of {c['chunks']} chunks held out); {c.get('unknown_share', 0.0):.1%} of them the "
              f"tokenizer's unknown token. Top {s['top_k']} contexts per neuron; "
              f"coherent: {s['coherent']} (Benjamini-Hochberg, alpha {s['alpha']}, {s['null_sets']} null sets per "
              f"set size). Coherent neurons over all layers scanned: {_count(report)}."), "",
             *[line for w in report.get("warnings", []) for line in (f"**Warning:** {w}.", "")],
             ("| layer | neurons | tested (model / words) | coherent (model) | coherent (words) | coherent (both) | share | described "
              "| features | mean simulation r |"), "|---|---|---|---|---|---|---|---|---|---|"]  # fmt: skip
    for r in report["by_layer"]:
        lines.append(f"| {r['layer']} | {r['neurons']} | {r['tested_model']} / {r['tested_words']} | {r['coherent_model']} | "
                     f"{_fmt(r['coherent_words'], 'd')} | {r['coherent']} | {r['share_coherent']:.3f} | "
                     f"{r['described']} | {r['features']} | {_fmt(r['mean_simulation_score'])} |")  # fmt: skip
    lines += ["", "## Described neurons (best-ranked coherent neurons of each layer)", "",
              "| rank | neuron | description | substitution p | simulation r (words only) |", "|---|---|---|---|---|"]  # fmt: skip
    for d in report["described"]:
        sub, sim = d["substitution"], d["simulation"]
        text = d["description"]["text"].replace("|", "\\|")
        lines.append(f"| {d['rank']} | [{d['name']}](neurons/{d['name']}.html) | {text} | "
                     f"{_fmt(sub['p_similar_above_random'], '.2g')} | {_fmt(sim['score'])} ({_fmt(sim['score_words_only'])}) |")  # fmt: skip
    t = report["seconds"]
    lines += ["", (f"Seconds: scan {t['scan']}, coherence {t['coherence']}, description {t['describe']}, "
                   f"total {t['total']}.")]  # fmt: skip
    return "\n".join(lines) + "\n"


def _figure(report: dict[str, Any]) -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    fig, (a, b) = plt.subplots(1, 2, figsize=(11, 4))
    layers = [r["layer"] for r in report["by_layer"]]
    x = np.arange(len(layers))
    for off, key, label in ((-0.27, "coherent_model", "model embeddings"), (0, "coherent_words", "corpus word vectors"),
                            (0.27, "coherent", "both (coherent)")):  # fmt: skip
        a.bar(x + off, [(r[key] or 0) / r["neurons"] for r in report["by_layer"]], 0.27, label=label)
    a.set_xticks(x, [str(L) for L in layers])
    a.set_xlabel("MLP layer")
    a.set_ylabel("share of neurons (BH q < alpha)")
    a.set_title("Semantically coherent neurons")
    a.legend(fontsize=8)
    zm, zw, coh = [], [], []
    for r in report["neurons"]:
        if r["words"] is None:
            continue
        for i, flag in enumerate(r["coherent"]):
            if r["model"]["z"][i] is not None and r["words"]["z"][i] is not None:
                zm.append(r["model"]["z"][i])
                zw.append(r["words"]["z"][i])
                coh.append(flag)
    if zm:
        coh_a = np.array(coh)
        b.scatter(np.array(zm)[~coh_a], np.array(zw)[~coh_a], s=4, alpha=0.4, label="not coherent")
        b.scatter(np.array(zm)[coh_a], np.array(zw)[coh_a], s=8, color="C3", label="coherent")
        b.legend(fontsize=8)
    b.set_xlabel("z, model token embeddings")
    b.set_ylabel("z, corpus word vectors")
    b.set_title("Coherence of each neuron's top tokens against the null")
    fig.tight_layout()
    return fig


def _page(title: str, body: str) -> str:
    css = resources.files("circuitdag").joinpath("_static", "explore.css").read_text(encoding="utf-8")
    return (f"<!DOCTYPE html>\n<html><head><meta charset=\"utf-8\"><title>{html.escape(title)}</title>\n"
            f"<style>\n{css}{_EXTRA_CSS}</style>\n</head><body><div id=\"page\">\n{body}\n</div></body></html>\n")  # fmt: skip


def _shade(a: float, top: float) -> str:
    level = 0.0 if top <= 0 else max(0.0, min(1.0, a / top))
    return f"background: rgba(231, 111, 81, {level:.2f})"


def neuron_page(report: dict[str, Any], d: dict[str, Any]) -> str:
    """One described neuron's page."""
    e = html.escape
    sub, sim, desc = d["substitution"], d["simulation"], d["description"]
    rows = "".join(f"<tr><td>{c['activation']:.3f}</td><td class=\"ctx\">{e(c['before'])}<span class=\"hit\">"
                   f"{e(c['token'])}</span><span class=\"after\">{e(c['after'])}</span></td></tr>"
                   for c in d["contexts"])  # fmt: skip
    held = ""
    for h in d["held_out_top"]:
        top = max(h["activations"]) if h["activations"] else 0.0
        toks = "".join(f"<span class=\"tok\" style=\"{_shade(a, top)}\" title=\"{a:.3f}\">{e(t)}</span>"
                       for t, a in zip(h["tokens"], h["activations"], strict=True))  # fmt: skip
        held += f"<p class=\"ctx\">chunk {h['chunk']}: {toks}</p>"
    before = "".join(f"<tr><td>{b['offset']}</td><td>{b['persistence']:.3f}</td></tr>" for b in sub.get("before", []))
    examples = ""
    for x in sub.get("examples", []):
        sims = ", ".join(f"{e(s['token'])} {s['activation']:.2f}" for s in x["similar"])
        rnds = ", ".join(f"{e(s['token'])} {s['activation']:.2f}" for s in x["random"])
        examples += f"<li><b>{e(x['token'])}</b> {x['activation']:.2f} &rarr; similar: {sims}; random: {rnds}</li>"
    body = (f"<h1>{e(report['model'])} {d['name']} (rank {d['rank']})</h1><p>{e(desc['text'])}</p>"
            f"<p class=\"note\"><a href=\"../index.html\">all neurons</a></p>"
            f"<h2>Simulation (held-out chunks)</h2><p>Pearson r {_fmt(sim['score'])} over {sim['tokens']} tokens; "
            f"words only {_fmt(sim['score_words_only'])}.</p>"
            f"<h2>Substitution test</h2><p>similar tokens keep {_fmt(sub['similar_persistence'])} of the activation, "
            f"random ones {_fmt(sub['random_persistence'])} (one-sided Mann-Whitney p "
            f"{_fmt(sub['p_similar_above_random'], '.2g')}; feature: {sub['feature']}).</p><ul>{examples}</ul>"
            f"<h2>Tokens before the top token, each swapped for random ones</h2><table class=\"t\"><tr><th>tokens before"
            f"</th><th>persistence</th></tr>{before}</table>"
            f"<h2>Top {len(d['contexts'])} contexts (training chunks)</h2><table class=\"t\"><tr><th>activation</th>"
            f"<th>context (grey: after the token, unseen by the model)</th></tr>{rows}</table>"
            f"<h2>Held-out chunks with the neuron's largest activations</h2>{held}")  # fmt: skip
    return _page(f"{report['model']} {d['name']}", body)


def index_page(report: dict[str, Any]) -> str:
    e = html.escape
    rows = "".join(f"<tr><td>{d['rank']}</td><td><a href=\"neurons/{d['name']}.html\">{d['name']}</a></td>"
                   f"<td>{e(d['description']['text'])}</td><td>{_fmt(d['simulation']['score'])}</td></tr>"
                   for d in report["described"])  # fmt: skip
    layers = "".join(f"<tr><td>{r['layer']}</td><td>{r['coherent']} / {r['neurons']}</td>"
                     f"<td>{r['share_coherent']:.3f}</td><td>{r['features']} / {r['described']}</td></tr>"
                     for r in report["by_layer"])  # fmt: skip
    body = (f"<h1>Feature neurons of {e(report['model'])}</h1><p class=\"note\">{e(report['corpus']['source'])}; "
            f"{report['corpus']['tokens']} tokens. report.md has every setting.</p><img src=\"coherence.svg\" "
            f"style=\"max-width: 100%\"><h2>Per layer</h2><table class=\"t\"><tr><th>layer</th><th>coherent</th>"
            f"<th>share</th><th>features / described</th></tr>{layers}</table><h2>Described neurons</h2>"
            f"<table class=\"t\"><tr><th>rank</th><th>neuron</th><th>description</th><th>simulation r</th></tr>{rows}"
            f"</table>")  # fmt: skip
    return _page(f"Feature neurons of {report['model']}", body)


def write_report(report: dict[str, Any], out: str | Path) -> list[Path]:
    """Write the files of the module docstring into ``out``; returns their paths."""
    import matplotlib.pyplot as plt

    from circuitdag._plotting import svg_text, write_svg
    from circuitdag.files import write_atomic, write_json

    out = Path(out)
    paths = [write_json(out / "report.json", report, error=ConfigError),
             write_atomic(out / "report.md", markdown(report), error=ConfigError)]  # fmt: skip
    fig = _figure(report)
    paths.append(write_svg(svg_text(fig), out / "coherence.svg"))
    plt.close(fig)
    paths.append(write_atomic(out / "index.html", index_page(report), error=ConfigError))
    pages = [write_atomic(out / "neurons" / f"{d['name']}.html", neuron_page(report, d), error=ConfigError)
             for d in report["described"]]  # fmt: skip
    stale = set((out / "neurons").glob("L*.N*.html")) - set(pages) if (out / "neurons").is_dir() else set()
    for page in stale:  # an earlier run's neuron, not described by this one: only the pages this writes
        page.unlink()
    return paths + pages


def summary(report: dict[str, Any], out: str | Path) -> tuple[list[str], str]:
    """What ``circuitdag features`` prints: its warnings (one line each, for stderr) and
    its last line (counts as "n of N (share%)")."""
    best = report["described"][0]["description"]["text"] if report["described"] else "none"
    unknown = report["corpus"].get("unknown_share", 0.0)
    line = (f"{report['model']}: {_count(report)} neurons coherent; "
            f"unknown tokens {unknown:.1%} of the corpus; best-ranked: {best} -> {out}/index.html")  # fmt: skip
    return [f"circuitdag: warning: {w}" for w in report.get("warnings", [])], line
