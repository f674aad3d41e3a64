"""``circuitdag`` command line: a thin wrapper over the Python API.

Every deliberate error (:class:`~circuitdag.errors.CircuitDagError`) is printed as one
line ``circuitdag: error: ...`` and exits with status 2.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import sys
from pathlib import Path
from typing import Any, NoReturn, overload

from circuitdag import _options
from circuitdag._options import number
from circuitdag.errors import CircuitDagError, ConfigError

log = logging.getLogger("circuitdag")

DEFAULT_TASK = "tracr-reverse"
DTYPES = ("float32", "float64", "float16", "bfloat16")


def _dtype(name: str):
    import torch

    return getattr(torch, name)


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
def _threshold(text: str, flag: str = ...) -> float: ...
@overload
def _threshold(text: None, flag: str = ...) -> None: ...
def _threshold(text: str | None, flag: str = "--threshold") -> float | None:
    if text is None:
        return None
    try:
        value = float(text)
    except ValueError:
        raise ConfigError(f"{flag} must be a number, got {text!r}") from None
    if not value >= 0:
        raise ConfigError(f"{flag} must be >= 0, got {text}")
    if math.isinf(value):
        raise ConfigError(f"{flag} must be finite, got {text}: an infinite threshold removes every edge")
    return value


def _neuron_layers(text: str | None) -> list[int]:
    """``--neurons 1,2`` -> ``[1, 2]``; a one-line error for anything else."""
    if text is None:
        return []
    try:
        layers = sorted({int(x) for x in text.split(",") if x.strip()})
    except ValueError:
        raise ConfigError(f"--neurons takes MLP layer numbers separated by commas, e.g. 1 or 0,2; got {text!r}") from None
    if not layers or min(layers) < 0:
        raise ConfigError(f"--neurons takes MLP layer numbers >= 0, e.g. 1 or 0,2; got {text!r}")
    return layers


def _task(args: argparse.Namespace) -> Any:
    """The task of a run: ``--prompts FILE`` (with ``--model``) or ``--task NAME``."""
    from circuitdag.tasks import Task, get_task

    prompts = getattr(args, "prompts", None)
    if prompts:
        if args.task:
            raise ConfigError("give either --task NAME or --prompts FILE, not both")
        if not args.model:
            raise ConfigError("--prompts needs --model NAME_OR_DIR, the model the prompts are for "
                              "(a Hugging Face directory, a hub name, a zoo name or smollm2-135m)")  # fmt: skip
        return Task.from_prompts(prompts)
    return get_task(args.task or DEFAULT_TASK)


def _silence_loading_bars() -> None:
    """Turn off the progress bars Hugging Face libraries draw while loading (``-q``)."""
    os.environ["HF_HUB_DISABLE_PROGRESS_BARS"] = "1"
    try:
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()
    except ImportError:  # pragma: no cover - transformers is a dependency
        pass


def _load(args: argparse.Namespace) -> tuple[Any, Any]:
    import torch

    from circuitdag.metrics import resolve_metric
    from circuitdag.models import load_model
    from circuitdag.patching import Ablation
    from circuitdag.tasks._lm import with_prepend_bos

    requested = getattr(args, "threads", None)
    threads = _options.threads(requested, default_threads() if requested is None else 1)
    torch.set_num_threads(threads)
    log.info("using %d torch threads", threads)
    task = _task(args)
    own = task.for_model(args.model) if getattr(args, "model", None) else None  # one of the task's own models
    task = with_prepend_bos(own or task, getattr(args, "prepend_bos", "auto"))
    resolve_metric(task, args.metric)  # fail before loading the model
    _warn_unused_seed(task, args)
    if args.ablation:
        Ablation.parse(args.ablation)
    dtype = _dtype(args.dtype)
    quiet = getattr(args, "quiet", False)
    with _phase(f"loading {getattr(args, 'model', None) or task.default_model or 'the model'} "
                f"({threads} torch threads)", quiet):  # fmt: skip
        if getattr(args, "model", None) and own is None:
            model = load_model(args.model, device=args.device, dtype=dtype)
        else:
            model = task.load_model(device=args.device, dtype=dtype)
    _options.check_n_prompts(model, getattr(args, "n_prompts", None), args.device)
    return task, model


def _warn_unused_seed(task: Any, args: argparse.Namespace) -> None:
    """One line when ``--seed`` cannot change the run: the task's prompts are a fixed list
    (its ``data_uses_seed`` is False) and no ``--n-prompts`` subset is drawn."""
    if getattr(args, "seed", 0) and getattr(args, "n_prompts", None) is None and not getattr(
        task, "data_uses_seed", True
    ):
        log.warning("--seed %d changes nothing: task %s has a fixed list of prompts; the seed only draws the "
                    "subset that --n-prompts asks for", args.seed, task.name)  # fmt: skip


def default_threads() -> int:
    """Torch CPU threads when --threads is not given: the cores this process may use, less
    those other processes keep busy right now, at least 1.

    torch's default (one thread per core) oversubscribes a busy machine: on the 2-core
    machine with three other busy threads, a SmolLM2 forward pass took 16.3 s with 2
    threads and 5.4 s with 1 (docs/real-models.md). "Busy right now" is the number of
    runnable threads in ``/proc/loadavg`` (median of 5 samples over 0.2 s, less this
    process), not the 1-minute load average, which still counts a job that just ended."""
    cores = _options.usable_cores()
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


#: Method options that have a flag of their own on ``discover``; any other goes in ``--option``.
ALGORITHM_FLAGS = ("threshold", "edges", "ig_steps", "prefilter", "batch_size", "k_max")


def _algorithm_options(args: argparse.Namespace) -> dict[str, Any]:
    """The method's options from the command line: the common flags that were given, and
    every ``--option NAME=VALUE`` (a method's own options, typed as the method declares)."""
    given = {"threshold": _threshold(args.threshold), "edges": args.edges, "ig_steps": args.ig_steps,
             "prefilter": args.prefilter, "batch_size": args.batch_size, "k_max": args.k_max}  # fmt: skip
    for item in args.option or []:
        name, sep, value = item.partition("=")
        if not sep or not name:
            raise ConfigError(f"--option takes NAME=VALUE, got {item!r}")
        given[name.strip().replace("-", "_")] = value.strip()
    return {k: v for k, v in given.items() if v is not None}


def _typed(method: Any, options: dict[str, Any]) -> dict[str, Any]:
    """``--option`` values (strings) as the types ``method`` declares for them."""
    kinds = {o.name: o.kind for o in method.options}
    out = {}
    for k, v in options.items():
        if isinstance(v, str) and kinds.get(k) in (int, float):
            try:
                v = kinds[k](v)
            except ValueError:
                raise ConfigError(f"--option {k}={v}: {k} must be a {'whole number' if kinds[k] is int else 'number'}") from None
        out[k] = v
    return out


def cmd_algorithms(args: argparse.Namespace) -> int:
    """List every registered method: name, exact or estimate, size knob, summary, source and
    options (``--json``: the same as a list of objects)."""
    from circuitdag.algorithms import all_algorithms

    methods = all_algorithms()
    if args.json:
        print(json.dumps([{"name": m.name, "exact": m.exact, "size_knob": m.size_knob, "summary": m.summary,
                           "source": m.source, "neurons": m.neurons, "checkpoints": m.checkpoints,
                           "options": [{"name": o.name, "flag": o.flag, "type": o.kind.__name__, "default": o.default,
                                        "minimum": o.minimum, "maximum": o.maximum, "help": o.help}
                                       for o in m.options]} for m in methods]))  # fmt: skip
        return 0
    for m in methods:
        knob = {"threshold": "size: --threshold / --relative-threshold", "edges": "size: --edges"}.get(
            str(m.size_knob), "no size knob")
        print(f"{m.name}  ({'exact' if m.exact else 'estimate'}; {knob})")
        print(f"    {m.summary}")
        if m.source:
            print(f"    source: {m.source}")
        for o in m.options:
            default = "" if o.default is None else f" (default {o.default})"
            how = o.flag if o.name in ALGORITHM_FLAGS else f"--option {o.name}="
            print(f"    {how} {o.kind.__name__.upper()}: {o.help}{default}")
    return 0


def cmd_discover(args: argparse.Namespace) -> int:
    from circuitdag.algorithms import get_algorithm
    from circuitdag.discovery import run_algorithm
    from circuitdag.prepare import prepare

    out = _writable_dir(args.out or (f"runs/{Path(args.prompts).stem}" if args.prompts else f"runs/{args.task or DEFAULT_TASK}"))
    method = get_algorithm(args.algorithm)
    relative = _threshold(args.relative_threshold, "--relative-threshold")
    options = _typed(method, _algorithm_options(args))
    if relative is not None and "threshold" in options:
        raise ConfigError("give either --threshold (metric units) or --relative-threshold (a fraction of the "
                          "full-vs-corrupted metric gap), not both")  # fmt: skip
    if relative is not None and "threshold" not in method.option_names():
        raise ConfigError(f"--relative-threshold does not apply to --algorithm {method.name} (it has no threshold)")
    method.check(options)  # an option the method does not take, before loading the model
    neurons = _neuron_layers(args.neurons)
    if neurons and args.positions:
        raise ConfigError("--neurons and --positions cannot be combined yet; drop one")
    if neurons and not method.neurons:
        raise ConfigError(f"--neurons works with --algorithm acdc (exact); {method.name} does not score neurons")
    if neurons and args.prefilter:
        raise ConfigError("--neurons cannot be combined with --prefilter: EAP and EAP-IG do not score neurons "
                          "yet; drop --prefilter (ACDC on neuron nodes is exact)")
    checkpoint = out / "checkpoint.json"
    if args.resume and not checkpoint.exists() and method.checkpoints:
        print(f"circuitdag: --resume: there is no {checkpoint} to resume from (a run deletes it when it "
              f"finishes, and writes the first one after --checkpoint-every={args.checkpoint_every:g}s); "
              "starting from the beginning", file=sys.stderr)  # fmt: skip
    task, model = _load(args)
    with _phase("caching the clean and corrupted runs", args.quiet):
        patcher, meta = prepare(model, task, metric=args.metric, ablation=args.ablation, seed=args.seed,
                                positions=args.positions, n_prompts=args.n_prompts, neurons=neurons)  # fmt: skip
    meta.update(_run_facts(args))
    # Whether the circuit was found on the task's own model, where its ground truth applies.
    meta["task_model"] = (not args.model or task.for_model(args.model) is not None
                          or str(meta.get("model")) in task.own_model_names())  # fmt: skip
    if args.model and Path(args.model).is_dir():  # a local directory: recorded so that curve can reload it
        meta["model"] = str(Path(args.model).resolve())
    n_graph = patcher.graph.n_edges
    if "edges" in options:
        options["edges"] = _options.cap("--edges", options["edges"], n_graph, "the graph's edges")
    if options.get("prefilter") and ":" in options["prefilter"]:  # an N given, not the default
        kind, _, count = options["prefilter"].partition(":")
        if count.strip().isdigit():
            options["prefilter"] = f"{kind}:{_options.cap('--prefilter N', int(count), n_graph, 'the graph edges')}"
    if "k_max" in options:
        options["k_max"] = _options.cap_k_max(patcher, options["k_max"])
    if "batch_size" in options:
        options["batch_size"] = _options.cap_batch_size(patcher, options["batch_size"])
    circuit = run_algorithm(patcher, method, meta=meta, task=task, relative_threshold=relative,
                            progress=not args.quiet, checkpoint=checkpoint if method.checkpoints else None,
                            resume=args.resume, checkpoint_every=args.checkpoint_every, **options)  # fmt: skip
    circuit.meta["stats"]["peak_memory_gb"] = round(peak_memory_gb(), 3)
    circuit.save(out / "circuit.json")
    svg = _draw_svg(circuit, out / "circuit.svg", args)
    (out / "checkpoint.json").unlink(missing_ok=True)
    print(summary_line(circuit, task.name, out, svg=svg))
    return 0


def _draw_svg(circuit: Any, path: Path, args: argparse.Namespace) -> bool:
    """Draw ``discover``'s circuit.svg unless ``--no-svg``; whether it was drawn. A drawing
    that fails (graphviz missing, too slow) is a one-line warning: circuit.json is saved."""
    path.unlink(missing_ok=True)  # an earlier run's drawing would not match this circuit.json
    if args.no_svg:
        return False
    try:
        with _phase(f"drawing {path.name} with graphviz", args.quiet):
            circuit.to_svg(path)
    except CircuitDagError as exc:
        print(f"circuitdag: warning: {path.name} not drawn ({exc}); {path.with_suffix('.json')} is saved",
              file=sys.stderr)  # fmt: skip
        return False
    return True


def _num(x: float | None) -> str:
    """A metric value for the summary: 4 significant digits; never rounds a nonzero to 0."""
    return "n/a" if x is None else "0" if x == 0 else f"{x:.4g}"


def summary_line(circuit: Any, task_name: str, out: Path, svg: bool = True) -> str:
    """The one line ``discover`` prints: size, threshold, the three metric values (with what
    they are: every metric is stored as "lower is closer to the full model", so
    ``logit_diff`` and ``prob`` appear negated), faithfulness, time, memory, files."""
    from circuitdag.metrics import STORED_AS

    m = circuit.meta
    f = circuit.faithfulness()
    used, total = circuit.head_positions()
    st = m["stats"]
    pre = m.get("prefilter")
    thr = m.get("threshold")
    rel = m.get("relative_threshold")
    quantity = STORED_AS.get(m["metric"], "the task's metric")
    return (
        f"{task_name} ({m['algorithm']}"
        + (f", prefilter {pre['method']}:{pre['edges']}: ACDC tested {pre['tested']}, kept {pre['kept']}" if pre else "")
        + f"): {circuit.n_edges}/{circuit.graph.n_edges} edges, {len(circuit.node_names)} nodes"
        + (f", threshold {_num(thr)}" if thr is not None else "")
        + (f" (= {rel:g} x the metric gap)" if rel is not None else "")
        + f"; metric {m['metric']} = {quantity}, lower is closer to the full model: full {_num(m['metric_full'])}, "
        f"circuit {_num(m['metric_circuit'])}, corrupted {_num(m.get('metric_corrupted'))}"
        + (f"; faithfulness {f:.3f}" if f is not None else "")
        + (f", {used}/{total} (head, position) pairs" if circuit.graph.positions is not None else "")
        + f"; {st['seconds']:.1f}s, peak memory {st['peak_memory_gb']:.2f} GB -> {out}/circuit.json"
        + (f", {out}/circuit.svg" if svg else "")
    )


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

    if args.max_edges < 0:
        raise ConfigError(f"--max-edges must be >= 0 (0 draws every edge), got {args.max_edges}")
    circuit = load_circuit(args.circuit)
    out = Path(args.output or Path(args.circuit).with_suffix(".svg"))
    circuit.to_svg(out, max_edges=args.max_edges, timeout=args.timeout, json_path=args.circuit)
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
            task = get_task(name)
            model = str(circuit.meta.get("model"))
            own = task.for_model(model)  # e.g. reversal's compiled model
            task = own or task
            if own is None and getattr(task, "has_ground_truth", False) and circuit.meta.get("task_model") is False:
                log.warning("%s: the ground truth of task %s describes its own model (%s), not %s: no "
                            "precision/recall", args.circuit, name, task.default_model, model)  # fmt: skip
            else:
                truth, ignore = task_truth(task, circuit.meta.get("ablation", "resample"))
        except CircuitDagError as exc:
            log.warning("cannot read the ground truth of task %s: %s", name, exc)
    print(json.dumps(summarize(circuit, truth, ignore), indent=1))
    return 0


def cmd_roc(args: argparse.Namespace) -> int:
    from circuitdag.evaluate import DEFAULT_ROC_THRESHOLDS, plot_roc, roc_sweep, task_truth
    from circuitdag.prepare import prepare

    task, model = _load(args)
    patcher, meta = prepare(model, task, metric=args.metric, ablation=args.ablation, seed=args.seed,
                            n_prompts=args.n_prompts)  # fmt: skip
    truth, ignore = task_truth(task, patcher.ablation.value)
    if truth is None:
        raise ConfigError(f"task {task.name!r} has no ground truth, so there is no ROC to compute")
    thresholds = [_threshold(t) for t in args.thresholds] if args.thresholds else DEFAULT_ROC_THRESHOLDS
    res = roc_sweep(patcher, truth, ignore, thresholds, meta=meta)
    res = {"task": task.name, "ablation": patcher.ablation.value, "metric": meta["metric"], **res}
    if args.plot:
        res["plot"] = str(plot_roc(res, args.plot, f"{task.name}: edge ROC ({meta['metric']}, "
                                                    f"{patcher.ablation.value} ablation)"))  # fmt: skip
    # One point per line: the AUC first, then (threshold, edges, fpr, tpr) of every run.
    head = {k: v for k, v in res.items() if k != "points"}
    rows = ",\n  ".join(json.dumps(p) for p in res["points"])
    print(json.dumps(head)[:-1] + ', "points": [\n  ' + rows + "\n]}")
    return 0


def _add_run_options(p: argparse.ArgumentParser, task_required: bool = False) -> None:
    if task_required:
        p.add_argument("--task", required=True, help="task name (see `circuitdag tasks`)")
    else:
        p.add_argument("--task", default=None, help=f"task name (see `circuitdag tasks`; default {DEFAULT_TASK})")
    p.add_argument("--model", help="model to use instead of the task's default (zoo name, hub name, local dir)")
    p.add_argument("--metric", help="kl, logit_diff, prob, nll, l2, or task (the task's own metric); "
                   "default: the task's")  # fmt: skip
    p.add_argument("--n-prompts", type=number("--n-prompts", int, 1), default=None, metavar="N",
                   help="number of prompts (default: the task's; a task with a fixed list uses a subset drawn "
                   "with --seed)")  # fmt: skip
    p.add_argument("--ablation", help="resample, zero or mean (default: the task's)")
    p.add_argument("--device", default="cpu", help="torch device, e.g. cpu or cuda")
    p.add_argument("--dtype", default="float32", choices=DTYPES)
    p.add_argument("--seed", type=_options.seed(), default=0,
                   help="seed of the task's dataset (default 0); a task with a fixed list of prompts, such as "
                   "pronoun, has the same prompts for every seed unless --n-prompts draws a subset")
    p.add_argument("--prepend-bos", choices=("auto", "yes", "no"), default="auto",
                   help="start prompts with the tokenizer's BOS token (default auto: decided from the tokenizer "
                   "and model, see docs/tasks.md; recorded in circuit.json)")
    p.add_argument("--threads", type=number("--threads", int, 1), default=None,
                   help="torch CPU threads (tiny models are fastest with 1; default: the cores not "
                   "already busy, from the load average; capped at the cores this process may use)")


class _Parser(argparse.ArgumentParser):
    """argparse with the CLI's one-line errors (its subcommands' parsers are of this class
    too): ``circuitdag discover: error: argument --k-max: ...; see circuitdag discover --help``."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message}; see {self.prog} --help\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="circuitdag", description="Automatic circuit discovery (ACDC).")
    parser.add_argument("-v", "--verbose", action="store_true", help="log progress details")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("tasks", help="list task plugins")
    p.add_argument("--json", action="store_true")
    p.set_defaults(fn=cmd_tasks)

    p = sub.add_parser("algorithms", help="list discovery methods (built-in and plugins) and their options")
    p.add_argument("--json", action="store_true")
    p.set_defaults(fn=cmd_algorithms)

    p = sub.add_parser("discover", help="find a circuit (ACDC by default, or --algorithm); writes circuit.json "
                       "and circuit.svg")
    _add_run_options(p)
    p.add_argument("--prompts", metavar="FILE",
                   help="your own prompts instead of --task: a .jsonl/.json/.csv/.tsv file with clean, corrupted, "
                   "correct and optionally wrong, positions (needs --model; see docs/own-prompts.md)")
    p.add_argument("--threshold", help="ACDC threshold in metric units (default: the task's); with eap/eap-ig: "
                   "keep edges with |score| >= this")
    p.add_argument("--relative-threshold", metavar="R",
                   help="threshold = R x |metric_corrupted - metric_full|, the same fraction of the metric's "
                   "scale on any model (see docs/thresholds.md)")
    p.add_argument("--algorithm", default="acdc", metavar="NAME",
                   help="any method `circuitdag algorithms` lists: acdc (exact, fast; the default), acdc-reference "
                   "(exact, slow), eap or eap-ig (attribution: the top edges by |score|), or a plugin's")
    p.add_argument("--option", action="append", metavar="NAME=VALUE",
                   help="an option of the method that has no flag of its own (repeatable; see circuitdag "
                   "algorithms)")
    p.add_argument("--edges", type=number("--edges", int, 0), default=None,
                   help="eap/eap-ig: keep the N edges with the largest |score| (default: 1%% of the graph)")
    p.add_argument("--ig-steps", default=None,
                   type=number("--ig-steps", int, 1, _options.MAX_IG_STEPS, why="each step is a forward and "
                               "backward pass over every prompt; EAP-IG and MIB use 5"),
                   help=f"EAP-IG integration steps (default 5, at most {_options.MAX_IG_STEPS})")
    p.add_argument("--prefilter", metavar="METHOD[:N]",
                   help="acdc: score edges with eap or eap-ig first and run exact ACDC on the top N only "
                   "(an approximation; default N 500), e.g. eap-ig:500")
    p.add_argument("--batch-size", type=number("--batch-size", int, 1), default=None,
                   help="prompts per attribution pass (default: what fits in about 3 GB; capped at the prompts "
                   "and at what fits in free memory)")
    p.add_argument("--positions", action="store_true", help="position-aware circuit")
    p.add_argument("--neurons", metavar="LAYER[,LAYER]",
                   help="split these MLP layers into one node per neuron (acdc only; docs/neurons.md)")
    p.add_argument("--out", help="output directory (default runs/<task>)")
    p.add_argument("--resume", action="store_true",
                   help="continue from <out>/checkpoint.json (it exists only while a run is unfinished)")
    p.add_argument("--checkpoint-every", type=number("--checkpoint-every", float, 0, infinite=True), default=30.0,
                   metavar="SECONDS",
                   help="write the checkpoint at most this often (default 30)")
    p.add_argument("--k-max", type=number("--k-max", int, 1), default=None,
                   help="most candidate circuits per batch (default: what fits in memory; capped at the most "
                   "edges into one node, and at what fits in memory)")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bars or phase messages")
    p.add_argument("--no-svg", action="store_true",
                   help="write circuit.json only, no circuit.svg (draw it later with circuitdag render)")
    p.set_defaults(fn=cmd_discover)

    from circuitdag.render import DOT_TIMEOUT_S, MAX_EDGES

    p = sub.add_parser("render", help="draw a circuit.json as SVG")
    p.add_argument("circuit")
    p.add_argument("-o", "--output", help="SVG path (default: next to the JSON)")
    p.add_argument("--max-edges", type=int, default=MAX_EDGES, metavar="N",
                   help=f"draw at most the N largest edges by |score| (default {MAX_EDGES}; 0: every edge, "
                   "which graphviz may take minutes to lay out)")
    p.add_argument("--timeout", default=DOT_TIMEOUT_S, metavar="SECONDS",
                   type=number("--timeout", float, 0, 1e6, why="about 11 days; 0 means no limit"),
                   help=f"stop graphviz after this long (default {DOT_TIMEOUT_S:g}; 0: no limit)")
    p.set_defaults(fn=cmd_render)

    p = sub.add_parser("evaluate", help="print a circuit's size, metrics and ground-truth precision/recall")
    p.add_argument("circuit")
    p.set_defaults(fn=cmd_evaluate)
    from circuitdag.tracr_compile import register_cli as register_tracr_cli  # tracr compile

    register_tracr_cli(sub)

    p = sub.add_parser("roc", help="sweep thresholds; print the edge ROC points and AUC against ground truth")
    _add_run_options(p, task_required=True)
    p.add_argument("--thresholds", nargs="+", help="thresholds to try (default: 0 and 25 from 1e-5 to 10)")
    p.add_argument("--plot", metavar="FILE.svg", help="also draw the ROC curve to this SVG file")
    p.set_defaults(fn=cmd_roc)
    from circuitdag.export import register_cli as register_export_cli
    from circuitdag.mib import register_cli as register_curve_cli
    from circuitdag.sweep import register_cli

    register_cli(sub, _add_run_options)
    register_curve_cli(sub)
    register_export_cli(sub)
    from circuitdag.views import register_cli as register_views_cli  # explore, activations

    register_views_cli(sub)
    from circuitdag.heads import register_cli as register_heads_cli

    register_heads_cli(sub)
    from circuitdag.compare import register_cli as register_compare_cli

    register_compare_cli(sub)
    from circuitdag.neurons.command import register_cli as register_neurons_cli  # the " an" neuron method

    register_neurons_cli(sub, _add_run_options, _load)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    try:
        args = parser.parse_args(argv)  # a numeric option's type raises ConfigError
        logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING,
                            format="%(levelname)s %(name)s: %(message)s")  # fmt: skip
        if getattr(args, "quiet", False):  # every command's -q, curve and sweep included
            _silence_loading_bars()
        return args.fn(args)
    except CircuitDagError as exc:
        print(f"circuitdag: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("circuitdag: interrupted; rerun with --resume to continue from the checkpoint", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
