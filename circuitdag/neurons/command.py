"""``circuitdag neurons``: the neuron analysis from the command line (docs/neurons.md)."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from typing import Any

from circuitdag._options import number
from circuitdag.errors import ConfigError


def cmd_neurons(args: argparse.Namespace, load: Callable[[argparse.Namespace], tuple[Any, Any]]) -> int:
    from circuitdag.models import spec_of
    from circuitdag.neurons.analysis import analyze_neurons, parse_layers
    from circuitdag.neurons.report import write_report

    if args.metric not in (None, "logit_diff"):
        raise ConfigError("the neuron analysis measures the logit difference; leave --metric out")
    args.metric = None
    parse_layers(args.layer, sys.maxsize)  # the syntax, before the model loads; its range after
    task, model = load(args)
    layers = parse_layers(args.layer, spec_of(model).n_layers)
    analysis = analyze_neurons(model, task, layers=layers, ablation=args.ablation or "resample", seed=args.seed,
                               n_prompts=args.n_prompts, corpus=args.corpus, corpus_tokens=args.corpus_tokens,
                               progress=not args.quiet)  # fmt: skip
    out = args.out or f"runs/{task.name}-neurons"
    report = analysis.to_dict()
    write_report(report, out)
    top = report["top_neuron"]
    agr = report["agreement"]
    verb = "recovers" if report["ablation"] == "resample" else "removes"  # report.md's wording
    print(f"{task.name} on {report['model']}: top neuron L{top['layer']}.N{top['neuron']} {verb} "
          f"{100 * top['effect']:.1f}% of the logit difference ({report['ablation']}), its MLP layer "
          f"{100 * top['layer_effect']:.1f}% (seed: 50% / 49%); DLA rank {top['dla_rank']}, mutual congruence "
          f"{'agrees' if agr['mutual_agrees'] else 'differs'} -> {out}/report.md", file=sys.stdout)  # fmt: skip
    return 0


def register_cli(
    subparsers: Any,
    add_run_options: Callable[..., None],
    load: Callable[[argparse.Namespace], tuple[Any, Any]],
) -> None:
    """Add ``neurons`` to the ``circuitdag`` command line; ``add_run_options`` and ``load``
    (task and model from the run options) come from :mod:`circuitdag.cli`, so that imports
    run one way."""
    p = subparsers.add_parser(
        "neurons",
        help="the ' an' neuron method: logit lens, activation and single-neuron patching, DLA, "
        "mutual congruence, the top neuron over a corpus; writes report.json, report.md and SVG plots",
    )
    add_run_options(p, task_required=True)
    p.add_argument("--layer", metavar="L[,L]",
                   help="MLP layers whose neurons are patched one by one, or all (default: all on models with at "
                   "most 4096 neurons, else the MLP layer whose output at the answer position has the largest "
                   "patching effect)")  # fmt: skip
    p.add_argument("--corpus", metavar="FILE",
                   help="UTF-8 text to run the top neuron over (default: Debian's fortunes, see docs/neurons.md)")
    p.add_argument("--corpus-tokens", type=number("--corpus-tokens", int, 0), default=20_000, metavar="N",
                   help="tokens of the corpus to read (default 20000; 0 skips the corpus step)")
    p.add_argument("--out", help="output directory (default runs/<task>-neurons)")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bar or phase messages")
    p.set_defaults(fn=lambda args: cmd_neurons(args, load))
