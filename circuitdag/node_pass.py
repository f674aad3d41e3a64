"""A circuit's metric computed on the circuit's own nodes only: the fast path of the MIB
curve (:mod:`circuitdag.mib`), whose small grid points keep a few hundred of tens of
thousands of edges.

In the patched pass of a circuit ``C`` (DESIGN.md, patching) a destination input is

    I_C[row] = I_empty[row] + sum over present edges (s -> row) of (S_C[s] - S_abl[s])

where ``I_empty[row]`` is the input with every edge absent (``const + sum of S_abl`` over
the senders the row may read) and ``S_abl`` the ablated sender outputs. A sender's output
matters only through its present edges, so only the nodes with a present out-edge need
computing; every other node's output is never read. :class:`NodePass` keeps
``I_empty`` (one tensor per (layer, input), computed once from the clean run:
``I_empty = I_clean - sum of (S_clean - S_abl)`` over the readable senders) and for each
circuit evaluates its nodes in topological order with the component kernels
(:class:`~circuitdag.components.ComponentKernels`: one head, one MLP), each input summed
over the present senders only, then the final residual stream and the metric. A circuit
of ``n`` nodes costs ``n`` component evaluations and one matmul per input group over the
senders it reads, instead of a whole forward pass.

Each input group is summed from whichever side has fewer terms: ``I_empty`` plus the
present senders' deltas, or ``I_clean`` minus the absent edges' ``S_clean - S_abl`` and the
present senders' ``S_clean - S_C`` (small in a dense circuit, so no large sums cancel).

It serves plain graphs (no positions, no neuron nodes) of models whose kernels reproduce
them (:meth:`~circuitdag.patching.Patcher.kernels`); :func:`circuit_metrics` uses
:meth:`~circuitdag.patching.Patcher.circuit_metric` (the full sparse pass) otherwise. The
reference is ``Patcher.circuit_metric``; tests/test_node_pass.py checks they agree.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import numpy as np
import torch
from jaxtyping import Float
from torch import Tensor

from circuitdag.graph import Input, NodeKind

__all__ = ["NodePass", "circuit_metrics", "node_pass_for"]


class NodePass:
    """Circuit metrics and final residual streams on one
    :class:`~circuitdag.patching.Patcher` by computing only the circuit's nodes (module
    docstring). Raises ValueError for a position-aware graph, neuron nodes, or a model
    whose component kernels do not reproduce it (``patcher.kernel_problem`` says why).
    ``patcher`` is not imported here: the patcher hands out its own instance
    (``Patcher.node_pass``), which the run record and the held-out check use too."""

    def __init__(self, patcher: Any) -> None:
        if patcher.positional or patcher.neurons:
            raise ValueError("NodePass works on graphs without positions or neuron nodes")
        kernels = patcher.kernels()
        if kernels is None:
            raise ValueError(f"the component kernels do not reproduce this model: {patcher.kernel_problem}")
        self.p, self.kernels = patcher, kernels
        self.graph, self.lay, self.spec = patcher.graph, patcher.layout, patcher.graph.spec
        lay = self.lay
        self.exists = (patcher.exists[:, 0, 0] != 0).cpu().numpy()  # rows slots
        D = patcher.D_clean  # batch pos slot d: S_clean - S_abl
        self.Dv = D.reshape(-1, D.shape[2], D.shape[3])  # b*p slot d, a view
        # I_empty per (layer, input) group: the clean input minus every readable sender's delta.
        bases: dict[int, Tensor] = {}
        ks = sorted({lay.readable_slots(L, kind) for L in range(lay.n_layers) for kind in (Input.Q, Input.MLP)}
                    | {lay.n_slots})  # fmt: skip
        total, at = torch.zeros_like(D[:, :, 0]), 0
        for k in ks:
            total = total + D[:, :, at:k].sum(2)
            bases[k] = total
            at = k
        self.empty: dict[tuple[int, Input], Tensor] = {}
        for L in range(lay.n_layers):
            self.empty[(L, Input.Q)] = patcher.resid_pre[L] - bases[lay.readable_slots(L, Input.Q)]
            if lay.has_mlp:
                self.empty[(L, Input.MLP)] = patcher.mlp_in[L] - bases[lay.readable_slots(L, Input.MLP)]
        self.empty[(lay.n_layers, Input.RESID)] = patcher.resid_final - bases[lay.n_slots]
        self.n_nodes = sum(1 for n in self.graph.nodes if n.kind in (NodeKind.HEAD, NodeKind.MLP))
        #: Slots whose clean and ablated outputs are identical (their edges change nothing).
        self.still = np.array([not bool(D[:, :, s].any()) for s in range(D.shape[2])])

    def _base(self, r: int) -> Tensor:
        """``I_empty`` of row ``r``: its input with every edge absent."""
        L, kind = self.lay.row_layer_kind(r)
        return self.empty[(L, Input.Q if kind in (Input.K, Input.V) else kind)]

    def _clean(self, r: int) -> Tensor:
        """``I_clean`` of row ``r``: its input in the clean run."""
        L, kind = self.lay.row_layer_kind(r)
        p = self.p
        return p.resid_final if kind == Input.RESID else (p.mlp_in[L] if kind == Input.MLP else p.resid_pre[L])

    def _slot(self, u: int) -> int:
        """The slot of head or MLP node ``u``."""
        node, lay = self.graph.nodes[u], self.lay
        return lay.head_slot(node.layer, node.head) if node.kind == NodeKind.HEAD else lay.mlp_slot(node.layer)

    def needed(self, alive: np.ndarray) -> list[int]:
        """The heads and MLPs with a present out-edge in circuit ``alive``, in topological order."""
        t = self.graph.edges
        src = np.unique(t.src[np.asarray(alive, dtype=bool)])
        nodes = [int(u) for u in src if self.graph.nodes[u].kind in (NodeKind.HEAD, NodeKind.MLP)]
        return sorted(nodes, key=lambda u: (self.graph.nodes[u].layer, self.graph.nodes[u].kind != NodeKind.HEAD,
                                            self.graph.nodes[u].head))  # fmt: skip

    def worth_it(self, alive: np.ndarray) -> bool:
        """Whether to evaluate circuit ``alive`` here: unless it is the full model (the clean
        run, free) or empty (computed once). Even a circuit that needs nearly every node costs
        less here than in the full sparse pass (benchmarks/curve_speed.py)."""
        alive = np.asarray(alive, dtype=bool)
        return bool(alive.any() and not alive.all())

    def _buffers(self) -> tuple[Tensor, Tensor]:
        """``cur[slot, b*p*d] = S_C - S_abl`` and ``diff[slot, b*p*d] = S_clean - S_C`` of the
        nodes computed for the current circuit, one row per slot; allocated once, zeros where
        no node of the current circuit wrote (a slot it does not compute has weight 0 in every
        sum, and zeroing keeps an earlier circuit's values, even non-finite ones, out)."""
        if not hasattr(self, "_cur"):
            n = self.Dv.shape[0] * self.Dv.shape[2]
            self._cur = torch.zeros(self.lay.n_slots, n, dtype=self.Dv.dtype, device=self.Dv.device)
            self._diff = torch.zeros_like(self._cur)
            self._written: set[int] = set()
        return self._cur, self._diff

    @staticmethod
    def _columns(mask: np.ndarray) -> tuple[np.ndarray, slice | np.ndarray] | None:
        """The senders to sum for ``mask`` (rows x slots): ``(weights, which)``, ``which`` a
        prefix of the slots (no copy; weight 0 where unused) when the used slots fill it,
        else their indices (gathered). None when no slot is used."""
        cols = np.flatnonzero(mask.any(0))
        if not cols.size:
            return None
        if 3 * cols.size > cols[-1] + 1:
            return mask[:, : cols[-1] + 1], slice(0, int(cols[-1]) + 1)
        return mask[:, cols], cols

    def _weights(self, w: np.ndarray) -> Tensor:
        return torch.as_tensor(w, dtype=self.Dv.dtype, device=self.Dv.device)

    def _sum_deltas(self, mask: np.ndarray) -> list[Tensor] | None:
        """``sum over slots c of mask[r, c] * (S_clean - S_abl)[c]`` per row r (``batch pos
        d`` each), one batched matmul over ``D_clean``; None when ``mask`` is empty."""
        use = self._columns(mask)
        if use is None:
            return None
        w, which = use
        got = torch.matmul(self._weights(w), self.Dv[:, which])  # b*p rows d
        B, P, _, d = self.p.D_clean.shape
        return [got[:, i].view(B, P, d) for i in range(mask.shape[0])]

    def _sum_rows(self, buf: Tensor, mask: np.ndarray) -> list[Tensor] | None:
        """``sum over slots c of mask[r, c] * buf[c]`` per row r (``batch pos d`` each), one
        matmul; None when ``mask`` is empty."""
        use = self._columns(mask)
        if use is None:
            return None
        w, which = use
        got = self._weights(w) @ buf[which]  # rows b*p*d
        B, P, _, d = self.p.D_clean.shape
        return [got[i].view(B, P, d) for i in range(mask.shape[0])]

    @torch.no_grad()
    def metric(self, alive: np.ndarray) -> float:
        """The metric of circuit ``alive`` (bool ``[n_edges]``): what
        :meth:`Patcher.circuit_metric` gives, up to float rounding."""
        return float(self.p.final_metric(self.final(alive).unsqueeze(0))[0])

    def release(self) -> None:
        """Free the two slot buffers (``2 x slots x batch x pos x d_model``: 1.7 GB for
        SmolLM2-135M on 100 prompts of 12 tokens); the next circuit allocates them again."""
        for name in ("_cur", "_diff", "_written"):
            self.__dict__.pop(name, None)

    @torch.no_grad()
    def final(self, alive: np.ndarray) -> Float[Tensor, "batch pos d_model"]:
        """The final residual stream of circuit ``alive`` (bool ``[n_edges]``) at every
        position: what the full sparse pass gives (``Patcher.final_of``), up to float
        rounding. Do not modify it: with no present edge into ``logits`` it is a cached
        tensor."""
        p, lay, kern, spec = self.p, self.lay, self.kernels, self.spec
        alive = np.asarray(alive, dtype=bool)
        present = np.zeros_like(self.exists)
        present[lay.edge_row[alive], lay.edge_slot[alive]] = True
        cur, diff = self._buffers()
        needed = self.needed(alive)
        slots = {0} | {self._slot(u) for u in needed}
        for s in self._written - slots:  # an earlier circuit's node this one does not compute
            cur[s].zero_()
            diff[s].zero_()
        self._written = slots
        # ``same[s]``: slot s's output in this circuit is the clean one, exactly (the embedding;
        # a node whose every input is): such a node is not computed, and an input that reads
        # only such senders present and only senders with S_clean == S_abl absent is the clean
        # one, so a circuit that changes nothing gives the clean run bit for bit.
        same = np.zeros(lay.n_slots, dtype=bool)
        same[0] = True

        def unchanged(r: int) -> bool:
            return not (self.exists[r] & ~np.where(present[r], same, self.still)).any()

        def inputs(rows: list[int]) -> list[Tensor]:
            """The inputs of ``rows`` (one layer and input group), in one matmul over the
            senders any of them reads: ``I_empty + sum of present deltas`` when few of the
            group's edges are present, else (fewer terms, and no large sums cancelling in the
            rounding) ``I_clean - sum over absent edges of (S_clean - S_abl) - sum over present
            ones of (S_clean - S_C)``; ``I_clean`` itself for an unchanged row."""
            mask, gone = present[rows], self.exists[rows] & ~present[rows]
            if mask.sum() <= gone.sum():
                base = self._base(rows[0])
                got = self._sum_rows(cur, mask)
                x = [base] * len(rows) if got is None else [base + g for g in got]
            else:
                x = [self._clean(rows[0])] * len(rows)
                for got in (self._sum_deltas(gone), self._sum_rows(diff, mask)):  # diff[embed] = 0
                    if got is not None:
                        x = [a - g for a, g in zip(x, got)]
            return [self._clean(r) if unchanged(r) else v for r, v in zip(rows, x)]

        def store(s: int, out: Tensor | None) -> None:
            """Node output ``out`` (``batch pos d``; None: the clean output) of slot ``s``
            into the buffers."""
            if out is None:
                cur[s] = self.Dv[:, s].reshape(-1)
                diff[s].zero_()
                same[s] = True
                return
            torch.sub(out, p.S_corr[:, :, s], out=cur[s].view_as(out))
            torch.sub(self.Dv[:, s].reshape(-1), cur[s], out=diff[s])

        cur[0] = self.Dv[:, 0].reshape(-1)  # embed: the clean output, S_clean - S_C = 0
        by_layer: dict[int, list[int]] = {}
        for u in needed:
            by_layer.setdefault(self.graph.nodes[u].layer, []).append(u)
        for L, nodes in sorted(by_layer.items()):
            heads = [self.graph.nodes[u].head for u in nodes if self.graph.nodes[u].kind == NodeKind.HEAD]
            rows_of = {h: lay.head_rows(L, h, spec.kv_head(h)) for h in heads}  # q, k, v
            for h in [h for h in heads if all(unchanged(r) for r in rows_of[h])]:
                store(lay.head_slot(L, h), None)
                heads.remove(h)
            if heads:
                groups = sorted({spec.kv_head(h) for h in heads})
                rows = [rows_of[h][0] for h in heads]
                rows += [r for g in groups for r in lay.head_rows(L, spec.query_heads(g)[0], g)[1:]]
                got = dict(zip(rows, inputs(rows)))
                kv = {}
                for g in groups:
                    _, rk, rv = lay.head_rows(L, spec.query_heads(g)[0], g)
                    kv[g] = kern.keys_values(L, g, got[rk], got[rv])
                for h in heads:
                    g = spec.kv_head(h)
                    q = kern.queries(L, [h], got[rows_of[h][0]])
                    out = kern.attend(L, [h], q, kv[g][0].unsqueeze(2), kv[g][1].unsqueeze(2))[:, :, 0]
                    store(lay.head_slot(L, h), out)
            if any(self.graph.nodes[u].kind == NodeKind.MLP for u in nodes):
                r = lay.rows(L, Input.MLP).start
                store(lay.mlp_slot(L), None if unchanged(r) else kern.mlp(L, inputs([r])[0]))
        return inputs([lay.n_rows - 1])[0]


def node_pass_for(patcher: Any) -> NodePass | None:
    """The :class:`NodePass` of ``patcher`` (a :class:`~circuitdag.patching.Patcher`; built
    once and shared, ``Patcher.node_pass``), or None where it does not apply."""
    return patcher.node_pass()


def circuit_metrics(patcher: Any, circuits: Iterable[np.ndarray], fast: NodePass | None = None) -> list[float]:
    """The metric of each circuit (bool ``[n_edges]`` each): on ``fast`` (default
    :func:`node_pass_for`) where :meth:`NodePass.worth_it`, else
    :meth:`Patcher.circuit_metric`."""
    fast = node_pass_for(patcher) if fast is None else fast
    out = []
    for alive in circuits:
        alive = np.asarray(alive, dtype=bool)
        out.append(fast.metric(alive) if fast is not None and fast.worth_it(alive) else
                   float(patcher.circuit_metric(alive)))  # fmt: skip
    return out
