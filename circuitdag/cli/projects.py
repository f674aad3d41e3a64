"""Commands for the hackathon's other projects (the seed write-up): ``ccs`` (Contrast-
Consistent Search with a coherence term, per layer, against supervised and random probes)."""

from __future__ import annotations

import argparse
from typing import Any

from circuitdag import _options
from circuitdag._options import number


def register(sub: Any) -> None:
    p = sub.add_parser(
        "ccs", help="CCS probes for truth on each layer (with and without a coherence term) against a supervised "
        "and a random probe, on held-out statements; report.json, report.md, accuracy.svg (docs/ccs.md)",
    )  # fmt: skip
    p.add_argument("--model", default="smollm2-135m",
                   help="any name circuitdag.load_model takes (default smollm2-135m: minutes on a CPU)")  # fmt: skip
    p.add_argument("--data", default="builtin", help="'builtin' (arithmetic and capital-city facts, two phrasings "
                   "each) or a JSONL file of {\"statement\", \"label\"[, \"fact\"]} rows")  # fmt: skip
    p.add_argument("--layer", type=number("--layer", int, 0), action="append",
                   help="a layer to probe (repeat; default every layer)")
    p.add_argument("--holdout", type=number("--holdout", float, 0.01, 0.99), default=0.3,
                   help="share of the facts held out for the accuracies (default 0.3)")
    p.add_argument("--seed", type=_options.seed(), default=0, help="the builtin statements, the split, the probes")
    p.add_argument("--steps", type=number("--steps", int, 1, 100_000), default=1000,
                   help="Adam steps per CCS probe (default 1000)")
    p.add_argument("--tries", type=number("--tries", int, 1, 1000), default=10,
                   help="random starts per CCS probe; the lowest loss is kept (default 10, as Burns et al.)")
    p.add_argument("--coherence", type=number("--coherence", float, 0), default=1.0,
                   help="weight of the coherence term (default 1)")
    p.add_argument("--threads", type=number("--threads", int, 1), default=None, help="torch CPU threads (default 1)")
    p.add_argument("--out", default="runs/ccs", help="output directory (default runs/ccs)")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    p.set_defaults(fn=cmd_ccs)


def cmd_ccs(args: argparse.Namespace) -> int:
    import torch

    from circuitdag.ccs import builtin_statements, read_statements
    from circuitdag.ccs_report import run_ccs, write_report
    from circuitdag.cli._common import writable_dir
    from circuitdag.loading import load_model

    out = writable_dir(args.out)
    statements = builtin_statements(args.seed) if args.data == "builtin" else read_statements(args.data)
    torch.set_num_threads(_options.threads(args.threads, 1))
    model = load_model(args.model)
    report = run_ccs(model, statements, holdout=args.holdout, seed=args.seed, layers=args.layer, steps=args.steps,
                     tries=args.tries, coherence=args.coherence, progress=not args.quiet)  # fmt: skip
    write_report(report, out)
    best = report["best"]
    print(f"{report['model']}: {report['n_test']} held-out statements, zero-shot {report['zero_shot_accuracy_test']:.3f}; "
          "best layer: " + ", ".join(f"{k} {v['accuracy']:.3f} (L{v['layer']})" for k, v in best.items())
          + f" -> {out}/report.md")  # fmt: skip
    return 0
