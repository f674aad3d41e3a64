"""Minimality's per-edge circuits ``C - e``: the component path against the layer path, side by side.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/minimality_paths.py --runs 3

On a random pre-LayerNorm transformer of 12 layers, 8 heads, d_model 256 (the model of
benchmarks/curve_speed.py, float32, 100 random prompts of 12 tokens) a random circuit of 2%
of the edges built from ``embed -> logits`` paths (:func:`circuitdag.hypothesis.random_circuit`,
what sufficiency draws), :func:`circuitdag.per_prompt.removal_metrics`
for every edge of it, with ``path="components"`` (only the circuit's nodes downstream of
the edge: :mod:`circuitdag.recompute`) and ``path="layers"`` (every layer from the edge's
destination on, 8 circuits a batch), alternating for ``--runs`` rounds; each path's best
time, their ratio and the largest difference between the two (float32 rounding) are
printed.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--runs", type=int, default=3, help="rounds; each path's best is kept (default 3)")
    ap.add_argument("--percent", type=float, default=2.0, help="circuit size, percent of the edges (default 2)")
    args = ap.parse_args()
    from curve_speed import random_run

    from circuitdag.hypothesis import random_circuit
    from circuitdag.per_prompt import removal_metrics

    p = random_run()
    alive = random_circuit(p.graph, max(1, int(args.percent / 100 * p.graph.n_edges)), np.random.default_rng(0))
    edges = np.flatnonzero(alive)
    p.kernels()  # verified once, outside the timing
    best = {"components": np.inf, "layers": np.inf}
    got = {}
    for _ in range(args.runs):
        for path in ("components", "layers"):
            t0 = time.perf_counter()
            got[path] = removal_metrics(p, alive, edges, path=path)
            best[path] = min(best[path], time.perf_counter() - t0)
    diff = float(np.max(np.abs(got["components"] - got["layers"]) / (np.abs(got["layers"]) + 1e-6)))
    print(f"{p.graph.n_edges} edges, circuit {len(edges)} edges, {p.B} prompts, load {os.getloadavg()[0]:.1f}")
    for path, t in best.items():
        print(f"  {path:<10} best of {args.runs}: {t:7.2f} s ({t / len(edges) * 1000:.1f} ms/edge)")
    print(f"  layers / components: {best['layers'] / best['components']:.2f}x; max relative difference {diff:.2e}")


if __name__ == "__main__":
    main()
