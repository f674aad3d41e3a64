"""How long drawing circuit.svg takes on SmolLM2-135M-sized circuits (70,651-edge graph).

    .venv/bin/python benchmarks/render_speed.py              # best of 3
    .venv/bin/python benchmarks/render_speed.py --sizes 640 70651 --runs 5

No weights are needed: the graph is built from SmolLM2-135M's shape (30 layers, 9 query /
3 key-value heads, d_model 576; circuitdag.graph.Graph) and a circuit of each size keeps
that many edges with seeded random scores (``--sizes``; the whole graph by default too).
Each size is drawn with ``Circuit.to_svg`` (graphviz ``dot`` on the top
``MAX_EDGES`` edges by ``|score|``, plus the legend), best of ``--runs``, and the time is
split into building the dot source (Python), graphviz's layout, and the legend.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

import numpy as np

from circuitdag import render
from circuitdag.circuit import Circuit
from circuitdag.graph import Graph, ModelSpec

SMOLLM2 = ModelSpec(n_layers=30, n_heads=9, n_kv_heads=3, d_model=576)


def circuit_of(graph: Graph, n_edges: int, seed: int = 0) -> Circuit:
    rng = np.random.default_rng(seed)
    keep = np.zeros(graph.n_edges, dtype=bool)
    keep[rng.choice(graph.n_edges, size=min(n_edges, graph.n_edges), replace=False)] = True
    scores = rng.standard_normal(graph.n_edges) * rng.random(graph.n_edges) ** 4
    meta = {"task": "pronoun", "metric": "logit_diff", "ablation": "resample", "threshold": 0.1,
            "metric_full": -1.0, "metric_circuit": -0.9, "metric_corrupted": 0.0}  # fmt: skip
    return Circuit(graph, keep, scores, meta)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sizes", type=int, nargs="+", default=[640, 70651])
    ap.add_argument("--runs", type=int, default=3)
    args = ap.parse_args()
    graph = Graph(SMOLLM2)
    print(f"SmolLM2-135M-sized graph: {graph.n_edges} edges; MAX_EDGES {render.MAX_EDGES}; "
          f"load average {os.getloadavg()[0]:.2f}")  # fmt: skip
    out = Path(tempfile.mkdtemp(prefix="render_speed_")) / "circuit.svg"
    for size in args.sizes:
        circuit = circuit_of(graph, size)
        best = {"dot source": float("inf"), "graphviz": float("inf"), "legend": float("inf"), "to_svg": float("inf")}
        for _ in range(args.runs):
            t0 = time.perf_counter()
            dot = render.to_dot(circuit)
            t1 = time.perf_counter()
            svg = render.dot_svg(dot, timeout=0)
            t2 = time.perf_counter()
            render.add_legend(svg, circuit)
            t3 = time.perf_counter()
            circuit.to_svg(out)
            t4 = time.perf_counter()
            for key, t in zip(best, (t1 - t0, t2 - t1, t3 - t2, t4 - t3)):
                best[key] = min(best[key], t)
        parts = ", ".join(f"{k} {v:.2f} s" for k, v in best.items())
        print(f"{circuit.n_edges:>6} edges in the circuit: {parts} (best of {args.runs})")


if __name__ == "__main__":
    main()
