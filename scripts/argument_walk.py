"""The walk a reader makes following ``circuitdag discover``'s arguments through the code.

Traces ``circuitdag discover --task tracr-reverse -q --no-svg`` (or the given arguments)
from the command's entry until the search starts (the first call of ``acdc_fast``,
``acdc_reference`` or ``attribute``), and counts, over calls between circuitdag functions
(each caller -> callee pair once, in the order first made, down to ``--depth`` calls below
the command):

* files entered: distinct source files of those functions;
* moves: calls whose callee is in another file than its caller;
* climbs back up: returns from such a call (into the caller's file) after which the
  caller goes on to call something else.

    .venv/bin/python scripts/argument_walk.py [--depth 4] [discover arguments ...]

Run it on two commits (a git worktree) to compare a restructuring; the numbers are the
same on every run of the same code.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

STOP = {"acdc_fast", "acdc_reference", "attribute"}
#: discover's arguments followed by name: each function that takes one as a parameter.
ARGUMENTS = ("threshold", "ablation", "metric", "positions", "seed", "n_prompts", "task", "model")
ENTRY = "cmd_discover"


def walk(argv: list[str], depth: int) -> dict[str, object]:
    import circuitdag

    root = str(Path(circuitdag.__file__).resolve().parent)
    stack: list[tuple[str, str]] = []  # (file, function) of circuitdag frames since the entry
    seen: set[tuple[str, str, str, str]] = set()
    files: list[str] = []
    moves = climbs = 0
    pending_climb: list[bool] = []
    done = False
    importing = 0  # inside a module's top-level code (an import, not the walk)
    takers: dict[str, set[tuple[str, str]]] = {a: set() for a in ARGUMENTS}

    def profile(frame, event, arg):
        nonlocal moves, climbs, done, importing
        if done:
            return
        if frame.f_code.co_name == "<module>":
            importing += 1 if event == "call" else -1 if event == "return" else 0
            return
        if importing:
            return
        f = frame.f_code.co_filename
        if not f.startswith(root):
            return
        here = (str(Path(f).relative_to(root)), frame.f_code.co_name)
        if event == "call":
            if not stack and here[1] != ENTRY:
                return
            if here[1] in STOP:
                done = True
                return
            code = frame.f_code
            params = code.co_varnames[: code.co_argcount + code.co_kwonlyargcount]
            for a in ARGUMENTS:
                if a in params:
                    takers[a].add(here)
            if stack and len(stack) <= depth:
                caller = stack[-1]
                pair = (*caller, *here)
                if pair not in seen:
                    seen.add(pair)
                    if here[0] not in files:
                        files.append(here[0])
                    if here[0] != caller[0]:
                        moves += 1
                        pending_climb.append(True)
                    else:
                        pending_climb.append(False)
                else:
                    pending_climb.append(False)
            elif not stack:
                files.append(here[0])
                pending_climb.append(False)
            else:
                pending_climb.append(False)
            stack.append(here)
        elif event == "return" and stack and stack[-1] == here:
            stack.pop()
            if pending_climb.pop():
                climbs += 1

    from circuitdag.cli import main

    sys.setprofile(profile)
    try:
        main(argv)
    finally:
        sys.setprofile(None)
    return {"files": files, "n_files": len(files), "moves": moves, "climbs": climbs,
            "arguments": {a: (len(t), len({f for f, _ in t})) for a, t in takers.items()}}


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--depth", type=int, default=4)
    opts, rest = p.parse_known_args()
    out = tempfile.mkdtemp()
    argv = ["discover", *(rest or ["--task", "tracr-reverse"]), "-q", "--out", out]
    r = walk(argv, opts.depth)
    print(f"{r['n_files']} files entered, {r['moves']} moves between files, {r['climbs']} climbs back up "
          f"(depth {opts.depth})")
    print("files:", " -> ".join(r["files"]))  # type: ignore[arg-type]
    print("functions (files) taking each argument:",
          ", ".join(f"{a} {n} ({f})" for a, (n, f) in r["arguments"].items()))  # type: ignore[attr-defined]
