"""Loading a model by any name a user types, task-provided models included.

:mod:`circuitdag.models` loads concrete models (the zoo, SmolLM2, compiled tracr
directories, any Hugging Face name or local directory). Some names belong to tasks: the
shipped tracr programs (``tracr-reverse``, ...) are compiled by their task, and a task may
own several models (``reversal``: ``compiled``, ``trained``). This module sits above both
packages, so imports run one way: ``loading -> tasks -> models``.
"""

from __future__ import annotations

from typing import Any

import torch

from circuitdag import models
from circuitdag.tasks import Task, get_task


def load_model(name: str, device: str = "cpu", dtype: torch.dtype = torch.float32) -> Any:
    """Load a model by name: ``tracr-<program>`` (a shipped tracr task's compiled model)
    or anything :func:`circuitdag.models.load_model` takes (zoo name, ``smollm2-135m``,
    ``tracr:DIR``, a Hugging Face name or local directory).

    Raises :class:`~circuitdag.errors.TaskError` for an unknown ``tracr-`` name and
    :class:`~circuitdag.errors.ModelError` for a model that cannot be loaded or patched."""
    if name.startswith("tracr-"):
        return get_task(name).load_model(device=device, dtype=dtype)
    return models.load_model(name, device=device, dtype=dtype)


def load_task_model(task_name: str | Task, model_name: str | None, device: str = "cpu",
                    dtype: torch.dtype = torch.float32) -> tuple[Task, Any]:  # fmt: skip
    """``(task, model)`` for a task (or its name) and a ``--model`` name (None: the task's
    default): the task's own models first (:meth:`Task.for_model`), then :func:`load_model`."""
    task = get_task(task_name) if isinstance(task_name, str) else task_name
    if not model_name:
        return task, task.load_model(device=device, dtype=dtype)
    own = task.for_model(model_name)
    if own is not None:
        return own, own.load_model(device=device, dtype=dtype)
    return task, load_model(model_name, device=device, dtype=dtype)
