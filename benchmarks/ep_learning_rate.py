"""Edge Pruning's learning rate on the small checks its defaults were chosen on.

Trains with ``lr = reg_lr = LR`` (the other options at their defaults, seed 0) on the planted
linear model of tests/test_edge_pruning.py (seeds 0-2) and on the six shipped tracr tasks at
their ground-truth sizes, and prints whether each learned circuit is exactly the planted
edges / the ground truth::

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/ep_learning_rate.py 0.1    # the defaults
    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/ep_learning_rate.py 0.5
"""

from __future__ import annotations

import sys

import numpy as np
import torch

import circuitdag.algorithms.edge_pruning as ep
from circuitdag.discovery import run_algorithm
from circuitdag.evaluate import task_truth
from circuitdag.prepare import prepare
from circuitdag.tasks import get_task

TRACR = (
    "tracr-reverse",
    "tracr-proportion",
    "tracr-sort-unique",
    "tracr-hist",
    "tracr-length",
    "tracr-pair-balance",
)


def main() -> None:
    lr = float(sys.argv[1]) if len(sys.argv) > 1 else ep.DEFAULT_LR
    torch.set_num_threads(1)
    exact = 0
    for seed in range(3):
        rng = np.random.default_rng(seed)
        n, k = 200, 12
        w = rng.uniform(0, 0.01, n)
        planted = rng.choice(n, k, replace=False)
        w[planted] = rng.uniform(0.5, 1.0, k)
        wt = torch.as_tensor(w)
        la, _ = ep.train_gates(
            lambda z, i, wt=wt: (wt * (1 - z)).sum(), n, 1 - k / n, seed=seed, lr=lr, reg_lr=lr
        )
        exact += set(np.flatnonzero(ep.top_gates(la.numpy(), k))) == set(planted)
    print(f"lr {lr:g}: planted edges recovered exactly on {exact} of 3 seeds", flush=True)
    for name in TRACR:
        task = get_task(name)
        patcher, meta = prepare(task.load_model(), task)
        truth, _ = task_truth(task, meta["ablation"])
        want = patcher.graph.edges_by_name(truth)
        c = run_algorithm(patcher, "edge-pruning", meta=meta, edges=int(want.sum()), lr=lr, reg_lr=lr)
        tr = c.meta["training"]
        print(f"{name:20s} {'exact' if (want == c.in_circuit).all() else 'MISS '} faithfulness {c.faithfulness():.3f} "
              f"sparsity {tr['final_sparsity']:.3f} of {tr['final_target']:.3f}", flush=True)  # fmt: skip


if __name__ == "__main__":
    main()
