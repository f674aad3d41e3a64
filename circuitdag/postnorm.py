"""Post-sublayer norms (Gemma 2, Gemma 3, OLMo 2): how a layer's heads reach the residual.

In these blocks the residual stream receives ``norm_L(A_L)``, the layer's *summed* attention
output ``A_L = sum of its heads' results + b_O`` normalised by the block's post-attention
norm, not the heads' results themselves (docs/how-it-works.md, post-sublayer norms). Head
nodes keep their pre-norm results; the norm sits on the receiving side of every edge. A
receiver ``r`` whose edges from some heads of layer ``L`` are absent reads that layer's sum
with its own mix of clean and ablated heads, ``A_mix = A_now - c`` with
``c = sum over absent heads h of (S_now[h] - S_corr[h])`` (the linear contribution every
pass already computes), so what leaves ``r``'s input is::

    gone_L = norm_L(A_now) - norm_L(A_now - c)        (linear blocks: gone_L = c)

The MLP node owns its post-norm output (the bridge's ``hook_mlp_out`` is after the norm),
so nothing changes for MLP senders. The norm is the model's own RMSNorm (its weight and
eps) computed in the model's dtype (:class:`RMSNorm`); the model itself runs with it
(:meth:`PostNorms.hooks`, added by :meth:`~circuitdag.hooks.HookTable.hooks`), so
``gone_L`` is 0 bit for bit when ``c`` is 0 and the full circuit is the clean run.
:class:`PostNorms` is what every pass asks: the reference and sparse passes
(:func:`circuitdag.passes.full_pass`, and with it the masked pass), the layer path
(:mod:`circuitdag.layered`), and attribution, which needs the norm's Jacobian
(:meth:`PostNorms.jvp`). Raises :class:`~circuitdag.errors.ModelError` at load for a
post-sublayer norm that is not an RMSNorm.
"""

from __future__ import annotations

from typing import Any

import torch
from jaxtyping import Float
from torch import Tensor

from circuitdag.components import plain_module
from circuitdag.errors import ModelError

#: The name of a block's post-attention norm in TransformerBridge.
POST_ATTN = "ln1_post"
#: Every post-sublayer norm of a block (attention, MLP), as TransformerBridge names them.
POST_NORMS = (POST_ATTN, "ln2_post")


def _bias(attn: Any) -> Tensor | None:
    try:
        b = attn.b_O
    except AttributeError:  # a bridge raises for a bias-free output projection
        return None
    return b if isinstance(b, Tensor) else None


def _rms(x: Tensor, weight: Tensor, eps: float) -> Tensor:
    return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps) * weight


class RMSNorm:
    """An RMSNorm ``x / sqrt(mean(x^2) + eps) * weight`` computed in the dtype of its input.

    Hugging Face's Gemma 2/3 and OLMo 2 norms compute in float32 whatever the model's
    dtype, so two float64 inputs one rounding apart can come out a float32 rounding (6e-8
    relative) apart; the corrections of the passes are differences of two norms and must
    agree to 1e-9 between the exact passes, so they use this one. ``of(module)`` reads the
    weight and ``eps`` off the module and tells Gemma's ``(1 + weight)`` from OLMo's
    ``weight`` by comparing the two with the module's output on a random vector."""

    def __init__(self, weight: Tensor, eps: float) -> None:
        self.weight, self.eps = weight, eps

    def __call__(self, x: Tensor) -> Tensor:
        """The norm of ``x`` (``... d_model``), computed in float32 at least (as Hugging Face
        does) and in float64 for a float64 model; returned in ``x``'s dtype."""
        at = torch.promote_types(x.dtype, torch.float32)
        return _rms(x.to(at), self.weight.to(at), self.eps).to(x.dtype)

    @classmethod
    def of(cls, module: Any) -> RMSNorm:
        """The norm ``module`` computes; raises :class:`~circuitdag.errors.ModelError` when it
        is not an RMSNorm with a ``weight`` and an ``eps`` (or ``variance_epsilon``)."""
        weight = getattr(module, "weight", None)
        eps = getattr(module, "eps", getattr(module, "variance_epsilon", None))
        what = f"the post-attention norm ({type(module).__name__})"
        if not isinstance(weight, Tensor) or not isinstance(eps, float) or weight.dim() != 1:
            raise ModelError(f"{what} has no weight vector and eps; circuitdag patches post-sublayer RMSNorms only")
        with torch.no_grad():
            x = torch.randn(3, weight.shape[0], generator=torch.Generator().manual_seed(0)).to(weight)
            want = module(x)
            for w in (weight, 1.0 + weight):
                if (_rms(x, w, eps) - want).abs().max().item() <= 1e-3 * (1.0 + want.abs().max().item()):
                    return cls(w.detach(), eps)
        raise ModelError(f"{what} is not x / rms(x) * weight (or * (1 + weight)); circuitdag patches "
                         "post-sublayer RMSNorms only")  # fmt: skip


class PostNorms:
    """The post-attention norms of a model's blocks (module docstring).

    ``norms[L]``: the norm applied to layer ``L``'s summed attention output (a callable on
    ``... d_model``, :class:`RMSNorm`); ``modules[L]``: the model's own norm module;
    ``biases[L]``: that layer's ``b_O`` (``d_model``, or None), which is part of the sum
    the norm reads but belongs to no head; ``sites``: per norm of the model (attention and
    MLP), the names of its input and output hooks and the :class:`RMSNorm` that
    :meth:`hooks` computes there."""

    def __init__(self, modules: list[Any], biases: list[Tensor | None],
                 sites: list[tuple[int, str, str, RMSNorm]]) -> None:  # fmt: skip
        self.modules, self.biases, self.sites = modules, biases, sites
        self.norms = [RMSNorm.of(m) for m in modules]

    def hooks(self, start_layer: int = 0) -> list[tuple[str, Any]]:
        """Hooks that replace the output of each post-sublayer norm of the blocks from
        ``start_layer`` on by :class:`RMSNorm` of its input: every pass of the engine runs
        the model with them (:meth:`~circuitdag.hooks.HookTable.hooks`), so the model's
        norms and the passes' corrections are the one function, in float64 for a float64
        model (Hugging Face's float32 norms put 6e-8-relative roundings between two exact
        passes that differ in the last float64 bit)."""
        out: list[tuple[str, Any]] = []
        for L, name_in, name_out, norm in self.sites:
            if L < start_layer:
                continue
            box: dict[str, Tensor] = {}

            def keep(x: Tensor, hook: Any, box: dict[str, Tensor] = box) -> None:
                box["x"] = x

            def put(x: Tensor, hook: Any, box: dict[str, Tensor] = box, norm: RMSNorm = norm) -> Tensor:
                return norm(box.pop("x"))
            out += [(name_in, keep), (name_out, put)]
        return out

    @classmethod
    def of(cls, model: Any) -> PostNorms | None:
        """The post-attention norms of ``model``'s blocks, or None when it has none (every
        architecture but Gemma 2/3 and OLMo 2)."""
        blocks = getattr(model, "blocks", None)
        if blocks is None or not len(blocks) or not hasattr(blocks[0], POST_ATTN):
            return None
        sites = [(L, getattr(b, name).hook_in.name, getattr(b, name).hook_out.name,
                  RMSNorm.of(plain_module(getattr(b, name))))
                 for L, b in enumerate(blocks) for name in POST_NORMS if hasattr(b, name)]  # fmt: skip
        return cls([plain_module(getattr(b, POST_ATTN)) for b in blocks], [_bias(b.attn) for b in blocks], sites)

    def attn_sum(self, L: int, heads: Float[Tensor, "... heads d_model"]) -> Float[Tensor, "... d_model"]:
        """``A_L``: layer ``L``'s attention output before its norm, from its heads' results."""
        b = self.biases[L]
        return heads.sum(-2) if b is None else heads.sum(-2) + b

    def gone(self, L: int, A: Float[Tensor, "... d_model"], c: Float[Tensor, "... d_model"]) -> Tensor:
        """``norm_L(A) - norm_L(A - c)``: what leaves a receiver's input when the heads of
        layer ``L`` whose deltas sum to ``c`` are ablated for it (``A`` broadcasts
        against ``c``)."""
        norm = self.norms[L]
        A = A.expand_as(c) if A.shape != c.shape else A
        return norm(A) - norm(A - c)

    def jvp(self, L: int, A: Float[Tensor, "... d_model"], v: Float[Tensor, "... d_model"]) -> Tensor:
        """``J v``: the norm's Jacobian at ``A`` applied to ``v`` (broadcast over ``v``'s extra
        leading axes must be done by the caller: ``A`` and ``v`` have one shape); the
        first-order change of ``norm_L(A)`` when the sum moves by ``v``."""
        with torch.enable_grad():
            out = torch.func.jvp(self.norms[L], (A,), (v,))
        return out[1]


__all__ = ["POST_ATTN", "POST_NORMS", "PostNorms", "RMSNorm"]
