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

__all__ = ["resume", "skip_blocks_below"]


class _SkippedBlock(nn.Module):
    """Stands in for a block below ``start_at_layer``: passes the hidden states through."""

    def forward(self, hidden_states: Tensor, *args: Any, **kwargs: Any) -> Tensor:
        return hidden_states


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
    skip = _SkippedBlock()
    try:
        for k in keys:
            blocks[k] = skip
        yield
    finally:
        blocks.update(saved)


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
    with skip_blocks_below(model, layer):
        return model.run_with_hooks(resid, start_at_layer=layer, fwd_hooks=list(fwd_hooks), **kwargs)
