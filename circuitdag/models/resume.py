"""Running a model from the residual stream entering a block, without the blocks below.

:func:`resume` is ``model(resid, start_at_layer=L)`` that really skips blocks ``0..L-1``
(TransformerBridge runs them and throws their output away, :func:`skip_blocks_below`);
every pass that starts at a layer (the layer-by-layer fast path, the neuron analysis, the
hook check) goes through it. A module of its own so that the hook table
(:mod:`circuitdag.hooks`) and the loader (:mod:`circuitdag.models.bridge`) can both use it.
"""

from __future__ import annotations

import contextlib
import weakref
from collections.abc import Callable, Iterator, Sequence
from typing import Any

from jaxtyping import Float
from torch import Tensor, nn

__all__ = ["resume", "skip_blocks_below", "without_embedding_norm"]


class _SkippedBlock(nn.Module):
    """Stands in for a block below ``start_at_layer``: passes the hidden states through, or
    returns ``(hidden_states, None)`` where the model reads ``block(...)[0]`` and ``[1]``
    (BLOOM's blocks return tuples)."""

    def __init__(self, as_tuple: bool = False) -> None:
        super().__init__()
        self.as_tuple = as_tuple

    def forward(self, hidden_states: Tensor, *args: Any, **kwargs: Any) -> Tensor | tuple[Tensor, None]:
        return (hidden_states, None) if self.as_tuple else hidden_states


# Bridges whose Hugging Face blocks return tuples: the hook check adds a model whose resumed
# pass fails with a tensor stand-in, and verifies the resumed logits.
_TUPLE_BLOCKS: weakref.WeakSet[Any] = weakref.WeakSet()


# Bridges on which skipping blocks gave wrong logits at the check (see check_hooks).
_NO_SKIP: weakref.WeakSet[Any] = weakref.WeakSet()


def _is_bridge(model: Any) -> bool:
    return hasattr(model, "original_model") and isinstance(getattr(model, "blocks", None), nn.ModuleList)


@contextlib.contextmanager
def skip_blocks_below(model: Any, layer: int) -> Iterator[None]:
    """Within the block, blocks ``0..layer-1`` of a bridge do no work.

    ``TransformerBridge.forward(resid, start_at_layer=L)`` (transformer_lens 4.3) still runs
    blocks ``0..L-1`` and throws their output away; the bridge's ``blocks`` list is the Hugging
    Face model's own layer list, so swapping its first entries for pass-throughs skips them.
    Only meaningful together with ``start_at_layer=layer``; a no-op for other models.
    """
    if layer <= 0 or not _is_bridge(model) or model in _NO_SKIP:
        yield
        return
    blocks = model.blocks._modules
    keys = list(blocks)[:layer]
    saved = {k: blocks[k] for k in keys}
    skip = _SkippedBlock(model in _TUPLE_BLOCKS)
    try:
        for k in keys:
            blocks[k] = skip
        yield
    finally:
        blocks.update(saved)


@contextlib.contextmanager
def without_embedding_norm(model: Any) -> Iterator[None]:
    """Within the block, a bridge's norm between the embedding and block 0 (``embed_ln``:
    BLOOM's ``word_embeddings_layernorm``) passes its input through: a resumed pass feeds the
    residual stream as ``inputs_embeds``, which that norm would normalise a second time."""
    norm = getattr(model, "embed_ln", None) if _is_bridge(model) else None
    site = next(((parent, name) for parent in model.original_model.modules() for name, child in
                 parent._modules.items() if child is norm), None) if norm is not None else None  # fmt: skip
    if site is None:
        yield
        return
    parent, name = site
    parent._modules[name] = nn.Identity()
    try:
        yield
    finally:
        parent._modules[name] = norm


def resume(
    model: Any,
    resid: Float[Tensor, "batch pos d_model"],
    layer: int,
    fwd_hooks: Sequence[tuple[str | Callable[..., Any], Callable[..., Any]]] = (),
    **kwargs: Any,
) -> Float[Tensor, "batch pos d_vocab"]:
    """Logits of the forward pass resumed at block ``layer`` from the residual ``resid``
    (``blocks.{layer}.hook_resid_pre`` of an earlier run), with ``fwd_hooks`` attached; hooks
    on blocks below ``layer`` do not fire. Works for bridges and ``TinyTransformer``."""
    with skip_blocks_below(model, layer), without_embedding_norm(model):
        return model.run_with_hooks(resid, start_at_layer=layer, fwd_hooks=list(fwd_hooks), **kwargs)
