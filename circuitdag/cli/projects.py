"""Commands for the hackathon's other projects (the seed write-up): ``ccs`` (Contrast-
Consistent Search with a coherence term, per layer, against supervised and random probes);
``features`` (automatic identification of feature neurons); ``soft-prompts`` (are the soft
prompts that solve a task a convex set?)."""

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
    _register_soft_prompts(sub)

    p = sub.add_parser(
        "features", help="find semantically coherent MLP neurons (max-activating contexts, coherence in two embedding "
        "spaces against a null, substitution test, descriptions scored by simulation); report.json, report.md, "
        "coherence.svg, an HTML page per neuron (docs/features.md)",
    )  # fmt: skip
    p.add_argument("--model", default="smollm2-135m", help="any name circuitdag.load_model takes (default smollm2-135m)")
    p.add_argument("--layer", type=number("--layer", int, 0), action="append",
                   help="an MLP layer to scan (repeat; default every layer)")
    p.add_argument("--corpus", default=None, help="a UTF-8 text file (default: Debian's fortunes, as neurons)")
    p.add_argument("--top-k", type=number("--top-k", int, 3, 1000), default=20,
                   help="max-activating contexts per neuron (default 20, as the write-up)")
    p.add_argument("--window", type=number("--window", int, 0, 100), default=7,
                   help="tokens shown each side of a top token (default 7)")
    p.add_argument("--max-tokens", type=number("--max-tokens", int, 100, 10_000_000), default=50_000,
                   help="corpus tokens read (default 50000; a fifth is held out)")
    p.add_argument("--chunk", type=number("--chunk", int, 2, 100_000), default=None,
                   help="tokens per independent forward pass (default 64, or the model's context if shorter)")
    p.add_argument("--null", type=number("--null", int, 10, 100_000), default=10_000,
                   help="random token sets per set size for the coherence p-values (default 10000)")
    p.add_argument("--describe", type=number("--describe", int, 0, 10_000), default=10,
                   help="coherent neurons per layer given the substitution test and a description (default 10)")
    p.add_argument("--alpha", type=number("--alpha", float, 1e-6, 0.5), default=0.05,
                   help="false discovery rate of the coherence tests, level of the substitution test (default 0.05)")
    p.add_argument("--batch", type=number("--batch", int, 1, 4096), default=16, help="chunks per forward pass")
    p.add_argument("--seed", type=_options.seed(), default=0, help="the null sets and random substitutions")
    p.add_argument("--threads", type=number("--threads", int, 1), default=None, help="torch CPU threads (default 1)")
    p.add_argument("--out", default="runs/features", help="output directory (default runs/features)")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    p.set_defaults(fn=cmd_features)


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


def cmd_features(args: argparse.Namespace) -> int:
    import sys

    import torch

    from circuitdag.cli._common import writable_dir
    from circuitdag.features import features
    from circuitdag.features_report import summary, write_report
    from circuitdag.loading import load_model

    out = writable_dir(args.out)
    torch.set_num_threads(_options.threads(args.threads, 1))
    model = load_model(args.model)
    report = features(model, args.layer, args.corpus, top_k=args.top_k, window=args.window,
                      max_tokens=args.max_tokens, chunk=args.chunk, n_null=args.null, describe=args.describe,
                      alpha=args.alpha, seed=args.seed, batch=args.batch, progress=not args.quiet)  # fmt: skip
    write_report(report, out)
    warnings, line = summary(report, out)
    for w in warnings:
        print(w, file=sys.stderr)
    print(line)
    return 0


def _register_soft_prompts(sub: Any) -> None:
    p = sub.add_parser(
        "soft-prompts", help="prompt-tune K soft tokens from several seeds; held-out accuracy along segments "
        "between solutions, over their simplex, along random directions of the same length, and for the nearest "
        "real tokens; report.json, report.md, soft-prompts.svg (docs/soft-prompts.md)",
    )  # fmt: skip
    p.add_argument("--model", default="smollm2-135m", help="any name circuitdag.load_model takes (default smollm2-135m)")
    p.add_argument("--task", default=None, help="'addition' (a+b= for a, b in 0..9) or a registered task "
                   "such as greater-than (default addition; not with --prompts)")  # fmt: skip
    p.add_argument("--prompts", default=None, help="a prompts file instead of --task (docs/own-prompts.md)")
    p.add_argument("--operands", type=number("--operands", int, 2, 1000), default=10,
                   help="addition's operands are 0..N-1 (default 10: 100 prompts)")
    p.add_argument("--tokens", type=number("--tokens", int, 1, 256), default=4, help="soft tokens K (default 4)")
    p.add_argument("--seeds", type=number("--seeds", int, 2, 100), default=3,
                   help="soft prompts trained from different seeds (default 3; 3 or more adds the simplex)")
    p.add_argument("--steps", type=number("--steps", int, 1, 100_000), default=100, help="Adam steps per seed (default 100)")
    p.add_argument("--lr", type=number("--lr", float, 0, 1000), default=0.1,
                   help="learning rate in units of W_E's root-mean-square entry (default 0.1)")
    p.add_argument("--batch", type=number("--batch", int, 1, 4096), default=16, help="prompts per step (default 16)")
    p.add_argument("--holdout", type=number("--holdout", float, 0.01, 0.99), default=None,
                   help="held-out share of the prompts (default: addition and prompts files 0.3; a task's own held-out set)")
    p.add_argument("--n-prompts", type=number("--n-prompts", int, 1), default=None, help="prompts of a --task")
    p.add_argument("--seed", type=_options.seed(), default=0, help="the prompts and the held-out split (default 0)")
    p.add_argument("--segment-points", type=number("--segment-points", int, 2, 1001), default=11,
                   help="points along each segment, endpoints included (default 11)")
    p.add_argument("--simplex-steps", type=number("--simplex-steps", int, 1, 100), default=6,
                   help="the simplex grid's step is 1/N (default 6: 28 points)")
    p.add_argument("--random-directions", type=number("--random-directions", int, 1, 100), default=3,
                   help="random directions per pair of solutions (default 3)")
    p.add_argument("--threads", type=number("--threads", int, 1), default=None, help="torch CPU threads (default 1)")
    p.add_argument("--out", default="runs/soft-prompts", help="output directory; trained prompts are checkpointed "
                   "in OUT/prompts (default runs/soft-prompts)")  # fmt: skip
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    p.set_defaults(fn=cmd_soft_prompts)


def cmd_soft_prompts(args: argparse.Namespace) -> int:
    import torch

    from circuitdag.cli._common import writable_dir
    from circuitdag.loading import load_model
    from circuitdag.soft_prompts_data import load_examples
    from circuitdag.soft_prompts_report import write_report
    from circuitdag.soft_prompts_run import run_soft_prompts

    out = writable_dir(args.out)
    torch.set_num_threads(_options.threads(args.threads, 1))
    model = load_model(args.model)
    train, held, info = load_examples(model, args.task, args.prompts, seed=args.seed, holdout=args.holdout,
                                      n_prompts=args.n_prompts, operands=args.operands)  # fmt: skip
    report = run_soft_prompts(model, train, held, args.tokens, args.seeds, out, steps=args.steps, lr=args.lr,
                              batch=args.batch, segment_points=args.segment_points,
                              simplex_steps=args.simplex_steps, random_dirs=args.random_directions, info=info,
                              progress=not args.quiet)  # fmt: skip
    write_report(report, out)
    sm = report["summary"]
    print(f"{report['model']} {info['task']}: {report['n_heldout']} held-out prompts, no soft prompt "
          f"{sm['baseline_accuracy']:.3f}, solutions {min(sm['solution_accuracy']):.3f}-{max(sm['solution_accuracy']):.3f}, "
          f"segment min {sm['segment_min_accuracy']:.3f}, random min {sm['random_min_accuracy']:.3f}; "
          f"{sm['verdict_text']} -> {out}/report.md")  # fmt: skip
    return 0
