"""The component-level fast path of ACDC on position-aware graphs (DESIGN.md, "Recompute
only what a candidate changes"; :mod:`circuitdag.recompute` serves graphs without positions
and explains the idea).

On a position-aware graph a node is a component at one position, so a candidate
recomputes single rows: one query position of a head attending to the keys it sees, one
position of an MLP. :class:`PositionalFastPath` keeps the run of the current circuit per
*cell* of the edge mask and carries a candidate's changes along present edges, cell by
cell; the reference it must agree with is :meth:`circuitdag.patching.Patcher.reference_metric`.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import Tensor

from circuitdag.components import ComponentKernels
from circuitdag.graph import Input, NodeKind
from circuitdag.patching import Patcher
from circuitdag.recompute import first_changing_position, overwrite, removal_chain, start_run


class PositionalFastPath:
    """The component-level fast path on position-aware graphs.

    A node is a component at one position, so recomputing it is cheap: a head at query
    position ``q`` is one query row attending to the keys it sees, an MLP at ``q`` one row.
    The run of the current circuit is kept per *cell* of the edge mask (DESIGN.md,
    position-aware edges): a Q, MLP or ``logits`` input at position ``q`` is ``I[row][:, q]``
    (``batch d``); the key (value) input of a head as query ``q`` sees it is
    ``I[row][:, q]`` over every key position (``batch pos d``), since a K or V edge
    ``SRC@p -> a@q`` patches only the pair ``(q, p)``. A candidate changes the cells of
    its destination node; changes travel along present edges, cell by cell, to the
    affected nodes, each recomputed at its own position."""

    def __init__(self, patcher: Patcher, kernels: ComponentKernels, alive: np.ndarray) -> None:
        if not patcher.positional:
            raise ValueError("PositionalFastPath works on position-aware graphs")
        self.p, self.kernels = patcher, kernels
        graph, lay, spec = patcher.graph, patcher.layout, patcher.graph.spec
        self.graph, self.lay, self.spec = graph, lay, spec
        self.component_evals = 0
        absent = patcher.absent_matrix(alive)
        exists = (patcher.exists != 0).cpu().numpy()  # rows views pos slots (bool: numpy has no bfloat16)
        self.present = exists & ~(absent != 0).cpu().numpy()
        slots, resid_pre, mlp_in, final = start_run(patcher, alive, absent)
        self.S: list[Tensor] = [slots[:, :, s] for s in range(lay.n_slots)]  # batch pos d
        D = slots - patcher.S_corr  # batch pos slot d
        P = patcher.P
        diag = torch.arange(P, device=patcher.device)
        self.I: list[Tensor] = []  # batch pos d (own-position inputs) or batch view pos d (K, V)
        for r in range(lay.n_rows):
            L, kind = self.lay.row_layer_kind(r)
            base = final if kind == Input.RESID else (mlp_in[L] if kind == Input.MLP else resid_pre[L])
            mask = absent[r]  # view pos slot
            cross = lay.crosses_positions(kind)
            if not bool(mask.any()):
                self.I.append(base.unsqueeze(1).expand(-1, P, -1, -1) if cross else base)
            elif cross:
                self.I.append(base.unsqueeze(1) - torch.einsum("bpsd,vps->bvpd", D, mask))
            else:
                self.I.append(base - torch.einsum("bpsd,ps->bpd", D, mask[diag, diag]))
        self.S_corr = patcher.S_corr
        self._own_I: set[int] = set()
        self._own_S: set[int] = set()
        self._pending: dict[str, Any] | None = None
        self._I0: dict[tuple[int, int], Tensor] = {}  # as SparseFastPath: (row, view) and
        self._S0: dict[tuple[int, int], Tensor] = {}  # (slot, pos) a commit of this destination changed
        self._affected: dict[int, list[int]] = {}
        self._sink = torch.as_tensor(graph.positions.sink, device=patcher.device)  # type: ignore[union-attr]
        #: Positions before this one never change (see :func:`first_changing_position`).
        self.first = first_changing_position(patcher)

    def inert(self, edges: np.ndarray) -> np.ndarray:
        """Which of ``edges`` carry exactly nothing: their sender sits before :attr:`first`,
        where its output equals its ablated output in every circuit, so removing the edge
        changes no value and its ACDC score is exactly 0 (no evaluation needed)."""
        return self.graph.edges.src_pos[edges] < self.first

    def remove(self, edges: np.ndarray) -> None:
        """Mark ``edges`` absent without evaluating them (inert edges ACDC removes)."""
        lay = self.lay
        cells = lay.edge_row[edges], lay.edge_view[edges], lay.edge_pos[edges], lay.edge_slot[edges]
        self.present[cells] = False

    def forget_affected(self) -> None:
        """Start a new destination (as :meth:`SparseFastPath.forget_affected`)."""
        self._affected.clear()
        self._I0.clear()
        self._S0.clear()

    def _start_I(self, r: int, v: int) -> Tensor:
        """Downstream cell ``(r, v)`` when the destination started (as
        :meth:`SparseFastPath._start_I`)."""
        hit = self._I0.get((r, v))
        return hit if hit is not None else self.I[r][:, v]

    def _start_S(self, s: int, q: int) -> Tensor:
        """Sender ``s``'s output at ``q`` when the destination started."""
        hit = self._S0.get((s, q))
        return hit if hit is not None else self.S[s][:, q]

    def affected(self, dest: int, alive: np.ndarray) -> list[int]:
        hit = self._affected.get(dest)
        if hit is None:
            reach = self.graph.reach
            down = reach.reached_from_source(alive, dest) & reach.reaches_sink(alive, self.graph.sink)
            hit = self._affected[dest] = np.flatnonzero(down).tolist()
        return hit

    def bytes_per_candidate(self, dest: int, alive: np.ndarray) -> int:
        B, P, d = self.S[0].shape
        item = torch.finfo(self.p.dtype).bits // 8
        n = len(self.affected(dest, alive))
        vocab = self.p.ref.logits.shape[-1]
        return (8 * n + 8) * B * P * d * item + 4 * B * len(self._sink) * vocab * item

    def _n_keys(self, q: int) -> int:
        return q + 1 if self.spec.causal else self.S[0].shape[1]

    @torch.no_grad()
    def evaluate(self, dest: int, edges: np.ndarray, alive: np.ndarray, nested: bool = True) -> Tensor:
        """Metric of the K nested candidates "current circuit minus ``edges[:j+1]``" (or ``edges[j]``)."""
        lay, k, graph = self.lay, len(edges), self.graph
        dev, dt = self.p.device, self.p.dtype
        rows_e, views_e = lay.edge_row[edges], lay.edge_view[edges]
        pos_e, slots_e = lay.edge_pos[edges], lay.edge_slot[edges]
        cells: dict[tuple[int, int], Tensor] = {}  # (row, view) -> k batch d | k batch pos d
        own = set(zip(rows_e.tolist(), views_e.tolist()))  # the destination's cells
        for r, v in sorted(own):
            idx = np.flatnonzero((rows_e == r) & (views_e == v))
            L, kind = self.lay.row_layer_kind(r)
            cur = self.I[r][:, v]  # batch pos d (K, V) | batch d
            if lay.crosses_positions(kind):
                D = torch.zeros(len(idx), *cur.shape, dtype=dt, device=dev)
                for t, e in enumerate(idx.tolist()):
                    p, s = int(pos_e[e]), int(slots_e[e])
                    D[t, :, p] = self.S[s][:, p] - self.S_corr[:, p, s]
            else:
                D = torch.stack([self.S[int(s)][:, v] - self.S_corr[:, v, int(s)] for s in slots_e[idx]])
            cells[(r, v)] = removal_chain(cur, D, idx, k, nested)
        deltas: dict[tuple[int, int], Tensor] = {}  # (slot, pos) -> k batch d
        outs: dict[tuple[int, int], Tensor] = {}

        def cell(r: int, v: int, kind: Input) -> Tensor | None:
            got = cells.get((r, v))
            if got is not None:
                return got
            if lay.crosses_positions(kind):
                hits = [(s, p) for (s, p) in deltas if self.present[r, v, p, s]]
                if not hits:
                    return None
                got = self._start_I(r, v).unsqueeze(0).repeat(k, 1, 1, 1)
                for s, p in hits:
                    got[:, :, p] += deltas[(s, p)]
            else:
                hits = [(s, p) for (s, p) in deltas if p == v and self.present[r, v, v, s]]
                if not hits:
                    return None
                got = self._start_I(r, v).unsqueeze(0) + sum(deltas[h] for h in hits)
            cells[(r, v)] = got
            return got

        B, d = self.S[0].shape[0], self.S[0].shape[2]
        kern = self.kernels
        for u in self.affected(dest, alive):
            node = graph.nodes[u]
            q = node.pos
            if node.kind == NodeKind.MLP:
                x = cell(lay.rows(node.layer, Input.MLP).start, q, Input.MLP)
                if x is None:
                    continue
                out = kern.mlp(node.layer, x.reshape(k * B, 1, d)).reshape(k, B, d)
                s = lay.mlp_slot(node.layer)
            elif node.kind == NodeKind.HEAD:
                L, h = node.layer, node.head
                rq, rk, rv = self.lay.head_rows(L, h, self.spec.kv_head(h))
                xq, xk, xv = cell(rq, q, Input.Q), cell(rk, q, Input.K), cell(rv, q, Input.V)
                if xq is None and xk is None and xv is None:
                    continue
                nk = self._n_keys(q)
                qp, kp = torch.as_tensor([q], device=dev), torch.arange(nk, device=dev)
                xq = (xq.reshape(k * B, 1, d) if xq is not None
                      else self.I[rq][:, q].unsqueeze(1).repeat(k, 1, 1))  # fmt: skip
                xk = (xk[:, :, :nk].reshape(k * B, nk, d) if xk is not None
                      else self.I[rk][:, q, :nk].repeat(k, 1, 1))  # fmt: skip
                xv = (xv[:, :, :nk].reshape(k * B, nk, d) if xv is not None
                      else self.I[rv][:, q, :nk].repeat(k, 1, 1))  # fmt: skip
                g = self.spec.kv_head(h)
                qq = kern.queries(L, [h], xq, qp)
                kk, vv = kern.keys_values(L, g, xk, xv, kp)
                out = kern.attend(L, [h], qq, kk.unsqueeze(2), vv.unsqueeze(2), qp, kp)[:, 0, 0].reshape(
                    k, B, d
                )
                s = lay.head_slot(L, h)
            else:  # KV nodes and logits: read by others / the metric
                continue
            self.component_evals += k
            outs[(s, q)] = out
            deltas[(s, q)] = out - self._start_S(s, q)
        sink_row = lay.n_rows - 1
        finals = []
        for p in self.p.graph.positions.sink:  # type: ignore[union-attr]
            x = cell(sink_row, p, Input.RESID)
            finals.append(x if x is not None else self.I[sink_row][:, p].unsqueeze(0).expand(k, -1, -1))
        self._pending = {"cells": cells, "own": own, "outs": outs, "removed": list(zip(rows_e.tolist(), views_e.tolist(),
                                                                              pos_e.tolist(), slots_e.tolist()))}  # fmt: skip
        return self.p.final_metric(torch.stack(finals, dim=2), positions=self._sink)

    def commit(self, n_accepted: int) -> None:
        """As :meth:`SparseFastPath.commit`."""
        pend, self._pending = self._pending, None
        if pend is None or n_accepted == 0:
            return
        j = n_accepted - 1
        for (r, v), x in pend["cells"].items():
            overwrite(self.I, self._own_I, r, v, x[j], None if (r, v) in pend["own"] else self._I0, (r, v))
        for (s, q), x in pend["outs"].items():
            overwrite(self.S, self._own_S, s, q, x[j], self._S0, (s, q))
        for r, v, p, s in pend["removed"][:n_accepted]:
            self.present[r, v, p, s] = False
