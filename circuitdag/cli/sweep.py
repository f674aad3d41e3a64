"""``circuitdag sweep`` (an Optuna study over a method's size knob: the Pareto front of
size vs faithfulness) and ``circuitdag sweep-worker`` (trials of a shared study), over
:mod:`circuitdag.sweep`."""

from __future__ import annotations

import argparse
import functools
import math
import sys
from collections.abc import Callable
from typing import Any, overload

from circuitdag._options import DEFAULT_TASK, number
from circuitdag.cli._common import add_run_options, name_values
from circuitdag.errors import CircuitDagError, ConfigError

#: Most trials one ``sweep`` or ``sweep-worker`` command adds (rerun it to add more).
MAX_TRIALS = 100_000


def register(subparsers: Any) -> None:
    p = subparsers.add_parser("sweep", help="Optuna study over a method's size knob (the ACDC threshold by default): "
                              "Pareto front of size vs faithfulness")
    add_run_options(p)
    p.add_argument("--algorithm", default="acdc", metavar="NAME",
                   help="any method with a size knob (`circuitdag algorithms`): acdc (default; threshold), "
                   "eap or eap-ig (number of edges), or a plugin's")
    p.add_argument("--option", action="append", metavar="NAME=VALUE",
                   help="an option of the method, the same in every trial (repeatable; `circuitdag algorithms` "
                   "lists them)")
    p.add_argument("--edges-range", nargs=2, metavar=("LO", "HI"),
                   help="for methods sized by an edge count: counts sampled log-uniformly in [LO, HI] "
                   "(default 1 .. the graph's edges)")
    p.add_argument("--trials", default="20", help="trials to add to the study (default 20; 0 only rewrites the report)")
    p.add_argument("--storage", help="Optuna storage URL (default sqlite:///<out>/sweep.db; postgresql://... to "
                   "share the study with sweep-worker processes)")  # fmt: skip
    p.add_argument("--study", help="study name (default: the task name)")
    p.add_argument("--search", default="threshold",
                   help="what to search, from threshold,metric,ablation (default threshold); a searched "
                        "--metric/--ablation takes a comma-separated list of choices (default: all)")  # fmt: skip
    p.add_argument("--threshold-range", nargs=2, metavar=("LO", "HI"),
                   help="thresholds sampled log-uniformly in [LO, HI] (default: the task's default threshold "
                        "/1000 .. *1000)")  # fmt: skip
    p.add_argument("--positions", action="store_true", help="position-aware circuits")
    p.add_argument("--target-faithfulness", metavar="F",
                   help="copy the smallest front circuit with faithfulness >= F to <out>/best/")
    p.add_argument("--sampler-seed", type=number("--sampler-seed", int, 0, 2**32 - 1, why="what numpy's generator "
                   "takes"), help="seed of the TPE sampler (default: random)")
    p.add_argument("--out", help="output directory (default runs/<task>-sweep)")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    p.set_defaults(fn=cmd_sweep)

    p = subparsers.add_parser("sweep-worker", help="run trials of a shared sweep study (e.g. on PostgreSQL)")
    p.add_argument("--storage", required=True, help="the study's storage URL")
    p.add_argument("--study", help="study name (default: the only study in the storage)")
    p.add_argument("--trials", help="trials to run (default: until the study has what `sweep` asked for)")
    p.add_argument("--out", help="write circuits here instead of the sweep's output directory")
    p.add_argument("--device", default="cpu", help="torch device, e.g. cpu or cuda")
    p.add_argument("--sampler-seed", type=number("--sampler-seed", int, 0, 2**32 - 1, why="what numpy's generator "
                   "takes"), help="seed of the TPE sampler (default: random)")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    p.set_defaults(fn=cmd_sweep_worker)


def _float(text: str, option: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise ConfigError(f"{option} must be a number, got {text!r}") from None
    if not math.isfinite(value):
        raise ConfigError(f"{option} must be finite, got {text}")
    return value


@overload
def _trials(text: str | int) -> int: ...
@overload
def _trials(text: None) -> None: ...
def _trials(text: str | int | None) -> int | None:
    if text is None:
        return None
    try:
        n = int(text)
    except ValueError:
        raise ConfigError(f"--trials must be a whole number >= 0, got {text!r}") from None
    if n < 0:
        raise ConfigError(f"--trials must be >= 0, got {n}")
    if n > MAX_TRIALS:
        raise ConfigError(f"--trials must be at most {MAX_TRIALS} per command (every trial is a discovery run; "
                          f"the same command adds more to the study), got {n}")  # fmt: skip
    return n


def _set_optuna_verbosity(verbose: bool) -> None:
    import optuna

    # Optuna logs each failed trial with its traceback; circuitdag logs one line instead.
    optuna.logging.set_verbosity(optuna.logging.INFO if verbose else optuna.logging.ERROR)


def _print_report(report: Any, target: float | None) -> None:
    """The study's counts, its Pareto front and the files (a :class:`~circuitdag.sweep.SweepReport`)."""
    from circuitdag.sweep.front import fmt
    from circuitdag.sweep.storage import masked

    c = report.counts
    print(f"{report.settings.task}: study {report.study!r} has {c['total']} trials "
          f"({c.get('complete', 0)} complete, {c.get('fail', 0)} failed, {c.get('running', 0)} running) "
          f"in {masked(report.storage)}")  # fmt: skip
    print("Pareto front (edges vs faithfulness):")
    extra = [k for k in ("metric", "ablation") if k in report.settings.search]
    print(f"  {'edges':>6}  {'faithfulness':>12}  {'trial':>5}  {'thresholds':<21}  "
          + "".join(f"{k:<10}  " for k in extra) + "circuit")  # fmt: skip
    for p in report.points:
        lo, hi = p["threshold_range"] or p.get("edges_requested_range") or (None, None)
        print(f"  {p['edges']:>6}  {p['faithfulness']:>12.6f}  {p['trial']:>5}  {fmt(lo) + '..' + fmt(hi):<21}  "
              + "".join(f"{p[k]:<10}  " for k in extra) + str(p["circuit"]))  # fmt: skip
    print(f"-> {report.files['pareto']}, {report.files['svg']}, {report.files['html']}")
    if target is not None:
        b = report.best
        if b is None:
            top = max((p["faithfulness"] for p in report.points), default=None)
            raise CircuitDagError(
                f"no circuit on the front reaches faithfulness {target:g} (best {fmt(top, 6)}); "
                "run more trials, widen --threshold-range or lower --target-faithfulness"
            )
        print(f"best (faithfulness >= {target:g}): trial {b['trial']}, {b['edges']} edges, "
              f"faithfulness {b['faithfulness']:.6f} -> {report.files['best']}")  # fmt: skip


def _interruptible(fn: Callable[[argparse.Namespace], int]) -> Callable[[argparse.Namespace], int]:
    """Ctrl-C ends a sweep cleanly: the running trial is FAIL, the report is written."""

    @functools.wraps(fn)
    def run(args: argparse.Namespace) -> int:
        try:
            return fn(args)
        except KeyboardInterrupt:
            print("circuitdag: interrupted; the report is written and the same command continues the study",
                  file=sys.stderr)  # fmt: skip
            return 130

    return run


@_interruptible
def cmd_sweep(args: argparse.Namespace) -> int:
    from circuitdag.sweep.settings import make_settings
    from circuitdag.sweep.study import sweep

    _set_optuna_verbosity(args.verbose)
    rng = None
    if args.threshold_range:
        rng = (_float(args.threshold_range[0], "--threshold-range"), _float(args.threshold_range[1], "--threshold-range"))
    target = None if args.target_faithfulness is None else _float(args.target_faithfulness, "--target-faithfulness")
    trials = _trials(args.trials)
    edges_range = None
    if args.edges_range:
        try:
            edges_range = (int(args.edges_range[0]), int(args.edges_range[1]))
        except ValueError:
            raise ConfigError(f"--edges-range takes two whole numbers, got {' '.join(args.edges_range)}") from None
    task = args.task or DEFAULT_TASK  # (--task has no argparse default: discover may take --prompts instead)
    settings = make_settings(task, args.out or f"runs/{task}-sweep", model=args.model, metric=args.metric,
                             ablation=args.ablation, search=args.search, threshold_range=rng,
                             positions=args.positions, seed=args.seed, dtype=args.dtype,
                             prepend_bos=getattr(args, "prepend_bos", "auto"), algorithm=args.algorithm,
                             edges_range=edges_range, n_prompts=getattr(args, "n_prompts", None),
                             options=name_values(args.option))  # fmt: skip
    report = sweep(settings, trials, storage=args.storage, study_name=args.study, device=args.device,
                   sampler_seed=args.sampler_seed, progress=not args.quiet, target_faithfulness=target)  # fmt: skip
    _print_report(report, target)
    return 0


@_interruptible
def cmd_sweep_worker(args: argparse.Namespace) -> int:
    from circuitdag.sweep.study import work

    _set_optuna_verbosity(args.verbose)
    report = work(args.storage, args.study, n_trials=_trials(args.trials), out=args.out, device=args.device,
                  sampler_seed=args.sampler_seed, progress=not args.quiet)  # fmt: skip
    if isinstance(report, dict):  # a study of bootstrap resamples (circuitdag.sweep.resamples)
        print(f"bootstrap study {report['study']!r} in {report['storage']}: {report['complete']} of "
              f"{report['resamples']} resamples complete, {report['failed']} failed")  # fmt: skip
        return 0
    _print_report(report, None)
    return 0
