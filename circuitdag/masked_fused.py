"""The fused masked pass: the masked pass's value and gradient at a fraction of its cost.

:func:`circuitdag.masked.masked_metric` differentiates the reference patched pass
(:func:`circuitdag.passes.full_pass`) with a continuous ``absent`` mask. That pass keeps
every sender output in one buffer written in place and, for each group of destination rows
(a layer's q, k, v or MLP inputs, or ``logits``), subtracts ``absent[rows, :k] . (S_now -
S_corr)[:k]`` by an einsum. Autograd then saves every group's copy of the sender deltas
(``batch pos k d_model``; about 0.6 GB per prompt on SmolLM2-135M) and, in the backward
pass, materialises a gradient of the whole buffer for every slice and every in-place write.

:func:`fused_pass` computes the same pass with two custom autograd functions:

* the sender deltas ``D = S_now - S_corr`` live once, in a buffer outside autograd, laid out
  sender-major (``pos_batch slot batch d_model``) so that a group's contribution is one
  batched matrix product ``A @ D[:k]`` (``A``: the group's absent weights);
* :class:`_Mix` (one per group of rows that read the same slots in the same geometry: a
  layer's q, k and v rows together without positions, its k and v rows with them, its MLP
  rows, ``logits``) saves only its absent weights ``A``. Its backward
  returns ``dm/dA = g @ D[:k]^T`` (``g``: the gradient at the group's contributions) and adds
  ``A^T @ g`` into one gradient buffer ``G`` (same layout as ``D``) with a fused
  multiply-add, instead of returning a gradient per sender;
* :class:`_Tap` (one per sender block, an identity in the forward pass) hands each sender
  its slice of ``G`` in the backward pass. The mixes take the tapped senders as inputs (and
  return no gradient for them), so autograd runs a tap only after every mix that reads it.

Nothing but the gradients the masked pass defines is computed: w.r.t. the mask, and through
the senders' outputs to earlier masks (the model's parameters are frozen).

What it supports: plain and position-aware graphs, every backend and ablation the reference
pass runs. MLPs split into neurons and post-sublayer norms (a receiver re-normalises its
own mix of a layer's heads, not a linear sum) are not fused:
:func:`circuitdag.masked.masked_metric` runs the reference pass for them. The
reference pass stays :func:`circuitdag.passes.full_pass`; tests/test_masked_fused.py checks
that both give the same values and gradients (float64, plain and positions) and that the
fused pass equals exact patching at 0/1 masks. benchmarks/masked_speed.py measures both.
"""

from __future__ import annotations

from typing import Any

import torch
from jaxtyping import Float
from torch import Tensor

from circuitdag.graph import Input, NodeKind
from circuitdag.hooks import Hook
from circuitdag.passes import PassHost


class _Buffers:
    """The sender deltas ``D`` of one pass and their gradient ``G`` (allocated by the first
    backward step), both ``Pb slot P2 batch d_model`` with ``Pb * P2 = pos``: ``Pb = pos``
    with positions (a group's product is batched over positions), ``Pb = 1`` without."""

    def __init__(self, S_corr: Float[Tensor, "batch pos slot d_model"], positional: bool) -> None:
        B, P, n_slots, d = S_corr.shape
        self.B, self.P, self.d = B, P, d
        self.Pb, self.P2 = (P, 1) if positional else (1, P)
        self.D = S_corr.new_zeros(self.Pb, n_slots, self.P2, B, d)
        self.G: Tensor | None = None

    def flat(self, x: Tensor, k: int) -> Tensor:
        """The first ``k`` slots of ``x`` (``D`` or ``G``) as ``Pb k (P2 batch d_model)``."""
        return x[:, :k].reshape(self.Pb, k, -1)

    def write(self, sl: slice, delta: Float[Tensor, "batch pos n d_model"]) -> None:
        """Store a sender block's deltas at slots ``sl``."""
        B, n = delta.shape[0], delta.shape[2]
        self.D[:, sl] = delta.reshape(B, self.Pb, self.P2, n, self.d).permute(1, 3, 2, 0, 4)

    def grad(self, sl: slice) -> Tensor:
        """The accumulated gradient of the sender block at slots ``sl`` as ``batch pos n d_model``."""
        assert self.G is not None
        g = self.G[:, sl].permute(3, 0, 2, 1, 4)  # batch Pb P2 n d
        return g.reshape(self.B, self.P, g.shape[3], self.d)

    def mix_out(self, out3: Tensor, rows: int, V: int) -> Tensor:
        """``Pb (rows V) (P2 batch d)`` -> the ``batch V pos rows d_model`` contributions."""
        out = out3.view(self.Pb, rows, V, self.P2, self.B, self.d).permute(4, 2, 0, 3, 1, 5)
        return out.reshape(self.B, V, self.P, rows, self.d)

    def mix_in(self, g: Tensor, rows: int, V: int) -> Tensor:
        """The inverse of :meth:`mix_out` (a contiguous copy)."""
        g = g.reshape(self.B, V, self.Pb, self.P2, rows, self.d).permute(2, 4, 1, 3, 0, 5)
        return g.reshape(self.Pb, rows * V, self.P2 * self.B * self.d)


class _Tap(torch.autograd.Function):
    """Identity on a sender block (``batch pos n d_model``); its backward adds the block's
    slice of the gradient buffer (every mix reading the block has run by then)."""

    @staticmethod
    def forward(ctx: Any, x: Tensor, buf: _Buffers, sl: slice) -> Tensor:  # type: ignore[override]
        ctx.buf, ctx.sl = buf, sl
        ctx.set_materialize_grads(False)
        return x.view_as(x)

    @staticmethod
    def backward(ctx: Any, g: Tensor | None) -> tuple[Tensor | None, None, None]:  # type: ignore[override]
        buf: _Buffers = ctx.buf
        if buf.G is None:
            return g, None, None
        mine = buf.grad(ctx.sl)
        return (mine if g is None else g + mine), None, None


class _Mix(torch.autograd.Function):
    """Contributions ``A @ D[:k]`` of the first ``k`` sender slots to one row group.

    ``A``: ``Pb (rows V) k`` absent weights; returns ``batch V pos rows d_model``. The
    tapped sender blocks are inputs only to order the backward pass (they get their gradient
    from the buffer, through :class:`_Tap`)."""

    @staticmethod
    def forward(ctx: Any, A: Tensor, buf: _Buffers, k: int, rows: int, *senders: Tensor) -> Tensor:  # type: ignore[override]
        ctx.save_for_backward(A)
        ctx.buf, ctx.k, ctx.rows, ctx.n_senders = buf, k, rows, len(senders)
        V = A.shape[1] // rows
        return buf.mix_out(torch.bmm(A, buf.flat(buf.D, k)), rows, V)

    @staticmethod
    def backward(ctx: Any, g: Tensor) -> tuple[Tensor | None, ...]:  # type: ignore[override]
        (A,) = ctx.saved_tensors
        buf: _Buffers = ctx.buf
        k, rows = ctx.k, ctx.rows
        g3 = buf.mix_in(g, rows, A.shape[1] // rows)
        grad_A = torch.bmm(g3, buf.flat(buf.D, k).transpose(1, 2)) if ctx.needs_input_grad[0] else None
        if buf.G is None:
            buf.G = torch.zeros_like(buf.D)
        buf.flat(buf.G, k).baddbmm_(A.transpose(1, 2), g3)  # a view of G: accumulates in place
        return (grad_A, None, None, None, *([None] * ctx.n_senders))


def group_weights(absent: Float[Tensor, "rows view pos k"], positional: bool, crosses: bool) -> Tensor:
    """A row group's absent weights as :class:`_Mix` reads them: ``Pb (rows V) k``."""
    _, _, P, k = absent.shape
    if not positional:
        return absent[:, 0, 0].unsqueeze(0)
    if crosses:
        return absent.permute(2, 0, 1, 3).reshape(P, -1, k)
    i = torch.arange(P, device=absent.device)
    return absent[:, i, i].permute(1, 0, 2)


def fused_pass(host: PassHost, absent: Float[Tensor, "row view pos slot"],
               prompts: slice | None = None) -> Float[Tensor, "batch pos d_model"]:  # fmt: skip
    """The patched pass of the (continuous) circuit ``absent`` over the prompts ``prompts``
    (all for None), from the embedding to the final residual stream (``batch pos d_model``,
    true positions): :func:`circuitdag.passes.full_pass` with ``stop=True``, differentiable
    w.r.t. ``absent`` with the custom backward of the module docstring. Raises ValueError
    for a graph with MLPs split into neurons or a model with post-sublayer norms (run the
    reference pass, as :func:`circuitdag.masked.masked_metric` does for both)."""
    lay, n, table = host.layout, host.layout.n_layers, host.table
    if lay.split:
        raise ValueError("the fused masked pass does not split MLPs into neurons; use the reference pass")
    if getattr(table, "post", None) is not None:
        raise ValueError("the fused masked pass sums a layer's heads linearly, but this model normalises each "
                         "sublayer's output (post-sublayer norms: Gemma 2/3, OLMo 2); use the reference pass")
    views = host.views.of(prompts)
    S_corr = host.runs.S_corr if prompts is None else host.runs.S_corr[prompts]
    buf = _Buffers(S_corr, views.positional)
    senders: list[Tensor] = []  # tapped sender blocks in slot order
    ends: list[int] = []  # the slot after each block

    def record(sl: slice, x: Tensor) -> None:
        with torch.no_grad():
            buf.write(sl, x - S_corr[:, :, sl])
        senders.append(_Tap.apply(x, buf, sl) if x.requires_grad else x)
        ends.append(sl.stop)

    pending: dict[tuple[int, Input], Tensor] = {}  # contributions computed with another input's

    def contributions(L: int, kind: Input) -> Tensor:
        """``batch view pos rows d_model``: what the absent senders remove from the rows of
        ``kind``. Inputs that read the same slots in the same geometry share one product:
        q, k and v without positions, k and v with (their rows are adjacent)."""
        if (L, kind) in pending:
            return pending.pop((L, kind))
        group = together(kind)
        first, last = lay.rows(L, group[0]), lay.rows(L, group[-1])
        k = lay.readable_slots(L, kind)
        A = group_weights(
            absent[first.start : last.stop, :, :, :k], views.positional, lay.crosses_positions(kind)
        )
        used = ends.index(k) + 1  # blocks covering the first k slots
        out = _Mix.apply(A, buf, k, last.stop - first.start, *senders[:used])
        for other in group:
            sl = lay.rows(L, other)
            pending[(L, other)] = out[:, :, :, sl.start - first.start : sl.stop - first.start]
        return pending.pop((L, kind))

    def together(kind: Input) -> tuple[Input, ...]:
        if kind in (Input.Q, Input.K, Input.V) and not views.positional:
            return (Input.Q, Input.K, Input.V)
        if kind in (Input.K, Input.V) and views.positional:
            return (Input.K, Input.V)
        return (kind,)

    def patched(x: Tensor, L: int, kind: Input) -> Tensor:
        single = x.dim() == 3
        xs = x.unsqueeze(2) if single else x  # (batch views) pos rows d
        own = views.diagonal(xs)[0].unsqueeze(1)  # batch 1 pos rows d
        out = views.into_views((own - contributions(L, kind)).unsqueeze(0))
        return out[:, :, 0] if single else out

    def on_input(L: int, kind: Input) -> Hook | None:
        return None if kind == Input.RESID else (lambda x, hook: patched(x, L, kind))

    def on_output(L: int, kind: NodeKind) -> Hook:
        if kind == NodeKind.HEAD:
            first = lay.head_slot(L, 0)
            return lambda x, hook: record(slice(first, first + lay.n_heads), views.diagonal(x)[0])
        return lambda x, hook: record(lay.mlp_slots(L), views.diagonal(x)[0].unsqueeze(2))

    def embed(L: int) -> Hook | None:
        return (lambda x, hook: record(slice(0, 1), views.diagonal(x)[0].unsqueeze(2))) if L == 0 else None

    hooks = table.hooks(resid_pre=embed, inputs=on_input, outputs=on_output)
    tokens = views.tokens(host.data.clean if prompts is None else host.data.clean[prompts])
    return table.run_to_final(
        host.model, tokens, hooks, lambda x: views.diagonal(patched(x, n, Input.RESID))[0]
    )


__all__ = ["fused_pass", "group_weights"]
