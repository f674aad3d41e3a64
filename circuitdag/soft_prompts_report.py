"""The soft-prompt experiment's report: ``report.json`` (every number, from
:func:`circuitdag.soft_prompts_run.run_soft_prompts`), ``report.md`` (generated from it
by :func:`markdown`) and ``soft-prompts.svg`` (accuracy along each segment with its
random-direction control, and over the simplex of three solutions)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from circuitdag.errors import ConfigError


def _pct(x: float) -> str:
    return f"{100 * x:.0f}%"


def markdown(report: dict[str, Any]) -> str:
    """report.md: the setting, the table per seed, per segment, and the answers."""
    s, data, sm = report["settings"], report["data"], report["summary"]
    base = report["baseline"]
    lines = [f"# Soft prompts on {report['model']}: {data.get('task', '?')}", "",
             (f"{len(report['seeds'])} soft prompts of {s['tokens']} tokens, each trained for {s['steps']} Adam steps "
              f"of {s['batch']} prompts on {report['n_train']} training prompts; every number is on "
              f"{report['n_heldout']} held-out prompts ({data.get('heldout', '?')}). Accuracy: {s['accuracy']}; "
              f"metric: {s['metric']}."), "",
             f"Without a soft prompt: accuracy {base['accuracy']:.3f}, metric {base['metric']:.3f}.", "",
             "| seed | accuracy | metric | train acc. | init acc. | nearest tokens (L2) | their acc. | cosine-nearest acc. | norm |",
             "|---|---|---|---|---|---|---|---|---|"]  # fmt: skip
    for x in report["seeds"]:
        toks = " ".join(f"`{t}`" for t in x["nearest"]["tokens"])
        lines.append(f"| {x['seed']} | {x['heldout']['accuracy']:.3f} | {x['heldout']['metric']:.3f} | "
                     f"{x['train']['accuracy']:.3f} | {x['init_heldout']['accuracy']:.3f} | {toks} | "
                     f"{x['nearest']['heldout']['accuracy']:.3f} | {x['nearest_cosine']['heldout']['accuracy']:.3f} | "
                     f"{x['norm']:.2f} |")  # fmt: skip
    lines += ["", ("| pair | distance | cosine | midpoint norm / mean norm | accuracy along the segment (t = 0 ... 1) | "
              "the same, norm kept | random direction, same length (mean accuracy at t = 1) |"),
              "|---|---|---|---|---|---|---|"]  # fmt: skip
    for seg, far in zip(report["segments"], sm["random_far_accuracy"], strict=True):
        along = " ".join(f"{a:.2f}" for a in seg["accuracy"])
        kept = " ".join(f"{a:.2f}" for a in seg["norm_kept_accuracy"])
        lines.append(f"| {seg['pair'][0]}-{seg['pair'][1]} | {seg['distance']:.2f} | {seg['cosine']:.3f} | "
                     f"{seg['midpoint_norm_ratio']:.3f} | {along} | {kept} | {far:.3f} |")  # fmt: skip
    if "simplex" in report:
        sx = report["simplex"]
        centroid = min(range(len(sx["weights"])), key=lambda i: sum(abs(w - 1 / 3) for w in sx["weights"][i]))
        lines += ["", (f"Simplex of seeds 0, 1, 2 ({len(sx['weights'])} barycentric points, step "
                       f"1/{s['simplex_steps']}): accuracy from {min(sx['accuracy']):.3f} to {max(sx['accuracy']):.3f}; "
                       f"at the point nearest the centroid {sx['accuracy'][centroid]:.3f}.")]  # fmt: skip
    lines += ["", "## Answers", "", *_answers(report)]
    return "\n".join(lines) + "\n"


def _answers(report: dict[str, Any]) -> list[str]:
    sm = report["summary"]
    acc, base, tol = sm["solution_accuracy"], sm["baseline_accuracy"], sm["tolerance"]
    out = [(f"* **Does the task need a soft prompt?** Without one the model scores {base:.3f}; the trained prompts "
            f"{min(acc):.3f}-{max(acc):.3f} and their untrained initial tokens "
            f"{min(sm['init_accuracy']):.3f}-{max(sm['init_accuracy']):.3f}. "
            + ("Training makes the difference." if sm["trained_beats_baseline"] else
               "Training does not beat the baseline beyond two standard errors, so any region of prompts that "
               "'solves' the task says little about prompts.")),
           (f"* **Segments.** Between every pair the accuracy falls at most {sm['segment_max_drop']:.3f} below the "
            f"lower endpoint (lowest point {sm['segment_min_accuracy']:.3f}); tolerance (two standard errors at "
            f"{min(acc):.3f} on {report['n_heldout']} prompts) {tol:.3f}: "
            + ("the segments stay in the solution set." if sm["segments_hold"] else "**a segment leaves the solution set.**")
            + f" The metric falls at most {sm['segment_metric_max_drop']:.3f} along a segment (random directions of "
            f"the same length end at {min(sm['random_far_metric']):.3f}-{max(sm['random_far_metric']):.3f}, the "
            f"solutions are at {min(x['heldout']['metric'] for x in report['seeds']):.3f}-"
            f"{max(x['heldout']['metric'] for x in report['seeds']):.3f}).")]  # fmt: skip
    if "simplex_min_accuracy" in sm:
        out.append(f"* **Simplex of three.** Lowest accuracy {sm['simplex_min_accuracy']:.3f} (a drop of "
                   f"{sm['simplex_max_drop']:.3f} below the weakest corner): "
                   + ("it stays in the solution set." if sm["simplex_holds"] else "**it leaves the solution set.**"))  # fmt: skip
    far = sm["random_far_accuracy"]
    out.append(f"* **Random directions of the same length** from a solution reach accuracy "
               f"{min(far):.3f}-{max(far):.3f} at the far end (lowest anywhere {sm['random_min_accuracy']:.3f}; "
               f"largest drop {sm['random_max_drop']:.3f}). "
               + ("The solutions sit in a basin wider than their distances: convex combinations are no more "
                  "special than random moves of the same size." if sm["random_hold"] else
                  "Random moves of the same size leave the solution set; "
                  + ("every interpolant (segments and simplex) does better than they do by more than the tolerance: "
                     "the region between solutions is special." if sm["interpolants_special"] else
                     "the interpolants are not clearly better.")))  # fmt: skip
    out.append(f"* **At the same distance** from a solution (0 < t < 1) an interpolant's accuracy minus a random "
               f"move's is {sm['segment_minus_random_same_t']:+.3f} on average.")
    ratio = sm["midpoint_norm_ratio"]
    out.append(f"* **Shrinkage.** A midpoint's norm is {min(ratio):.3f}-{max(ratio):.3f} of its endpoints' mean "
               f"(cosines between solutions {min(sm['cosine']):.3f}-{max(sm['cosine']):.3f}): interpolants are "
               "also smaller prompts. Rescaled to the interpolated norm, the segments' lowest accuracy is "
               f"{sm['norm_kept_min_accuracy']:.3f} (largest drop {sm['norm_kept_max_drop']:.3f}; without rescaling "
               f"{sm['segment_max_drop']:.3f}).")  # fmt: skip
    out.append(f"* **Nearest real tokens.** Replacing each soft token by its nearest vocabulary embedding gives "
               f"accuracy {min(sm['nearest_accuracy']):.3f}-{max(sm['nearest_accuracy']):.3f} (Euclidean) and "
               f"{min(sm['nearest_cosine_accuracy']):.3f}-{max(sm['nearest_cosine_accuracy']):.3f} (cosine), "
               f"against {min(acc):.3f}-{max(acc):.3f} for the soft prompts; "
               f"{_pct(sum(sm['nearest_is_init']) / len(sm['nearest_is_init']))} of the soft tokens are still "
               "nearest to the random token they started from.")  # fmt: skip
    verdict = ("consistent with one convex set of solutions" if sm["convex"] else
               "not a convex set at this tolerance (an interpolant falls below the weaker solution)")
    if "verdict_text" in sm and sm["verdict"].startswith("not testable"):  # a summary before the verdict had none
        why = ("every region of prompts then 'solves' the task" if sm["verdict"].endswith("no prompt needed") else
               "there is no set of solutions to test")
        out.append(f"* **The write-up's claim** (the solutions form a convex set): **{sm['verdict_text']}**; {why}, "
                   "so the test says nothing about soft prompts.")  # fmt: skip
        return out
    out.append(f"* **The write-up's claim** (the solutions form a convex set): on these held-out prompts, "
               f"{verdict}; " + ("the region between the solutions is special (random moves of the same length "
                                 "fail)." if sm["interpolants_special"] else
                                 "and the interpolants are no better than random moves of the same length.")
               + (f" **Verdict: {sm['verdict_text']}.**" if "verdict_text" in sm else ""))  # fmt: skip
    return out


def write_report(report: dict[str, Any], out: str | Path) -> list[Path]:
    """Write report.json, report.md and soft-prompts.svg into ``out``; returns the paths."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from circuitdag._plotting import svg_text, write_svg
    from circuitdag.files import write_atomic, write_json

    out = Path(out)
    paths = [write_json(out / "report.json", report, error=ConfigError),
             write_atomic(out / "report.md", markdown(report), error=ConfigError)]  # fmt: skip
    has_simplex = "simplex" in report
    fig, axes = plt.subplots(1, 3 if has_simplex else 2, figsize=(13 if has_simplex else 9, 3.8))
    for ax, key, label in ((axes[0], "accuracy", "held-out accuracy"), (axes[1], "metric", report["settings"]["metric"].split(" (")[0])):
        for n, seg in enumerate(report["segments"]):
            color = f"C{n % 10}"
            i, j = seg["pair"]
            ax.plot(seg["t"], seg[key], marker="o", ms=3, color=color, label=f"segment {i}-{j}")
            ax.plot(seg["t"], seg[f"norm_kept_{key}"], ls="-.", lw=0.8, color=color,
                    label=f"segment {i}-{j}, norm kept" if n == 0 else None)  # fmt: skip
            for d, rnd in enumerate(seg[f"random_{key}"]):
                ax.plot(seg["t"], rnd, ls="--", lw=0.8, color=color, alpha=0.6,
                        label=f"random from {i}, same length" if d == 0 else None)  # fmt: skip
        ax.axhline(report["baseline"][key], color="grey", ls=":", label="no soft prompt")
        ax.set_xlabel("t (distance along, as a share of the pair's distance)")
        ax.set_ylabel(label)
    axes[0].legend(fontsize=6)
    if has_simplex:
        sx, ax = report["simplex"], axes[2]
        xy = [(w[1] + w[2] / 2, w[2] * 0.866) for w in sx["weights"]]  # corners: seed 0 (0,0), 1 (1,0), 2 (top)
        sc = ax.scatter([p[0] for p in xy], [p[1] for p in xy], c=sx["accuracy"], cmap="viridis", vmin=0, vmax=1, s=60)
        for name, (x, y) in zip(("seed 0", "seed 1", "seed 2"), ((0, 0), (1, 0), (0.5, 0.866)), strict=True):
            ax.annotate(name, (x, y), textcoords="offset points", xytext=(0, 6), ha="center", fontsize=8)
        ax.set_aspect("equal")
        ax.axis("off")
        ax.set_title("held-out accuracy over the simplex", fontsize=9)
        fig.colorbar(sc, ax=ax, fraction=0.046)
    fig.suptitle(f"Soft prompts on {report['model']} ({report['data'].get('task', '')})", fontsize=10)
    fig.tight_layout()
    paths.append(write_svg(svg_text(fig), out / "soft-prompts.svg"))
    plt.close(fig)
    return paths
