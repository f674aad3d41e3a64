"""What several commands share: the parser class with one-line errors, the options every
run takes (``--task``, ``--model``, ``--metric``, ...), loading the task and the model they
name, option parsing that argparse cannot do, and the phase messages.

Stdlib-only at import (the library is imported inside the functions that run a command),
so that building the parser costs no more than argparse.
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import warnings
from pathlib import Path
from typing import Any, NoReturn, overload

from circuitdag import _options
from circuitdag._options import DEFAULT_TASK, DTYPES, number
from circuitdag.errors import ConfigError


class Parser(argparse.ArgumentParser):
    """argparse with the CLI's one-line errors (its subcommands' parsers are of this class
    too): ``circuitdag discover: error: argument --k-max: ...; see circuitdag discover --help``."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message}; see {self.prog} --help\n")


def add_run_options(p: argparse.ArgumentParser, task_required: bool = False) -> None:
    """The options of every command that runs a task on a model (discover, roc, sweep, neurons)."""
    if task_required:
        p.add_argument("--task", required=True, help="task name (see `circuitdag tasks`)")
    else:
        p.add_argument("--task", default=None, help=f"task name (see `circuitdag tasks`; default {DEFAULT_TASK})")
    p.add_argument("--model", help="model to use instead of the task's default (zoo name, hub name, local dir)")
    p.add_argument("--metric", help="kl, logit_diff, prob, nll, l2, or task (the task's own metric); "
                   "default: the task's")  # fmt: skip
    p.add_argument("--n-prompts", type=number("--n-prompts", int, 1), default=None, metavar="N",
                   help="number of prompts (default: the task's; a task with a fixed list uses a subset drawn "
                   "with --seed)")  # fmt: skip
    p.add_argument("--ablation", help="resample, zero or mean (default: the task's)")
    p.add_argument("--device", default="cpu", help="torch device, e.g. cpu or cuda")
    p.add_argument("--dtype", default="float32", choices=DTYPES)
    p.add_argument("--seed", type=_options.seed(), default=0,
                   help="seed of the task's dataset (default 0); a task with a fixed list of prompts, such as "
                   "pronoun, has the same prompts for every seed unless --n-prompts draws a subset")
    p.add_argument("--prepend-bos", choices=("auto", "yes", "no"), default="auto",
                   help="start prompts with the tokenizer's BOS token (default auto: decided from the tokenizer "
                   "and model, see docs/tasks.md; recorded in circuit.json)")
    p.add_argument("--threads", type=number("--threads", int, 1), default=None,
                   help="torch CPU threads (tiny models are fastest with 1; default: the cores not "
                   "already busy, from the load average; capped at the cores this process may use)")


def torch_dtype(name: str) -> Any:
    """``"float32"`` -> ``torch.float32``."""
    import torch

    return getattr(torch, name)


def writable_dir(path: str) -> Path:
    """``--out``, created; a one-line error when it cannot be written."""
    out = Path(path)
    try:
        out.mkdir(parents=True, exist_ok=True)
        probe = out / ".circuitdag-write-test"
        probe.write_text("")
        probe.unlink()
    except OSError as exc:
        raise ConfigError(f"output directory {out} is not writable ({exc.strerror or exc}); choose another --out")
    return out


@overload
def threshold(text: str, flag: str = ...) -> float: ...
@overload
def threshold(text: None, flag: str = ...) -> None: ...
def threshold(text: str | None, flag: str = "--threshold") -> float | None:
    """A threshold option: a finite number >= 0 (None stays None)."""
    if text is None:
        return None
    try:
        value = float(text)
    except ValueError:
        raise ConfigError(f"{flag} must be a number, got {text!r}") from None
    if not value >= 0:
        raise ConfigError(f"{flag} must be >= 0, got {text}")
    if math.isinf(value):
        raise ConfigError(f"{flag} must be finite, got {text}: an infinite threshold removes every edge")
    return value


def task_of(args: argparse.Namespace) -> Any:
    """The task of a run: ``--prompts FILE`` (with ``--model``) or ``--task NAME``."""
    from circuitdag.tasks import Task, get_task

    prompts = getattr(args, "prompts", None)
    if prompts:
        if args.task:
            raise ConfigError("give either --task NAME or --prompts FILE, not both")
        if not args.model:
            raise ConfigError("--prompts needs --model NAME_OR_DIR, the model the prompts are for "
                              "(a Hugging Face directory, a hub name, a zoo name or smollm2-135m)")  # fmt: skip
        task = Task.from_prompts(prompts)
        rows = getattr(task, "prompts", [])
        if len(set(rows)) < len(rows) and not getattr(args, "quiet", False):  # allowed (a weighting), rarely meant
            print(f"circuitdag: note: {prompts} repeats {len(rows) - len(set(rows))} of its {len(rows)} rows; each "
                  "copy counts again in every mean (--holdout keeps the copies of a row on one side)",
                  file=sys.stderr)  # fmt: skip
        return task
    return get_task(args.task or DEFAULT_TASK)


def silence_loading_bars() -> None:
    """Turn off the progress bars Hugging Face libraries draw while loading (``-q``)."""
    # Read by huggingface_hub, and through it by transformers, when they are imported: a
    # command that loads no Hugging Face model (the zoo, tracr) never pays for importing them.
    os.environ["HF_HUB_DISABLE_PROGRESS_BARS"] = "1"
    if "transformers" in sys.modules:
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()


def load(args: argparse.Namespace) -> tuple[Any, Any]:
    """The task and the model of a run's options (:func:`add_run_options`), with torch's
    threads set; what cannot work is refused before the model loads."""
    import torch

    from circuitdag.loading import load_model
    from circuitdag.metrics import resolve_metric
    from circuitdag.patching import Ablation
    from circuitdag.tasks._lm import with_prepend_bos

    requested = getattr(args, "threads", None)
    threads = _options.threads(requested, default_threads() if requested is None else 1)
    torch.set_num_threads(threads)
    _log().info("using %d torch threads", threads)
    task = task_of(args)
    own = task.for_model(args.model) if getattr(args, "model", None) else None  # one of the task's own models
    task = with_prepend_bos(own or task, getattr(args, "prepend_bos", "auto"))
    resolve_metric(task, args.metric)  # fail before loading the model
    _warn_unused_seed(task, args)
    if args.ablation:
        Ablation.parse(args.ablation)
    dtype = torch_dtype(args.dtype)
    quiet = getattr(args, "quiet", False)
    with phase(f"loading {getattr(args, 'model', None) or task.default_model or 'the model'} "
               f"({threads} torch threads)", quiet):  # fmt: skip
        if getattr(args, "model", None) and own is None:
            model = load_model(args.model, device=args.device, dtype=dtype)
        else:
            model = task.load_model(device=args.device, dtype=dtype)
    _options.check_n_prompts(model, getattr(args, "n_prompts", None), args.device)
    return task, model


def _warn_unused_seed(task: Any, args: argparse.Namespace) -> None:
    """One line when ``--seed`` cannot change the run: the task's prompts are a fixed list
    (its ``data_uses_seed`` is False) and no ``--n-prompts`` subset is drawn."""
    if getattr(args, "seed", 0) and getattr(args, "n_prompts", None) is None and not getattr(
        task, "data_uses_seed", True
    ):
        _log().warning("--seed %d changes nothing: task %s has a fixed list of prompts; the seed only draws the "
                    "subset that --n-prompts asks for", args.seed, task.name)  # fmt: skip


def default_threads() -> int:
    """Torch CPU threads when --threads is not given: the cores this process may use, less
    those other processes keep busy right now, at least 1.

    torch's default (one thread per core) oversubscribes a busy machine: on the 2-core
    machine with three other busy threads, a SmolLM2 forward pass took 16.3 s with 2
    threads and 5.4 s with 1 (docs/real-models.md). "Busy right now" is the number of
    runnable threads in ``/proc/loadavg`` (median of 5 samples over 0.2 s, less this
    process), not the 1-minute load average, which still counts a job that just ended."""
    cores = _options.usable_cores()
    return max(1, min(cores, cores - _busy_threads()))


def _busy_threads() -> int:
    import statistics
    import time

    samples = []
    try:
        for _ in range(5):
            with open("/proc/loadavg") as f:
                running = int(f.read().split()[3].split("/")[0])
            samples.append(running - 1)  # this process is running
            time.sleep(0.05)
        return max(0, int(statistics.median(samples)))
    except (OSError, ValueError, IndexError):  # pragma: no cover - not Linux
        try:
            return round(os.getloadavg()[0])
        except OSError:
            return 0


#: The installed circuitdag package, which warnings printed as one line come from.
_PACKAGE = str(Path(__file__).resolve().parent.parent)
#: Python's own warning format, for warnings from elsewhere.
_PYTHON_FORMAT = warnings.formatwarning


def format_warning(message: Warning | str, category: type[Warning], filename: str, lineno: int,
                   line: str | None = None) -> str:  # fmt: skip
    """``warnings.formatwarning`` for the CLI: a ``UserWarning`` that circuitdag raises (the
    model barely does the task, ...) is one ``circuitdag: warning: ...`` line, like every
    other message of the CLI, not Python's source line; anything else as Python prints it."""
    if issubclass(category, UserWarning) and str(Path(filename).resolve()).startswith(_PACKAGE):
        return f"circuitdag: warning: {message}\n"
    return _PYTHON_FORMAT(message, category, filename, lineno, line)


def _log() -> Any:
    """The library's logger (logging is imported when a command runs, not to build the parser)."""
    import logging

    return logging.getLogger("circuitdag")


class phase:
    """Logs a slow step with its duration (a bar where the step has its own)."""

    def __init__(self, what: str, quiet: bool) -> None:
        self.what, self.quiet = what, quiet

    def __enter__(self) -> None:
        import time

        self.t0 = time.perf_counter()
        if not self.quiet:
            print(f"circuitdag: {self.what} ...", file=sys.stderr, flush=True)

    def __exit__(self, *exc: object) -> None:
        import time

        if not self.quiet and exc[0] is None:
            print(f"circuitdag: {self.what}: {time.perf_counter() - self.t0:.1f}s", file=sys.stderr, flush=True)


def name_values(items: list[str] | None) -> list[tuple[str, str]]:
    """``--option NAME=VALUE`` items as ``(name, value)`` pairs (dashes in names read as
    underscores; values stay text: the method's :meth:`Algorithm.check` types them).
    Raises :class:`ConfigError` for an item without ``=`` or a name."""
    out = []
    for item in items or []:
        name, sep, value = item.partition("=")
        if not sep or not name.strip():
            raise ConfigError(f"--option takes NAME=VALUE, got {item!r}")
        out.append((name.strip().replace("-", "_"), value.strip()))
    return out
