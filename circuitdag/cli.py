"""``circuitdag`` command line: a thin wrapper over the Python API.

Every deliberate error (:class:`~circuitdag.errors.CircuitDagError`) is printed as one
line ``circuitdag: error: ...`` and exits with status 2.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from pathlib import Path
from typing import Any, overload

from circuitdag.errors import CircuitDagError, ConfigError

log = logging.getLogger("circuitdag")

DEFAULT_TASK = "tracr-reverse"
DTYPES = ("float32", "float64")


def _dtype(name: str):
    import torch

    return {"float32": torch.float32, "float64": torch.float64}[name]


def _writable_dir(path: str) -> Path:
    out = Path(path)
    try:
        out.mkdir(parents=True, exist_ok=True)
        probe = out / ".circuitdag-write-test"
        probe.write_text("")
        probe.unlink()
    except OSError as exc:
        raise ConfigError(f"output directory {out} is not writable ({exc.strerror or exc}); choose another --out")
    return out


@overload
def _threshold(text: str) -> float: ...
@overload
def _threshold(text: None) -> None: ...
def _threshold(text: str | None) -> float | None:
    if text is None:
        return None
    try:
        value = float(text)
    except ValueError:
        raise ConfigError(f"--threshold must be a number, got {text!r}") from None
    if not value >= 0:
        raise ConfigError(f"--threshold must be >= 0, got {text}")
    return value


def _load(args: argparse.Namespace) -> tuple[Any, Any]:
    import torch

    from circuitdag.metrics import get_metric
    from circuitdag.models import load_model
    from circuitdag.patching import Ablation
    from circuitdag.tasks import get_task

    threads = getattr(args, "threads", None) or default_threads()
    if threads < 1:
        raise ConfigError(f"--threads must be >= 1, got {threads}")
    torch.set_num_threads(threads)
    log.info("using %d torch threads", threads)
    task = get_task(args.task)
    if args.metric and args.metric != "task":
        get_metric(args.metric)  # fail before loading the model
    if args.ablation:
        Ablation.parse(args.ablation)
    dtype = _dtype(args.dtype)
    with _phase(f"loading {getattr(args, 'model', None) or task.default_model or 'the model'} "
                f"({threads} torch threads)", getattr(args, "quiet", False)):  # fmt: skip
        if getattr(args, "model", None):
            model = load_model(args.model, device=args.device, dtype=dtype)
        else:
            model = task.load_model(device=args.device, dtype=dtype)
    return task, model


def default_threads() -> int:
    """Torch CPU threads when --threads is not given: the cores this process may use, less
    those other processes keep busy right now, at least 1.

    torch's default (one thread per core) oversubscribes a busy machine: on the 2-core
    machine with three other busy threads, a SmolLM2 forward pass took 16.3 s with 2
    threads and 5.4 s with 1 (docs/real-models.md). "Busy right now" is the number of
    runnable threads in ``/proc/loadavg`` (median of 5 samples over 0.2 s, less this
    process), not the 1-minute load average, which still counts a job that just ended."""
    try:
        cores = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # pragma: no cover - not Linux
        cores = os.cpu_count() or 1
    return max(1, min(cores, cores - _busy_threads()))


def _busy_threads() -> int:
    import statistics
    import time

    samples = []
    try:
        for _ in range(5):
            with open("/proc/loadavg") as f:
                running = int(f.read().split()[3].split("/")[0])
            samples.append(running - 1)  # this process is running
            time.sleep(0.05)
        return max(0, int(statistics.median(samples)))
    except (OSError, ValueError, IndexError):  # pragma: no cover - not Linux
        try:
            return round(os.getloadavg()[0])
        except OSError:
            return 0


def cmd_tasks(args: argparse.Namespace) -> int:
    from circuitdag.tasks import all_tasks

    rows = [(t.name, t.default_model or "-", "yes" if t.has_ground_truth else "no", t.description)
            for t in all_tasks()]  # fmt: skip
    if args.json:
        print(json.dumps([dict(zip(("name", "default_model", "ground_truth", "description"), r)) for r in rows]))
        return 0
    w = max([len(r[0]) for r in rows] + [4])
    wm = max([len(r[1]) for r in rows] + [5])
    print(f"{'TASK':<{w}}  {'MODEL':<{wm}}  TRUTH  DESCRIPTION")
    for name, model, truth, desc in rows:
        print(f"{name:<{w}}  {model:<{wm}}  {truth:<5}  {desc}")
    return 0


def cmd_discover(args: argparse.Namespace) -> int:
    from circuitdag.acdc import ALGORITHMS, parse_prefilter, prepare, run_acdc
    from circuitdag.attribution import attribution_circuit

    out = _writable_dir(args.out or f"runs/{args.task}")
    threshold = _threshold(args.threshold)
    attribution = args.algorithm not in ALGORITHMS
    if attribution and args.prefilter:
        raise ConfigError("--prefilter goes with --algorithm acdc; an attribution circuit is already a prefilter")
    if not attribution and args.edges is not None:
        raise ConfigError("--edges sets the size of an attribution circuit (--algorithm eap or eap-ig); ACDC uses "
                          "--threshold, and a prefilter's size goes in --prefilter eap-ig:N")
    if args.edges is not None and args.edges < 0:
        raise ConfigError(f"--edges must be >= 0, got {args.edges}")
    if args.batch_size is not None and args.batch_size < 1:
        raise ConfigError(f"--batch-size must be >= 1, got {args.batch_size}")
    if attribution and args.edges is not None and threshold is not None:
        raise ConfigError("give either --edges N or --threshold X for an attribution circuit, not both")
    parse_prefilter(args.prefilter)  # fail before loading the model
    if args.ig_steps < 1:
        raise ConfigError(f"--ig-steps must be >= 1, got {args.ig_steps}")
    task, model = _load(args)
    with _phase("caching the clean and corrupted runs", args.quiet):
        patcher, meta = prepare(model, task, metric=args.metric, ablation=args.ablation, seed=args.seed,
                                positions=args.positions)  # fmt: skip
    meta.update(_run_facts(args))
    if attribution:
        n_edges = args.edges
        if n_edges is None and threshold is None:
            n_edges = default_attribution_edges(patcher.graph.n_edges)
        circuit = attribution_circuit(patcher, args.algorithm, args.ig_steps, n_edges=n_edges, threshold=threshold,
                                      batch_size=args.batch_size, progress=not args.quiet, meta=meta)  # fmt: skip
    else:
        threshold = task.default_threshold if threshold is None else threshold
        circuit = run_acdc(patcher, threshold, algorithm=args.algorithm, progress=not args.quiet,
                           checkpoint=out / "checkpoint.json", resume=args.resume, k_max=args.k_max,
                           checkpoint_every=args.checkpoint_every, meta=meta, prefilter=args.prefilter,
                           ig_steps=args.ig_steps)  # fmt: skip
    circuit.meta["stats"]["peak_memory_gb"] = round(peak_memory_gb(), 3)
    circuit.save(out / "circuit.json")
    circuit.to_svg(out / "circuit.svg")
    (out / "checkpoint.json").unlink(missing_ok=True)
    f = circuit.faithfulness()
    used, total = circuit.head_positions()
    st = circuit.meta["stats"]
    pre = circuit.meta.get("prefilter")
    print(
        f"{task.name} ({circuit.meta['algorithm']}"
        + (f", prefilter {pre['method']}:{pre['edges']}: ACDC tested {pre['tested']}, kept {pre['kept']}" if pre else "")
        + f"): {circuit.n_edges}/{circuit.graph.n_edges} edges, {len(circuit.node_names)} nodes, "
        f"metric {circuit.meta['metric']} full={circuit.meta['metric_full']:.4g} "
        f"circuit={circuit.meta['metric_circuit']:.4g}"
        + (f" faithfulness={f:.3f}" if f is not None else "")
        + (f", {used}/{total} (head, position) pairs" if circuit.graph.positions is not None else "")
        + f", {st['seconds']:.1f}s, peak memory {st['peak_memory_gb']:.2f} GB -> {out}/circuit.json, {out}/circuit.svg"
    )
    return 0


def default_attribution_edges(n_edges: int) -> int:
    """Edges an attribution circuit keeps without --edges or --threshold: 1% of the graph
    (a point of MIB's grid), at least 10."""
    return min(n_edges, max(10, round(0.01 * n_edges)))


def peak_memory_gb() -> float:
    """Peak resident memory of this process (GB; Linux and macOS)."""
    import resource

    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return rss / (1 << 30) if sys.platform == "darwin" else rss / (1 << 20)


def _run_facts(args: argparse.Namespace) -> dict[str, Any]:
    """Settings of this process a result should record."""
    import torch

    return {"dtype": args.dtype, "device": args.device, "threads": torch.get_num_threads()}


class _phase:
    """Logs a slow step with its duration (a bar where the step has its own)."""

    def __init__(self, what: str, quiet: bool) -> None:
        self.what, self.quiet = what, quiet

    def __enter__(self) -> None:
        import time

        self.t0 = time.perf_counter()
        if not self.quiet:
            print(f"circuitdag: {self.what} ...", file=sys.stderr, flush=True)

    def __exit__(self, *exc: object) -> None:
        import time

        if not self.quiet and exc[0] is None:
            print(f"circuitdag: {self.what}: {time.perf_counter() - self.t0:.1f}s", file=sys.stderr, flush=True)


def cmd_render(args: argparse.Namespace) -> int:
    from circuitdag.io import load_circuit

    circuit = load_circuit(args.circuit)
    out = Path(args.output or Path(args.circuit).with_suffix(".svg"))
    circuit.to_svg(out)
    print(out)
    return 0


def cmd_evaluate(args: argparse.Namespace) -> int:
    from circuitdag.evaluate import summarize, task_truth
    from circuitdag.io import load_circuit
    from circuitdag.tasks import get_task

    circuit = load_circuit(args.circuit)
    truth: set[str] | None = None
    ignore: set[str] = set()
    name = circuit.meta.get("task")
    if name:
        try:
            truth, ignore = task_truth(get_task(name), circuit.meta.get("ablation", "resample"))
        except CircuitDagError as exc:
            log.warning("cannot read the ground truth of task %s: %s", name, exc)
    print(json.dumps(summarize(circuit, truth, ignore), indent=1))
    return 0


def cmd_roc(args: argparse.Namespace) -> int:
    from circuitdag.acdc import prepare
    from circuitdag.evaluate import DEFAULT_ROC_THRESHOLDS, roc_sweep, task_truth

    task, model = _load(args)
    patcher, meta = prepare(model, task, metric=args.metric, ablation=args.ablation, seed=args.seed)
    truth, ignore = task_truth(task, patcher.ablation.value)
    if truth is None:
        raise ConfigError(f"task {task.name!r} has no ground truth, so there is no ROC to compute")
    thresholds = [_threshold(t) for t in args.thresholds] if args.thresholds else DEFAULT_ROC_THRESHOLDS
    res = roc_sweep(patcher, truth, ignore, thresholds, meta=meta)
    res = {"task": task.name, "ablation": patcher.ablation.value, "metric": meta["metric"], **res}
    print(json.dumps(res if args.verbose else {k: v for k, v in res.items() if k != "points"}))
    return 0


def _add_run_options(p: argparse.ArgumentParser, task_required: bool = False) -> None:
    p.add_argument("--task", default=None if task_required else DEFAULT_TASK, required=task_required,
                   help=f"task name (see `circuitdag tasks`; default {DEFAULT_TASK})")  # fmt: skip
    p.add_argument("--model", help="model to use instead of the task's default (zoo name, hub name, local dir)")
    p.add_argument("--metric", help="kl, logit_diff, prob, nll, l2 (default: the task's)")
    p.add_argument("--ablation", help="resample, zero or mean (default: the task's)")
    p.add_argument("--device", default="cpu", help="torch device, e.g. cpu or cuda")
    p.add_argument("--dtype", default="float32", choices=DTYPES)
    p.add_argument("--seed", type=int, default=0, help="seed of the task's dataset")
    p.add_argument("--threads", type=int, default=None,
                   help="torch CPU threads (tiny models are fastest with 1; default: the cores not "
                   "already busy, from the load average)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="circuitdag", description="Automatic circuit discovery (ACDC).")
    parser.add_argument("-v", "--verbose", action="store_true", help="log progress details")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("tasks", help="list task plugins")
    p.add_argument("--json", action="store_true")
    p.set_defaults(fn=cmd_tasks)

    p = sub.add_parser("discover", help="find a circuit with ACDC; writes circuit.json and circuit.svg")
    _add_run_options(p)
    p.add_argument("--threshold", help="ACDC threshold (default: the task's); with eap/eap-ig: keep edges "
                   "with |score| >= this")
    p.add_argument("--algorithm", default="acdc", choices=("acdc", "acdc-reference", "eap", "eap-ig"),
                   help="acdc (exact, fast), acdc-reference (exact, slow), eap or eap-ig (attribution: "
                   "the top edges by |score|)")
    p.add_argument("--edges", type=int, default=None,
                   help="eap/eap-ig: keep the N edges with the largest |score| (default: 1%% of the graph)")
    p.add_argument("--ig-steps", type=int, default=5, help="EAP-IG integration steps (default 5)")
    p.add_argument("--prefilter", metavar="METHOD[:N]",
                   help="acdc: score edges with eap or eap-ig first and run exact ACDC on the top N only "
                   "(an approximation; default N 500), e.g. eap-ig:500")
    p.add_argument("--batch-size", type=int, default=None,
                   help="prompts per attribution pass (default: what fits in about 3 GB)")
    p.add_argument("--positions", action="store_true", help="position-aware circuit")
    p.add_argument("--out", help="output directory (default runs/<task>)")
    p.add_argument("--resume", action="store_true", help="continue from <out>/checkpoint.json")
    p.add_argument("--checkpoint-every", type=float, default=30.0, metavar="SECONDS",
                   help="write the checkpoint at most this often (default 30)")
    p.add_argument("--k-max", type=int, default=None,
                   help="most candidate circuits per batch (default: what fits in memory)")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    p.set_defaults(fn=cmd_discover)

    p = sub.add_parser("render", help="draw a circuit.json as SVG")
    p.add_argument("circuit")
    p.add_argument("-o", "--output", help="SVG path (default: next to the JSON)")
    p.set_defaults(fn=cmd_render)

    p = sub.add_parser("evaluate", help="print a circuit's size, metrics and ground-truth precision/recall")
    p.add_argument("circuit")
    p.set_defaults(fn=cmd_evaluate)

    p = sub.add_parser("roc", help="sweep thresholds and print the edge ROC AUC against ground truth")
    _add_run_options(p, task_required=True)
    p.add_argument("--thresholds", nargs="+", help="thresholds to try")
    p.set_defaults(fn=cmd_roc)
    from circuitdag.mib import register_cli as register_curve_cli
    from circuitdag.sweep import register_cli

    register_cli(sub)
    register_curve_cli(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING,
                        format="%(levelname)s %(name)s: %(message)s")  # fmt: skip
    try:
        return args.fn(args)
    except CircuitDagError as exc:
        print(f"circuitdag: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("circuitdag: interrupted; rerun with --resume to continue from the checkpoint", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
