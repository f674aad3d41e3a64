"""What a result records about how it was made, and what ``--resume`` compares.

A circuit depends on more than the options of the command that found it: the model's
dtype and device, whether TransformerLens processed its weights (folded LayerNorm,
centred weights: zero ablation of a head then means something else; on the zoo pronoun
model 15 vs 11 edges), whether the prompts start with BOS, the prompts themselves
(their number and the dataset seed), and the versions of the libraries that compute it.
:func:`run_record` collects these for ``circuit.json``; :data:`RESUME_KEYS` are the ones
an ACDC checkpoint stores and a resumed run must match (docs/reproducibility.md).
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import platform
from typing import Any

import torch

from circuitdag.tasks.base import TaskData

__all__ = ["RESUME_KEYS", "data_fingerprint", "library_versions", "run_record"]

#: Libraries whose version can change a result.
LIBRARIES = ("circuitdag", "torch", "transformer_lens", "transformers", "numpy", "numba")

#: Fields of a result that a resumed ACDC run must share with its checkpoint. (``threads``
#: is recorded but not compared: it changes float sums only in the last bits, and the
#: default follows the machine's load, see docs/reproducibility.md.)
RESUME_KEYS = (
    "task", "model", "metric", "ablation", "seed", "positions", "n_prompts", "data_sha256",
    "dtype", "device", "process_weights", "prepend_bos", "bos", "versions",
)  # fmt: skip


def library_versions() -> dict[str, str | None]:
    """Installed versions of :data:`LIBRARIES` (None when absent) and Python's."""
    out: dict[str, str | None] = {}
    for name in LIBRARIES:
        try:
            out[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            out[name] = None
    out["python"] = platform.python_version()
    return out


def data_fingerprint(data: TaskData) -> str:
    """SHA-256 (16 hex digits) of a task's token ids, answers and validity mask: two runs
    with the same fingerprint ran on the same prompts, whatever produced them."""
    h = hashlib.sha256()
    for t in (data.clean, data.corrupted, data.answer_pos, data.correct, data.wrong, data.valid):
        if t is None:
            h.update(b"none")
        else:
            a = t.detach().to("cpu", torch.int64).contiguous().numpy()
            h.update(str(a.shape).encode())
            h.update(a.tobytes())
    return h.hexdigest()[:16]


def _process_weights(model: Any) -> bool | str | None:
    """Whether TransformerLens processed the weights of a bridge, or the zoo loader those of
    the hooked transformer the same way (None: neither); ``"partial"`` when it could do only
    part of it on this architecture (the reason: ``process_weights_partial``)."""
    if not hasattr(model, "original_model"):
        return getattr(model, "_weights_processed", None)
    done = bool(getattr(model, "_weights_processed", False))
    return "partial" if done and getattr(model.cfg, "process_weights_partial", None) else done


def run_record(model: Any, task: Any, data: TaskData) -> dict[str, Any]:
    """The fields every saved result records beyond the run's options (see module doc)."""
    from circuitdag.tasks._lm import bos_record

    param = next(model.parameters())
    first = data.clean[:, 0].tolist() if data.clean.shape[1] else None
    return {
        "dtype": str(param.dtype).removeprefix("torch."),
        "device": param.device.type,
        "threads": torch.get_num_threads(),
        "process_weights": _process_weights(model),
        **({"process_weights_partial": model.cfg.process_weights_partial}
           if getattr(getattr(model, "cfg", None), "process_weights_partial", None) else {}),
        **bos_record(model, task, first),
        "data_sha256": data_fingerprint(data),
        "versions": library_versions(),
    }
