"""Reference vs fast ACDC, side by side in one process.

    .venv/bin/python benchmarks/acdc_speed.py                # tracr + zoo tasks, CPU, best of 3
    .venv/bin/python benchmarks/acdc_speed.py --gpt2 --device cuda   # + GPT-2-small-sized graph
    .venv/bin/python benchmarks/acdc_speed.py --positions --only pronoun   # position-aware cases
    .venv/bin/python benchmarks/acdc_speed.py --only smollm2 --smollm2-destinations 3   # real scale

For every case it runs the sequential reference and the fast path and prints: edges,
edges kept, edges tested (decided by ACDC), forward passes, layer evaluations, the
seconds of each path as best (median-max) of ``--reps`` runs, the speed-up of the best
runs, the best seconds per tested edge, whether the edge sets are identical (across every
run of both paths), the largest batch allowed (``Kmax``) and the peak memory.

How it is timed: one warm-up run of each path first, then ``--reps`` runs of each,
alternating which path goes first; every run gets a fresh ``Patcher`` (the clean and
corrupted runs are cached outside the timer, and no run starts from caches an earlier one
built); only the ACDC call is timed. Set ``--threads 1`` (the default) and
OMP_NUM_THREADS=1 MKL_NUM_THREADS=1 on a shared machine.

Cases: every registered task on its default model (tracr tasks with zero and resample
ablation; ``--positions`` adds position-aware variants), except the tasks whose default
model is SmolLM2 (``ioi``, ``greater-than``: name them in ``--only`` to run them). The
GPT-2-small-sized case (``--gpt2``: 12 layers, 12 heads, d_model 768, random weights, 100
prompts x 16 tokens, booted through TransformerBridge from a local directory) runs in
full on a GPU; on a CPU ``--gpt2-destinations N`` limits both paths to the first N
destinations ACDC visits (the reference would take hours otherwise). The SmolLM2 case
(``--smollm2-destinations N``, default 40 with ``--smollm2``: ``logits`` and the 13
nodes of each of layers 29-27; once ``logits`` is decided many of them no longer reach it and are
skipped, so the edges tested, not N, measure the work) runs SmolLM2-135M in float32
(``circuitdag.load_model("smollm2-135m")``) on the ``pronoun`` task's 100 prompts, plain
graph, the task's metric, threshold and ablation, limited to the first N destinations;
it runs only the fast path unless ``--smollm2-reference`` is given (the reference is
very slow there). ``--layer-path`` also times ``acdc_fast(..., sparse=False)``, the fast
path that evaluates candidates by whole layers instead of recomputing only the components
they change, and prints its seconds per tested edge and the ratio (the SmolLM2 baseline
of issue 14's "seconds per evaluated edge"). ``--prefix-skip-off`` also times the
component path without its shared-prefix skip (it then recomputes the positions before the
first token where clean and corrupted prompts differ; ``--smollm2-task greater-than``
shows the difference: its prompts agree on their first 9 of 17 tokens). The GPT-2 and
SmolLM2 cases warm up on their first destination and are timed ``--big-reps`` times
(default 1).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shlex
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from circuitdag.acdc_search import acdc_fast, acdc_reference
from circuitdag.graph import Graph
from circuitdag.models import spec_of
from circuitdag.patching import Patcher
from circuitdag.prepare import prepare
from circuitdag.tasks import get_task, task_names
from circuitdag.tasks.base import TaskData, load_data


@dataclass
class Row:
    case: str
    edges: int
    kept: int
    tested: int  # edges ACDC evaluated (decided), from the last fast run
    fwd_ref: int
    fwd_fast: int
    layers_ref: int
    layers_fast: int
    s_ref: list[float]  # one entry per timed run; empty when the reference was skipped
    s_fast: list[float]
    identical: bool | None  # None: no reference to compare with
    peak_mb: float
    k_max: int
    fast_path: str
    s_layers: list[float] = field(default_factory=list)  # --layer-path: acdc_fast(sparse=False)
    s_noskip: list[float] = field(default_factory=list)  # --prefix-skip-off: every position recomputed

    @property
    def best_ref(self) -> float:
        return min(self.s_ref) if self.s_ref else float("nan")

    @property
    def best_fast(self) -> float:
        return min(self.s_fast)

    @property
    def speedup(self) -> float:
        return self.best_ref / self.best_fast if self.best_fast else float("inf")

    @property
    def fast_per_edge(self) -> float:
        return self.best_fast / self.tested if self.tested else float("nan")

    @property
    def ref_per_edge(self) -> float:
        return self.best_ref / self.tested if self.tested else float("nan")

    @property
    def layers_per_edge(self) -> float:
        return min(self.s_layers) / self.tested if self.s_layers and self.tested else float("nan")


def spread(xs: list[float]) -> str:
    """``best (median-worst)`` seconds."""
    if not xs:
        return "-"
    return f"{min(xs):.3f} ({statistics.median(xs):.3f}-{max(xs):.3f})"


def _peak_mb(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


@dataclass
class Run:
    alive: np.ndarray
    tested: int
    seconds: float
    fwd: int
    layers: int
    k_max: int
    fast_path: str


def _sync(dev: torch.device) -> None:
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)


def run_once(make: Fresh, algo: str, threshold: float, max_dest: int | None) -> Run:
    """One timed run of ``algo`` on a fresh :class:`Patcher` (its caches are built outside
    the timer, and no run profits from what an earlier run cached)."""
    patcher = make()
    dev = patcher.device
    _sync(dev)
    f0, l0 = patcher.n_forward, patcher.n_layer_evals
    t = time.perf_counter()
    if algo == "reference":
        state = acdc_reference(patcher, threshold, max_destinations=max_dest)
    elif algo == "layers":  # the fast path without the component-level recomputation
        state = acdc_fast(patcher, threshold, max_destinations=max_dest, sparse=False)
    elif algo == "noskip":  # the component path recomputing the shared prefix too
        with prefix_skip_off():
            state = acdc_fast(patcher, threshold, max_destinations=max_dest)
    else:
        state = acdc_fast(patcher, threshold, max_destinations=max_dest)
    _sync(dev)
    seconds = time.perf_counter() - t
    # The component path runs no hooked passes: count its component evaluations instead.
    work = (int(state.stats.get("component_evaluations", 0)) if state.stats.get("fast_path") == "components"
            else patcher.n_layer_evals - l0)  # fmt: skip
    return Run(state.alive.copy(), int((~np.isnan(state.scores)).sum()), seconds, patcher.n_forward - f0,
               work, int(state.stats.get("k_max", -1)), str(state.stats.get("fast_path", "")))  # fmt: skip


@contextmanager
def prefix_skip_off() -> Iterator[None]:
    """The component path as it was before it skipped the positions where clean and
    corrupted prompts agree (:func:`circuitdag.recompute.first_changing_position` -> 0)."""
    from circuitdag import recompute, recompute_positions

    modules = (recompute, recompute_positions)  # plain and position-aware component paths
    originals = [m.first_changing_position for m in modules]
    for m in modules:
        m.first_changing_position = lambda patcher: 0  # type: ignore[assignment]
    try:
        yield
    finally:
        for m, original in zip(modules, originals):
            m.first_changing_position = original  # type: ignore[assignment]


def compare(case: str, make: Fresh, threshold: float, max_dest: int | None = None,
            skip_ref: bool = False, reps: int = 3, warmup_dest: int | None = None,
            layer_path: bool = False, noskip: bool = False) -> Row:  # fmt: skip
    """Warm up (one run of each path, limited to ``warmup_dest`` destinations when given),
    then ``reps`` timed runs of each, alternating which path goes first (with
    ``layer_path`` also ``acdc_fast(sparse=False)``, the fast path by whole layers; with
    ``noskip`` also the component path without the shared-prefix skip)."""
    algos = ((["fast"] if skip_ref else ["reference", "fast"]) + (["layers"] if layer_path else [])
             + (["noskip"] if noskip else []))  # fmt: skip
    for algo in algos:  # warm-up: allocator, kernels, lazy caches of the model
        run_once(make, algo, threshold, warmup_dest if warmup_dest is not None else max_dest)
    runs: dict[str, list[Run]] = {a: [] for a in algos}
    for r in range(reps):
        for algo in algos if r % 2 == 0 else algos[::-1]:
            runs[algo].append(run_once(make, algo, threshold, max_dest))
    fast, ref, lay = runs["fast"], runs.get("reference", []), runs.get("layers", []) + runs.get("noskip", [])
    identical = None
    if ref:
        identical = all(np.array_equal(x.alive, fast[0].alive) for x in fast + ref + lay)
    elif not all(np.array_equal(x.alive, fast[0].alive) for x in fast + lay):
        identical = False
    last = fast[-1]
    return Row(case, len(last.alive), int(last.alive.sum()), last.tested, ref[-1].fwd if ref else -1, last.fwd,
               ref[-1].layers if ref else -1, last.layers, [x.seconds for x in ref], [x.seconds for x in fast],
               identical, _peak_mb(make.device), last.k_max, last.fast_path,
               [x.seconds for x in runs.get("layers", [])], [x.seconds for x in runs.get("noskip", [])])  # fmt: skip


class Fresh:
    """Fresh Patchers on one patcher's model, graph, data, ablation and metric (the first
    call returns that patcher itself), so that no timed run starts from another's caches."""

    def __init__(self, patcher: Patcher) -> None:
        self.patcher: Patcher | None = patcher
        self.model, self.graph, self.data = patcher.model, patcher.graph, patcher.data
        self.ablation, self.metric = patcher.ablation, patcher.metric_fn
        self.device = patcher.device
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device)

    def __call__(self) -> Patcher:
        if self.patcher is not None:
            p, self.patcher = self.patcher, None
            return p
        return Patcher(self.model, self.graph, self.data, ablation=self.ablation, metric=self.metric)


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


def smollm2_patcher(device: str, dtype: torch.dtype, prompts: int, task_name: str) -> tuple[Patcher, float]:
    """SmolLM2-135M (``circuitdag.load_model("smollm2-135m")``, weights from
    ~/.cache/circuitdag/smollm2-135m) on the ``pronoun`` task's data, plain graph, the
    task's default metric and ablation; ``prompts`` of its 100 prompts (``load_data``)."""
    from circuitdag import load_model

    task = get_task(task_name)
    model = load_model("smollm2-135m", device=device, dtype=dtype)
    data = load_data(task, model, n_prompts=prompts)
    metric = task.metric() if task.default_metric == "task" else task.default_metric
    patcher = Patcher(model, Graph(spec_of(model)), data, ablation=task.default_ablation, metric=metric)
    return patcher, task.default_threshold


#: Tasks whose default model is SmolLM2: their reference would take days; run them by name
#: (``--only ioi``) or use the ``--smollm2-destinations`` case.
BIG_DEFAULT_MODELS = ("smollm2-135m",)


def _commit() -> str:
    """The commit circuitdag is measured at, with '+changes' when circuitdag/ differs from it."""
    root = Path(__file__).resolve().parent.parent
    try:
        head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=root, capture_output=True, text=True,
                              check=True).stdout.strip()  # fmt: skip
        dirty = subprocess.run(["git", "status", "--porcelain", "--", "circuitdag"], cwd=root, capture_output=True,
                               text=True, check=True).stdout.strip() != ""  # fmt: skip
    except (OSError, subprocess.CalledProcessError):
        return "an unknown commit"
    return head + (" +changes" if dirty else "")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--dtype", default="float64", choices=("float32", "float64"))
    ap.add_argument("--threads", type=int, default=1, help="torch CPU threads (1 is fastest for tiny models)")
    ap.add_argument(
        "--only", nargs="*", help="run the cases whose label contains one of these (default: all)"
    )
    ap.add_argument(
        "--reps", type=int, default=3, help="timed runs of each path per case (best of N; default 3)"
    )
    ap.add_argument(
        "--big-reps", type=int, default=1, help="timed runs per path for the GPT-2 and SmolLM2 cases"
    )
    ap.add_argument(
        "--toy", action="store_true", help="add a random 4-layer 8-head toy model (dense circuit)"
    )
    ap.add_argument("--gpt2", action="store_true", help="add the GPT-2-small-sized case")
    ap.add_argument("--gpt2-layers", type=int, default=12)
    ap.add_argument("--gpt2-prompts", type=int, default=100)
    ap.add_argument("--gpt2-tokens", type=int, default=16)
    ap.add_argument(
        "--gpt2-destinations",
        type=int,
        default=None,
        help="limit both paths to the first N destinations (CPU)",
    )
    ap.add_argument("--gpt2-threshold", type=float, default=0.01)
    ap.add_argument("--gpt2-fast-only", action="store_true", help="skip the reference on the GPT-2 case")
    ap.add_argument(
        "--smollm2",
        action="store_true",
        help="add the SmolLM2-135M pronoun case (plain, float32; also implied by --smollm2-destinations)",
    )
    ap.add_argument(
        "--smollm2-destinations",
        type=int,
        default=None,
        help="limit the SmolLM2 case to the first N destinations ACDC visits (default 40: logits, layers 29-27)",
    )
    ap.add_argument(
        "--smollm2-prompts",
        type=int,
        default=100,
        help="N of the task's 100 prompts (a seeded subset, as discover --n-prompts)",
    )
    ap.add_argument("--smollm2-task", default="pronoun")
    ap.add_argument(
        "--smollm2-reference",
        action="store_true",
        help="also run the reference on the SmolLM2 case (very slow)",
    )
    ap.add_argument(
        "--positions", action="store_true", help="also run every task position-aware (cases labelled +pos)"
    )
    ap.add_argument(
        "--layer-path",
        action="store_true",
        help="also time acdc_fast(sparse=False) (the fast path without component-level recomputation)",
    )
    ap.add_argument(
        "--prefix-skip-off",
        action="store_true",
        help="also time the component path recomputing the positions where clean and corrupted prompts agree",
    )
    ap.add_argument("--json", help="also write the rows as JSON here")
    ap.add_argument(
        "--out", help="also write the printed table here (e.g. benchmarks/results/acdc_speed.txt)"
    )
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    dtype = getattr(torch, args.dtype)
    lines: list[str] = []

    def emit(*text: str, flush: bool = False) -> None:
        print(*text, flush=flush)
        lines.append(" ".join(text))

    # (label, build, limit to N destinations, skip the reference, big)
    cases: list[tuple[str, Callable[[], tuple[Patcher, float]], int | None, bool, bool]] = []
    for name in task_names():
        task = get_task(name)
        if task.default_model in BIG_DEFAULT_MODELS and not (args.only and name in args.only):
            continue
        is_tracr = name.startswith("tracr-")
        for ablation in ("zero", "resample") if is_tracr else (None,):
            for positions in (False, True) if args.positions else (False,):
                label = (f"{name}/{ablation}" if ablation else name) + ("+pos" if positions else "")

                def build(task=task, ablation=ablation, positions=positions):
                    model = task.load_model(device=args.device, dtype=dtype)
                    patcher = prepare(model, task, ablation=ablation, positions=positions)[0]
                    return patcher, task.default_threshold

                cases.append((label, build, None, False, False))
    if args.toy:
        cases.append(("toy-4L8H", lambda: (toy_patcher(dtype, args.device), 0.005), None, False, False))
    if args.gpt2:
        label = f"gpt2-small-random/{args.gpt2_layers}L"
        cases.append((label, lambda: (gpt2_patcher(dtype, args.device, args.gpt2_layers, args.gpt2_prompts,
                                                   args.gpt2_tokens), args.gpt2_threshold),
                      args.gpt2_destinations, args.gpt2_fast_only, True))  # fmt: skip
    if args.smollm2 or args.smollm2_destinations is not None:
        n_dest = args.smollm2_destinations if args.smollm2_destinations is not None else 40
        label = f"smollm2-135m/{args.smollm2_task}/fp32/first{n_dest}"
        cases.append((label, lambda: smollm2_patcher(args.device, torch.float32, args.smollm2_prompts,
                                                     args.smollm2_task),
                      n_dest, not args.smollm2_reference, True))  # fmt: skip

    rows = []
    hdr = (f"{'case':<30} {'edges':>6} {'kept':>5} {'tested':>6} {'fwd ref':>8} {'fwd fast':>8} "
           f"{'layers ref':>10} {'layers fast':>11} {'s ref: best (median-max)':>25} "
           f"{'s fast: best (median-max)':>26} {'speedup':>7} {'s/edge fast':>11} {'s/edge ref':>10} {'same':>5} "
           f"{'Kmax':>5} {'peak MB':>8}")  # fmt: skip
    emit(f"circuitdag at {_commit()}; load average {os.getloadavg()[0]:.2f}; "
         f"device={args.device} dtype={args.dtype} threads={args.threads} reps={args.reps} "
         f"(GPT-2/SmolLM2: {args.big_reps}); a warm-up run of each path first, then alternating runs on "
         "fresh Patchers; seconds of ACDC alone (caches built outside the timer)")  # fmt: skip
    emit("(fwd: hooked forward passes; layers: blocks x candidates on the reference and layer paths, "
         "heads and MLPs recomputed x candidates on the default component path)")
    emit(hdr, flush=True)
    for label, build, n_dest, skip_ref, big in cases:
        if args.only and not any(o in label for o in args.only):
            continue
        try:
            patcher, thr = build()
        except Exception as exc:  # noqa: BLE001 (a zoo task whose model is not shipped yet, ...)
            emit(f"{label:<30} skipped: {exc}", flush=True)
            continue
        # Big cases warm up on their first destination only.
        row = compare(label, Fresh(patcher), thr, max_dest=n_dest, skip_ref=skip_ref,
                      reps=args.big_reps if big else args.reps, warmup_dest=1 if big else None,
                      layer_path=args.layer_path, noskip=args.prefix_skip_off)  # fmt: skip
        del patcher
        rows.append(row)
        same = {True: "yes", False: "NO", None: "-"}[row.identical]
        ref_edge = f"{row.ref_per_edge:.2e}" if row.s_ref else "-"
        emit(f"{row.case:<30} {row.edges:>6} {row.kept:>5} {row.tested:>6} {row.fwd_ref:>8} {row.fwd_fast:>8} "
             f"{row.layers_ref:>10} {row.layers_fast:>11} {spread(row.s_ref):>25} {spread(row.s_fast):>26} "
             f"{row.speedup:>7.1f} {row.fast_per_edge:>11.2e} {ref_edge:>10} {same:>5} {row.k_max:>5} "
             f"{row.peak_mb:>8.0f}", flush=True)  # fmt: skip
        if row.s_layers:
            emit(f"{'':<30} layer path (acdc_fast sparse=False): {spread(row.s_layers)} s, "
                 f"{row.layers_per_edge:.2e} s/edge; the default fast path is "
                 f"{min(row.s_layers) / row.best_fast:.1f}x faster", flush=True)  # fmt: skip
        if row.s_noskip:
            emit(f"{'':<30} without the shared-prefix skip: {spread(row.s_noskip)} s; with it "
                 f"{min(row.s_noskip) / row.best_fast:.2f}x faster", flush=True)  # fmt: skip
    both = [r for r in rows if r.s_ref]
    if both:
        tot_ref = sum(r.best_ref for r in both)
        tot_fast = sum(r.best_fast for r in both)
        speedups = sorted(r.speedup for r in both)
        emit(f"total (best runs): reference {tot_ref:.2f} s, fast {tot_fast:.2f} s, speed-up "
             f"{tot_ref / max(tot_fast, 1e-9):.1f}x (per case {speedups[0]:.1f}x-{speedups[-1]:.1f}x, median "
             f"{statistics.median(speedups):.1f}x); identical on {sum(bool(r.identical) for r in both)}/{len(both)} "
             "cases")  # fmt: skip
    if args.out:
        Path(args.out).write_text(
            "\n".join([shlex.join(["benchmarks/acdc_speed.py", *(argv or sys.argv[1:])]), *lines]) + "\n"
        )
    if args.json:
        with open(args.json, "w") as f:
            json.dump([r.__dict__ | {"speedup": r.speedup, "fast_per_edge": r.fast_per_edge,
                                     "ref_per_edge": r.ref_per_edge, "layers_per_edge": r.layers_per_edge}
                       for r in rows], f, indent=1)  # fmt: skip
    return 0 if all(r.identical is not False for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
