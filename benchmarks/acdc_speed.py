"""Reference vs fast ACDC, side by side in one process.

    .venv/bin/python benchmarks/acdc_speed.py                # tracr + toy + zoo tasks, CPU
    .venv/bin/python benchmarks/acdc_speed.py --gpt2 --device cuda   # + GPT-2-small-sized graph
    .venv/bin/python benchmarks/acdc_speed.py --positions --only pronoun   # position-aware cases

For every case it runs the sequential reference and the speculative-batched fast path on
the same cached runs and prints: edges, edges kept, forward passes, layer evaluations,
wall seconds of each path, the speed-up, whether the edge sets are identical, and the
peak memory. The GPT-2-small-sized case (12 layers, 12 heads, d_model 768, random weights,
100 prompts x 16 tokens, booted through TransformerBridge from a local directory) runs in
full on a GPU; on a CPU ``--gpt2-destinations N`` limits both paths to the first N
destinations ACDC visits (the reference would take hours otherwise).
"""

from __future__ import annotations

import argparse
import json
import resource
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass

import numpy as np
import torch

from circuitdag.acdc import acdc_fast, acdc_reference, prepare
from circuitdag.graph import Graph
from circuitdag.models import spec_of
from circuitdag.patching import Patcher
from circuitdag.tasks import get_task, task_names
from circuitdag.tasks.base import TaskData


@dataclass
class Row:
    case: str
    edges: int
    kept: int
    fwd_ref: int
    fwd_fast: int
    layers_ref: int
    layers_fast: int
    s_ref: float
    s_fast: float
    identical: bool
    peak_mb: float
    k_max: int

    @property
    def speedup(self) -> float:
        return self.s_ref / self.s_fast if self.s_fast else float("inf")


def _peak_mb(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


def compare(case: str, patcher: Patcher, threshold: float, max_dest: int | None = None, skip_ref: bool = False) -> Row:
    dev = patcher.device
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)
        torch.cuda.reset_peak_memory_stats(dev)
    f0, l0 = patcher.n_forward, patcher.n_layer_evals
    t = time.perf_counter()
    fast = acdc_fast(patcher, threshold, max_destinations=max_dest)
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)
    s_fast = time.perf_counter() - t
    fwd_fast, layers_fast = patcher.n_forward - f0, patcher.n_layer_evals - l0
    peak = _peak_mb(dev)
    if skip_ref:
        ref_alive, s_ref, fwd_ref, layers_ref = None, float("nan"), -1, -1
    else:
        f0, l0 = patcher.n_forward, patcher.n_layer_evals
        t = time.perf_counter()
        ref = acdc_reference(patcher, threshold, max_destinations=max_dest)
        s_ref = time.perf_counter() - t
        fwd_ref, layers_ref, ref_alive = patcher.n_forward - f0, patcher.n_layer_evals - l0, ref.alive
    return Row(case, patcher.graph.n_edges, int(fast.alive.sum()), fwd_ref, fwd_fast, layers_ref, layers_fast,
               s_ref, s_fast, bool(ref_alive is not None and np.array_equal(ref_alive, fast.alive)), peak,
               int(fast.stats["k_max"]))  # fmt: skip


def toy_patcher(dtype: torch.dtype, device: str) -> Patcher:
    """A random 4-layer, 8-head toy transformer on 100 random prompts of 10 tokens."""
    from circuitdag.models.hooked import TinyConfig, TinyTransformer

    torch.manual_seed(0)
    m = TinyTransformer(TinyConfig(n_layers=4, d_model=64, n_heads=8, d_head=8, d_vocab=50, n_ctx=16,
                                   d_mlp=128, normalization="LN", act_fn="gelu"))  # fmt: skip
    for name, p in m.named_parameters():
        torch.nn.init.normal_(p, std=0.3 if "W_" in name else 0.02)
        if name.endswith(".w"):
            p.data += 1.0
    m = m.to(device=device, dtype=dtype).eval()
    g = torch.Generator().manual_seed(1)
    clean = torch.randint(0, 50, (100, 10), generator=g)
    corr = torch.randint(0, 50, (100, 10), generator=g)
    data = TaskData(clean, corr, answer_pos=torch.full((100, 1), 9))
    return Patcher(m, Graph(spec_of(m)), data, ablation="resample", metric="kl")


def gpt2_patcher(dtype: torch.dtype, device: str, n_layers: int, prompts: int, tokens: int) -> Patcher:
    """GPT-2-small-sized random model saved as a Hugging Face directory, loaded through
    TransformerBridge exactly like a user's model."""
    from transformers import GPT2Config, GPT2LMHeadModel

    from circuitdag.models.bridge import load_bridge
    from circuitdag.models.zoo import zoo_path

    torch.manual_seed(0)
    cfg = GPT2Config(n_layer=n_layers, n_head=12, n_embd=768, vocab_size=1000, n_positions=64)
    tmp = tempfile.mkdtemp(prefix="gpt2-bench-")
    GPT2LMHeadModel(cfg).save_pretrained(tmp)
    for f in zoo_path("pronoun").glob("tokenizer*"):  # any word-level tokenizer will do
        shutil.copy(f, tmp)
    model = load_bridge(tmp, device=device, dtype=dtype)
    g = torch.Generator().manual_seed(2)
    clean = torch.randint(0, 1000, (prompts, tokens), generator=g)
    corr = torch.randint(0, 1000, (prompts, tokens), generator=g)
    data = TaskData(clean, corr, answer_pos=torch.full((prompts, 1), tokens - 1))
    return Patcher(model, Graph(spec_of(model)), data, ablation="resample", metric="kl")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--dtype", default="float64", choices=("float32", "float64"))
    ap.add_argument("--threads", type=int, default=1, help="torch CPU threads (1 is fastest for tiny models)")
    ap.add_argument("--only", nargs="*", help="case names to run (default: all)")
    ap.add_argument("--toy", action="store_true", help="add a random 4-layer 8-head toy model (dense circuit)")
    ap.add_argument("--gpt2", action="store_true", help="add the GPT-2-small-sized case")
    ap.add_argument("--gpt2-layers", type=int, default=12)
    ap.add_argument("--gpt2-prompts", type=int, default=100)
    ap.add_argument("--gpt2-tokens", type=int, default=16)
    ap.add_argument("--gpt2-destinations", type=int, default=None,
                    help="limit both paths to the first N destinations (CPU)")
    ap.add_argument("--gpt2-threshold", type=float, default=0.01)
    ap.add_argument("--gpt2-fast-only", action="store_true", help="skip the reference on the GPT-2 case")
    ap.add_argument("--positions", action="store_true",
                    help="also run every task position-aware (cases labelled +pos)")
    ap.add_argument("--json", help="also write the rows as JSON here")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    dtype = getattr(torch, args.dtype)

    cases: list[tuple[str, callable, float]] = []
    for name in task_names():
        task = get_task(name)
        is_tracr = name.startswith("tracr-")
        for ablation in (("zero", "resample") if is_tracr else (None,)):
            for positions in (False, True) if args.positions else (False,):
                label = (f"{name}/{ablation}" if ablation else name) + ("+pos" if positions else "")

                def build(task=task, ablation=ablation, positions=positions):
                    model = task.load_model(device=args.device, dtype=dtype)
                    return prepare(model, task, ablation=ablation, positions=positions)[0]

                cases.append((label, build, task.default_threshold))
    if args.toy:
        cases.append(("toy-4L8H", lambda: toy_patcher(dtype, args.device), 0.005))
    if args.gpt2:
        label = f"gpt2-small-random/{args.gpt2_layers}L"
        cases.append((label, lambda: gpt2_patcher(dtype, args.device, args.gpt2_layers, args.gpt2_prompts,
                                                  args.gpt2_tokens), args.gpt2_threshold))  # fmt: skip

    rows = []
    hdr = (f"{'case':<30} {'edges':>6} {'kept':>5} {'fwd ref':>8} {'fwd fast':>8} {'layers ref':>10} "
           f"{'layers fast':>11} {'s ref':>8} {'s fast':>7} {'speedup':>7} {'same':>5} {'Kmax':>5} {'peak MB':>8}")  # fmt: skip
    print(f"device={args.device} dtype={args.dtype} threads={args.threads}")
    print(hdr)
    for label, build, thr in cases:
        if args.only and not any(o in label for o in args.only):
            continue
        try:
            patcher = build()
        except Exception as exc:  # a zoo task whose model is not shipped yet, ...
            print(f"{label:<30} skipped: {exc}")
            continue
        is_gpt2 = label.startswith("gpt2")
        row = compare(label, patcher, thr, max_dest=args.gpt2_destinations if is_gpt2 else None,
                      skip_ref=is_gpt2 and args.gpt2_fast_only)  # fmt: skip
        rows.append(row)
        print(f"{row.case:<30} {row.edges:>6} {row.kept:>5} {row.fwd_ref:>8} {row.fwd_fast:>8} {row.layers_ref:>10} "
              f"{row.layers_fast:>11} {row.s_ref:>8.2f} {row.s_fast:>7.2f} {row.speedup:>7.1f} "
              f"{'yes' if row.identical else 'NO':>5} {row.k_max:>5} {row.peak_mb:>8.0f}", flush=True)  # fmt: skip
    if rows:
        tot_ref = sum(r.s_ref for r in rows if r.s_ref == r.s_ref)
        tot_fast = sum(r.s_fast for r in rows if r.s_ref == r.s_ref)
        print(f"total: reference {tot_ref:.1f}s, fast {tot_fast:.1f}s, speed-up {tot_ref / max(tot_fast, 1e-9):.1f}x; "
              f"identical on {sum(r.identical for r in rows)}/{len(rows)} cases")  # fmt: skip
    if args.json:
        with open(args.json, "w") as f:
            json.dump([r.__dict__ | {"speedup": r.speedup} for r in rows], f, indent=1)
    return 0 if all(r.identical for r in rows if r.fwd_ref >= 0) else 1


if __name__ == "__main__":
    sys.exit(main())
