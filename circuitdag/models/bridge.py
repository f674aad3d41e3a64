"""Loading real Hugging Face models through TransformerLens 4's ``TransformerBridge``.

:func:`load_bridge` boots a hub model or a local ``save_pretrained`` directory, switches
on the hooks the patching engine needs, and checks them once (:func:`check_hooks`);
a model whose hooks do not behave as the engine assumes is refused with a
:class:`~circuitdag.errors.ModelError` naming the hook (:mod:`circuitdag.models.check`).
Hooks an architecture does not fire are emulated by the hook table
(:mod:`circuitdag.emulated`).

The hooks the engine relies on (``L`` a layer, ``n`` the number of layers)::

    blocks.L.hook_resid_pre     batch pos d_model          residual entering block L
    blocks.L.hook_q_input       batch pos n_heads d_model   = resid_pre per head, before LayerNorm
    blocks.L.hook_k_input       batch pos n_kv_heads d_model (n_kv_heads = n_heads without GQA)
    blocks.L.hook_v_input       batch pos n_kv_heads d_model
    blocks.L.attn.hook_result   batch pos n_heads d_model   each head's write to the residual
    blocks.L.hook_resid_mid     batch pos d_model          (sequential blocks only)
    blocks.L.hook_mlp_in        batch pos d_model          = resid_mid (resid_pre if parallel), pre-LN
    blocks.L.hook_mlp_out       batch pos d_model
    blocks.{n-1}.hook_resid_post batch pos d_model         what the unembedding reads

and :func:`~circuitdag.models.resume.resume` (``model(resid, start_at_layer=L)`` without
computing blocks below ``L``) resuming from ``blocks.L.hook_resid_pre``.
:func:`circuitdag.models.spec_of` reads the few shape facts the engine needs from either a bridge or the
project's own :class:`~circuitdag.models.hooked.TinyTransformer`.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from circuitdag.errors import ModelError
from circuitdag.models.check import HookReport, check_hooks, refusal
from circuitdag.models.resume import resume, skip_blocks_below
from circuitdag.models.spec import bos_decision

if TYPE_CHECKING:
    from transformer_lens import TransformerBridge

__all__ = ["HookReport", "check_hooks", "load_bridge", "resume", "skip_blocks_below"]

logger = logging.getLogger("circuitdag")


def load_bridge(
    name_or_dir: str | os.PathLike[str],
    device: str | torch.device = "cpu",
    dtype: torch.dtype = torch.float32,
    *,
    process_weights: bool = True,
    check: bool = True,
) -> TransformerBridge:
    """Boot a Hugging Face causal LM as a hooked ``TransformerBridge`` ready for patching.

    ``name_or_dir`` is a hub name (``"gpt2"``; needs the network or the HF cache) or a local
    directory written by ``save_pretrained`` (config, weights, tokenizer).
    ``process_weights=True`` applies TransformerLens's usual processing (fold LayerNorm
    scales into the next weights, centre writing weights and the unembedding, fold value
    biases into ``b_O``): the model computes the same function, but logits differ from
    Hugging Face's by a constant per position (softmax unchanged) and a zero-ablated head or
    residual means something else; ``False`` keeps Hugging Face's raw weights and logits.
    With ``check=True`` the hooks are verified once (:func:`check_hooks`).
    """
    from transformer_lens import TransformerBridge

    name = os.fspath(name_or_dir)
    # Hub names are "gpt2" or "org/name"; anything else that looks like a path is one.
    local = isinstance(name_or_dir, os.PathLike) or os.path.exists(name)
    if local or name.startswith((".", "/", "~")) or name.count("/") > 1 or "\\" in name:
        path = Path(name).expanduser()
        if not path.is_dir():
            raise ModelError(f"no model directory {path}; pass a directory written by save_pretrained, or a hub name")
        if not (path / "config.json").is_file():
            raise ModelError(
                f"{path} is not a Hugging Face model directory (no config.json); "
                "write one with model.save_pretrained(dir) and tokenizer.save_pretrained(dir)"
            )
        if not any((path / f).is_file() for f in _TOKENIZER_FILES):
            raise ModelError(
                f"{path} has no tokenizer files (none of {', '.join(_TOKENIZER_FILES)}); "
                "save the tokenizer next to the weights with tokenizer.save_pretrained(dir)"
            )
        name = str(path.resolve())  # absolute: "neox" alone is a TransformerLens alias of a hub model
    else:
        _hub_name_can_load(name)
    try:
        model = TransformerBridge.boot_transformers(name, device=device, dtype=dtype)
    except OSError as e:
        if local or Path(name).is_dir():
            raise ModelError(f"could not load the model directory {name}: {str(e).splitlines()[0][:300]}; check its "
                             "config.json and weights (save_pretrained writes both)") from e  # fmt: skip
        raise ModelError(
            f"could not load {name!r}: no local directory of that name, and the Hugging Face hub or cache "
            f"does not have it ({str(e).splitlines()[0][:200]}). Pass a local directory written by "
            "save_pretrained (./name for a directory here), or make the model available in the cache"
        ) from e
    except (ValueError, NotImplementedError, KeyError) as e:
        text = str(e)
        if "supported architecture" in text or "Available architectures" in text:
            raise ModelError(f"{name}: architecture {_architecture_of(name) or '(unnamed)'} is not one "
                             "TransformerBridge knows, so circuitdag cannot load it; docs/models.md lists the "
                             "architectures circuitdag patches") from None  # fmt: skip
        raise ModelError(f"TransformerBridge cannot boot {name!r}: {text.splitlines()[0][:300]}") from e
    except Exception as e:  # safetensors' SafetensorError (a truncated or empty weights file), and the like
        if type(e).__name__ != "SafetensorError":
            raise
        raise ModelError(f"the weights of {name} cannot be read ({e}); the file is damaged: save the model "
                         "again with save_pretrained") from e  # fmt: skip
    why = refusal(model)  # an architecture circuitdag does not patch: say so before anything else
    if why is not None:
        raise ModelError(why)
    model.eval()
    with warnings.catch_warnings(record=True) as caught, _root_log(caught):
        warnings.simplefilter("always")
        model.enable_compatibility_mode(disable_warnings=True, no_processing=not process_weights)
    partial = [str(w.message) for w in caught if _PARTIAL.search(str(w.message))] if process_weights else []
    #: What weight processing TransformerLens could not do on this architecture (recorded in
    #: every result as ``process_weights: partial``, circuitdag.provenance).
    model.cfg.process_weights_partial = "; ".join(partial) or None  # type: ignore[attr-defined]
    if partial:
        logger.warning("%s: weights processed only in part (%s)", _architecture_of(name) or name, partial[0])
    for switch in (model.set_use_attn_result, model.set_use_split_qkv_input, model.set_use_hook_mlp_in):
        try:
            switch(True)
        except NotImplementedError:  # OPT, GPT-J, GPT-Neo: the hook table emulates them (circuitdag.emulated)
            pass
    # Whether prompts start with BOS follows the tokenizer, not the directory's name
    # (circuitdag.models.bos_decision); model.to_tokens follows the same decision.
    bos, why = bos_decision(model)
    model.cfg.default_prepend_bos = bos
    logger.info("%s: prompts %s BOS (%s)", name, "start with" if bos else "do not start with", why)
    if check:
        check_hooks(model)
    return model


#: Messages of TransformerLens saying that it skipped part of the weight processing.
_PARTIAL = re.compile(r"does not support fold_ln|incompatible with|cannot be folded|not supported.*fold", re.IGNORECASE)


@contextlib.contextmanager
def _root_log(caught: list[Any]) -> Iterator[None]:
    """Within: TransformerLens's messages on the root logger (``center_unembed=True is
    incompatible with logit softcapping``) are collected into ``caught`` as warnings."""

    class Collect(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            caught.append(warnings.WarningMessage(record.getMessage(), UserWarning, "", 0))

    root = logging.getLogger()
    handler = Collect(logging.WARNING)
    root.addHandler(handler)
    try:
        yield
    finally:
        root.removeHandler(handler)


def _architecture_of(name: str) -> str | None:
    """The architecture a model directory's config.json names (None when unreadable)."""
    try:
        archs = json.loads((Path(name) / "config.json").read_text()).get("architectures") or [None]
    except (OSError, ValueError, AttributeError):
        return None
    return archs[0]


def _hub_name_can_load(name: str) -> None:
    """Refuse at once a hub name that is neither in the Hugging Face cache nor reachable
    (offline, ``HF_HUB_OFFLINE=1``): transformers would retry for about 25 s and print a
    retry line each time before failing."""
    import socket

    from huggingface_hub import try_to_load_from_cache

    try:
        cached = try_to_load_from_cache(name, "config.json")
    except ValueError:  # an ill-formed repo id (HFValidationError): transformers says what is wrong with it
        return
    if isinstance(cached, str):
        return
    offline = os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes")
    if not offline:
        try:
            socket.create_connection(("huggingface.co", 443), timeout=3).close()
            return
        except OSError:
            pass
    raise ModelError(f"cannot load {name!r}: it is not a local directory, not in the Hugging Face cache, and the "
                     "hub cannot be reached; pass a directory written by save_pretrained (./name for one here), "
                     "or download the model where the hub is reachable")  # fmt: skip


#: Files of which a saved tokenizer has at least one (``tokenizer.save_pretrained``).
_TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "vocab.json", "tokenizer.model")
