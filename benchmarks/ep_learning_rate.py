"""Edge Pruning's defaults on the small checks they were chosen on.

Trains with ``lr = reg_lr = LR`` (other options, ``reg_lr`` too, at their defaults unless ``--option``) on the
planted linear model of tests/test_edge_pruning.py (200 edges, 12 planted; and with
``--big`` 20,000 edges, 200 planted) and on the six shipped tracr tasks at their
ground-truth sizes, for mask seeds ``0 .. --seeds - 1``, and prints how often each learned
circuit is exactly the planted edges / the ground truth::

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/ep_learning_rate.py 0.1                # the defaults, seed 0
    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/ep_learning_rate.py 0.1 --seeds 3 --big
    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/ep_learning_rate.py 0.1 --seeds 3 --option lagrangian=paper --option init=5
"""

from __future__ import annotations

import argparse

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
#: train_gates keywords among the options (the others only exist for the method).
GATE_OPTIONS = ("steps", "warmup", "init", "lagrangian")


def planted(n: int, k: int, seed: int, lr: float, options: dict) -> tuple[bool, dict]:
    """Whether the planted model's top ``k`` gates are its planted edges, and the record."""
    rng = np.random.default_rng(seed)
    w = rng.uniform(0, 0.01, n)
    chosen = rng.choice(n, k, replace=False)
    w[chosen] = rng.uniform(0.5, 1.0, k)
    wt = torch.as_tensor(w)
    kw = {key: v for key, v in options.items() if key in GATE_OPTIONS}
    reg_lr = options.get("reg_lr", lr)
    la, rec = ep.train_gates(lambda z, i: (wt * (1 - z)).sum(), n, 1 - k / n, seed=seed, lr=lr, reg_lr=reg_lr, **kw)
    return set(np.flatnonzero(ep.top_gates(la.numpy(), k))) == set(chosen), rec


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("lr", type=float, nargs="?", default=ep.DEFAULT_LR)
    ap.add_argument("--seeds", type=int, default=1, help="mask seeds 0 .. N-1 (planted models: their seed too)")
    ap.add_argument("--big", action="store_true", help="also the planted model at 20,000 edges")
    ap.add_argument("--option", action="append", default=[], metavar="NAME=VALUE", help="an Edge Pruning option")
    args = ap.parse_args()
    method = ep.EdgePruning()
    options = {}
    for o in args.option:
        name, _, value = o.partition("=")
        opt = next(x for x in method.options if x.name == name)
        options[name] = opt.check(value)
    torch.set_num_threads(1)
    seeds = range(args.seeds)
    sizes = ((200, 12), (20_000, 200)) if args.big else ((200, 12),)
    for n, k in sizes:
        runs = [planted(n, k, s, args.lr, options) for s in seeds]
        closed = ", ".join(f"{r['final_closed']:.3f}" for _, r in runs)
        print(f"lr {args.lr:g} {options}: planted model {n} edges: exact on {sum(ok for ok, _ in runs)} of "
              f"{len(runs)} seeds (closed {closed} of {1 - k / n:.3f})", flush=True)  # fmt: skip
    total = 0
    for name in TRACR:
        task = get_task(name)
        patcher, meta = prepare(task.load_model(), task)
        truth, _ = task_truth(task, meta["ablation"])
        want = patcher.graph.edges_by_name(truth)
        exact = []
        for s in seeds:
            kw = {"lr": args.lr, "reg_lr": args.lr, "mask_seed": s, **options}
            c = run_algorithm(patcher, "edge-pruning", meta=meta, edges=int(want.sum()), **kw)
            exact.append(bool((want == c.in_circuit).all()))
            tr = c.meta["training"]
        total += sum(exact)
        print(f"{name:20s} exact on {sum(exact)} of {len(exact)} (last: faithfulness {c.faithfulness():.3f}, "
              f"sparsity {tr['final_sparsity']:.3f} of {tr['final_target']:.3f})", flush=True)  # fmt: skip
    print(f"tracr: {total} of {len(TRACR) * len(seeds)} runs exact")


if __name__ == "__main__":
    main()
