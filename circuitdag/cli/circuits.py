"""Commands over saved circuits: ``render`` (SVG), ``evaluate`` (size, metrics, ground
truth), ``curve`` (MIB's faithfulness curve, CPR, CMD), ``export`` (other tools' formats),
``explore`` (the HTML explorer) and ``compare`` (two circuits of one task)."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from circuitdag import _options
from circuitdag._options import DOT_TIMEOUT_S, EDGE_PERCENTS, EXPORT_FORMATS, MAX_EDGES, number
from circuitdag.cli._common import writable_dir
from circuitdag.cli.discover import TRUST_TESTS
from circuitdag.errors import CircuitDagError, ConfigError


def register(sub: Any) -> None:
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

    p = sub.add_parser("evaluate", help="print a circuit's size, metrics and ground-truth precision/recall; "
                       "its exact faithfulness on other prompts; hypothesis tests")
    p.add_argument("circuit")
    p.add_argument("--task", help="also measure the edge set exactly on this task's prompts (with --seed)")
    p.add_argument("--prompts", metavar="FILE", help="also measure the edge set exactly on these prompts (a file "
                   "as discover --prompts takes)")
    p.add_argument("--seed", type=number("--seed", int, 0), help="the seed of --task's prompts (default: the "
                   "circuit's)")
    p.add_argument("--n-prompts", type=number("--n-prompts", int, 1),
                   help="the number of prompts of --task; with --tests/--verify-top and no --task, --prompts or "
                   "--seed: run those on this many of the circuit's own prompts (a subset drawn with its seed)")
    p.add_argument("--tests", nargs="*", metavar="TEST", choices=TRUST_TESTS,
                   help="hypothesis tests on the circuit's own run, its discovery prompts also with --task or "
                   "--prompts (Shi et al. 2024): equivalence, independence, minimality, sufficiency (no name: all "
                   "four)")
    p.add_argument("--test-option", action="append", metavar="NAME=VALUE",
                   help="an option of the tests (repeatable; see discover --help)")
    p.add_argument("--verify-top", metavar="N", type=number("--verify-top", int, 1),
                   help="exact single-edge effects of the top N edges and the N just below the cut")
    p.set_defaults(fn=cmd_evaluate)

    p = sub.add_parser(
        "curve", help="MIB faithfulness curve, CPR and CMD of a scored circuit.json or EAP-IG graph JSON"
    )
    p.add_argument("scores", metavar="CIRCUIT_OR_SCORES.json",
                   help="a circuitdag circuit.json (its edge scores are the ranking) or an EAP-IG/MIB graph JSON")
    p.add_argument("--out", help="output directory for curve.json and curve.svg (default: the input file's)")
    p.add_argument("--percents", nargs="+", metavar="P",
                   help="grid in percent of edges (default MIB's: " + " ".join(f"{x:g}" for x in EDGE_PERCENTS) + ")")
    p.add_argument("--task", help="task (default: the circuit's; required for an EAP-IG file)")
    p.add_argument("--model", help="model (default: the circuit's, else the task's default)")
    p.add_argument("--metric", help="metric (default: the circuit's, else the task's)")
    p.add_argument("--ablation", help="resample, zero or mean (default: the circuit's, else the task's)")
    p.add_argument("--seed", type=_options.seed(), default=None, help="dataset seed (default: the circuit's, else 0)")
    p.add_argument("--method", help="name of the method in the plot and curve.json (default: from the circuit)")
    p.add_argument("--device", default="cpu", help="torch device, e.g. cpu or cuda")
    p.add_argument("--dtype", default="float32", choices=("float32", "float64"))
    p.add_argument("--threads", type=number("--threads", int, 1), default=None,
                   help="torch CPU threads (default: torch's)")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    p.set_defaults(fn=cmd_curve)

    p = sub.add_parser("export", help="write a circuit.json in another tool's format (circuit-tracer's "
                       "and Neuronpedia's graph viewers, or the EAP-IG/MIB graph JSON)")  # fmt: skip
    p.add_argument("circuit", help="a circuit.json")
    p.add_argument("--format", default="circuit-tracer", choices=EXPORT_FORMATS,
                   help="circuit-tracer (graph JSON of circuit-tracer/Neuronpedia, default) or eap-ig (MIB)")
    p.add_argument("-o", "--output", help="output file (default: next to the input, <name>.<format>.json)")
    p.add_argument("--slug", help="circuit-tracer: the graph's slug (default: task, metric and threshold)")
    p.add_argument("--collapse-positions", action="store_true",
                   help="eap-ig: write a position-aware circuit's component edges (MIB has no positions)")
    p.set_defaults(fn=cmd_export)

    p = sub.add_parser("explore", help="write an interactive HTML explorer of a circuit.json (works offline)")
    p.add_argument("circuit", help="a circuit.json")
    p.add_argument("-o", "--output", help="HTML path (default: next to the JSON, .html)")
    p.set_defaults(fn=cmd_explore)

    p = sub.add_parser("compare", help="compare two circuits of one task: matching, overlap, sparsity; "
                       "compare.json, compare.svg, patterns.svg")  # fmt: skip
    p.add_argument("a", help="first circuit.json")
    p.add_argument("b", help="second circuit.json")
    p.add_argument("--labels", nargs=2, metavar=("A", "B"), help="names of the two circuits (default A B)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=number("--threads", int, 1), default=None,
                   help="torch CPU threads (default 1)")
    p.add_argument("--out", required=True, help="output directory")
    p.set_defaults(fn=cmd_compare)


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
    import json
    import logging

    from circuitdag.evaluate import summarize, task_truth
    from circuitdag.io import load_circuit
    from circuitdag.tasks import get_task

    log = logging.getLogger("circuitdag")
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
    out = summarize(circuit, truth, ignore)
    out.update(_trust(circuit, args))
    print(json.dumps(out, indent=1))
    return 0


def _trust(circuit: Any, args: argparse.Namespace) -> dict[str, Any]:
    """``evaluate``'s --task/--prompts/--seed/--n-prompts (the edge set on other data),
    --tests and --verify-top (on the circuit's own run, rebuilt; with --n-prompts N and no
    other data named, on N of its discovery prompts drawn with the circuit's seed)."""
    from circuitdag.cli.discover import parse_test_options

    out: dict[str, Any] = {}
    checks = args.tests is not None or bool(args.verify_top)
    tests = tuple(args.tests or TRUST_TESTS) if args.tests is not None else ()
    test_options = parse_test_options(args.test_option, tests)  # refused before the run is rebuilt
    if args.verify_top:
        _check_verify_top(circuit)
    other = args.task or args.prompts or args.seed is not None
    if other or (args.n_prompts is not None and not checks):
        from circuitdag.holdout import evaluate_on

        out["other_data"] = evaluate_on(circuit, task=args.task, prompts=args.prompts, seed=args.seed,
                                        n_prompts=args.n_prompts)  # fmt: skip
    if checks:
        from circuitdag.holdout import discovery_part
        from circuitdag.reload import reload
        from circuitdag.trust import assess

        run = reload(circuit, source=args.circuit, purpose="these checks")
        assert run.patcher is not None
        seed = int(circuit.meta.get("seed") or 0)
        patcher = discovery_part(run.patcher, circuit.meta)
        if args.n_prompts is not None and not other:
            patcher = _some_prompts(patcher, args.n_prompts, seed)
        # Say which prompts the checks ran on: with --task/--prompts/--seed they are still
        # the circuit's own discovery prompts (the other data gets other_data only).
        out["checks_on"] = {"prompts": patcher.B, "of": run.patcher.B, "seed": seed}
        if other:
            import logging

            logging.getLogger("circuitdag").warning(
                "--tests/--verify-top run on the circuit's own %d discovery prompts; --task/--prompts/--seed give "
                "other_data only", patcher.B)  # fmt: skip
        assess(circuit, patcher, verify_top=args.verify_top, test_options=test_options, tests=tests, seed=seed,
               progress=True)  # fmt: skip
        asked = ("tests",) * (args.tests is not None) + ("verify",) * bool(args.verify_top)
        out.update({k: circuit.meta[k] for k in asked if k in circuit.meta})  # not discover's saved ones
    return out


def _check_verify_top(circuit: Any) -> None:
    """``--verify-top`` compares estimates in the metric's units with exact patching:
    refused, as ``discover`` refuses it (:func:`circuitdag.cli.discover.check_verify_top`),
    for a circuit of ACDC (measured scores) or of a method that scores otherwise."""
    from circuitdag.algorithms import get_algorithm

    name = circuit.meta.get("algorithm")
    try:
        method = get_algorithm(str(name)) if name else None
    except CircuitDagError:  # a plugin not installed here: its scores cannot be judged
        method = None
    if method is not None:
        from circuitdag.cli.discover import check_verify_top

        check_verify_top(method)


def _some_prompts(patcher: Any, n: int, seed: int) -> Any:
    """``patcher`` on ``n`` of its prompts drawn without repeats with ``seed`` (in their order;
    rows of the cached runs, no forward pass). Raises :class:`ConfigError` when it has fewer."""
    import numpy as np

    if n > patcher.B:
        raise ConfigError(f"--n-prompts {n}: the circuit was found on {patcher.B} prompts; give at most {patcher.B}")
    if n == patcher.B:
        return patcher
    return patcher.subset(np.sort(np.random.default_rng(seed).choice(patcher.B, n, replace=False)))


def _percents(texts: list[str] | None) -> tuple[float, ...]:
    """``--percents``: numbers, a trailing % allowed (their range is checked by the curve)."""
    if not texts:
        return EDGE_PERCENTS
    try:
        return tuple(float(t.rstrip("%")) for t in texts)
    except ValueError:
        raise ConfigError(f"--percents takes numbers (percent of edges), got {' '.join(texts)}") from None


def cmd_curve(args: argparse.Namespace) -> int:
    """``circuitdag curve``: both MIB curves of the file's ranking on the run it was found
    on (:func:`circuitdag.mib.write_curve`), curve.json and curve.svg, one summary line."""
    from circuitdag.mib import write_curve

    percents = _percents(args.percents)
    if args.threads:
        import torch

        torch.set_num_threads(_options.threads(args.threads, 1))
    out = Path(args.out) if args.out else Path(args.scores).parent
    if args.out or out.is_dir():  # before the curve's minutes of passes, not after them
        writable_dir(str(out))
    report = write_curve(args.scores, out, percents, task=args.task, model=args.model, metric=args.metric,
                         ablation=args.ablation, seed=args.seed, method=args.method, device=args.device,
                         dtype=args.dtype, progress=not args.quiet)  # fmt: skip
    signed, absolute = report["curves"]["signed"], report["curves"]["absolute"]

    def points(c: dict[str, Any]) -> str:
        return " ".join(f"{p:g}%:{f:.3f}" for p, f in zip(c["percents"], c["faithfulness"]))

    print(f"{report['task']}: CPR {report['cpr']:.4f} (signed ranking), CMD {report['cmd']:.4f} (|score| ranking); "
          f"f signed [{points(signed)}]; f |score| [{points(absolute)}] -> {out}/curve.json, {out}/curve.svg")  # fmt: skip
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    from circuitdag.export import export_circuit
    from circuitdag.io import load_circuit

    circuit = load_circuit(args.circuit)
    default = Path(args.circuit).with_name(Path(args.circuit).stem + f".{args.format}.json")
    path = export_circuit(circuit, args.output or default, args.format, args.slug, args.collapse_positions)
    print(f"{args.circuit} -> {path} ({args.format}, {circuit.n_edges} edges)")
    return 0


def cmd_explore(args: argparse.Namespace) -> int:
    from circuitdag.explore import write_explorer
    from circuitdag.io import load_circuit

    circuit = load_circuit(args.circuit)
    out = Path(args.output or Path(args.circuit).with_suffix(".html"))
    print(write_explorer(circuit, out))
    return 0


def cmd_compare(args: argparse.Namespace) -> int:
    """``circuitdag compare A B --out DIR``: compare.json, compare.svg, patterns.svg
    (:func:`circuitdag.compare.write_comparison`), one summary line."""
    import torch

    from circuitdag.compare import write_comparison

    torch.set_num_threads(_options.threads(args.threads, 1))
    la, lb = args.labels or ("A", "B")
    out = writable_dir(args.out)
    report, pat = write_comparison(args.a, args.b, out, (la, lb), args.device)
    ra, rb = report["circuits"][la], report["circuits"][lb]

    def sp(r: dict[str, Any]) -> str:
        return "/".join("-" if r[k] is None else f"{r[k]:.2f}" for k in ("sparsity_heads_mean", "sparsity_mlps_mean"))

    pairs = ", ".join(f"{p['a']}={p['b']}" for p in report["matched"] if p["a"] not in ("embed", "logits"))
    print(f"{la}: {ra['edges']} edges, faithfulness {ra['faithfulness']:.3f}, sparsity heads/MLPs {sp(ra)}; "
          f"{lb}: {rb['edges']} edges, faithfulness {rb['faithfulness']:.3f}, sparsity heads/MLPs {sp(rb)}; "
          f"matched {pairs or 'nothing'}; edge overlap {report['edge_overlap_jaccard']:.3f} "
          f"-> {out}/compare.json, {out}/compare.svg" + (f", {pat}" if pat else ""))  # fmt: skip
    return 0
