"""How ACDC circuits change with a threshold relative to the task's metric gap.

    .venv/bin/python benchmarks/relative_thresholds.py            # shipped tracr + zoo tasks
    .venv/bin/python benchmarks/relative_thresholds.py --smollm2  # + pronoun/ioi on SmolLM2 (EAP-IG)

A relative threshold R means ACDC's threshold is ``R * |m_corrupted - m_full|``
(``--relative-threshold R``; :func:`circuitdag.prepare.resolve_threshold`). For every task (its
default model, metric and ablation, 100 prompts, float32, one thread) this prints the gap,
the task's own default threshold as a relative value, and for each R the edges ACDC keeps,
the faithfulness, and, where the task has a ground truth, whether the circuit is exactly
it (``exact``) or its recall.

``--smollm2`` adds SmolLM2-135M: ACDC over its 70,651 edges takes hours on a CPU, so
there the circuits are EAP-IG's (5 steps, ``--n-prompts``, default 20), keeping the edges
with ``|score| >= R * gap`` (what ``discover --algorithm eap-ig --relative-threshold R``
keeps), pruned to paths.
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch

from circuitdag.discovery import run_acdc
from circuitdag.evaluate import confusion, task_truth
from circuitdag.prepare import metric_gap, prepare
from circuitdag.tasks import get_task

TASKS = ("tracr-reverse", "tracr-proportion", "tracr-hist", "tracr-sort-unique", "pronoun", "pronoun-opposite",
         "an-neuron", "induction", "induction-compiled")  # fmt: skip
GRID = (0.001, 0.003, 0.01, 0.03, 0.1, 0.3)


def acdc_rows(name: str) -> None:
    task = get_task(name)
    model = task.load_model()
    patcher, meta = prepare(model, task)
    gap = metric_gap(patcher)
    truth, ignore = task_truth(task, patcher.ablation.value)
    cells = []
    for r in GRID:
        c = run_acdc(patcher, r * abs(gap), meta=meta)
        f = c.faithfulness()
        cell = f"{c.n_edges:>4} f={f:6.3f}" if f is not None else f"{c.n_edges:>4} f=  n/a "
        if truth is not None:
            conf = confusion(c, truth, ignore)
            cell += " exact" if conf.fp == conf.fn == 0 else f" rec={conf.recall:.2f}"
        cells.append(cell)
    print(f"{name:<19} {meta['metric']:<10} gap={gap:8.4g}  default={task.default_threshold / abs(gap):7.4f}  "
          f"of {patcher.graph.n_edges:>4} edges | " + " | ".join(cells), flush=True)  # fmt: skip


def smollm2_rows(names: list[str], n_prompts: int) -> None:
    from circuitdag.attribution import attribute
    from circuitdag.models import load_model

    model = load_model("smollm2-135m")
    for name in names:
        task = get_task(name)
        patcher, meta = prepare(model, task, n_prompts=n_prompts)
        gap = metric_gap(patcher)
        t0 = time.perf_counter()
        scores = attribute(patcher, "eap-ig", 5).scores
        seconds = time.perf_counter() - t0
        m_corr = patcher.circuit_metric(np.zeros(patcher.graph.n_edges, dtype=bool))
        cells = []
        for r in GRID:
            alive = patcher.graph.prune(np.abs(np.nan_to_num(scores)) >= r * abs(gap))
            f = (m_corr - patcher.circuit_metric(alive)) / gap
            cells.append(f"{int(alive.sum()):>5} f={f:6.3f}")
        print(f"smollm2 {name:<11} {meta['metric']:<10} gap={gap:8.4g}  default={task.default_threshold / abs(gap):7.4f}  "
              f"of {patcher.graph.n_edges} edges, {n_prompts} prompts, EAP-IG {seconds:.0f}s | " + " | ".join(cells),
              flush=True)  # fmt: skip


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--tasks", nargs="*", default=list(TASKS), help="tracr/zoo tasks (none: only SmolLM2)")
    ap.add_argument("--smollm2", nargs="*", metavar="TASK", help="also these tasks on SmolLM2 (default pronoun ioi)")
    ap.add_argument("--n-prompts", type=int, default=20, help="prompts of the SmolLM2 runs (default 20)")
    args = ap.parse_args()
    torch.set_num_threads(1)
    print("relative threshold R:" + "".join(f" | {r:>13g}" for r in GRID))
    for name in args.tasks:
        acdc_rows(name)
    if args.smollm2 is not None:
        smollm2_rows(args.smollm2 or ["pronoun", "ioi"], args.n_prompts)


if __name__ == "__main__":
    main()
