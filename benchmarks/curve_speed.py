"""The MIB curve with and without the node pass (circuitdag.node_pass), side by side.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/curve_speed.py                 # random 12-layer model
    OMP_NUM_THREADS=2 .venv/bin/python benchmarks/curve_speed.py --smollm2 --threads 2 --runs 1
    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/curve_speed.py --smollm2 --runs 1 --node-pass-only

Both curves (signed and absolute, MIB's grid) of an edge ranking on one prepared run: the
default evaluates small grid points on the circuit's own nodes, ``full pass`` every point
with ``Patcher.circuit_metric`` (what ``curve`` did before). One warm-up of each, then
``--runs`` alternating rounds, best kept; the curves' metrics are compared (relative
difference printed). The default model is a random pre-LayerNorm transformer of 12 layers,
8 heads, d_model 256 (``TinyTransformer``, float32) on 100 random prompts of 12 tokens,
ranked by EAP scores; ``--smollm2`` uses SmolLM2-135M on the ``pronoun`` task ranked by
EAP-IG (5 steps), and also times that EAP-IG search for the issue's ratio (curves at most
10x the search). ``--node-pass-only`` skips the full-pass curves (they take most of an hour on
SmolLM2). Wall and CPU seconds (this process's user + system, ``time.process_time``: less
disturbed by other jobs on a shared machine) are printed for both.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
import time
from pathlib import Path
from unittest import mock

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))


def random_run():
    from randmodel import random_data, random_tiny

    from circuitdag.graph import Graph
    from circuitdag.models import spec_of
    from circuitdag.patching import Patcher

    model = random_tiny(n_layers=12, d_model=256, n_heads=8, d_head=32, d_mlp=1024, d_vocab=500, n_ctx=16,
                        dtype=torch.float32)  # fmt: skip
    data = random_data(batch=100, pos=12, vocab=500)
    return Patcher(model, Graph(spec_of(model)), data, metric="logit_diff")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--smollm2", action="store_true")
    ap.add_argument("--node-pass-only", action="store_true", help="time only the node-pass curves")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    from circuitdag import mib
    from circuitdag.attribution import attribute

    if args.smollm2:
        from circuitdag.loading import load_model
        from circuitdag.prepare import prepare
        from circuitdag.tasks import get_task

        p, _ = prepare(load_model("smollm2-135m"), get_task("pronoun"))
        t0, c0 = time.perf_counter(), time.process_time()
        scores = attribute(p, "eap-ig", steps=5).scores
        search, search_cpu = time.perf_counter() - t0, time.process_time() - c0
        print(f"EAP-IG search (5 steps): {search:.1f} s, CPU {search_cpu:.1f} s")
    else:
        p = random_run()
        scores = attribute(p, "eap").scores
        search = search_cpu = None
    print(f"graph {p.graph.n_edges} edges, {p.B} prompts, load average {os.getloadavg()[0]:.2f}")

    def curves(fast: bool) -> tuple[float, float, dict]:
        patch = contextlib.nullcontext() if fast else mock.patch("circuitdag.node_pass.node_pass_for", return_value=None)
        with patch:
            t0, c0 = time.perf_counter(), time.process_time()
            out = mib.mib_curves(p, scores)
            return time.perf_counter() - t0, time.process_time() - c0, out

    names = ["node pass"] if args.node_pass_only else ["node pass", "full pass"]
    best, best_cpu = dict.fromkeys(names, float("inf")), dict.fromkeys(names, float("inf"))
    got: dict[str, dict] = {}
    for round_ in range(args.runs + (0 if args.node_pass_only else 1)):  # one warm-up when comparing
        for name in names:
            t, c, got[name] = curves(name == "node pass")
            if round_ or args.node_pass_only:
                best[name], best_cpu[name] = min(best[name], t), min(best_cpu[name], c)
    for name, t in best.items():
        extra = f", {t / search:.1f}x the EAP-IG search" if search else ""
        extra += f"; CPU {best_cpu[name]:.1f} s" + (f", {best_cpu[name] / search_cpu:.1f}x the search's" if search_cpu else "")
        print(f"both curves, {name}: {t:.2f} s (best of {args.runs}{extra})")
    print("points (signed):", [int(n) for n in got["node pass"]["signed"].n_edges])
    if args.node_pass_only:
        return
    diff = max(abs(a - b) / max(abs(b), 1e-30) for k in ("signed", "absolute")
               for a, b in zip(got["node pass"][k].metric, got["full pass"][k].metric))  # fmt: skip
    print(f"full pass / node pass: {best['full pass'] / best['node pass']:.2f}x; largest relative difference "
          f"of a point's metric {diff:.2e}")  # fmt: skip


if __name__ == "__main__":
    main()
