"""The directory ``circuitdag tracr compile`` writes, as far as loading its model goes.

A compiled directory holds ``model.safetensors`` + ``model.json`` (the
:func:`~circuitdag.models.hooked.save_tiny` format, whose ``tracr_dir`` field marks the
directory), ``inputs.json`` (the input space and the program's outputs per length) and,
for a program from a file, ``program.py``. The task that reads the rest is
:class:`circuitdag.tasks.tracr.CompiledTracrTask`; the writer is
:mod:`circuitdag.tracr_compile`. Nothing here needs JAX.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from circuitdag.errors import ModelError

if TYPE_CHECKING:  # the hooked transformer imports TransformerLens: loaded with a model only
    from circuitdag.models.hooked import TinyTransformer

__all__ = ["DIR_FORMAT", "INPUTS_FILE", "MODEL_FILE", "is_compiled_dir", "load_compiled", "split_spec"]

#: ``model.json`` field that marks a directory written by ``circuitdag tracr compile``.
DIR_FORMAT = "circuitdag.tracr-dir/1"
#: The model's files (``model.safetensors``, ``model.json``) and the inputs' file.
MODEL_FILE, INPUTS_FILE = "model", "inputs.json"


def is_compiled_dir(path: str | Path) -> bool:
    """True when ``path`` is a directory written by ``circuitdag tracr compile``."""
    doc = Path(path) / f"{MODEL_FILE}.json"
    if not doc.is_file():
        return False
    try:
        return json.loads(doc.read_text()).get("tracr_dir") == DIR_FORMAT
    except (OSError, ValueError):
        return False


def split_spec(spec: str) -> tuple[str, int | None]:
    """``"DIR"`` -> (DIR, None); ``"DIR@N"`` -> (DIR, N): a compiled directory and an input
    length (``--task tracr:DIR@N``). Raises :class:`ModelError` for a non-integer N."""
    path, at, length = spec.rpartition("@")
    if not at:
        return spec, None
    if not length.isdigit():
        raise ModelError(f"tracr:{spec}: the part after @ must be an input length, got {length!r}")
    return path, int(length)


def load_compiled(
    path: str | Path, device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32
) -> TinyTransformer:
    """The model of a compiled directory; :class:`ModelError` when ``path`` is not one."""
    if not is_compiled_dir(path):
        raise ModelError(f"{path} is not a compiled tracr directory (no {MODEL_FILE}.json with "
                         f'"tracr_dir": "{DIR_FORMAT}"); write one with `circuitdag tracr compile`')  # fmt: skip
    from circuitdag.models.hooked import load_tiny

    model, _ = load_tiny(Path(path) / MODEL_FILE, device=device, dtype=dtype)
    return model
