"""The command line starts fast: ``circuitdag --help`` and ``circuitdag discover --help``
build the parser from the standard library alone (no torch, numpy, TransformerLens or
transformers), and ``circuitdag tasks`` lists the tasks without TransformerLens or
transformers (a task loads its model only when asked). Times: benchmarks/cli_startup.py."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

# Runs the command in a fresh interpreter, then prints (to stderr, after the command's own
# output) the top-level modules it imported beyond a bare interpreter's.
PROBE = """
import json, subprocess, sys
bare = set(json.loads(subprocess.run([sys.executable, "-c", "import json, sys; print(json.dumps(list(sys.modules)))"],
                                     capture_output=True, text=True, check=True).stdout))
from circuitdag.cli import main
try:
    code = main({argv!r})
except SystemExit as exc:
    code = exc.code
new = sorted({{m.partition(".")[0] for m in set(sys.modules) - bare}})
print(json.dumps({{"code": code, "new": new, "stdlib": sorted(sys.stdlib_module_names)}}), file=sys.stderr)
"""


def imported_by(argv: list[str]) -> tuple[int, set[str], set[str]]:
    """(exit status, top-level packages imported beyond a bare interpreter's, stdlib names)."""
    done = subprocess.run([sys.executable, "-c", PROBE.format(argv=argv)], capture_output=True, text=True,
                          timeout=600, check=False)  # fmt: skip
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stderr.strip().splitlines()[-1])
    return report["code"], set(report["new"]), set(report["stdlib"])


@pytest.mark.parametrize("argv", [["--help"], ["discover", "--help"], ["curve", "--help"], ["tracr", "compile", "--help"]])
def test_help_imports_only_the_standard_library(argv: list[str]) -> None:
    code, new, stdlib = imported_by(argv)
    assert code == 0
    assert new - stdlib == {"circuitdag"}, f"--help imported {sorted(new - stdlib - {'circuitdag'})}"


def test_tasks_imports_no_transformer_lens_or_transformers() -> None:
    code, new, _ = imported_by(["tasks"])
    assert code == 0 and "torch" in new  # the tasks' data are tensors
    assert not new & {"transformer_lens", "transformers"}, sorted(new & {"transformer_lens", "transformers"})


def test_help_and_version_from_the_console_entry_points(capsys: pytest.CaptureFixture[str]) -> None:
    """``python -m circuitdag.cli`` is the console script's ``circuitdag.cli:main``;
    ``--version`` reads the installed version only when asked."""
    done = subprocess.run([sys.executable, "-m", "circuitdag.cli", "--help"], capture_output=True, text=True,
                          timeout=300, check=False)  # fmt: skip
    assert done.returncode == 0 and "discover" in done.stdout and "tracr" in done.stdout
    from circuitdag import __version__
    from circuitdag.cli import main

    with pytest.raises(SystemExit) as exc:
        main(["--version"])
    assert exc.value.code == 0 and capsys.readouterr().out == f"circuitdag {__version__}\n"


def test_every_command_has_a_handler_in_the_cli_package() -> None:
    """Every command's handler lives in circuitdag.cli (the library takes plain arguments)."""
    import argparse

    from circuitdag.cli import build_parser

    def handlers(parser: argparse.ArgumentParser, prefix: str = "") -> dict[str, object]:
        found = {}
        for action in parser._actions:
            if isinstance(action, argparse._SubParsersAction):
                for name, sub in action.choices.items():
                    found.update(handlers(sub, f"{prefix} {name}".strip()))
        if prefix and parser.get_default("fn") is not None:
            found[prefix] = parser.get_default("fn")
        return found

    found = handlers(build_parser())
    assert len(found) == 19 and "tracr compile" in found and "ccs" in found and "features" in found
    assert "soft-prompts" in found
    assert all(fn.__module__.startswith("circuitdag.cli.") for fn in found.values()), found  # type: ignore[attr-defined]
    assert all(fn.__name__.startswith("cmd_") for fn in found.values())  # type: ignore[attr-defined]
