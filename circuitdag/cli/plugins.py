"""``circuitdag tasks`` and ``circuitdag algorithms``: list the registered task plugins and
discovery methods (built-in and from entry points).

``tasks`` imports the task modules (and torch) but no TransformerLens or transformers: a
task loads its model only when asked (tests/test_cli_startup.py)."""

from __future__ import annotations

import argparse
import json
from typing import Any


def register(sub: Any) -> None:
    p = sub.add_parser("tasks", help="list task plugins")
    p.add_argument("--json", action="store_true")
    p.set_defaults(fn=cmd_tasks)

    p = sub.add_parser("algorithms", help="list discovery methods (built-in and plugins) and their options")
    p.add_argument("--json", action="store_true")
    p.set_defaults(fn=cmd_algorithms)


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
            how = o.flag
            print(f"    {how} {o.kind.__name__.upper()}: {o.help}{default}")
    return 0
