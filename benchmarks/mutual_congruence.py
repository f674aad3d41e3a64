"""Mutual congruence at GPT-2-Large shape: time and peak memory (docs/neurons.md).

Random weights of GPT-2 Large's shape -- 36 layers x 5120 neurons = 184,320 rows of
``W_out`` (d_model 1280) against a 1280 x 50,257 ``W_U`` -- through
:func:`circuitdag.neurons.mutual_congruence`, which never holds the 184,320 x 50,257
congruence matrix (37 GB in float32). Prints and appends to
``benchmarks/results/mutual_congruence.txt``: seconds, peak resident memory of the
process (``ru_maxrss``, inputs included), and whether it stayed under 8 GiB::

    .venv/bin/python benchmarks/mutual_congruence.py              # GPT-2 Large shape
    .venv/bin/python benchmarks/mutual_congruence.py --layers 2   # a quick try
"""

from __future__ import annotations

import argparse
import resource
import shlex
import sys
import time
from pathlib import Path

import torch

from circuitdag.neurons.congruence import mutual_congruence

LIMIT_GIB = 8.0


def peak_rss_gib() -> float:
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return rss / (1 << 30) if sys.platform == "darwin" else rss / (1 << 20)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--layers", type=int, default=36)
    ap.add_argument("--d-mlp", type=int, default=5120)
    ap.add_argument("--d-model", type=int, default=1280)
    ap.add_argument("--vocab", type=int, default=50257)
    ap.add_argument("--chunk", type=int, default=2048, help="neurons per matrix product (default 2048)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--chunks", type=int, default=None,
                    help="run only the first N chunks of neurons (inputs still full size, so the peak memory is "
                    "the full run's); the time is then extrapolated to all neurons and marked so")
    ap.add_argument("--out", default=str(Path(__file__).parent / "results" / "mutual_congruence.txt"))
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    g = torch.Generator().manual_seed(0)
    n = args.layers * args.d_mlp
    W_out = torch.randn(n, args.d_model, generator=g) / args.d_model**0.5
    W_U = torch.randn(args.d_model, args.vocab, generator=g) / args.d_model**0.5
    before = peak_rss_gib()
    t0 = time.perf_counter()
    rows = n if args.chunks is None else min(n, args.chunks * args.chunk)
    mc = mutual_congruence(W_out[:rows], W_U, chunk=args.chunk)
    seconds = time.perf_counter() - t0
    timing = f"{seconds:.1f}s" if rows == n else f"{seconds:.1f}s for {rows} neurons, {seconds * n / rows:.0f}s extrapolated"
    peak = peak_rss_gib()
    line = (f"{time.strftime('%Y-%m-%d')}  {n} neurons x {args.vocab} tokens, d_model {args.d_model}, chunk "
            f"{args.chunk}, {args.threads} threads: {timing}, peak RSS {peak:.2f} GiB (inputs and "
            f"interpreter {before:.2f} GiB), {len(mc.pairs)} mutual pairs{'' if rows == n else ' (among those neurons)'}; under {LIMIT_GIB:g} GiB: "
            f"{'yes' if peak < LIMIT_GIB else 'NO'}  [{shlex.join(sys.argv)}]")  # fmt: skip
    print(line)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    with out.open("a") as f:
        f.write(line + "\n")


if __name__ == "__main__":
    main()
