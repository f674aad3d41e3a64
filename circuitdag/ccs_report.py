"""The CCS experiment on one model and its report: ``circuitdag ccs``.

For every layer, four probes on the same held-out statements (:mod:`circuitdag.ccs`):
CCS, CCS with the coherence term, a supervised logistic probe and random directions; plus
the model's own zero-shot answer (is the " Yes" logit above the " No" logit after
``s + " Is this true?"``), so the table says whether there is knowledge to find.
Writes ``report.json`` (every number), ``report.md`` (generated from it) and
``accuracy.svg`` (accuracy per layer, one line per probe).
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from circuitdag.ccs import (
    COHERENCE_WEIGHT,
    N_RANDOM,
    N_TRIES,
    SUFFIXES,
    Statement,
    ccs_accuracy,
    ccs_probe,
    hidden_states,
    normalise,
    random_accuracy,
    split_facts,
    supervised_probe,
)
from circuitdag.errors import ConfigError

PROBES = ("ccs", "ccs_coherence", "supervised", "random")


def run_ccs(model: Any, statements: Sequence[Statement], holdout: float = 0.3, seed: int = 0,
            layers: Sequence[int] | None = None, steps: int = 1000, tries: int = N_TRIES,
            coherence: float = COHERENCE_WEIGHT, progress: bool = False) -> dict[str, Any]:  # fmt: skip
    """The report of CCS on ``model`` (module docstring). ``holdout``: share of facts held
    out; ``layers``: which layers (default all); ``steps``/``tries``: CCS training.
    Raises :class:`ConfigError` when a split has no true or no false statement."""
    t0 = time.perf_counter()
    if not 0 < holdout < 1:
        raise ConfigError(f"--holdout must be between 0 and 1 (a share of the facts), got {holdout}")
    train, test = split_facts(statements, holdout, seed)
    labels = np.array([s.label for s in statements])
    for name, idx in (("training", train), ("held-out", test)):
        if len(set(labels[idx].tolist())) < 2:
            raise ConfigError(f"the {name} statements are all {bool(labels[idx][0])}: give more facts or change "
                              "--holdout/--seed")  # fmt: skip
    n_layers = int(model.cfg.n_layers)
    layers = list(range(n_layers)) if layers is None else [int(L) for L in layers]
    if any(not 0 <= L < n_layers for L in layers):
        raise ConfigError(f"--layer must be in 0..{n_layers - 1}, got {layers}")
    texts = [s.text for s in statements]
    pos = hidden_states(model, [t + SUFFIXES[0] for t in texts])
    neg = hidden_states(model, [t + SUFFIXES[1] for t in texts])
    zero_shot = _zero_shot(model, texts)
    facts = [statements[i].fact for i in train]
    rows = []
    from tqdm.auto import tqdm

    for L in tqdm(layers, desc="CCS probes per layer", disable=not progress, unit="layer"):
        p_tr, p_te = normalise(pos[train, L], pos[test, L])
        n_tr, n_te = normalise(neg[train, L], neg[test, L])
        row: dict[str, Any] = {"layer": L}
        w, b, loss = ccs_probe(p_tr, n_tr, tries=tries, steps=steps, seed=seed)
        row["ccs"], row["ccs_loss"] = ccs_accuracy(w, b, p_te, n_te, labels[test]), loss
        w, b, loss = ccs_probe(p_tr, n_tr, facts, coherence, tries=tries, steps=steps, seed=seed)
        row["ccs_coherence"], row["ccs_coherence_loss"] = ccs_accuracy(w, b, p_te, n_te, labels[test]), loss
        w, b = supervised_probe(p_tr - n_tr, labels[train])
        row["supervised"] = float((((p_te - n_te) @ w + b > 0) == labels[test]).mean())
        row["random"] = random_accuracy(p_te, n_te, labels[test], seed=seed)
        rows.append(row)
    best = {k: max(rows, key=lambda r: r[k]) for k in PROBES}
    return {
        "model": getattr(model.cfg, "model_name", type(model).__name__),
        "n_statements": len(statements), "n_facts": len({s.fact for s in statements}),
        "n_train": len(train), "n_test": len(test), "holdout": holdout, "seed": seed,
        "true_share_test": float(labels[test].mean()),
        "zero_shot_accuracy_test": float((zero_shot[test] == labels[test]).mean()),
        "settings": {"suffixes": list(SUFFIXES), "tries": tries, "steps": steps, "coherence_weight": coherence,
                     "random_directions": N_RANDOM, "accuracy": "max(acc, 1 - acc) for CCS and random probes; "
                     "plain accuracy for the supervised probe"},
        "layers": rows,
        "best": {k: {"layer": r["layer"], "accuracy": r[k]} for k, r in best.items()},
        "seconds": round(time.perf_counter() - t0, 2),
    }  # fmt: skip


@torch.no_grad()
def _zero_shot(model: Any, texts: Sequence[str]) -> np.ndarray:
    """Whether the model prefers " Yes" to " No" after ``s + " Is this true?"`` (per text)."""
    from circuitdag.tasks._lm import encode, single_token, tokenizer_of, wants_bos

    tok, bos = tokenizer_of(model), wants_bos(model)
    yes, no = single_token(tok, " Yes"), single_token(tok, " No")
    if yes is None or no is None:
        return np.zeros(len(texts), dtype=bool)
    out = np.zeros(len(texts), dtype=bool)
    for i, t in enumerate(texts):
        logits = model(torch.tensor([encode(tok, t + " Is this true?", bos)], device=next(model.parameters()).device))
        out[i] = bool(logits[0, -1, yes] > logits[0, -1, no])
    return out


def markdown(report: dict[str, Any]) -> str:
    """report.md: the table per layer and the best layer per probe, from the numbers."""
    lines = [f"# CCS on {report['model']}", "",
             (f"{report['n_statements']} statements ({report['n_facts']} facts), {report['n_test']} held out "
              f"({100 * report['true_share_test']:.0f}% true); the model's own zero-shot accuracy on them: "
              f"{report['zero_shot_accuracy_test']:.3f}."), "",
             "| layer | CCS | CCS + coherence | supervised | random |", "|---|---|---|---|---|"]  # fmt: skip
    for r in report["layers"]:
        lines.append(f"| {r['layer']} | {r['ccs']:.3f} | {r['ccs_coherence']:.3f} | {r['supervised']:.3f} | "
                     f"{r['random']:.3f} |")  # fmt: skip
    lines += ["", "Best layer per probe: " + ", ".join(f"{k} {v['accuracy']:.3f} (layer {v['layer']})"
                                                      for k, v in report["best"].items()) + "."]  # fmt: skip
    return "\n".join(lines) + "\n"


def write_report(report: dict[str, Any], out: str | Path) -> list[Path]:
    """Write report.json, report.md and accuracy.svg into ``out``; returns the paths."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from circuitdag._plotting import svg_text, write_svg
    from circuitdag.files import write_atomic, write_json

    out = Path(out)
    paths = [write_json(out / "report.json", report, error=ConfigError),
             write_atomic(out / "report.md", markdown(report), error=ConfigError)]  # fmt: skip
    fig, ax = plt.subplots(figsize=(7, 4))
    layers = [r["layer"] for r in report["layers"]]
    for k, label in zip(PROBES, ("CCS", "CCS + coherence", "supervised", "random"), strict=True):
        ax.plot(layers, [r[k] for r in report["layers"]], marker="o", label=label)
    ax.axhline(0.5, color="grey", lw=0.8, ls=":")
    ax.set_xlabel("layer (residual stream after the block)")
    ax.set_ylabel("held-out accuracy")
    ax.set_title(f"CCS on {report['model']}")
    ax.legend(fontsize=8)
    fig.tight_layout()
    paths.append(write_svg(svg_text(fig), out / "accuracy.svg"))
    plt.close(fig)
    return paths
