"""Models the user loaded themselves: a ``TransformerBridge`` they booted, or a Hugging Face
model object, made ready for patching.

:func:`circuitdag.load_model` boots a model by name with every hook circuitdag reads
switched on. A researcher who already holds a model object (quantised, fine-tuned in
memory, booted with their own options) passes it to :func:`circuitdag.discover` or
:func:`circuitdag.prepare.prepare` as it is; :func:`adopt` is what those call:

* a ``TransformerBridge``: the hook aliases (``enable_compatibility_mode``) are switched on
  if they are off, **keeping the weights as they are** (no LayerNorm folding behind the
  user's back: processing changes what a zero-ablated head means); per-head results, split
  q/k/v inputs and ``hook_mlp_in`` are enabled;
* a Hugging Face ``PreTrainedModel`` (a causal LM): booted through
  ``TransformerBridge.boot_transformers(..., hf_model=model)`` around that very object (its
  weights, device and dtype; no copy), with ``tokenizer`` or, when the model was loaded
  from a local directory, that directory's tokenizer;
* anything else with a ``.cfg`` (circuitdag's own hooked transformer): returned as is.

Each adopted model passes the hook check (:func:`circuitdag.models.bridge.check_hooks`)
once; a model that fails it is refused in one line (:class:`~circuitdag.errors.ModelError`).
"""

from __future__ import annotations

import logging
import weakref
from pathlib import Path
from typing import Any

from circuitdag.errors import ModelError
from circuitdag.models.resume import _is_bridge
from circuitdag.models.spec import bos_decision

logger = logging.getLogger("circuitdag")

#: Models already adopted (and checked): adopting again costs nothing.
_READY: weakref.WeakSet[Any] = weakref.WeakSet()


def is_hf_model(model: Any) -> bool:
    """Whether ``model`` is a Hugging Face ``PreTrainedModel`` (told by its classes' names,
    so that asking imports no transformers)."""
    return any(c.__name__ == "PreTrainedModel" for c in type(model).__mro__)


def adopt(model: Any, tokenizer: Any = None, *, check: bool = True) -> Any:
    """The patchable form of a model object (module docstring): the same bridge with the
    hooks circuitdag reads switched on, a bridge around a Hugging Face model, or ``model``
    itself.

    ``tokenizer``: for a Hugging Face model object (a ``PreTrainedTokenizerBase``); default:
    the one saved next to the model when it was loaded from a local directory.
    Raises :class:`~circuitdag.errors.ModelError` for an object that is no model, a Hugging
    Face model without a tokenizer, or a model whose hooks fail the check."""
    if _hashable(model) and model in _READY:
        return model
    if is_hf_model(model):
        model = _boot_hf(model, tokenizer)
    elif _is_bridge(model):
        _switch_on_hooks(model)
    elif isinstance(model, (str, Path)):
        raise ModelError(f"cd.adopt takes a model object; load {str(model)!r} by name with cd.load_model, or pass "
                         "the name to cd.discover")  # fmt: skip
    elif getattr(model, "cfg", None) is None:
        raise ModelError(f"a {type(model).__name__} is not a model circuitdag can patch: pass a name for "
                         "circuitdag.load_model, a TransformerBridge or a Hugging Face causal LM")  # fmt: skip
    else:
        return model  # circuitdag's own hooked transformer: built with its hooks
    if check:
        from circuitdag.models.bridge import check_hooks

        check_hooks(model)
    _READY.add(model)
    return model


def mark_ready(model: Any) -> None:
    """Record that ``model`` was booted and checked by circuitdag (:func:`load_model`), so
    :func:`adopt` leaves it alone."""
    if _hashable(model):
        _READY.add(model)


def _hashable(model: Any) -> bool:
    try:
        hash(model)
        weakref.ref(model)
    except TypeError:
        return False
    return True


def _switch_on_hooks(bridge: Any) -> None:
    if not getattr(bridge, "compatibility_mode", False):
        logger.info("enabling the bridge's hook aliases (compatibility mode), weights left unprocessed")
        bridge.enable_compatibility_mode(disable_warnings=True, no_processing=True)
    bridge.eval()
    try:
        bridge.set_use_attn_result(True)
    except NotImplementedError as e:
        name = getattr(bridge.cfg, "model_name", type(bridge).__name__)
        raise ModelError(f"{name}: circuitdag needs per-head attention results, which this bridge cannot "
                         f"give ({str(e).splitlines()[0][:200]})") from None  # fmt: skip
    bridge.set_use_split_qkv_input(True)
    bridge.set_use_hook_mlp_in(True)
    bos, why = bos_decision(bridge)
    bridge.cfg.default_prepend_bos = bos
    logger.info("prompts %s BOS (%s)", "start with" if bos else "do not start with", why)


def _boot_hf(model: Any, tokenizer: Any) -> Any:
    from transformer_lens import TransformerBridge

    what = type(model).__name__
    if model.get_output_embeddings() is None:
        raise ModelError(f"a {what} has no language-model head (no logits over the vocabulary): pass the causal "
                         "LM, e.g. AutoModelForCausalLM.from_pretrained(...)")  # fmt: skip
    source = str(getattr(model, "name_or_path", "") or "")
    if tokenizer is None:
        tokenizer = _saved_tokenizer(source, what)
    elif not any(c.__name__ == "PreTrainedTokenizerBase" for c in type(tokenizer).__mro__):
        raise ModelError(f"the tokenizer must be a Hugging Face tokenizer (AutoTokenizer.from_pretrained(...)), "
                         f"got a {type(tokenizer).__name__}")  # fmt: skip
    name = source or str(getattr(model.config, "model_type", "") or type(model).__name__)
    param = next(model.parameters())
    try:
        bridge = TransformerBridge.boot_transformers(name, hf_model=model, tokenizer=tokenizer,
                                                     device=param.device, dtype=param.dtype)  # fmt: skip
    except (ValueError, NotImplementedError, KeyError, OSError) as e:
        raise ModelError(f"TransformerBridge cannot boot this {type(model).__name__}: "
                         f"{str(e).splitlines()[0][:300]}") from None  # fmt: skip
    _switch_on_hooks(bridge)
    return bridge


def _saved_tokenizer(source: str, what: str) -> Any:
    path = Path(source).expanduser() if source else None
    if path is None or not path.is_dir():
        raise ModelError(f"this {what} carries no tokenizer: pass one, cd.adopt(model, tokenizer) "
                         "(or save both with save_pretrained and pass the directory)")  # fmt: skip
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(path)
    except (OSError, ValueError) as e:
        raise ModelError(f"{path} has no tokenizer this {what} can use ({str(e).splitlines()[0][:200]}); "
                         "pass one: cd.adopt(model, tokenizer)") from None  # fmt: skip
