"""The fused masked pass against the reference masked pass: forward + backward, side by side.

Times ``masked_metric(patcher, z).backward()`` at a hard-concrete-like mask (a third of the
gates exactly 0, a third exactly 1, the rest in between) with the fused pass (the default,
:mod:`circuitdag.masked_fused`) and with ``reference=True`` (autograd through
:func:`circuitdag.passes.full_pass`), alternating, one warm-up each, best of ``--repeats``;
checks they give the same value and gradient; prints the ratio and, for scale, a plain
forward + backward of the model on the same tokens. ``--memory`` runs each pass once more
in a fresh process and prints its peak resident memory (``ru_maxrss``, the whole process:
model, cached runs and pass)::

    .venv/bin/python benchmarks/masked_speed.py --task pronoun                 # zoo model, seconds
    flock /tmp/smollm2.lock .venv/bin/python benchmarks/masked_speed.py --model smollm2-135m \\
        --task ioi --metric kl --n-prompts 8 --memory
"""

from __future__ import annotations

import argparse
import resource
import subprocess
import sys
import time

import numpy as np
import torch

import circuitdag as cd
from circuitdag.masked import masked_metric
from circuitdag.passes import frozen
from circuitdag.prepare import prepare


def setup(args: argparse.Namespace) -> tuple[object, torch.Tensor]:
    torch.set_num_threads(args.threads)
    model = cd.load_model(args.model) if args.model else None
    task = cd.tasks.get(args.task)
    if model is None:
        model = cd.load_model(task.default_model)
    patcher, _ = prepare(model, task, metric=args.metric, positions=args.positions, n_prompts=args.n_prompts)
    rng = np.random.default_rng(0)
    z = rng.uniform(0.0, 1.0, patcher.graph.n_edges)
    pick = rng.random(patcher.graph.n_edges)
    z[pick < 1 / 3] = 0.0
    z[pick > 2 / 3] = 1.0
    return patcher, torch.as_tensor(z, dtype=patcher.dtype)


def step(patcher: object, z0: torch.Tensor, reference: bool) -> tuple[float, float, torch.Tensor]:
    """Seconds of one forward + backward, the value and the gradient."""
    z = z0.clone().requires_grad_(True)
    t0 = time.perf_counter()
    m = masked_metric(patcher, z, reference=reference)  # type: ignore[arg-type]
    m.backward()
    assert z.grad is not None
    return time.perf_counter() - t0, float(m.detach()), z.grad


def plain(patcher: object) -> float:
    """Seconds of a plain forward + backward of the model (gradient w.r.t. its embedding)."""
    p = patcher  # type: ignore[assignment]
    tokens = p.views.tokens(p.data.clean)  # type: ignore[attr-defined]

    def leaf(x: torch.Tensor, hook: object) -> torch.Tensor:
        return x.detach().requires_grad_(True)

    t0 = time.perf_counter()
    with frozen(p.model):  # type: ignore[attr-defined]
        out = p.model.run_with_hooks(tokens, fwd_hooks=[(p.table.resid_pre(0), leaf)])  # type: ignore[attr-defined]
        out[:, -1].logsumexp(-1).sum().backward()
    return time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", help="model to load (default: the task's)")
    ap.add_argument("--task", default="pronoun")
    ap.add_argument("--metric", help="metric (default: the task's)")
    ap.add_argument("--n-prompts", type=int, help="prompts in the pass (default: the task's)")
    ap.add_argument("--positions", action="store_true", help="a position-aware graph")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--memory", action="store_true", help="also peak memory of each pass, one process each")
    ap.add_argument("--only", choices=["fused", "reference"], help=argparse.SUPPRESS)  # --memory's child
    args = ap.parse_args()
    patcher, z = setup(args)
    if args.only:
        step(patcher, z, args.only == "reference")
        print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6)
        return
    p = patcher
    print(
        f"{args.task} on {args.model or 'its model'}: {p.B} prompts x {p.data.clean.shape[1]} tokens, "  # type: ignore[attr-defined]
        f"{p.graph.n_edges} edges{' (positions)' if args.positions else ''}, {args.threads} thread(s)"
    )  # type: ignore[attr-defined]
    best = {"fused": float("inf"), "reference": float("inf"), "plain model": float("inf")}
    results = {}
    for i in range(args.repeats + 1):  # the first round warms up
        for name in ("fused", "reference") if i % 2 == 0 else ("reference", "fused"):
            secs, value, grad = step(patcher, z, name == "reference")
            results[name] = (value, grad)
            if i:
                best[name] = min(best[name], secs)
        secs = plain(patcher)
        if i:
            best["plain model"] = min(best["plain model"], secs)
    (v_f, g_f), (v_r, g_r) = results["fused"], results["reference"]
    err = float((g_f - g_r).abs().max() / g_r.abs().max().clamp_min(1e-30))
    print(
        f"value fused {v_f:.8g} reference {v_r:.8g}; gradient max difference {err:.2e} of its largest entry"
    )
    print(
        f"forward + backward, best of {args.repeats}: " + ", ".join(f"{k} {v:.2f} s" for k, v in best.items())
    )
    print(f"reference / fused: {best['reference'] / best['fused']:.1f}x; "
          f"fused / plain model: {best['fused'] / best['plain model']:.1f}x")  # fmt: skip
    if args.memory:
        argv = [a for a in sys.argv[1:] if a != "--memory"]
        for name in ("fused", "reference"):
            out = subprocess.run([sys.executable, __file__, *argv, "--only", name], capture_output=True, text=True,
                                 check=True).stdout.split()  # fmt: skip
            print(f"peak memory, {name}: {float(out[-1]):.2f} GB (whole process)")


if __name__ == "__main__":
    main()
