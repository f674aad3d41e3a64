"""The layer-by-layer fast path of speculative ACDC (DESIGN.md, making it fast).

:class:`LayerPath` evaluates K candidate circuits that differ only in one destination's
rows as one batch of K x prompts. It starts at the destination's layer from a cached
*base* run (the clean run, or the run of the circuit ACDC started from,
:meth:`LayerPath.set_base`), in which everything upstream of the destination has its
current value. Contributions of the senders before the start layer are the same in every
candidate and are cached per start layer. Tested equal to the reference pass
(:func:`circuitdag.passes.full_pass`). Models with post-sublayer norms (Gemma 2/3, OLMo 2)
re-normalise each upstream layer's heads per candidate (:meth:`LayerPath._renormalised`).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from jaxtyping import Float
from torch import Tensor

from circuitdag.graph import Input, NodeKind
from circuitdag.hooks import Hook
from circuitdag.passes import PassHost
from circuitdag.runs import Run


class LayerPath:
    """The base run and the per-start-layer caches of the fast path (module docstring)."""

    def __init__(self, host: PassHost) -> None:
        self.host = host
        # Caches valid for one start layer (see _caches_for).
        self._contrib_cache: dict[tuple[int, int], tuple[Tensor, Tensor]] = {}
        self._input_cache: dict[tuple[int, int], Tensor] = {}
        self._total_cache: dict[int, Tensor] = {}
        self._cache_layer = -1
        self.set_base(None)

    def set_base(self, base: Run | None) -> None:
        """Resume from ``base`` (a patched run), or from the clean run (None)."""
        self.base = base
        self._D_base = None if base is None else base.slots - self.host.runs.S_corr
        self._cache_layer = -1  # the next _caches_for empties the caches made from the old base

    @property
    def run(self) -> Run:
        return self.host.runs.clean if self.base is None else self.base

    @property
    def D_base(self) -> Tensor:
        return self.host.runs.D_clean if self._D_base is None else self._D_base

    def final(
        self,
        absent: Float[Tensor, "row view pos slot"],
        start_layer: int,
        cand_rows: Tensor,
        cand_absent: Float[Tensor, "k cell pos slot"],
        cand_views: Tensor | None = None,
        live_positions: Sequence[int] | None = None,
    ) -> Float[Tensor, "k batch pos d_model"]:
        """The final residual streams of the K candidates of
        :meth:`~circuitdag.patching.Patcher.candidate_metrics` (which documents the
        arguments)."""
        host = self.host
        post = host.table.post
        lay, n, views, positional = host.layout, host.layout.n_layers, host.views, host.views.positional
        K, B, P = cand_absent.shape[0], views.B, views.P
        n0 = lay.slots_before(start_layer)
        cells = list(zip(cand_rows.tolist(), [0] * len(cand_rows) if cand_views is None else cand_views.tolist()))
        live = list(range(P)) if not positional or live_positions is None else sorted(set(live_positions))
        V = len(live) if positional else 1
        view_of = {p: i for i, p in enumerate(live)}
        live_t = torch.as_tensor(live, device=views.device)
        S_corr, D_base, run = host.runs.S_corr, self.D_base, self.run
        # In-pass sender deltas for slots >= n0, per candidate (true positions, no views);
        # zero at the positions without a view (their senders count as corrupted).
        D_now = S_corr.new_zeros(K, B, P, lay.n_slots - n0, S_corr.shape[-1])
        # Running sums of D_now over its first slots (key: slot index), for complements.
        total_now: dict[int, Tensor] = {n0: D_now.new_zeros(K, B, P, D_now.shape[-1])}
        D_base0 = D_base[:, :, :n0]

        def diagonal(x: Tensor, L: int, kind: Input) -> Tensor:
            fill = self._cached_input(start_layer, L, kind) if len(live) < P else None
            return views.diagonal(x, K, live_t if positional else None, fill)

        def contribution(L: int, kind: Input) -> Tensor:
            """Sum over absent edges of sender deltas into the rows of (L, kind):
            k batch views-or-1 pos rows d."""
            sl, k = lay.rows(L, kind), lay.readable_slots(L, kind)
            cross = lay.crosses_positions(kind)
            mask = absent[sl][:, live_t] if cross else absent[sl]
            exists = host.exists[sl][:, live_t] if cross else host.exists[sl]
            base = self._base_contribution(start_layer, sl, absent[sl][..., :n0], kind)
            base = (base[:, live_t] if cross else base).unsqueeze(0)
            out = base
            if k > n0:
                now = views.contract_sparse(D_now[..., : k - n0, :], mask[..., n0:k], exists[..., n0:k], kind,
                                            total_now[k])  # fmt: skip
                out = out + now
            hit = [(c, r - sl.start, v) for c, (r, v) in enumerate(cells) if sl.start <= r < sl.stop]
            if hit:
                out = out.expand(K, *out.shape[1:]).clone()
                for c, ri, v in hit:
                    if cross:  # every key position, in view v
                        at, view = slice(None), view_of[v]
                    elif positional:  # the row reads position v only
                        at, view = slice(v, v + 1), 0
                    else:  # one mask for every position
                        at, view = slice(None), 0
                    # Senders before the start layer: the current row's contribution plus the
                    # few entries in which candidate j's mask differs from it.
                    got = base[:, :, view, at, ri].expand(K, -1, -1, -1).clone()  # k batch pos d
                    diff = cand_absent[:, c, :, :n0] - absent[sl.start + ri, v, :, :n0]  # k pos slot
                    _add_sparse(got, diff[:, at] if positional else diff, D_base0[:, at], positional)
                    if k > n0:
                        cm = cand_absent[:, c, :, n0:k]
                        cm = cm[:, at] if positional else cm.expand(-1, P, -1)
                        got = got + torch.einsum("kbpsd,kps->kbpd", D_now[:, :, at, : k - n0], cm)
                    out[:, :, view, at, ri] = got
            if post is not None:  # heads reach the input through their layer's norm (circuitdag.postnorm)
                out = out + self._renormalised(sl, kind, k, n0, absent, hit, cand_absent, D_now, live_t, view_of)
            return out

        def patch(L: int, kind: Input) -> Hook | None:
            if kind == Input.RESID:
                return None

            def fn(x: Tensor, hook: object) -> Tensor:
                single = x.dim() == 3
                xs = x.unsqueeze(2) if single else x
                own = diagonal(xs, L, kind).unsqueeze(2)  # k batch 1 pos rows d
                out = views.into_views(own - contribution(L, kind), V)
                return out[:, :, 0] if single else out
            return fn

        def record(L: int, kind: NodeKind) -> Hook:
            first, count = (lay.head_slot(L, 0), lay.n_heads) if kind == NodeKind.HEAD else (lay.mlp_slot(L), 1)

            def fn(x: Tensor, hook: object) -> None:
                x = views.diagonal(x, K, live_t if positional else None)  # k batch pos ...
                if kind == NodeKind.MLP:
                    x = x.unsqueeze(3)
                lo, at = first - n0, live_t if positional else slice(None)
                corr = S_corr[:, :, first : first + count]
                D_now[:, :, at, lo : lo + count] = x[:, :, at] - corr[:, at]
                total_now[first + count] = total_now[first] + D_now[:, :, :, lo : lo + count].sum(3)
            return fn

        def final(x: Tensor) -> Tensor:
            return diagonal(x, n, Input.RESID) - contribution(n, Input.RESID)[:, :, 0, :, 0]

        if start_layer == n:  # destination is logits: patch the final residual directly
            own = run.resid_final.unsqueeze(0).expand(K, -1, -1, -1)
            return own - contribution(n, Input.RESID)[:, :, 0, :, 0]
        resid = run.resid_pre[start_layer].unsqueeze(0).unsqueeze(2)  # 1 batch 1 pos d
        resid = views.into_views(resid.expand(K, -1, -1, -1, -1), V)
        hooks = host.table.hooks(start_layer=start_layer, inputs=patch, outputs=record)
        return host.table.run_to_final(host.model, resid, hooks, final, start_layer=start_layer)

    def _renormalised(self, sl: slice, kind: Input, k: int, n0: int, absent: Tensor,
                      hit: list[tuple[int, int, int]], cand_absent: Tensor, D_now: Tensor, live: Tensor,
                      view_of: dict[int, int]) -> Tensor | float:  # fmt: skip
        """Post-sublayer norms: what replaces, in the contributions to the rows ``sl`` of
        ``kind`` (which read the first ``k`` slots), each upstream layer's linear head
        contribution ``c`` by ``norm(A) - norm(A - c)`` (:mod:`circuitdag.postnorm`), per
        candidate: ``k batch views pos rows d_model`` (views: 1, or the live views of a row
        that reads other positions). ``A`` and the head deltas come from the base run below
        the start layer (``n0`` slots) and from this pass above it, where a position
        without a view has its senders corrupted (``D_now`` 0 there, as in the linear sums;
        :meth:`_cached_input` holds the matching normalised sums)."""
        host = self.host
        lay, post, S_corr, views = host.layout, host.table.post, host.runs.S_corr, host.views
        assert post is not None
        K, positional, cross = cand_absent.shape[0], views.positional, host.layout.crosses_positions(kind)
        # Each candidate's mask of the rows: k rows views pos slot (views and pos 1 without
        # positions; one view per position for a row that reads its own position only).
        if cross:
            mask = absent[sl][:, live].unsqueeze(0).repeat(K, 1, 1, 1, 1)
        elif positional:
            i = views.diag
            mask = absent[sl][:, i, i].unsqueeze(2).unsqueeze(0).repeat(K, 1, 1, 1, 1).transpose(2, 3)
        else:
            mask = absent[sl, :1, :1].unsqueeze(0).repeat(K, 1, 1, 1, 1)
        for c, ri, v in hit:
            if cross:
                mask[:, ri, view_of[v]] = cand_absent[:, c]
            elif positional:
                mask[:, ri, 0, v] = cand_absent[:, c, v]
            else:
                mask[:, ri, 0] = cand_absent[:, c]
        fix: Tensor | float = 0.0
        for L in range(lay.n_layers):
            heads = slice(lay.head_slot(L, 0), lay.head_slot(L, 0) + lay.n_heads)
            if heads.stop > k:
                break
            m = mask[..., heads]  # k rows views pos heads
            if not bool((m != 0).any()):
                continue
            if heads.stop <= n0:  # below the start layer: the base run, the same in every candidate
                D = self.D_base[:, :, heads].unsqueeze(0)  # 1 batch pos heads d
            else:
                D = D_now[:, :, :, heads.start - n0 : heads.stop - n0]  # k batch pos heads d
            A = post.attn_sum(L, S_corr[:, :, heads] + D)[:, :, None, :, None]  # k batch 1 pos 1 d
            if positional or cross:
                lin = torch.einsum("kbphd,krvph->kbvprd", D.expand(K, -1, -1, -1, -1), m)
            else:  # one mask for every position
                lin = torch.einsum("kbphd,krh->kbprd", D.expand(K, -1, -1, -1, -1), m[:, :, 0, 0]).unsqueeze(2)
            fix = fix + post.gone(L, A, lin) - lin
        return fix

    def _cached_input(self, start_layer: int, L: int, kind: Input) -> Float[Tensor, "batch pos d_model"]:
        """The base run's input to (layer ``L``, ``kind``) with every sender from
        ``start_layer`` on replaced by its corrupted output (cached per start layer)."""
        self._caches_for(start_layer)
        key = (L, int(kind))
        hit = self._input_cache.get(key)
        if hit is not None:
            return hit
        lay, run = self.host.layout, self.run
        if kind == Input.RESID:
            base = run.resid_final
        elif kind == Input.MLP:
            base = run.mlp_in[L]
        else:
            base = run.resid_pre[L]
        n0, k = lay.slots_before(start_layer), lay.readable_slots(L, kind)
        out = base - self.D_base[:, :, n0:k].sum(dim=2)
        post = self.host.table.post
        for M in range(start_layer, lay.n_layers) if post is not None else ():
            assert post is not None
            # Post-sublayer norms: the corrupted heads of layer M reach the input as
            # norm(A_corr), not as A_base minus their deltas (circuitdag.postnorm).
            heads = slice(lay.head_slot(M, 0), lay.head_slot(M, 0) + lay.n_heads)
            if heads.stop > k:
                break
            D = self.D_base[:, :, heads]
            A = post.attn_sum(M, self.host.runs.S_corr[:, :, heads] + D)
            out = out + D.sum(dim=2) - post.gone(M, A, D.sum(dim=2))
        self._input_cache[key] = out
        return out

    def _base_contribution(self, start_layer: int, rows: slice, mask: Tensor, kind: Input) -> Tensor:
        """``contract(D_base[:, :, :n0], mask)`` for a row group, cached per start layer.

        The senders before the start layer are the same in every candidate and every batch
        of a destination, so their contribution is computed once and reused while the
        group's mask rows are unchanged (they change only when ACDC accepts a removal)."""
        self._caches_for(start_layer)
        key = (rows.start, rows.stop)
        hit = self._contrib_cache.get(key)
        if hit is not None and torch.equal(hit[0], mask):
            return hit[1]
        n0 = mask.shape[-1]
        D_base = self.D_base
        total = self._total_cache.get(n0)
        if total is None:
            total = self._total_cache[n0] = D_base[:, :, :n0].sum(dim=2)
        out = self.host.views.contract_sparse(D_base[:, :, :n0], mask, self.host.exists[rows][..., :n0], kind, total)
        self._contrib_cache[key] = (mask.clone(), out)
        return out

    def _caches_for(self, start_layer: int) -> None:
        """Empty the caches when the path moves to another start layer."""
        if self._cache_layer != start_layer:
            self._contrib_cache.clear()
            self._input_cache.clear()
            self._total_cache.clear()
            self._cache_layer = start_layer


def _add_sparse(got: Tensor, diff: Tensor, D: Tensor, positional: bool) -> None:
    """``got[j] += sum over slots s, positions p of diff[j, p, s] * D[:, p, s]`` in place,
    reading only the nonzero entries of ``diff``.

    ``got``: ``k batch pos d``; ``diff``: ``k pos slot`` (pos 1 without positions, where the
    mask applies at every position); ``D``: ``batch pos slot d`` (the same positions)."""
    j, p, sl = diff.nonzero(as_tuple=True)
    if j.numel() == 0:
        return
    vals = diff[j, p, sl].to(D.dtype)
    if not positional:  # one mask entry moves the sender at every position
        vecs = D[:, :, sl].permute(2, 0, 1, 3) * vals[:, None, None, None]  # e batch pos d
        got.index_add_(0, j, vecs)
        return
    vecs = D[:, p, sl].permute(1, 0, 2) * vals[:, None, None]  # e batch d
    view = got.permute(0, 2, 1, 3)  # k pos batch d (a view: index_put_ writes into got)
    view.index_put_((j, p), vecs, accumulate=True)


__all__ = ["LayerPath"]
