"""The dense reference pass against the sparse pass every result is reported with.

Times ``Patcher.reference_metric`` (dense sums over all senders) and
``Patcher.circuit_metric`` (sparse sums, answer positions only) on one circuit, side by
side, alternating, best of ``--repeats``, and checks they give the same value::

    .venv/bin/circuitdag discover --task pronoun --model smollm2-135m --prefilter eap-ig --out runs/pron-pre
    .venv/bin/python benchmarks/sparse_pass.py runs/pron-pre/circuit.json --model smollm2-135m
"""

from __future__ import annotations

import argparse
import time

import torch

import circuitdag as cd
from circuitdag.prepare import prepare


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("circuit", help="a circuit.json (its task and settings are reused)")
    ap.add_argument("--model", help="model to load (default: the circuit's)")
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    circuit = cd.load_circuit(args.circuit)
    m = circuit.meta
    model = cd.load_model(args.model or m["model"])
    patcher, _ = prepare(model, cd.tasks.get(m["task"]), metric=m["metric"], ablation=m["ablation"],
                         seed=m.get("seed", 0), positions=bool(m.get("positions")))  # fmt: skip
    best = {"reference_metric": float("inf"), "circuit_metric": float("inf")}
    values = {}
    for _ in range(args.repeats):
        for name in ("reference_metric", "circuit_metric"):
            t0 = time.perf_counter()
            values[name] = getattr(patcher, name)(circuit.in_circuit)
            best[name] = min(best[name], time.perf_counter() - t0)
    print(f"{circuit.n_edges}/{circuit.graph.n_edges} edges, {args.threads} threads, best of {args.repeats}: "
          + ", ".join(f"{k} {v:.2f} s ({values[k]:.6f})" for k, v in best.items())
          + f", speed-up {best['reference_metric'] / best['circuit_metric']:.1f}x")  # fmt: skip


if __name__ == "__main__":
    main()
