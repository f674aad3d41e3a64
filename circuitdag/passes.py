"""The full patched forward pass and the view arithmetic every pass shares.

In a forward pass with a circuit each destination input is (DESIGN.md, patching)::

    input = resid_in_this_pass - sum over senders s of absent[row, s] * (S_now[s] - S_corr[s])

with ``absent`` the dense mask of :class:`~circuitdag.layout.Layout` (1 where the edge is
removed). :func:`full_pass` is that pass from the embedding, every sender captured into
``S_now`` as the pass goes: the reference (dense sums), the sparse one (sums over only the
slots with an absent edge, or ``total - present`` when fewer are present, stopping at the
final residual stream), and, with a mask that carries gradients and weights anywhere in
[0, 1], the differentiable masked pass (:mod:`circuitdag.masked`). Nothing in it writes in
place into a tensor that autograd saved, so it differentiates as it runs.

Position-aware graphs run as ``P`` *views* of every prompt (:class:`Views`): view ``q`` is
the model as query position ``q`` sees it. At every input hook the true residual stream at
position ``p`` is taken from view ``p`` (the diagonal), and view ``q`` gets the inputs of
query ``q``: at position ``p`` the residual minus the contributions of the edges absent
for the pair ``(q, p)``. Position ``q`` of view ``q`` is then exactly the patched model at
``q``; its head and MLP outputs are read off the diagonal. Nothing but the documented hooks
is used, so this works for every architecture (rotary embeddings, grouped-query attention,
non-causal attention).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from typing import Any, Protocol

import numpy as np
import torch
from jaxtyping import Float
from torch import Tensor

from circuitdag.components import NeuronKernel
from circuitdag.graph import Input, NodeKind
from circuitdag.hooks import Hook, HookTable
from circuitdag.layout import Layout
from circuitdag.runs import CachedRuns
from circuitdag.tasks.base import TaskData


class Views:
    """The view layout of a pass over ``B`` prompts of ``P`` tokens (module docstring):
    ``V = P`` views per prompt with positions, one without."""

    def __init__(self, layout: Layout, B: int, P: int, device: torch.device) -> None:
        self.layout, self.B, self.P, self.device = layout, B, P, device
        self.positional = layout.positional
        self.V = P if self.positional else 1
        self.diag = torch.arange(P, device=device)

    def of(self, prompts: slice | None) -> Views:
        """The views of the prompts ``prompts`` only (these views for None)."""
        return self if prompts is None else Views(self.layout, len(range(self.B)[prompts]), self.P, self.device)

    def tokens(self, tokens: Tensor) -> Tensor:
        """``batch pos`` -> ``(batch views) pos``: every prompt once per view."""
        B, P = tokens.shape
        return tokens.unsqueeze(1).expand(B, self.V, P).reshape(B * self.V, P)

    def diagonal(self, x: Tensor, k: int = 1, live: Tensor | None = None, fill: Tensor | None = None) -> Tensor:
        """Activations of a pass over ``k x batch x views`` sequences -> ``k batch pos ...``:
        position ``p`` read from view ``p`` (every view is the same without positions).

        With ``live`` (positions, in view order) only those positions have a view; the
        others are taken from ``fill`` (``batch pos d_model``, broadcast over heads) or left
        uninitialised when ``fill`` is None."""
        n_views = self.V if live is None else len(live)
        x = x.reshape(k, self.B, n_views, *x.shape[1:])
        if not self.positional:
            return x[:, :, 0]
        if live is None or len(live) == self.P:
            return x[:, :, self.diag, self.diag]
        out = x.new_empty(k, self.B, self.P, *x.shape[4:])
        out[:, :, live] = x[:, :, torch.arange(n_views, device=self.device), live]
        if fill is not None:
            dead = torch.ones(self.P, dtype=torch.bool, device=self.device)
            dead[live] = False
            part = fill[:, dead]  # batch dead d_model
            out[:, :, dead] = part.reshape(*part.shape[:2], *([1] * (out.dim() - 4)), -1).expand_as(out[:, :, dead])
        return out

    def into_views(self, x: Float[Tensor, "k batch view pos ..."], n_views: int | None = None) -> Tensor:
        """``k batch view-or-1 pos ...`` -> the ``(k batch views) pos ...`` layout of a pass."""
        k, n_views = x.shape[0], self.V if n_views is None else n_views
        x = x.expand(k, self.B, n_views, *x.shape[3:])
        return x.reshape(k * self.B * n_views, *x.shape[3:])

    def spread(self, x: Float[Tensor, "batch pos ..."]) -> Tensor:
        """``batch pos ...`` (true positions) -> ``(batch views) pos ...``: every view reads it."""
        return self.into_views(x[None, :, None])

    def contract(self, D: Tensor, mask: Tensor, kind: Input) -> Tensor:
        """Contributions ``sum_s mask * D`` of senders to a group of rows.

        ``D``: ``... batch pos slot d_model`` sender deltas; ``mask``: ``rows view pos slot``
        (the same slots). Returns ``... batch view pos rows d_model``, with a view axis of
        size 1 for rows that read their own position only."""
        if not self.positional:
            return torch.einsum("...bpsd,rs->...bprd", D, mask[:, 0, 0]).unsqueeze(-4)
        if self.layout.crosses_positions(kind):
            return torch.einsum("...bpsd,rvps->...bvprd", D, mask)
        i = self.diag
        return torch.einsum("...bpsd,rps->...bprd", D, mask[:, i, i]).unsqueeze(-4)

    def contract_sparse(
        self, D: Tensor | Callable[[Tensor], Tensor], mask: Tensor, exists: Tensor, kind: Input, total: Tensor
    ) -> Tensor:
        """:meth:`contract` that reads only the slots that matter.

        Circuits are sparse: a row group has either few absent senders (early in ACDC) or
        few present ones (later, and in prefiltered runs). The sum over absent edges is
        taken directly over the slots with an absent edge, or as ``total - sum over present
        edges`` over the slots with a present edge, whichever reads fewer slots. ``total``
        (``... batch pos d_model``) is ``D`` summed over its slots; ``exists`` marks the
        edges of the graph (``mask``'s shape). ``D`` may be a function of the slot indices
        returning those slots of ``D``, so that the full tensor is never built."""
        columns = D if callable(D) else (lambda cols: D[..., cols, :])
        absent_cols = (mask != 0).flatten(0, -2).any(0)
        present = exists - mask
        present_cols = (present != 0).flatten(0, -2).any(0)
        if int(absent_cols.sum()) <= int(present_cols.sum()):
            cols = absent_cols.nonzero().squeeze(1)
            return self.contract(columns(cols), mask[..., cols], kind)
        cols = present_cols.nonzero().squeeze(1)
        part = self.contract(columns(cols), present[..., cols], kind)  # ... b v p r d
        # Where the group has edges at all (a row, view and position), every readable slot
        # is a sender, so the sum over existing edges is ``total`` there and 0 elsewhere.
        has = (exists != 0).any(-1).to(total.dtype)  # rows view pos
        if not self.positional:
            has = has[:, 0, 0].reshape(1, 1, -1)  # 1 1 rows
        elif self.layout.crosses_positions(kind):
            has = has.permute(1, 2, 0)  # view pos rows
        else:
            i = self.diag
            has = has[:, i, i].T.unsqueeze(0)  # 1 pos rows
        return total.unsqueeze(-3).unsqueeze(-2) * has.unsqueeze(-1) - part


class PassHost(Protocol):
    """What a pass reads of its :class:`~circuitdag.patching.Patcher`."""

    model: Any
    table: HookTable
    layout: Layout
    views: Views
    runs: CachedRuns
    exists: Tensor
    neurons: dict[int, NeuronKernel]
    data: TaskData


def full_pass(
    host: PassHost,
    absent: Float[Tensor, "row view pos slot"],
    capture: dict[str, Tensor] | None = None,
    raw: dict[str, Any] | None = None,
    sparse: bool = False,
    stop: bool | None = None,
    prompts: slice | None = None,
) -> Tensor:
    """The patched pass of circuit ``absent`` from the embedding (module docstring) over the
    prompts ``prompts`` (all for None): their logits (``batch pos vocab``, true positions),
    or with ``stop`` (the default with ``sparse``) their final residual stream (``batch pos
    d_model``). ``sparse`` reads only the slots that matter (:meth:`Views.contract_sparse`,
    from running sums of the sender deltas); it needs a 0/1 ``absent``.

    For each hook name that is a key of ``capture``, its activation is stored there as
    ``batch view ...``. ``raw`` receives every sender's output (``slots``) and the
    unpatched residual stream before each block (``resid_pre``), before each MLP
    (``mlp_in``) and at the end (``resid_final``), at the true positions."""
    lay, n, table = host.layout, host.layout.n_layers, host.table
    views = host.views.of(prompts)
    S_corr = host.runs.S_corr if prompts is None else host.runs.S_corr[prompts]
    stop = sparse if stop is None else stop
    S_now = torch.zeros_like(S_corr)
    # Running sums over slots of S_now - S_corr (key: number of slots summed).
    totals: dict[int, Tensor] = {0: torch.zeros_like(S_corr[:, :, 0])}

    def gone(mask: Tensor, exists: Tensor, kind: Input, k: int) -> Tensor:
        """Contributions of the absent senders among the first ``k`` slots."""
        if sparse:
            out = views.contract_sparse(lambda cols: S_now[:, :, cols] - S_corr[:, :, cols], mask, exists, kind,
                                        totals[k])  # fmt: skip
        else:
            out = views.contract(S_now[:, :, :k] - S_corr[:, :, :k], mask, kind)
        return out if table.post is None else out + renormalised(mask, kind, k)

    def renormalised(mask: Tensor, kind: Input, k: int) -> Tensor | float:
        """Post-sublayer norms (:mod:`circuitdag.postnorm`): the heads of each layer reach
        the input through the norm of their sum, so their linear contribution ``c`` in
        :func:`gone` is replaced by ``norm(A_now) - norm(A_now - c)``."""
        post = table.post
        fix: Tensor | float = 0.0
        assert post is not None
        for L in range(n):
            heads = slice(lay.head_slot(L, 0), lay.head_slot(L, 0) + lay.n_heads)
            if heads.stop > k:
                break
            m = mask[..., heads]
            if not m.requires_grad and not bool((m != 0).any()):
                continue
            c = views.contract(S_now[:, :, heads] - S_corr[:, :, heads], m, kind)  # batch view pos rows d
            A = post.attn_sum(L, S_now[:, :, heads])[:, None, :, None]  # batch 1 pos 1 d
            fix = fix + post.gone(L, A, c) - c
        return fix

    def patched(x: Tensor, L: int, kind: Input) -> Tensor:
        single = x.dim() == 3
        xs = x.unsqueeze(2) if single else x  # (batch views) pos rows d
        sl, k = lay.rows(L, kind), lay.readable_slots(L, kind)
        own = views.diagonal(xs)[0].unsqueeze(1)  # batch 1 pos rows d
        out = views.into_views((own - gone(absent[sl, :, :, :k], host.exists[sl, :, :, :k], kind, k)).unsqueeze(0))
        return out[:, :, 0] if single else out

    def record(sl: slice, x: Tensor) -> None:
        S_now[:, :, sl] = x
        if sparse:
            totals[sl.stop] = totals[sl.start] + (x - S_corr[:, :, sl]).sum(2)

    # MLPs split into neurons: each neuron gets its own input at hook_mlp_in (the model's
    # MLP runs on the unpatched stream and its output is replaced by the neurons' sum).
    pending: dict[int, Tensor] = {}

    def neurons_in(L: int, x: Tensor) -> Tensor:
        sl, k = lay.rows(L, Input.MLP), lay.readable_slots(L, Input.MLP)
        mask = absent[sl, :, :, :k]
        reps, group_of = unique_rows(mask.detach())  # neurons with the same absent edges share one input
        pending[L] = host.neurons[L].outputs(x.unsqueeze(2) - gone(mask[reps], host.exists[sl][reps][..., :k],
                                                                   Input.MLP, k)[:, 0], group_of)  # fmt: skip
        return x

    def neurons_out(L: int) -> Tensor:
        out = pending.pop(L)
        record(lay.mlp_slots(L), out)
        return out.sum(2)

    def on_input(L: int, kind: Input) -> Hook | None:
        if kind == Input.RESID:
            return None if stop else (lambda x, hook: patched(x, n, kind))
        if kind == Input.MLP and L in host.neurons:
            return lambda x, hook: neurons_in(L, x)
        return lambda x, hook: patched(x, L, kind)

    def on_output(L: int, kind: NodeKind) -> Hook:
        if kind == NodeKind.MLP and L in host.neurons:
            return lambda x, hook: neurons_out(L)
        if kind == NodeKind.HEAD:
            return lambda x, hook: record(slice(lay.head_slot(L, 0), lay.head_slot(L, 0) + lay.n_heads),
                                          views.diagonal(x)[0])  # fmt: skip
        return lambda x, hook: record(lay.mlp_slots(L), views.diagonal(x)[0].unsqueeze(2))

    def embed(L: int) -> Hook | None:
        return (lambda x, hook: record(slice(0, 1), views.diagonal(x)[0].unsqueeze(2))) if L == 0 else None

    hooks = table.hooks(resid_pre=embed, inputs=on_input, outputs=on_output)

    def keep(name: str) -> Hook:
        def fn(x: Tensor, hook: Any) -> None:
            capture[name] = x.detach().reshape(views.B, views.V, *x.shape[1:]).clone()  # type: ignore[index]
        return fn

    hooks += [(name, keep(name)) for name in capture or {}]
    if raw is not None:
        raw.update(slots=S_now, resid_pre=[None] * n, mlp_in=[None] * n)

        def put(key: str, L: int) -> Hook:
            def fn(x: Tensor, hook: Any) -> None:
                x = views.diagonal(x)[0].detach().clone()
                if L == n:
                    raw["resid_final"] = x
                else:
                    raw[key][L] = x
            return fn

        # First, so that they read the unpatched residual stream. The MLP's input is read at
        # hook_mlp_in itself, as the cached runs read it: TransformerBridge fires
        # hook_resid_mid *after* hook_mlp_in, with the patched value (a resumed or
        # prefiltered run then started from a wrong cached run, issue 21).
        hooks = table.hooks(resid_pre=lambda L: put("resid_pre", L),
                            inputs=lambda L, kind: put("mlp_in", L) if kind == Input.MLP else None) + hooks  # fmt: skip
    tokens = views.tokens(host.data.clean if prompts is None else host.data.clean[prompts])
    if not stop:
        return views.diagonal(host.model.run_with_hooks(tokens, fwd_hooks=hooks))[0]
    return table.run_to_final(host.model, tokens, hooks, lambda x: views.diagonal(patched(x, n, Input.RESID))[0])


@contextlib.contextmanager
def frozen(model: Any) -> Iterator[None]:
    """Within: no parameter of ``model`` requires gradients, so a differentiated pass
    records gradients for activations and masks only (restored on exit)."""
    grad_mode = [p.requires_grad for p in model.parameters()]
    try:
        for p in model.parameters():
            p.requires_grad_(False)
        yield
    finally:
        for p, g in zip(model.parameters(), grad_mode):
            p.requires_grad_(g)


def unique_rows(mask: Tensor) -> tuple[Tensor, Tensor]:
    """Rows of ``mask`` (``rows ...``) grouped by equal content: the index of one row per
    group, and each row's group."""
    flat = mask.reshape(mask.shape[0], -1).cpu().numpy()
    _, first, inverse = np.unique(flat, axis=0, return_index=True, return_inverse=True)
    dev = mask.device
    return torch.as_tensor(first, device=dev), torch.as_tensor(inverse.reshape(-1), device=dev)


__all__ = ["PassHost", "Views", "frozen", "full_pass", "unique_rows"]
