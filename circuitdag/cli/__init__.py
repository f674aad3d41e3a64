"""``circuitdag`` command line: a thin wrapper over the Python API.

Every deliberate error (:class:`~circuitdag.errors.CircuitDagError`) is printed as one
line ``circuitdag: error: ...`` and exits with status 2.

One module per group of commands, each adding its commands with ``register(subparsers)``:

* :mod:`~circuitdag.cli.plugins` -- ``tasks``, ``algorithms`` (what is registered);
* :mod:`~circuitdag.cli.discover` -- ``discover``, ``roc`` (finding circuits);
* :mod:`~circuitdag.cli.sweep` -- ``sweep``, ``sweep-worker`` (Optuna studies);
* :mod:`~circuitdag.cli.circuits` -- ``render``, ``evaluate``, ``curve``, ``export``,
  ``explore``, ``compare`` (saved circuits);
* :mod:`~circuitdag.cli.analysis` -- ``heads``, ``neurons``, ``activations`` (inside models);
* :mod:`~circuitdag.cli.tracr` -- ``tracr compile``;
* :mod:`~circuitdag.cli.projects` -- ``ccs`` (the seed's other projects);
* :mod:`~circuitdag.cli._common` -- the options and the loading several commands share.

Building the parser imports the standard library, :mod:`circuitdag._options` and
:mod:`circuitdag.errors` only: a command's handler (``cmd_*``) imports the library when it
runs, and library functions take plain arguments. So ``circuitdag --help`` costs about what
the interpreter's start does (``benchmarks/cli_startup.py``), and ``circuitdag tasks``
imports no TransformerLens or transformers (tests/test_cli_startup.py).
"""

from __future__ import annotations

import argparse
import sys

from circuitdag.cli import analysis, circuits, discover, plugins, projects, sweep, tracr
from circuitdag.cli._common import Parser, format_warning, silence_loading_bars
from circuitdag.errors import CircuitDagError


class _Version(argparse.Action):
    """``--version``: read from the installed metadata only when asked (it costs more than
    building the whole parser)."""

    def __init__(self, option_strings: list[str], dest: str = argparse.SUPPRESS, **kwargs: object) -> None:
        super().__init__(option_strings, dest, nargs=0, default=argparse.SUPPRESS,
                         help="print circuitdag's version and exit")  # fmt: skip

    def __call__(self, parser: argparse.ArgumentParser, *_: object) -> None:
        from circuitdag._version import __version__

        print(f"circuitdag {__version__}")
        parser.exit()


def build_parser() -> argparse.ArgumentParser:
    """The ``circuitdag`` parser with every command (stdlib only: nothing heavy is imported)."""
    parser = Parser(prog="circuitdag", description="Automatic circuit discovery (ACDC).")
    parser.add_argument("-v", "--verbose", action="store_true", help="log progress details")
    parser.add_argument("--version", action=_Version)
    sub = parser.add_subparsers(dest="command", required=True)
    for group in (plugins, discover, sweep, circuits, analysis, tracr, projects):
        group.register(sub)
    return parser


class Terminated(KeyboardInterrupt):
    """SIGTERM (a scheduler's kill, ``timeout``): ended like Ctrl-C, with the same message."""


def _terminate(signum: int, frame: object) -> None:
    raise Terminated


def main(argv: list[str] | None = None) -> int:
    import signal
    import threading

    in_main = threading.current_thread() is threading.main_thread()
    before = signal.signal(signal.SIGTERM, _terminate) if in_main else None
    try:
        return _main(argv)
    finally:
        if in_main:
            signal.signal(signal.SIGTERM, before)


def _main(argv: list[str] | None) -> int:
    parser = build_parser()
    args = None
    try:
        args = parser.parse_args(argv)  # a numeric option's type raises ConfigError
        import logging

        logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING,
                            format="%(levelname)s %(name)s: %(message)s")  # fmt: skip
        if getattr(args, "quiet", False):  # every command's -q, curve and sweep included
            silence_loading_bars()
        import warnings

        before, warnings.formatwarning = warnings.formatwarning, format_warning  # type: ignore[assignment]
        try:
            return args.fn(args)
        finally:
            warnings.formatwarning = before
    except CircuitDagError as exc:
        print(f"circuitdag: error: {exc}", file=sys.stderr)
        return 2
    except (IsADirectoryError, NotADirectoryError, PermissionError, FileExistsError) as exc:
        # A path the command writes or reads is in the way (a directory where a file goes):
        # one line, not a traceback. Files already written stay.
        where = exc.filename if exc.filename2 is None else f"{exc.filename} -> {exc.filename2}"
        print(f"circuitdag: error: cannot use {where}: {exc.strerror}; move it out of the way or choose another "
              "output path", file=sys.stderr)  # fmt: skip
        return 2
    except KeyboardInterrupt as exc:
        hint = _resume_hint(args)
        how = "terminated (SIGTERM)" if isinstance(exc, Terminated) else "interrupted"
        print(f"circuitdag: {how}{hint}", file=sys.stderr)
        return 143 if isinstance(exc, Terminated) else 130
    except BrokenPipeError:  # the reader went away (`circuitdag tasks | head`): not an error
        import os

        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # no second error at exit
        return 0


def _resume_hint(args: argparse.Namespace | None) -> str:
    """What ``--resume`` continues from after this interruption, as the end of its line:
    the checkpoint of a ``discover`` whose method checkpoints (once its first one was
    written), the finished resamples of an in-process ``--bootstrap``
    (circuitdag.bootstrap_journal) or those of its ``--storage`` study (interrupted during
    the checks after the search); empty when there is nothing."""
    path = getattr(args, "checkpoint_path", None)
    parts = ["the checkpoint"] if path is not None and path.exists() else []
    journal = getattr(args, "bootstrap_journal", None)
    if journal is not None:
        from circuitdag.bootstrap_journal import finished

        resamples, prompts = finished(journal)
        if resamples:
            parts.append(f"the {resamples} finished bootstrap resample{'s' * (resamples != 1)}")
        elif prompts:
            parts.append(f"the bootstrap's per-prompt scores of {prompts} prompt{'s' * (prompts != 1)}")
    storage = getattr(args, "storage", None)
    if storage and getattr(args, "bootstrap", None) and getattr(args, "assessing", False):
        from circuitdag.sweep.storage import masked

        parts.append(f"the finished resamples of the bootstrap study in {masked(storage)}")
    if not parts:
        return ""
    return "; rerun with --resume to continue from " + " and ".join(parts)


__all__ = ["build_parser", "main"]
