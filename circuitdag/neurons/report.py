"""The neuron analysis written out: ``report.json``, ``report.md`` and four SVG plots.

Everything here reads the report's dictionary (:meth:`NeuronAnalysis.to_dict
<circuitdag.neurons.analysis.NeuronAnalysis.to_dict>`), so the sentences and the plots
come from the same numbers as the JSON. Plots are drawn by matplotlib (Agg backend):

* ``logit_lens.svg`` -- the logit lens, clean and corrupted;
* ``patching.svg`` -- one heatmap per site (``resid_pre``, ``attn_out``, ``mlp_out``), layer x position;
* ``neurons.svg`` -- single-neuron patching effect against DLA, top neuron labelled;
* ``corpus.svg`` -- positions per activation bin, and how often " an" is the top prediction.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from circuitdag.errors import ConfigError
from circuitdag.files import write_atomic, write_json

PLOTS = ("logit_lens.svg", "patching.svg", "neurons.svg", "corpus.svg")


def write_report(report: dict[str, Any], out: str | Path) -> list[Path]:
    """Write ``report.json``, ``report.md`` and the plots into ``out``; returns the paths."""
    out = Path(out)
    try:
        out.mkdir(parents=True, exist_ok=True)
        paths = [out / "report.json", out / "report.md"]
        write_json(paths[0], report, error=ConfigError)
        write_atomic(paths[1], markdown(report), error=ConfigError)
        paths += plot_all(report, out)
    except OSError as exc:
        raise ConfigError(f"cannot write the report into {out}: {exc.strerror or exc}; choose another --out") from exc
    return paths


def _pct(x: float | None) -> str:
    return "n/a" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{100 * x:.1f}%"


def _count(c: dict[str, Any], bins: list[int]) -> int:
    return sum(c["count"][i] for i in bins)


def _share(c: dict[str, Any], bins: list[int], key: str) -> float | None:
    """Fraction over several bins, weighted by their positions (``next_is_target`` leaves
    out each window's last position, so its weights are off by about 1/64: "about")."""
    pairs = [(c["count"][i], c[key][i]) for i in bins if c[key][i] is not None]
    n = sum(w for w, _ in pairs)
    return sum(w * v for w, v in pairs) / n if n else None


def markdown(r: dict[str, Any]) -> str:
    """The findings in sentences, generated from the report's numbers."""
    t, top, agr, ld = r["target"], r["top_neuron"], r["agreement"], r["logit_diff"]
    seed = r["seed_reference"]
    kind = {"resample": "patching the clean value into the corrupted run recovers",
            "zero": "zero-ablating it in the clean run removes",
            "mean": "mean-ablating it in the clean run removes"}[r["ablation"]]  # fmt: skip
    lines = [f"# Neuron analysis: {r['task']} on {r['model']}", ""]
    lines += [line for w in r.get("warnings", []) for line in (f"**Warning:** {w}.", "")]
    ex = r.get("example_prompt")
    lines.append(
        f"On {r['n_prompts']} prompt pairs" + (f" (clean `{ex['clean']}`, corrupted `{ex['corrupted']}`)" if ex else "")
        + f", the mean logit difference correct - wrong (`{t['text']}` - `{t['wrong_text']}` on the first prompt) "
        f"is {ld['clean']:.3f} on the clean prompts and {ld['corrupted']:.3f} on the corrupted ones."
    )
    lens = r["logit_lens"]
    jumps = [(lens["clean"][i] - lens["clean"][i - 1], lens["labels"][i]) for i in range(1, len(lens["labels"]))]
    best = max(jumps)
    lines += ["", "## Logit lens", "",
              (f"The logit lens (the accumulated residual stream through the final norm, projected on "
              f"W_U[correct] - W_U[wrong]) rises most at **{best[1]}** (+{best[0]:.3f} logits on the clean prompts); "
              f"it ends at the model's own {lens['clean'][-1]:.3f}. Plot: `logit_lens.svg`.")]  # fmt: skip
    ap = r["activation_patching"]
    names = r.get("position_names")
    lines += ["", "## Activation patching", "", (f"Ablation `{r['ablation']}`: an effect of 1 means {kind} the "
              "whole clean-vs-corrupted logit difference. Largest effect per site:"), ""]  # fmt: skip
    for site in ("resid_pre", "attn_out", "mlp_out"):
        grid = ap[site]
        L, p = max(((L, p) for L in range(len(grid)) for p in range(len(grid[L]))), key=lambda lp: grid[lp[0]][lp[1]])
        where = f"position {p}" + (f" ({names[p]})" if names else "")
        lines.append(f"* `{site}`: layer {L}, {where}: {_pct(grid[L][p])}")
    whole = r["mlp_layer_effect"]
    Lmax = max(range(len(whole)), key=lambda L: whole[L])
    lines += ["", (f"Whole MLP layers (every neuron, every position): the largest is layer {Lmax} with "
              f"{_pct(whole[Lmax])}. Plot: `patching.svg`.")]  # fmt: skip
    if abs(top["effect"]) < 1e-6:  # no neuron matters: say so rather than crown neuron 0
        lines += ["", "## The top neuron", "",
                  (f"No single neuron of {_layers(r['patched_layers'])} changes the logit difference when "
                   f"patched (largest |effect| {abs(top['effect']):.2g}): the task's answer does not run "
                   "through any one of these neurons. The numbers below are ties at zero.")]  # fmt: skip
    lines += [
        "", "## The top neuron" if abs(top["effect"]) >= 1e-6 else "## The first of the tied neurons", "",
        (f"Single-neuron patching of {_layers(r['patched_layers'])} "
        f"({r['d_mlp']} neurons{' each' if len(r['patched_layers']) > 1 else ''}) ranks **L{top['layer']}.N{top['neuron']}** first: {kind} "
        f"**{_pct(top['effect'])}** of the logit difference, against **{_pct(top['layer_effect'])}** for its whole "
        f"MLP layer {top['layer']}. The seed found {seed['neuron_fraction']:.0%} for neuron {seed['neuron']} of "
        f"layer {seed['layer']} in GPT-2 Large against {seed['layer_fraction']:.0%} for the whole layer."),
        "",
        "| | this run | seed (GPT-2 Large) |", "|---|---|---|",
        f"| top neuron | L{top['layer']}.N{top['neuron']} | L{seed['layer']}.N{seed['neuron']} |",
        f"| neuron alone | {_pct(top['effect'])} | {seed['neuron_fraction']:.0%} |",
        f"| its whole MLP layer | {_pct(top['layer_effect'])} | {seed['layer_fraction']:.0%} |",
        "",
        f"Direct logit attribution: {top['dla']:.3f} logits on the clean prompts ({top['dla_corrupted']:.3f} on the "
        f"corrupted ones), rank {top['dla_rank']} of {top['of_neurons']} neurons. Its most congruent tokens "
        f"(W_out[n] . W_U[:, t]): " + ", ".join(f"`{x['text']}` {x['congruence']:.3f}" for x in top["most_congruent"][:5])
        + "; least: " + ", ".join(f"`{x['text']}` {x['congruence']:.3f}" for x in top["least_congruent"][:3]) + ".",
    ]  # fmt: skip
    mr = top["mutual_rank"]
    lines.append("")
    lines.append(
        f"Mutual congruence: {top['n_mutual_pairs']} (neuron, token) pairs are each other's best match. "
        + (f"L{top['layer']}.N{top['neuron']} and `{top['best_token_text']}` are one of them, rank {mr} by score."
           if mr else f"L{top['layer']}.N{top['neuron']} is in none (its best token `{top['best_token_text']}` has "
           "another best neuron).")
    )  # fmt: skip
    partner = agr["mutual_partner_of_target"]
    dt = agr["dla_top"]
    lines += ["", "## Do the methods agree?", "",
              f"* DLA: the top neuron by DLA is L{dt['layer']}.N{dt['neuron']} ({dt['dla']:.3f} logits): "
              + ("the same neuron." if agr["dla_agrees"] else "a different neuron."),
              f"* Mutual congruence: the neuron mutually congruent with `{t['text']}` is "
              + ("none." if partner is None else f"L{partner['layer']}.N{partner['neuron']}: "
                 + ("the same neuron." if agr["mutual_agrees"] else "a different neuron.")),
              "* " + ("Patching, DLA and mutual congruence all name the same neuron." if agr["all_agree"]
                      else "Patching, DLA and mutual congruence do not all name the same neuron."),
              "", "Plot: `neurons.svg` (patching effect against DLA, every patched neuron)."]  # fmt: skip
    c = r.get("corpus")
    if c:
        half = c["edges"][-1] / 2
        high = [i for i, n in enumerate(c["count"]) if n and c["edges"][i] >= half]
        rest = [i for i, n in enumerate(c["count"]) if n and c["edges"][i] < half]
        lines += ["", "## Over a text corpus", "",
                  (f"Over {c['n_tokens']} tokens of {c['source']} ({_pct(c['unknown_fraction'])} unknown to the "
                  f"tokenizer), L{top['layer']}.N{top['neuron']} ranges from {c['edges'][0]:.3f} to "
                  f"{c['edges'][-1]:.3f}. Where it is above half its maximum ({_count(c, high)} positions) the "
                  f"model's top prediction is `{t['text']}` {_pct(_share(c, high, 'top_is_target'))} of the time, "
                  f"elsewhere ({_count(c, rest)} positions) {_pct(_share(c, rest, 'top_is_target'))}; the next "
                  f"token actually is `{t['text']}` about {_pct(_share(c, high, 'next_is_target'))} and "
                  f"{_pct(_share(c, rest, 'next_is_target'))} of the time. Most active at: "
                  f"`{c['max_activation_context']}`. Plot: `corpus.svg` (10 equal-width bins).")]  # fmt: skip
    secs = r.get("seconds", {})
    if secs:
        lines += ["", "Time: " + ", ".join(f"{k} {v:.1f}s" for k, v in secs.items()) + "."]
    return "\n".join(lines) + "\n"


def plot_all(r: dict[str, Any], out: Path) -> list[Path]:
    """Draw the four plots of the module docstring into ``out`` (``corpus.svg`` only with a corpus)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    plt.rcParams["svg.hashsalt"] = "circuitdag"  # deterministic ids in the SVG
    paths = []
    top, t = r["top_neuron"], r["target"]
    title = f"{r['task']} on {r['model']}"

    fig, ax = plt.subplots(figsize=(max(6, 0.3 * len(r["logit_lens"]["labels"])), 4))
    lens = r["logit_lens"]
    x = np.arange(len(lens["labels"]))
    ax.plot(x, lens["clean"], marker="o", label="clean")
    ax.plot(x, lens["corrupted"], marker="o", label="corrupted")
    ax.axhline(0, color="grey", lw=0.5)
    ax.set_xticks(x, lens["labels"], rotation=90, fontsize=7)
    ax.set_ylabel(f"logit difference ({t['text']!r} - {t['wrong_text']!r})")
    ax.set_title(f"Logit lens: {title}")
    ax.legend()
    paths.append(_save(fig, out / "logit_lens.svg"))

    ap = r["activation_patching"]
    n_layers = len(ap["mlp_out"])
    n_pos = len(ap["mlp_out"][0])
    names = r.get("position_names") or [str(p) for p in range(n_pos)]
    fig, axes = plt.subplots(1, 3, figsize=(3 + 3 * max(2.0, 0.35 * n_pos), 1.5 + max(2.5, 0.18 * n_layers)),
                             sharey=True, layout="constrained")  # fmt: skip
    step = max(1, n_layers // 12)  # integer layer ticks, at most about a dozen
    for ax, site in zip(axes, ("resid_pre", "attn_out", "mlp_out")):
        grid = np.array(ap[site])
        im = ax.imshow(grid, aspect="auto", cmap="RdBu", vmin=-1, vmax=1, origin="lower")
        ax.set_title(site)
        ax.set_xticks(range(n_pos), names, rotation=90, fontsize=7)
        ax.set_yticks(range(0, n_layers, step))
        ax.set_xlabel("position")
    axes[0].set_ylabel("layer")
    fig.colorbar(im, ax=axes, label=f"effect ({ap['ablation']})")
    fig.suptitle(f"Activation patching: {title}")
    paths.append(_save(fig, out / "patching.svg", tight=False))

    fig, ax = plt.subplots(figsize=(6, 4.5))
    dla = r["dla"]["clean"]
    for L in r["patched_layers"]:
        eff = r["neuron_patching"]["effect"][str(L)]
        ax.scatter(dla[L], eff, s=8, alpha=0.6, label=f"layer {L}")
    ax.scatter([top["dla"]], [top["effect"]], s=60, facecolors="none", edgecolors="black")
    ax.annotate(f"L{top['layer']}.N{top['neuron']}", (top["dla"], top["effect"]), textcoords="offset points",
                xytext=(6, 4))  # fmt: skip
    ax.axhline(0, color="grey", lw=0.5)
    ax.axvline(0, color="grey", lw=0.5)
    ax.set_xlabel("direct logit attribution, clean prompts (logits)")
    ax.set_ylabel(f"single-neuron patching effect ({r['ablation']})")
    ax.set_title(f"Neurons: {title}")
    if len(r["patched_layers"]) <= 12:
        ax.legend(fontsize=7, markerscale=2)
    paths.append(_save(fig, out / "neurons.svg"))

    c = r.get("corpus")
    if c:
        fig, ax = plt.subplots(figsize=(7, 4))
        edges = np.array(c["edges"])
        mids, width = (edges[:-1] + edges[1:]) / 2, np.diff(edges)
        ax.bar(mids, c["count"], width=width * 0.9, color="lightgrey", label="positions")
        ax.set_yscale("log")
        ax.set_xlabel(f"activation of L{top['layer']}.N{top['neuron']}")
        ax.set_ylabel("positions in the bin")
        ax2 = ax.twinx()
        frac = [np.nan if v is None else v for v in c["top_is_target"]]
        nxt = [np.nan if v is None else v for v in c["next_is_target"]]
        ax2.plot(mids, frac, marker="o", color="C3", label=f"top prediction is {t['text']!r}")
        ax2.plot(mids, nxt, marker="x", color="C0", label=f"next token is {t['text']!r}")
        ax2.set_ylim(0, 1)
        ax2.set_ylabel("fraction of the bin")
        ax2.legend(loc="upper left", fontsize=8)
        ax.set_title(f"{c['n_tokens']} tokens of corpus text: {r['model']}", fontsize=9)
        paths.append(_save(fig, out / "corpus.svg"))
    return paths


def _save(fig: Any, path: Path, tight: bool = True) -> Path:
    import matplotlib.pyplot as plt

    if tight:
        fig.tight_layout()
    fig.savefig(path, format="svg", metadata={"Date": None})
    plt.close(fig)
    return path


def _layers(layers: list[int]) -> str:
    """``[1]`` -> "layer 1", ``[0, 1]`` -> "layers 0, 1"."""
    return ("layer " if len(layers) == 1 else "layers ") + ", ".join(map(str, layers))
