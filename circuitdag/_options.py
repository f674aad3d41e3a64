"""Numeric command-line options: read and range-checked while the command line is parsed,
then capped by what the graph and the machine allow once those are known.

A value no run can use (0 threads, NaN, a seed no generator takes, 10^9 EAP-IG steps, more
prompts than memory can hold) is refused with one line (:class:`ConfigError`: exit status
2) before the long work starts. A size that only decides how the work is split (torch
threads, candidates per ACDC batch, prompts per attribution pass, edges kept, neurons
shown) is capped where it exceeds what the graph or the memory allows, with one warning
line that says so; for these options the capped run gives what the asked-for value would.

The defaults and limits that ``--help`` shows live here too, and the modules that use them
import them from here: this module imports nothing but the standard library and
:mod:`circuitdag.errors`, so that the command line builds its parser without torch
(``circuitdag --help`` answers in tens of milliseconds, ``benchmarks/cli_startup.py``).
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable
from typing import Any

from circuitdag.errors import ConfigError

#: Seeds every generator circuitdag seeds accepts (``random``, numpy, ``torch.Generator``).
MAX_SEED = 2**63 - 1
#: Most EAP-IG steps: each is a forward and backward pass over every prompt (EAP-IG and
#: MIB use 5); beyond this the Riemann sum has long converged and a run takes hours.
MAX_IG_STEPS = 1000

#: The task of a run when neither ``--task`` nor ``--prompts`` is given.
DEFAULT_TASK = "tracr-reverse"
#: Torch dtypes a run may load its model in (``--dtype``).
DTYPES = ("float32", "float64", "float16", "bfloat16")
#: Edges a drawing shows by default (:mod:`circuitdag.render`): a larger circuit is drawn as
#: its ``MAX_EDGES`` largest edges by ``|score|``. ``dot``'s time grows steeply with the
#: edges (timings in docs/how-it-works.md, "Large circuits").
MAX_EDGES = 300
#: Seconds graphviz may lay a drawing out before it is stopped (:func:`circuitdag.render.dot_svg`).
DOT_TIMEOUT_S = 120.0
#: MIB's grid, in percent of the graph's edges (``evaluation.py``: ``percentages``;
#: :mod:`circuitdag.mib`).
EDGE_PERCENTS: tuple[float, ...] = (0.1, 0.2, 0.5, 1, 2, 5, 10, 20, 50, 100)
#: The formats of ``circuitdag export`` (:mod:`circuitdag.export`).
EXPORT_FORMATS = ("circuit-tracer", "eap-ig")
#: Neurons per layer the activations view shows by default (:mod:`circuitdag.activations`).
DEFAULT_TOP = 16
#: ``tracr compile`` (:mod:`circuitdag.tracr_compile`): inputs per length above which a
#: seeded sample of this many is checked instead.
DEFAULT_MAX_INPUTS = 1024
#: Largest ``tracr compile --max-inputs``: every input is run through tracr's RASP
#: evaluator and the model.
MAX_INPUTS = 100_000
#: Largest ``tracr compile --max-len``. Measured on tests/tasks/user_rasp's smaller_count
#: (vocab 1 2 3, one shared 2-core CPU): max-len 8 took 15 s and 1.0 GB, 32 took 89 s and
#: 3.0 GB, 64 did not finish in 5 minutes (4.6 GB after 2.5).
MAX_LEN = 64


def number(
    flag: str, kind: type = int, minimum: float | None = None, maximum: float | None = None,
    infinite: bool = False, why: str = "",
) -> Callable[[str], Any]:  # fmt: skip
    """An argparse ``type`` for ``flag``: ``kind`` (int or float) within
    ``[minimum, maximum]``; a float may be infinite only with ``infinite``. Anything else
    raises :class:`ConfigError`, which the CLI prints as one line (argparse would print its
    usage); ``why`` explains the maximum."""

    def parse(text: str) -> Any:
        try:
            value = kind(text)
        except ValueError:
            what = "a whole number" if kind is int else "a number"
            raise ConfigError(f"{flag} must be {what}, got {text!r}") from None
        if kind is float and (math.isnan(value) or (math.isinf(value) and not infinite)):
            raise ConfigError(f"{flag} must be a finite number, got {text}")
        if minimum is not None and value < minimum:
            raise ConfigError(f"{flag} must be >= {minimum:g}, got {text}")
        if maximum is not None and value > maximum:
            raise ConfigError(f"{flag} must be at most {maximum:g}{f' ({why})' if why else ''}, got {text}")
        return value

    parse.numeric = True  # type: ignore[attr-defined]  # read by tests/test_cli_options.py
    parse.__name__ = kind.__name__  # argparse names the type in its messages
    return parse


def seed(flag: str = "--seed") -> Callable[[str], int]:
    """An argparse ``type`` for a seed: a whole number in 0..2^63-1."""
    return number(flag, int, 0, MAX_SEED, why="the largest seed every generator takes")


def cap(flag: str, value: int, limit: int, why: str) -> int:
    """``min(value, limit)``, with a warning line when the cap applies."""
    if value > limit:
        import logging  # here: the parser is built without it

        logging.getLogger("circuitdag").warning("%s %d capped at %d (%s)", flag, value, limit, why)
        return limit
    return value


def usable_cores() -> int:
    """The CPU cores this process may run on."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # pragma: no cover - not Linux
        return os.cpu_count() or 1


def threads(requested: int | None, default: int) -> int:
    """Torch CPU threads: ``requested`` capped at the usable cores, else ``default``."""
    if requested is None:
        return default
    return cap(
        "--threads", requested, usable_cores(), "the CPU cores this process may use; more threads only wait"
    )


def free_memory(device: Any) -> int:
    """Bytes free now on ``device``: free CUDA memory, or available RAM."""
    import torch

    device = torch.device(device)
    if device.type == "cuda":
        return int(torch.cuda.mem_get_info(device)[0])
    try:
        return int(os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE"))
    except (ValueError, OSError, AttributeError):  # pragma: no cover - not POSIX
        return 8 << 30


def _gb(n: float) -> str:
    return f"{n / (1 << 30):.1f} GB"


def check_n_prompts(model: Any, n_prompts: int | None, device: Any) -> None:
    """Refuse ``--n-prompts`` beyond what memory can hold: the clean and corrupted runs are
    cached, at least every node's output at one position per prompt (a lower bound: prompts
    have more positions, and the run needs more), so no more prompts than free memory
    divided by that can run."""
    if n_prompts is None:
        return
    import torch

    from circuitdag.models import spec_of

    spec = spec_of(model)
    item = torch.finfo(next(model.parameters()).dtype).bits // 8
    per_prompt = 2 * (1 + spec.n_layers * (spec.n_heads + 1)) * spec.d_model * item
    free = free_memory(device)
    if n_prompts * per_prompt > free:
        raise ConfigError(f"--n-prompts {n_prompts} needs more than {_gb(n_prompts * per_prompt)} to cache the clean "
                          f"and corrupted runs on this model ({per_prompt} bytes a prompt and position), and "
                          f"{_gb(free)} is free; ask for at most {free // per_prompt}")  # fmt: skip


def cap_k_max(patcher: Any, k_max: int | None) -> int | None:
    """``--k-max`` capped at the most edges into one node (a batch holds candidates for one
    destination, so it never holds more) and, where ACDC evaluates candidates layer by
    layer, at the batch that fits in memory (:func:`~circuitdag.acdc_search.max_candidates`; the
    component path caps each batch by memory itself). None stays None (the default)."""
    if k_max is None:
        return None
    widest = max((len(inc) for inc in patcher.graph.incoming.values()), default=1)
    k_max = cap("--k-max", k_max, max(widest, 1), f"no node has more than {widest} incoming edges")
    if patcher.kernels() is None:  # the layer-by-layer path: every candidate is a full batch of runs
        from circuitdag.acdc_search import max_candidates

        k_max = cap(
            "--k-max", k_max, max_candidates(patcher), "more candidates per batch do not fit in memory"
        )
    return k_max


def cap_batch_size(patcher: Any, batch_size: int | None) -> int | None:
    """``--batch-size`` capped at the prompts (a pass never holds more) and at what fits in
    free memory (:func:`~circuitdag.attribution.default_batch_size` with all free memory)."""
    if batch_size is None:
        return None
    from circuitdag.attribution import default_batch_size

    batch_size = cap("--batch-size", batch_size, patcher.B, f"the run has {patcher.B} prompts")
    fits = default_batch_size(patcher, budget_bytes=free_memory(patcher.device))
    return cap("--batch-size", batch_size, fits, "more prompts per pass do not fit in free memory")
