"""``circuitdag tracr compile``: compile your own RASP program with tracr into a model
directory that ``--task tracr:DIR`` runs (:mod:`circuitdag.tracr_compile`; the ``tracr``
extra)."""

from __future__ import annotations

import argparse
import sys
from typing import Any

from circuitdag import _options
from circuitdag._options import DEFAULT_MAX_INPUTS, MAX_INPUTS, MAX_LEN, number


def register(subparsers: Any) -> None:
    p = subparsers.add_parser("tracr", help="compile your own RASP program with tracr (extra: tracr)")
    sub = p.add_subparsers(dest="tracr_command", required=True)
    c = sub.add_parser(
        "compile", help="compile MODULE:FUNCTION's RASP program, check it against tracr, derive its ground truth",
        description="Compile a RASP program with tracr into a directory that `--task tracr:DIR` runs without "
        "JAX (docs/tracr.md, 'Your own RASP program'). Exit status 1 when a check fails, 2 for bad input.",
    )  # fmt: skip
    c.add_argument(
        "program",
        metavar="MODULE:FUNCTION",
        help="a .py file or importable module, and a function in it that returns the RASP program",
    )
    c.add_argument(
        "--vocab",
        nargs="+",
        required=True,
        metavar="TOKEN",
        help="input tokens; an entry that reads as an integer is an integer, e.g. --vocab 1 2 3 or a b c",
    )
    c.add_argument("--max-len", required=True,
                   type=number("--max-len", int, 1, MAX_LEN, why="compiling and checking longer inputs takes more "
                               "than minutes and gigabytes"),
                   help=f"longest input the model takes (BOS excluded; at most {MAX_LEN})")
    c.add_argument(
        "--out", required=True, help="directory to write (model, inputs, ground truth, provenance)"
    )
    c.add_argument(
        "--lengths",
        type=number("--lengths", int, 1),
        nargs="+",
        metavar="N",
        help="input lengths of the input space, each with its own ground truth (default: --max-len)",
    )
    c.add_argument(
        "--inputs",
        metavar="MODULE:FUNCTION",
        help="the input space instead: a function returning the input sequences (no BOS)",
    )
    c.add_argument(
        "--max-inputs",
        type=number("--max-inputs", int, 2, MAX_INPUTS, why="every input is run through tracr and the model"),
        default=DEFAULT_MAX_INPUTS,
        metavar="N",
        help=f"check a seeded sample of N inputs per length when there are more (default {DEFAULT_MAX_INPUTS}, "
        f"at most {MAX_INPUTS})",
    )
    c.add_argument("--seed", type=_options.seed(), default=0, help="seed of that sample (default 0)")
    c.add_argument("--force", action="store_true", help="write into --out even when it holds other files")
    c.add_argument("--json", action="store_true", help="print the summary as JSON")
    c.set_defaults(fn=cmd_compile)  # fmt: skip


def _vocab_value(text: str) -> int | str:
    """A --vocab entry: an integer when it reads as one, else the string."""
    try:
        return int(text)
    except ValueError:
        return text


def cmd_compile(args: argparse.Namespace) -> int:
    import json

    from circuitdag.tracr_compile import DEFAULT_THRESHOLD, compile_tracr, load_program, summary_lines
    from circuitdag.tracr_truth import TracrCheckError

    inputs = None
    if args.inputs:  # MODULE:FUNCTION returning the input sequences
        inputs = [list(xs) for xs in load_program(args.inputs)[0]]
    try:
        result = compile_tracr(
            args.program, [_vocab_value(v) for v in args.vocab], args.max_len, args.out, lengths=args.lengths,
            inputs=inputs, max_inputs=args.max_inputs, seed=args.seed, overwrite=args.force,
            command=" ".join(["circuitdag", *sys.argv[1:]]),
        )  # fmt: skip
    except TracrCheckError as exc:
        print(f"circuitdag: error: check failed: {exc}", file=sys.stderr)
        return 1
    if args.json:
        print(json.dumps(result, indent=1))
    else:
        print(summary_lines(result))
    for n, row in result["lengths"].items():
        for a in ("zero", "resample"):
            if not row[a]["acdc_on_task_data_matches"]:
                print(f"circuitdag: warning: length {n}, {a} ablation: ACDC at the default threshold "
                      f"{DEFAULT_THRESHOLD:g} on the task data does not recover the ground truth; "
                      "see ground_truth in model.json", file=sys.stderr)  # fmt: skip
    print(f"wrote {args.out}; run it with: circuitdag discover --task tracr:{args.out}")
    return 0
