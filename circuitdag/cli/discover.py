"""``circuitdag discover`` (find a circuit with any registered method) and ``circuitdag
roc`` (ACDC at many thresholds against a task's ground truth)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from circuitdag import _options
from circuitdag._options import DEFAULT_TASK, number
from circuitdag.cli._common import add_run_options, load, name_values, phase, threshold, writable_dir
from circuitdag.errors import CircuitDagError, ConfigError

#: The hypothesis tests ``--tests`` runs (:data:`circuitdag.hypothesis.TESTS`, repeated here so
#: that building the parser imports nothing outside the standard library; a test checks).
TRUST_TESTS = ("equivalence", "independence", "minimality", "sufficiency")
#: Method options that have a flag of their own on ``discover``; any other goes in ``--option``.
ALGORITHM_FLAGS = ("threshold", "edges", "ig_steps", "prefilter", "batch_size", "k_max")


def register(sub: Any) -> None:
    p = sub.add_parser("discover", help="find a circuit (ACDC by default, or --algorithm); writes circuit.json "
                       "and circuit.svg")
    add_run_options(p)
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
                   help="split these MLP layers into one node per neuron (methods that score neurons: "
                   "acdc, acdc-reference, ...; docs/neurons.md)")
    p.add_argument("--out", help="output directory (default runs/<task>)")
    p.add_argument("--resume", action="store_true",
                   help="continue from <out>/checkpoint.json and the finished --bootstrap resamples in "
                   "<out>/bootstrap.partial.jsonl (they exist only while a run is unfinished)")
    p.add_argument("--checkpoint-every", type=number("--checkpoint-every", float, 0, infinite=True), default=30.0,
                   metavar="SECONDS",
                   help="write the checkpoint at most this often (default 30)")
    p.add_argument("--k-max", type=number("--k-max", int, 1), default=None,
                   help="most candidate circuits per batch (default: what fits in memory; capped at the most "
                   "edges into one node, and at what fits in memory)")
    p.add_argument("--holdout", metavar="FRACTION", type=number("--holdout", float, 0, 1),
                   help="hold out this fraction of the prompts (seeded split) and report faithfulness on them too "
                   "(default: the task's own held-out prompts, or another seed's for generated tasks; none for a "
                   "fixed list; 0: none; see docs/evaluation.md)")
    p.add_argument("--bootstrap", metavar="B", type=number("--bootstrap", int, 2, 10_000),
                   help="rerun the method on B resamples of the prompts: per-edge inclusion frequency, intervals on "
                   "faithfulness, stability (about B x the run's time)")
    p.add_argument("--storage", metavar="URL",
                   help="with --bootstrap: run the resamples as trials of an Optuna study in this storage "
                   "(sqlite:///FILE or postgresql://...), shared by `circuitdag sweep-worker --storage URL --study "
                   "NAME` processes on other machines (docs/evaluation.md)")
    p.add_argument("--study", metavar="NAME",
                   help="with --storage: the bootstrap study's name (default: a digest of the run and circuit, so "
                   "the same command continues its study)")
    p.add_argument("--verify-top", metavar="N", type=number("--verify-top", int, 1),
                   help="measure the exact single-edge effect of the top N edges and of the N just below the cut "
                   "(for estimated scores: eap, eap-ig)")
    p.add_argument("--tests", nargs="*", metavar="TEST", choices=TRUST_TESTS,
                   help="hypothesis tests of the circuit (Shi et al. 2024): equivalence, independence, minimality, "
                   "sufficiency (no name: all four)")
    p.add_argument("--test-option", action="append", metavar="NAME=VALUE",
                   help="an option of the tests (repeatable): epsilon (equivalence, 0.1), permutations "
                   "(independence, 1000), q and references (minimality, 0.5 and 20), circuits (sufficiency, 100)")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bars or phase messages")
    p.add_argument("--no-svg", action="store_true",
                   help="write circuit.json only, no circuit.svg (draw it later with circuitdag render)")
    p.set_defaults(fn=cmd_discover)

    p = sub.add_parser("roc", help="sweep thresholds; print the edge ROC points and AUC against ground truth")
    add_run_options(p, task_required=True)
    p.add_argument("--thresholds", nargs="+", help="thresholds to try (default: 0 and 25 from 1e-5 to 10)")
    p.add_argument("--plot", metavar="FILE.svg", help="also draw the ROC curve to this SVG file")
    p.set_defaults(fn=cmd_roc)


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


def _algorithm_options(args: argparse.Namespace) -> dict[str, Any]:
    """The method's options from the command line: the common flags that were given, and
    every ``--option NAME=VALUE`` (a method's own options, typed as the method declares)."""
    given = {"threshold": threshold(args.threshold), "edges": args.edges, "ig_steps": args.ig_steps,
             "prefilter": args.prefilter, "batch_size": args.batch_size, "k_max": args.k_max}  # fmt: skip
    flags = {k for k, v in given.items() if v is not None}
    for key, value in name_values(args.option):
        if key in flags:
            raise ConfigError(f"{key} is given twice (--{key.replace('_', '-')} or --option {key}= once, not both)")
        flags.add(key)
        given[key] = value
    return {k: v for k, v in given.items() if v is not None}


def cmd_discover(args: argparse.Namespace) -> int:
    from circuitdag.algorithms import all_algorithms, get_algorithm
    from circuitdag.discovery import run_algorithm
    from circuitdag.prepare import prepare

    out = writable_dir(args.out or (f"runs/{Path(args.prompts).stem}" if args.prompts else f"runs/{args.task or DEFAULT_TASK}"))
    for name in ("circuit.json", "circuit.svg", "checkpoint.json", "bootstrap.partial.jsonl"):  # refused now, not after the search
        if (out / name).is_dir():
            raise ConfigError(f"{out / name} is a directory, where discover writes its {name}; move it out of the "
                              "way or choose another --out")  # fmt: skip
    method = get_algorithm(args.algorithm)
    relative = threshold(args.relative_threshold, "--relative-threshold")
    options = _algorithm_options(args)  # --option values are strings: the method's check types them
    if relative is not None and "threshold" in options:
        raise ConfigError("give either --threshold (metric units) or --relative-threshold (a fraction of the "
                          "full-vs-corrupted metric gap), not both")  # fmt: skip
    if relative is not None and "threshold" not in method.option_names():
        raise ConfigError(f"--relative-threshold does not apply to --algorithm {method.name} (it has no threshold)")
    checked = method.check(options)  # an option the method does not take, before loading the model
    options = {k: checked[k] for k in options}  # as the method types them
    if args.positions and not method.positions:
        raise ConfigError(f"--algorithm {method.name} scores plain graphs only; drop --positions")
    if (args.storage or args.study) and not args.bootstrap:
        raise ConfigError("--storage and --study share bootstrap resamples; give --bootstrap B too")
    if args.study and not args.storage:
        raise ConfigError("--study names a bootstrap study in --storage URL; give --storage too")
    args.test_options = parse_test_options(args.test_option, _tests(args))  # refused now, not after the search
    if getattr(args, "verify_top", None):
        check_verify_top(method)
    neurons = _neuron_layers(args.neurons)
    if neurons and args.positions:
        raise ConfigError("--neurons and --positions cannot be combined yet; drop one")
    if neurons and not method.neurons:
        able = [m.name for m in all_algorithms() if m.neurons]
        raise ConfigError(f"--algorithm {method.name} does not score neurons; --neurons works with "
                          f"{', '.join(able) or 'no registered method'}")  # fmt: skip
    if neurons and args.prefilter:
        raise ConfigError("--neurons cannot be combined with --prefilter: EAP and EAP-IG do not score neurons "
                          "yet; drop --prefilter (ACDC on neuron nodes is exact)")
    checkpoint = out / "checkpoint.json"
    args.checkpoint_path = checkpoint if method.checkpoints else None  # what an interruption can resume from
    # the finished resamples of an in-process bootstrap (circuitdag.bootstrap_journal): --resume continues them
    args.bootstrap_journal = out / "bootstrap.partial.jsonl" if args.bootstrap and not args.storage else None
    if args.resume and not checkpoint.exists() and method.checkpoints:
        print(f"circuitdag: --resume: there is no {checkpoint} to resume from (a run deletes it when it "
              f"finishes, and writes the first one after --checkpoint-every={args.checkpoint_every:g}s); "
              "starting from the beginning", file=sys.stderr)  # fmt: skip
    elif args.resume and method.checkpoints and args.threads is None:
        from circuitdag.checkpoint import checkpoint_threads

        args.threads = checkpoint_threads(checkpoint)  # the interrupted run's floats (docs/reproducibility.md)
        if args.threads is not None and not args.quiet:
            print(f"circuitdag: --resume: {args.threads} torch threads, as the interrupted run "
                  "(give --threads to choose)", file=sys.stderr)  # fmt: skip
    elif args.resume and not method.checkpoints and not args.bootstrap_journal and not args.storage:
        keep = ", ".join(m.name for m in all_algorithms() if m.checkpoints)
        print(f"circuitdag: --resume: --algorithm {method.name} keeps no checkpoint (these do: {keep}; and "
              "--bootstrap's resamples); running it from the beginning", file=sys.stderr)  # fmt: skip
    clock = _Clock()
    with clock("load"):
        task, model = load(args)
    with phase("caching the clean and corrupted runs", args.quiet), clock("prepare"):
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
    with clock("heldout_prepare"):
        patcher, heldout, held_patcher = _heldout(args, task, model, patcher, meta)
    with clock("search_and_record"):
        circuit = run_algorithm(patcher, method, meta=meta, task=task, relative_threshold=relative,
                                progress=not args.quiet, checkpoint=checkpoint if method.checkpoints else None,
                                resume=args.resume, checkpoint_every=args.checkpoint_every, **options)  # fmt: skip
    with clock("assess"):
        _assess(args, circuit, patcher, heldout, held_patcher, method, options, relative)
    circuit.meta["stats"]["peak_memory_gb"] = round(peak_memory_gb(), 3)
    circuit.meta["stats"]["phase_seconds"] = clock.seconds  # where the whole command's time went
    circuit.meta["stats"]["phase_cpu_seconds"] = clock.cpu
    circuit.save(out / "circuit.json")
    svg = _draw_svg(circuit, out / "circuit.svg", args)
    (out / "checkpoint.json").unlink(missing_ok=True)
    if args.bootstrap_journal is not None:  # circuit.json holds the bootstrap now
        args.bootstrap_journal.unlink(missing_ok=True)
    print(summary_line(circuit, task.name, out, svg=svg))
    return 0


class _Clock:
    """Wall seconds (``seconds``) and the process's CPU seconds (``cpu``) of named steps
    (``with clock("name"): ...``), rounded to 0.1 ms."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}
        self.cpu: dict[str, float] = {}

    def __call__(self, name: str) -> Any:
        import contextlib
        import time

        @contextlib.contextmanager
        def timed() -> Any:
            t0, c0 = time.perf_counter(), time.process_time()
            try:
                yield
            finally:
                self.seconds[name] = round(self.seconds.get(name, 0.0) + time.perf_counter() - t0, 4)
                self.cpu[name] = round(self.cpu.get(name, 0.0) + time.process_time() - c0, 4)

        return timed()


def _heldout(args: argparse.Namespace, task: Any, model: Any, patcher: Any, meta: dict[str, Any]) -> tuple[Any, Any, Any]:
    """(the discovery patcher, the held-out prompts, a patcher on them or None): with
    ``--holdout`` the discovery prompts lose the held-out ones (circuitdag.holdout)."""
    from circuitdag.errors import TaskError
    from circuitdag.holdout import Heldout, heldout_data, patcher_on

    disc, heldout = heldout_data(task, model, patcher.data, seed=args.seed, n_prompts=args.n_prompts,
                                 fraction=args.holdout)  # fmt: skip
    if heldout.how == "split":
        patcher = patcher_on(patcher, disc)
        # n_prompts stays the prepared count, which reload() rebuilds; the split is re-made from
        # the held-out fraction and the seed (circuitdag.holdout.discovery_part)
        meta["discovery_prompts"] = disc.n_prompts
    held = None
    if heldout.data is not None:
        try:
            with phase(f"caching the {heldout.data.n_prompts} held-out prompts", args.quiet):
                held = patcher_on(patcher, heldout.data)
        except TaskError as exc:
            heldout = Heldout(heldout.how, None, str(exc))
    return patcher, heldout, held


def _assess(args: argparse.Namespace, circuit: Any, patcher: Any, heldout: Any, held: Any, method: Any,
            options: dict[str, Any], relative: float | None) -> None:  # fmt: skip
    """Held-out faithfulness, --verify-top, --tests and --bootstrap into circuit.meta."""
    from circuitdag.trust import assess

    if args.bootstrap and not args.quiet and not args.storage:
        import time

        from circuitdag.bootstrap import additive, expected_seconds

        per_pass = patcher.pass_seconds  # the run record's exact pass of the circuit
        if per_pass is None:  # none ran (a circuit of every edge): time one
            t0 = time.perf_counter()
            patcher.circuit_metric(~circuit.in_circuit)
            per_pass = time.perf_counter() - t0
        from circuitdag.bootstrap_journal import finished

        fast = additive(method, patcher)
        kept = min(finished(args.bootstrap_journal)[0], args.bootstrap) if args.resume else 0
        secs = expected_seconds(circuit.meta["stats"]["seconds"], args.bootstrap - kept, per_pass, fast)
        how = "per-prompt scores, then" if fast else "reruns of the method,"
        print(f"circuitdag: bootstrap: {how} {args.bootstrap} resamples"
              + (f" ({kept} finished before the interruption, kept)" if kept else "")
              + f": about {secs:.0f}s ({method.name} took "
              f"{circuit.meta['stats']['seconds']:.1f}s, an exact pass {per_pass:.1f}s)", file=sys.stderr)  # fmt: skip
    tests = _tests(args)
    args.assessing = True  # an interruption from here on leaves --storage resamples behind (circuitdag.cli)
    assess(circuit, patcher, heldout=heldout, heldout_patcher=held, verify_top=args.verify_top, tests=tests,
           test_options=args.test_options, bootstrap=args.bootstrap, method=method, options=options,
           seed=args.seed, progress=not args.quiet, storage=args.storage, study=args.study,
           journal=args.bootstrap_journal, resume=args.resume)  # fmt: skip


def _tests(args: argparse.Namespace) -> tuple[str, ...]:
    """The hypothesis tests ``--tests`` asks for (no name: all four; no flag: none)."""
    return tuple(args.tests or TRUST_TESTS) if args.tests is not None else ()


def check_verify_top(method: Any) -> None:
    """Raises :class:`ConfigError` (one line) when ``--verify-top`` does not apply to
    ``method``'s scores: metric changes it measured by patching already (an exact method,
    ACDC and its variants: nothing estimated to check), or scores not in the metric's units (Edge
    Pruning's gate probabilities, UGS, information flow routes' shares)."""
    from circuitdag.algorithms.acdc import ACDC

    if method.exact or isinstance(method, ACDC):
        raise ConfigError(f"--verify-top checks estimated scores against exact patching; {method.name}'s scores are "
                          "metric changes it measured by patching already, not estimates; drop --verify-top")  # fmt: skip
    if not method.metric_scores:
        raise ConfigError(f"--verify-top compares scores in the metric's units with exact patching; {method.name}'s "
                          f"scores are not ({method.score_meaning}); drop --verify-top")  # fmt: skip


#: ``--test-option`` names, their types and the open/closed ranges they must lie in.
TEST_OPTIONS: dict[str, tuple[type, float, float]] = {"epsilon": (float, 0, 0.5), "permutations": (int, 1, 1e5),
                                                     "q": (float, 0, 1), "references": (int, 1, 1e5),
                                                     "circuits": (int, 1, 1e5)}  # fmt: skip
#: The test each ``--test-option`` belongs to.
TEST_OF_OPTION = {"epsilon": "equivalence", "permutations": "independence", "q": "minimality",
                  "references": "minimality", "circuits": "sufficiency"}  # fmt: skip


def parse_test_options(items: list[str] | None, tests: tuple[str, ...] | None = None) -> dict[str, Any]:
    """``--test-option NAME=VALUE`` items as keyword arguments of the hypothesis tests
    (epsilon in [0, 0.5), q in (0, 1), counts from 1 to 99,999). ``tests``: the tests that
    will run (None: not checked); then an option of a test that does not run, or one that
    leaves its test unable to decide (too few permutations or random circuits for
    alpha 0.05: circuitdag.hypothesis), is refused here, before any work."""
    out: dict[str, Any] = {}
    for item in items or []:
        name, sep, value = (x.strip() for x in item.partition("="))
        if not sep or name not in TEST_OPTIONS:
            raise ConfigError(f"--test-option takes NAME=VALUE with NAME one of {', '.join(TEST_OPTIONS)}; got {item!r}")
        kind, lo, hi = TEST_OPTIONS[name]
        try:
            v = kind(value)
        except ValueError:
            raise ConfigError(f"--test-option {item}: {name} must be a {'whole number' if kind is int else 'number'}") from None
        if kind is int and not lo <= v < hi:
            raise ConfigError(f"--test-option {item}: {name} must be a whole number from {lo:g} to {hi - 1:g}")
        if kind is float and not (lo <= v < hi if name == "epsilon" else lo < v < hi):
            left = "[" if name == "epsilon" else "("
            raise ConfigError(f"--test-option {item}: {name} must be in {left}{lo:g}, {hi:g})")
        out[name] = v
    if tests is None or not out:
        return out
    if not tests:
        raise ConfigError("--test-option sets options of the hypothesis tests, which run only with --tests; add "
                          "--tests (all four) or --tests NAME ..., or drop --test-option")  # fmt: skip
    from circuitdag.hypothesis import ALPHA, can_decide

    for name, v in out.items():
        test = TEST_OF_OPTION[name]
        if test not in tests:
            raise ConfigError(f"--test-option {name} is an option of the {test} test, which --tests does not run "
                              f"({' '.join(tests)}); add {test} to --tests or drop the option")  # fmt: skip
        if name in ("permutations", "circuits"):
            try:
                can_decide(test, name, v, ALPHA)
            except ConfigError as exc:
                raise ConfigError(f"--test-option {name}={v}: {exc}") from None
    return out


def _draw_svg(circuit: Any, path: Path, args: argparse.Namespace) -> bool:
    """Draw ``discover``'s circuit.svg unless ``--no-svg``; whether it was drawn. A drawing
    that fails (graphviz missing, too slow) is a one-line warning: circuit.json is saved."""
    path.unlink(missing_ok=True)  # an earlier run's drawing would not match this circuit.json
    if args.no_svg:
        return False
    try:
        with phase(f"drawing {path.name} with graphviz", args.quiet):
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
    from circuitdag.trust import trust_summary

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
        + trust_summary(m)
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


def cmd_roc(args: argparse.Namespace) -> int:
    import json

    from circuitdag.evaluate import DEFAULT_ROC_THRESHOLDS, plot_roc, roc_sweep, task_truth
    from circuitdag.prepare import prepare

    task, model = load(args)
    patcher, meta = prepare(model, task, metric=args.metric, ablation=args.ablation, seed=args.seed,
                            n_prompts=args.n_prompts)  # fmt: skip
    truth, ignore = task_truth(task, patcher.ablation.value)
    if truth is None:
        raise ConfigError(f"task {task.name!r} has no ground truth, so there is no ROC to compute")
    thresholds = [threshold(t) for t in args.thresholds] if args.thresholds else DEFAULT_ROC_THRESHOLDS
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
