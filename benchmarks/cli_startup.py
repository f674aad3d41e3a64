"""How long ``circuitdag --help`` takes, against a bare ``python -c "import json"``.

    .venv/bin/python benchmarks/cli_startup.py            # best of 5, alternating
    .venv/bin/python benchmarks/cli_startup.py --runs 11

Both run as fresh processes of this interpreter, one after the other in turn (after one
warm-up run of each, so that the file cache is warm and the bytecode written: the
processes may write ``__pycache__`` even where ``PYTHONDONTWRITEBYTECODE`` is set, as an
installed package has its bytecode), and each one's best wall time is kept: the least
disturbed by other work on the machine. ``circuitdag --help`` runs the
installed console script where there is one (else ``-m circuitdag.cli``); the target is at
most 3x the bare interpreter (issue 22). ``import circuitdag`` (lazy: no torch),
``discover --help`` and ``tasks`` (which imports every task plugin, and torch with them,
but no TransformerLens or transformers) are timed the same way, for the record.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path


def command(*args: str) -> list[str]:
    script = Path(sys.executable).with_name("circuitdag")
    if script.exists():
        return [sys.executable, str(script), *args]
    found = shutil.which("circuitdag")
    return [found, *args] if found else [sys.executable, "-m", "circuitdag.cli", *args]


ENV = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}


def wall(argv: list[str]) -> float:
    t0 = time.perf_counter()
    subprocess.run(argv, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=ENV)
    return time.perf_counter() - t0


def best_of(commands: dict[str, list[str]], runs: int) -> dict[str, float]:
    """Each command's best wall time (s) over ``runs`` rounds; in a round every command
    runs once, in turn, so that a slow moment of the machine hits all of them."""
    for argv in commands.values():  # warm-up
        wall(argv)
    best = dict.fromkeys(commands, float("inf"))
    for _ in range(runs):
        for name, argv in commands.items():
            best[name] = min(best[name], wall(argv))
    return best


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--runs", type=int, default=5, help="rounds; the best of them is kept (default 5)")
    args = ap.parse_args()
    best = best_of({"python -c 'import json'": [sys.executable, "-c", "import json"],
                    "python -c 'import circuitdag'": [sys.executable, "-c", "import circuitdag"],
                    "circuitdag --help": command("--help"),
                    "circuitdag discover --help": command("discover", "--help")}, args.runs)  # fmt: skip
    base = best["python -c 'import json'"]
    for name, t in best.items():
        print(f"{name:<30} {1000 * t:8.1f} ms  {t / base:6.2f}x")
    tasks = best_of({"circuitdag tasks": command("tasks")}, max(1, args.runs // 2))["circuitdag tasks"]
    print(f"{'circuitdag tasks':<30} {1000 * tasks:8.1f} ms  {tasks / base:6.2f}x")
    ratio = best["circuitdag --help"] / base
    print(f"circuitdag --help / import json: {ratio:.2f}x (target: at most 3x) -> {'ok' if ratio <= 3 else 'over'}")


if __name__ == "__main__":
    main()
