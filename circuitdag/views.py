"""Command line of the browser views: ``circuitdag explore`` (the circuit explorer,
:mod:`circuitdag.explore`) and ``circuitdag activations`` (the layer-activations view,
:mod:`circuitdag.activations`). Kept apart from :mod:`circuitdag.explore` so that imports run
one way: circuit -> explore, and views -> io -> circuit."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any


def cmd_explore(args: argparse.Namespace) -> int:
    from circuitdag.explore import write_explorer
    from circuitdag.io import load_circuit

    circuit = load_circuit(args.circuit)
    out = Path(args.output or Path(args.circuit).with_suffix(".html"))
    print(write_explorer(circuit, out))
    return 0


def register_cli(sub: Any) -> None:
    """Add ``explore`` and ``activations`` to the ``circuitdag`` subcommands."""
    from circuitdag.activations import add_parser

    p = sub.add_parser("explore", help="write an interactive HTML explorer of a circuit.json (works offline)")
    p.add_argument("circuit", help="a circuit.json")
    p.add_argument("-o", "--output", help="HTML path (default: next to the JSON, .html)")
    p.set_defaults(fn=cmd_explore)
    add_parser(sub)
