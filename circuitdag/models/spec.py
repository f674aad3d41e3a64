"""What the graph and the tasks read from a loaded model: its architecture facts
(:func:`spec_of`, the :class:`~circuitdag.graph.ModelSpec` the graph is built from) and
whether its prompts start with BOS by default (:func:`bos_decision`).

A module of its own below :mod:`circuitdag.models` so that the loaders
(:mod:`circuitdag.models.bridge`, which ``load_model`` imports) can use these without
importing the package back: imports run one way.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Sequence
from typing import Any

from circuitdag.errors import ModelError
from circuitdag.graph import ModelSpec


def spec_of(model: Any, neuron_layers: Sequence[int] = ()) -> ModelSpec:
    """The architecture facts the graph needs, read from ``model.cfg`` (TransformerLens
    field names, shared by TransformerBridge and :class:`~circuitdag.models.hooked.TinyTransformer`).
    ``neuron_layers``: MLP layers to split into one node per neuron.

    Raises :class:`~circuitdag.errors.ModelError` for a model without ``cfg`` or a neuron
    layer that does not exist."""
    cfg = getattr(model, "cfg", None)
    if cfg is None:
        raise ModelError(f"{type(model).__name__} has no .cfg; load models with circuitdag.load_model")
    n_heads = int(cfg.n_heads)
    n_kv = getattr(cfg, "n_key_value_heads", None) or n_heads  # None means no GQA
    if n_heads % n_kv:
        raise ModelError(f"{n_heads} query heads cannot be grouped over {n_kv} key/value heads")
    d_mlp = getattr(cfg, "d_mlp", None)
    if neuron_layers and not d_mlp and not getattr(cfg, "attn_only", False):
        raise ModelError("--neurons: the model's config does not say how many neurons its MLPs have (d_mlp)")
    try:  # ModelSpec checks the neuron layers
        return ModelSpec(
            n_layers=int(cfg.n_layers),
            n_heads=n_heads,
            n_kv_heads=int(n_kv),
            d_model=int(cfg.d_model),
            attn_only=bool(getattr(cfg, "attn_only", False)),
            parallel_attn_mlp=bool(getattr(cfg, "parallel_attn_mlp", False)),
            causal=bool(getattr(cfg, "causal", True)),
            neuron_layers=tuple(int(L) for L in neuron_layers),
            d_mlp=int(d_mlp or 0) if neuron_layers else 0,
        )
    except ValueError as exc:
        raise ModelError(f"--neurons: {exc}") from None


#: Role names a chat template writes after the token that opens a turn.
_ROLES = ("system", "user", "assistant")


def _bos_opens_chat_turns(tokenizer: Any, bos: str) -> bool:
    """True when the tokenizer's chat template writes ``bos`` directly before a role name
    (ChatML's ``<|im_start|>user``): the token opens a chat turn, not a document."""
    template = getattr(tokenizer, "chat_template", None)
    if not template:
        return False
    try:
        text = tokenizer.apply_chat_template([{"role": "user", "content": "x"}], tokenize=False)
    except Exception:  # noqa: BLE001 -- an unusual template: read it as text below
        text = ""
    if isinstance(text, str) and any(bos + role in text for role in _ROLES):
        return True
    # The template's own text: bos + "system", or bos + message['role'] / message.role.
    pattern = re.escape(bos) + r"""['"]?\s*(?:\+\s*)?(?:\{\{\s*)?(?:['"]?(?:system|user|assistant)|message\[|message\.role)"""
    return re.search(pattern, str(template)) is not None


def bos_decision(model: Any) -> tuple[bool, str]:
    """Whether prompts for ``model`` start with BOS by default, and why (for the log).

    Decided from the tokenizer and the model, never from the model's name or directory,
    so a copy saved elsewhere (a fine-tune, a ``save_pretrained`` copy) gets the same
    prompts:

    1. no BOS when the tokenizer has no BOS token, as its files define it
       (:func:`saved_bos_token`: TransformerBridge fills a missing BOS in with the EOS
       token, which the model never saw at the start of a text);
    2. no BOS when the BOS token opens a chat turn: the tokenizer's chat template writes
       it directly before a role name (SmolLM2-Instruct's ``<|im_start|>``), so the model
       never saw it in front of plain text (P(he | John) 0.55 without it, 0.19 with);
    3. otherwise ``cfg.default_prepend_bos`` (TransformerLens's choice per architecture;
       True for GPT-2-style models and the zoo models, which were trained with BOS at
       position 0); True when the model has no such setting.
    """
    tok = getattr(model, "tokenizer", None)
    bos = saved_bos_token(tok) if tok is not None else None
    if tok is not None and (bos is None or getattr(tok, "bos_token_id", None) is None):
        return False, "the tokenizer has no BOS token"
    if bos is not None and _bos_opens_chat_turns(tok, str(bos)):
        return False, f"the tokenizer's BOS {bos} opens a chat turn in its chat template, not a document"
    default = bool(getattr(getattr(model, "cfg", None), "default_prepend_bos", True))
    return default, f"cfg.default_prepend_bos is {default}" + (f" (BOS {bos})" if bos else "")


def saved_bos_token(tokenizer: Any) -> str | None:
    """The BOS token of ``tokenizer`` as its saved files define it: the tokenizer read afresh
    from ``tokenizer.name_or_path`` (the model directory or hub name it was loaded from),
    not the loaded object's ``bos_token``, which TransformerBridge sets to the EOS token when
    the tokenizer has none. A tokenizer not loaded from files answers for itself."""
    if getattr(tokenizer, "bos_from_files", False):  # read from its files already (ZooTokenizer)
        return None if tokenizer.bos_token is None else str(tokenizer.bos_token)
    source = getattr(tokenizer, "name_or_path", None)
    if isinstance(source, str) and source:
        readable, bos = _saved_bos(source)
        if readable:
            return bos
    bos = getattr(tokenizer, "bos_token", None)
    if bos is None and not hasattr(tokenizer, "bos_token"):  # a tokenizer that only has ids
        bos_id = getattr(tokenizer, "bos_token_id", None)
        return None if bos_id is None else f"id {bos_id}"
    return None if bos is None else str(bos)


@functools.lru_cache(maxsize=32)
def _saved_bos(source: str) -> tuple[bool, str | None]:
    """(whether ``AutoTokenizer`` can load a tokenizer from ``source``, its ``bos_token``);
    read once per process."""
    from transformers import AutoTokenizer

    try:
        bos = AutoTokenizer.from_pretrained(source).bos_token
    except Exception:  # noqa: BLE001 -- any failure: the loaded tokenizer answers instead
        return False, None
    return True, None if bos is None else str(bos)
