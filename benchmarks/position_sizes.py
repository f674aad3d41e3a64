"""Faithfulness against (head, position) pairs for circuits of growing size.

Takes a position-aware circuit.json whose edges carry attribution scores (from
``discover --algorithm eap-ig --positions``), keeps the top k edges by |score| for each k,
prunes them to embed -> logits paths, and measures each circuit exactly::

    .venv/bin/circuitdag discover --task pronoun --model smollm2-135m --algorithm eap-ig --positions --out runs/pron-ig-pos
    .venv/bin/python benchmarks/position_sizes.py runs/pron-ig-pos/circuit.json --model smollm2-135m
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np
import torch

import circuitdag as cd
from circuitdag.attribution import top_edges
from circuitdag.circuit import Circuit
from circuitdag.prepare import prepare


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("circuit", help="a position-aware circuit.json with attribution scores")
    ap.add_argument("--model", help="model to load (default: the circuit's)")
    ap.add_argument("--sizes", type=int, nargs="+", default=[250, 500, 1000, 2000, 5000])
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    scored = cd.load_circuit(args.circuit)
    m = scored.meta
    model = cd.load_model(args.model or m["model"])
    p, _ = prepare(model, cd.tasks.get(m["task"]), metric=m["metric"], ablation=m["ablation"],
                   seed=m.get("seed", 0), positions=True)  # fmt: skip
    n = p.graph.n_edges
    full, empty = p.circuit_metric(np.ones(n, dtype=bool)), p.circuit_metric(np.zeros(n, dtype=bool))
    for k in args.sizes:
        t0 = time.perf_counter()
        alive = p.graph.prune(top_edges(scored.scores, n_edges=k))
        c = Circuit(p.graph, alive, scored.scores,
                    {"metric_full": full, "metric_circuit": p.circuit_metric(alive), "metric_corrupted": empty})  # fmt: skip
        used, total = c.head_positions()
        print(json.dumps({"top": k, "edges": int(alive.sum()), "faithfulness": round(c.faithfulness() or 0, 4),
                          "recovered": round(c.recovered() or 0, 4), "head_positions": used, "of": total,
                          "fraction": round(used / total, 4), "seconds": round(time.perf_counter() - t0, 1)}),
              flush=True)  # fmt: skip


if __name__ == "__main__":
    main()
