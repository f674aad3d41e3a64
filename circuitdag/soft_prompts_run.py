"""The soft-prompt experiment: are the soft prompts that solve a task a convex set?

The hackathon write-up "Soft prompts are convex sets" (seed) prompt-tuned GPT-2 several
times on one task, evaluated convex combinations of the solutions and found them about as
good, and concluded that the solutions form one convex set. :func:`run_soft_prompts` does
that measurement with the controls it lacked, all on held-out prompts:

1. the model **without** soft prompt (does the task need a prompt at all?) and each
   seed's initialisation (K random real tokens: does training matter?);
2. ``seeds`` soft prompts of ``k`` tokens trained from different initialisations
   (:func:`circuitdag.soft_prompts.train_prompt`), each checkpointed to
   ``out/prompts/seed{s}.json`` as soon as it is trained, so an interrupted run keeps its
   finished seeds (a rerun with the same settings loads them; other settings are refused);
3. accuracy and metric along the **segment** between every pair of solutions (also with
   each point rescaled to the norm interpolated between the endpoints', to tell a dip in
   the middle from the interpolants' shrinkage), over the **simplex** of the first three
   (barycentric grid), and along **random directions of the same length** from each
   solution (:mod:`circuitdag.soft_prompts_geometry`);
4. each solution **projected to real tokens** (each soft token replaced by the vocabulary
   embedding nearest to it, Euclidean and cosine): does the behaviour survive?

:func:`summary` turns the numbers into the answers the report states
(:mod:`circuitdag.soft_prompts_report` writes them).
"""

from __future__ import annotations

import logging
import math
import time
from pathlib import Path
from typing import Any

import torch

from circuitdag.errors import ConfigError
from circuitdag.soft_prompts import (
    BATCH,
    LR,
    Examples,
    Trained,
    check_embedding_hook,
    evaluate,
    nearest_tokens,
    token_strings,
    train_prompt,
)
from circuitdag.soft_prompts_geometry import (
    combine,
    grid,
    keep_norm,
    pair_stats,
    pairs,
    random_directions,
    segment,
    simplex_weights,
)

log = logging.getLogger("circuitdag")

#: Points along each segment (both solutions included).
SEGMENT_POINTS = 11
#: The simplex grid's step is 1 / SIMPLEX_STEPS.
SIMPLEX_STEPS = 6
#: Random directions per solution pair.
RANDOM_DIRECTIONS = 3


def run_soft_prompts(model: Any, train: Examples, held: Examples, k: int, seeds: int, out: str | Path | None = None,
                     steps: int = 100, lr: float = LR, batch: int = BATCH, segment_points: int = SEGMENT_POINTS,
                     simplex_steps: int = SIMPLEX_STEPS, random_dirs: int = RANDOM_DIRECTIONS,
                     info: dict[str, Any] | None = None, progress: bool = False) -> dict[str, Any]:  # fmt: skip
    """The report (module docstring) of ``seeds`` ``k``-token soft prompts trained on
    ``train`` and measured on ``held``. ``out``: where trained prompts are checkpointed
    (None: nowhere). ``info``: what the data is (recorded). Raises :class:`ConfigError`
    for fewer than 2 seeds or a checkpoint of other settings."""
    from tqdm.auto import tqdm

    t0 = time.perf_counter()
    if seeds < 2:
        raise ConfigError(f"--seeds must be at least 2 (segments need two solutions), got {seeds}")
    if segment_points < 2 or simplex_steps < 1 or random_dirs < 1:
        raise ConfigError("segment points must be >= 2, simplex steps and random directions >= 1")
    check_embedding_hook(model)
    check_context(model, k, max(train.tokens.shape[1], held.tokens.shape[1]))
    name = str(getattr(model.cfg, "model_name", type(model).__name__))
    settings = {"model": name, "data": info or {}, "tokens": k, "steps": steps, "lr": lr, "batch": batch}
    ckpt = None if out is None else Path(out) / "prompts"
    loaded = [_load(ckpt, s, settings) for s in range(seeds)]
    reused = [s for s, t in enumerate(loaded) if t is not None]
    if reused:
        log.warning("reusing seeds %s from %s (trained with the same settings; delete them to retrain)",
                    ", ".join(map(str, reused)), ckpt)  # fmt: skip
    trained: list[Trained] = []
    with tqdm(total=seeds * steps, initial=len(reused) * steps, desc=f"training {seeds} soft prompts", unit="step",
              disable=not progress) as bar:  # fmt: skip
        for s, done in enumerate(loaded):
            if done is None:
                done = train_prompt(model, train, k, s, steps=steps, lr=lr, batch=batch, progress=bar.update)
                _save(ckpt, s, settings, done)
            trained.append(done)
    sol = torch.stack([t.prompt for t in trained])
    ts = grid(segment_points)
    plan, lengths = _plan(model, sol, trained, ts, simplex_steps, random_dirs)
    points = torch.cat([p for _, p in plan])
    with tqdm(total=len(points) + 1, desc="measuring held-out accuracy", unit="point", disable=not progress) as bar:
        baseline = evaluate(model, held, None)[0]
        bar.update(1)
        results = []
        for start in range(0, len(points), 8):
            results += evaluate(model, held, points[start:start + 8])
            bar.update(len(points[start:start + 8]))
    got: dict[str, list[dict[str, float]]] = {}
    i = 0
    for key, p in plan:
        got[key], i = results[i:i + len(p)], i + len(p)
    train_scores = evaluate(model, train, sol)
    report = _assemble(model, trained, ts, simplex_steps, random_dirs, got, baseline, train_scores, held)
    for seg in report["segments"]:
        seg["random_length"] = lengths["{}-{}".format(*seg["pair"])]
    report.update({"model": name, "data": info or {}, "settings": settings | {
        "segment_points": segment_points, "simplex_steps": simplex_steps, "random_directions": random_dirs,
        "lr_units": "x the root-mean-square entry of W_E", "insert_at": held.insert_at,
        "accuracy": "share of held-out prompts whose top-1 token is right at every answer slot",
        "metric": held.metric_name + " (mean over held-out prompts; higher is better)"},
        "n_heldout": held.n, "n_train": train.n, "seconds": round(time.perf_counter() - t0, 2)})  # fmt: skip
    report["summary"] = summary(report)
    return report


def check_context(model: Any, k: int, longest: int) -> None:
    """Refuse (:class:`ConfigError`, one line) ``k`` soft tokens that with the ``longest``
    prompt (tokens, as fed: padded, answers given) exceed the model's context ``n_ctx``."""
    ctx = getattr(model.cfg, "n_ctx", None)
    if ctx is not None and k + longest > int(ctx):
        fix = f"use --tokens <= {int(ctx) - longest}" if int(ctx) > longest else "use shorter prompts or another --model"
        raise ConfigError(f"{k} soft tokens + the longest prompt ({longest} tokens) exceed the model's context of "
                          f"{int(ctx)}; {fix}")  # fmt: skip


def _plan(model: Any, sol: torch.Tensor, trained: list[Trained], ts: list[float], simplex_steps: int,
          random_dirs: int) -> tuple[list[tuple[str, torch.Tensor]], dict[str, list[float]]]:  # fmt: skip
    """Every point to measure, grouped under a key (solutions, inits, nearest tokens,
    segments, random directions, the simplex), and each pair's random directions' lengths."""
    lengths: dict[str, list[float]] = {}
    w_e = model.W_E.detach().float().cpu()
    plan = [("solutions", sol), ("init", torch.stack([t.init for t in trained])),
            ("nearest", w_e[torch.tensor([nearest_tokens(model, p) for p in sol])]),
            ("nearest_cosine", w_e[torch.tensor([nearest_tokens(model, p, cosine=True) for p in sol])])]  # fmt: skip
    for i, j in pairs(len(sol)):
        plan.append((f"segment {i}-{j}", segment(sol[i], sol[j], ts)))
        plan.append((f"norm kept {i}-{j}", keep_norm(segment(sol[i], sol[j], ts), sol[i], sol[j], ts)))
        dist = float((sol[j] - sol[i]).norm())
        dirs = random_directions(tuple(sol[i].shape), dist, random_dirs, seed=1000 * i + j)
        t = torch.tensor(ts)[None, :, None, None]
        plan.append((f"random {i}-{j}", (sol[i] + t * dirs[:, None]).flatten(0, 1)))  # direction-major
        lengths[f"{i}-{j}"] = [float(d.norm()) for d in dirs]  # how far each direction goes at t = 1
    if len(sol) >= 3:
        plan.append(("simplex", combine(sol[:3], simplex_weights(simplex_steps))))
    return plan, lengths


def _assemble(model: Any, trained: list[Trained], ts: list[float], simplex_steps: int, random_dirs: int,
              got: dict[str, list[dict[str, float]]], baseline: dict[str, float],
              train_scores: list[dict[str, float]], held: Examples) -> dict[str, Any]:  # fmt: skip
    sol = [t.prompt for t in trained]
    seeds = []
    for s, t in enumerate(trained):
        near, near_cos = nearest_tokens(model, t.prompt), nearest_tokens(model, t.prompt, cosine=True)
        w_e = model.W_E.detach().float().cpu()
        seeds.append({"seed": s, "heldout": got["solutions"][s], "train": train_scores[s],
                      "init_heldout": got["init"][s], "init_tokens": token_strings(model, _init_ids(w_e, t.init)),
                      "loss_first": t.losses[0], "loss_last": t.losses[-1], "losses": t.losses,
                      "train_seconds": t.seconds, "norm": float(t.prompt.norm()),
                      "moved": float((t.prompt - t.init).norm()),
                      "mean_token_norm": float(w_e.norm(dim=1).mean()) * math.sqrt(len(t.prompt)),
                      "nearest": {"tokens": token_strings(model, near), "ids": near,
                                  "distance": float((w_e[near] - t.prompt).norm()), "heldout": got["nearest"][s]},
                      "nearest_cosine": {"tokens": token_strings(model, near_cos), "ids": near_cos,
                                         "heldout": got["nearest_cosine"][s]}})  # fmt: skip
    segs = []
    for i, j in pairs(len(sol)):
        line, kept = got[f"segment {i}-{j}"], got[f"norm kept {i}-{j}"]
        rnd = got[f"random {i}-{j}"]
        by_dir = [rnd[d * len(ts):(d + 1) * len(ts)] for d in range(random_dirs)]
        segs.append({"pair": [i, j], **pair_stats(sol[i], sol[j]), "t": ts,
                     "accuracy": [p["accuracy"] for p in line], "metric": [p["metric"] for p in line],
                     "norm_kept_accuracy": [p["accuracy"] for p in kept], "norm_kept_metric": [p["metric"] for p in kept],
                     "random_accuracy": [[p["accuracy"] for p in d] for d in by_dir],
                     "random_metric": [[p["metric"] for p in d] for d in by_dir]})  # fmt: skip
    report: dict[str, Any] = {"baseline": baseline, "seeds": seeds, "segments": segs}
    if len(sol) >= 3:
        w = simplex_weights(simplex_steps)
        report["simplex"] = {"seeds": [0, 1, 2], "weights": [list(x) for x in w],
                             "accuracy": [p["accuracy"] for p in got["simplex"]],
                             "metric": [p["metric"] for p in got["simplex"]]}  # fmt: skip
    return report


def _init_ids(w_e: torch.Tensor, init: torch.Tensor) -> list[int]:
    """The token ids an initialisation was drawn from (its rows are exact rows of W_E)."""
    return [int(i) for i in torch.cdist(init.float(), w_e).argmin(-1)]


def tolerance(accuracy: float, n: int) -> float:
    """Two standard errors of a held-out accuracy on ``n`` prompts (at least ``1/n``)."""
    return max(2 * math.sqrt(max(accuracy * (1 - accuracy), 0.0) / n), 1 / n)


def summary(report: dict[str, Any]) -> dict[str, Any]:
    """The answers, from the numbers: does training beat the baseline, do segments and the
    simplex keep the solutions' accuracy (within :func:`tolerance`), do random directions
    of the same length, and do the nearest real tokens."""
    n = int(report["n_heldout"])
    acc = [s["heldout"]["accuracy"] for s in report["seeds"]]
    base = report["baseline"]["accuracy"]
    worst_end = min(acc)
    tol = tolerance(worst_end, n)
    seg_drop = max(min(s["accuracy"][0], s["accuracy"][-1]) - min(s["accuracy"]) for s in report["segments"])
    rnd_far = [sum(d[-1] for d in s["random_accuracy"]) / len(s["random_accuracy"]) for s in report["segments"]]
    rnd_drop = max(report["seeds"][s["pair"][0]]["heldout"]["accuracy"] - f for s, f in zip(report["segments"], rnd_far, strict=True))
    rnd_min = min(min(d) for s in report["segments"] for d in s["random_accuracy"])
    kept_drop = max(min(s["norm_kept_accuracy"][0], s["norm_kept_accuracy"][-1]) - min(s["norm_kept_accuracy"])
                    for s in report["segments"])  # fmt: skip
    out: dict[str, Any] = {
        "baseline_accuracy": base, "solution_accuracy": acc, "tolerance": tol,
        "trained_beats_baseline": worst_end - base > tolerance(base, n),
        "init_accuracy": [s["init_heldout"]["accuracy"] for s in report["seeds"]],
        "segment_min_accuracy": min(min(s["accuracy"]) for s in report["segments"]),
        "segment_max_drop": seg_drop, "segments_hold": seg_drop <= tol,
        "random_far_accuracy": rnd_far, "random_min_accuracy": rnd_min, "random_max_drop": rnd_drop,
        "random_hold": rnd_drop <= tol,
        # interpolant minus random move at the same t (0 < t < 1), mean over pairs and points: > 0 when the
        # straight path beats a random move of the same length before it nears the other solution
        "segment_minus_random_same_t": _same_t_gap(report["segments"]),
        "norm_kept_min_accuracy": min(min(s["norm_kept_accuracy"]) for s in report["segments"]),
        "norm_kept_max_drop": kept_drop, "norm_kept_hold": kept_drop <= tol,
        "nearest_accuracy": [s["nearest"]["heldout"]["accuracy"] for s in report["seeds"]],
        "nearest_cosine_accuracy": [s["nearest_cosine"]["heldout"]["accuracy"] for s in report["seeds"]],
        # the share of each prompt's soft tokens whose nearest real token is the token it started from
        "nearest_is_init": [sum(a == b for a, b in zip(s["nearest"]["tokens"], s["init_tokens"], strict=True))
                            / len(s["init_tokens"]) for s in report["seeds"]],
        "segment_metric_max_drop": max(min(s["metric"][0], s["metric"][-1]) - min(s["metric"]) for s in report["segments"]),
        "random_far_metric": [sum(d[-1] for d in s["random_metric"]) / len(s["random_metric"]) for s in report["segments"]],
        "midpoint_norm_ratio": [s["midpoint_norm_ratio"] for s in report["segments"]],
        "cosine": [s["cosine"] for s in report["segments"]],
    }  # fmt: skip
    if "simplex" in report:
        sx = report["simplex"]["accuracy"]
        out["simplex_min_accuracy"] = min(sx)
        out["simplex_max_drop"] = min(acc[:3]) - min(sx)
        out["simplex_holds"] = out["simplex_max_drop"] <= tol
    out["convex"] = bool(out["segments_hold"] and out.get("simplex_holds", True))
    # the region between solutions is special when the worst interpolant is better, by more than the
    # tolerance, than the mean random move of the same length at its far end
    out["interpolants_special"] = bool(min(out["segment_min_accuracy"], out.get("simplex_min_accuracy", 1.0))
                                       - max(rnd_far) > tol)  # fmt: skip
    out["verdict"], out["verdict_text"] = verdict(out)
    return out


#: :func:`verdict`'s kinds, in the order it tests them.
VERDICTS = ("not testable: no prompt needed", "not testable: training failed", "convex, random directions too",
            "convex", "not convex, interpolants special", "not convex")  # fmt: skip


def verdict(sm: dict[str, Any]) -> tuple[str, str]:
    """(kind, one line) of the write-up's claim given the controls in the summary ``sm``: not
    testable when training does not beat no prompt (the model already does the task, or
    training failed); convex but no more than a ball of the pair's distance around each
    solution when random directions of the same length stay in too; else convex or not, and
    whether the interpolants beat the random moves. ``kind`` is one of :data:`VERDICTS`."""
    acc, base = sm["solution_accuracy"], sm["baseline_accuracy"]
    if not sm["trained_beats_baseline"]:
        if base >= 0.5 and base >= min(acc) - sm["tolerance"]:
            return VERDICTS[0], f"not testable: the model already does the task without a prompt (accuracy {base:.3f})"
        return VERDICTS[1], (f"not testable: the trained prompts ({min(acc):.3f}-{max(acc):.3f}) do no better than "
                             f"no prompt ({base:.3f})")  # fmt: skip
    if sm["convex"] and sm["random_hold"]:
        return VERDICTS[2], ("convex: yes, but so is a ball of that radius around each solution (random directions "
                             "of the same length stay in)")  # fmt: skip
    if sm["convex"]:
        return VERDICTS[3], "convex: yes (random directions of the same length leave the solution set)"
    if sm["interpolants_special"]:
        return VERDICTS[4], ("convex: no, but the region between solutions is special (every interpolant beats "
                             "random moves of the same length)")  # fmt: skip
    return VERDICTS[5], "convex: no (an interpolant falls below the weaker solution)"


def _same_t_gap(segments: list[dict[str, Any]]) -> float:
    gaps = [seg["accuracy"][k] - sum(d[k] for d in seg["random_accuracy"]) / len(seg["random_accuracy"])
            for seg in segments for k in range(1, len(seg["t"]) - 1)]  # fmt: skip
    return sum(gaps) / len(gaps) if gaps else 0.0


def _load(ckpt: Path | None, seed: int, settings: dict[str, Any]) -> Trained | None:
    """The trained prompt of ``seed`` from its checkpoint, or None when there is none."""
    from circuitdag.files import read_json

    path = None if ckpt is None else ckpt / f"seed{seed}.json"
    if path is None or not path.exists():
        return None
    doc = read_json(path, "a soft-prompt checkpoint", error=ConfigError)
    if not isinstance(doc, dict) or "prompt" not in doc:
        raise ConfigError(f"{path} is not a soft-prompt checkpoint; delete it or choose another --out")
    if doc.get("settings") != settings:
        raise ConfigError(f"{path} was trained with other settings ({doc.get('settings')}); delete it or choose "
                          "another --out")  # fmt: skip
    return Trained(torch.tensor(doc["prompt"]), torch.tensor(doc["init"]), list(doc["losses"]), float(doc["seconds"]))


def _save(ckpt: Path | None, seed: int, settings: dict[str, Any], t: Trained) -> None:
    from circuitdag.files import write_json

    if ckpt is not None:
        write_json(ckpt / f"seed{seed}.json", {"settings": settings, "seed": seed, "prompt": t.prompt.tolist(),
                                               "init": t.init.tolist(), "losses": t.losses, "seconds": t.seconds},
                   indent=None, error=ConfigError)  # fmt: skip
