"""Exact candidate evaluation that recomputes only what a candidate changes (DESIGN.md,
"Recompute only what a candidate changes").

A candidate circuit differs from the current circuit ``C`` in the inputs of one
destination node ``d``. In the patched pass of ``C`` every destination input is

    input[row] = const + sum over present edges (s -> row) of S_now[s]
                       + sum over absent edges of S_corrupted[s],

so when a candidate changes some senders' outputs by ``dS``, an input changes by the sum
of ``dS`` over its *present* edges only. :class:`SparseFastPath` keeps the run of ``C``
(every sender's output ``S[s]`` and every destination input ``I[row]``) and evaluates K
nested candidates as one batch:

1. ``d``'s inputs: ``I[row] - sum of (S[s] - S_corrupted[s])`` over the edges the
   candidate removes;
2. in topological order, each node that is downstream of ``d`` through present edges and
   still reaches ``logits`` (in a sparse circuit, a handful) gets ``I[row] + sum dS``
   over its present edges from changed senders and is recomputed on its own
   (:class:`~circuitdag.components.ComponentKernels`: one head, or one MLP);
3. the final residual stream ``I[logits] + sum dS`` over present edges into ``logits`` is
   unembedded at the answer positions only, and the metric taken.

Nodes that do not reach ``logits`` are never recomputed: no present edge carries their
output to a node that matters. Nor are positions before the first one where any sender's
clean and ablated outputs differ (:func:`first_changing_position`: in a causal model with
resample ablation, the first token where a clean and a corrupted prompt differ): there
every delta is exactly zero, so nothing a candidate changes can differ there. When ACDC
accepts a candidate, its recomputed inputs and outputs become the new run of ``C``
(:meth:`SparseFastPath.commit`). Everything upstream of
``d`` keeps its value because ACDC visits destinations in reverse topological order.

:class:`SparseFastPath` serves plain graphs;
:class:`~circuitdag.recompute_positions.PositionalFastPath` position-aware ones, where a
node is a component at one position. Where the component kernels do not
reproduce a model, ACDC uses the layer-by-layer fast path instead
(:meth:`circuitdag.patching.Patcher.candidate_metrics`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import Tensor

from circuitdag.components import ComponentKernels
from circuitdag.graph import Input, NodeKind
from circuitdag.patching import Patcher


def start_run(patcher: Patcher, alive: np.ndarray, absent: Tensor | None = None) -> tuple[Tensor, list, list, Tensor]:
    """The run of the circuit ACDC starts from: every sender's output (``batch pos slot d``),
    the unpatched residual stream before each block and each MLP, and at the end. The
    clean run when every edge is present, else one sparse pass (``absent``: the circuit's
    mask, when already built)."""
    if bool(np.all(alive)):
        return patcher.S_clean, patcher.resid_pre, patcher.mlp_in, patcher.resid_final
    run = patcher.run_of(patcher.absent_matrix(alive) if absent is None else absent)
    return run.slots, run.resid_pre, run.mlp_in, run.resid_final


def first_changing_position(patcher: Patcher) -> int:
    """The first position at which a candidate can change anything: 0 unless the model is
    causal and every sender's clean and ablated outputs (``S_clean``, ``S_corr``) are
    bitwise equal at every earlier position of every prompt, as they are under resample
    ablation before the first token where any clean and corrupted prompt differ. Then
    every delta ``S - S_corr`` is exactly zero there, in the current circuit and in every
    candidate (a causal position reads only earlier ones), so those positions are never
    recomputed. Capped at the first answer position (the metric's positions stay read)."""
    if not patcher.graph.spec.causal:
        return 0
    differs = (patcher.D_clean != 0).any(dim=-1).any(dim=-1).any(dim=0)  # pos
    hits = torch.nonzero(differs)
    first = int(hits[0, 0]) if len(hits) else patcher.P
    answers = patcher.data.answer_pos
    return min(first, int(answers.min())) if answers.numel() else 0


@dataclass
class _Pending:
    """What :meth:`SparseFastPath.evaluate` computed, for :meth:`SparseFastPath.commit`."""

    rows: dict[int, Tensor] = field(default_factory=dict)  # row -> k batch |positions| d
    slots: dict[int, tuple[Tensor, np.ndarray]] = field(
        default_factory=dict
    )  # slot -> (k batch |pos| d, pos)
    removed: list[tuple[int, int]] = field(default_factory=list)  # (row, slot) per candidate step
    own: set[int] = field(default_factory=set)  # the destination's rows (the others are downstream)


def _subtract_absent(I: list[Tensor], D: Tensor, gone: np.ndarray) -> None:
    """Subtract from each destination input ``I[row]`` (``batch pos d``) the deltas ``D``
    (``batch pos slot d``) of its absent senders (``gone``: ``rows slots``, True where an
    edge of the graph is absent), 16 rows per matmul: the start of a prefiltered or
    resumed run."""
    rows = np.flatnonzero(gone.any(1))
    for at in range(0, len(rows), 16):
        chunk = rows[at : at + 16]
        top = int(np.flatnonzero(gone[chunk].any(0)).max()) + 1
        W = torch.as_tensor(gone[chunk][:, :top], dtype=D.dtype, device=D.device)
        out = torch.einsum("bpsd,rs->rbpd", D[:, :, :top], W)
        for i, r in enumerate(chunk.tolist()):
            I[r] = I[r] - out[i]


def removal_chain(cur: Tensor, D: Tensor, idx: np.ndarray, k: int, nested: bool = True) -> Tensor:
    """The K candidates' values of one destination input: ``cur`` (``batch ...``, the
    current circuit's) minus the deltas ``D`` (``n batch ...``: ``S - S_corrupted`` of a
    removed sender), where candidate ``idx[t]`` (sorted) is the first to remove ``D[t]``.
    Nested: candidate ``j`` removes every ``D[t]`` with ``idx[t] <= j``; otherwise only
    the ``D[t]`` with ``idx[t] == j``. Returns ``k batch ...``.

    The removals are subtracted one at a time, in order, so a candidate's value is the same
    float whichever batch it is evaluated in: a batch that ends after candidate ``j`` and
    commits it leaves exactly the ``cur`` the next batch starts from (a sum of the batch's
    deltas, as one matmul, would round differently for every batch size K, and with it
    every score of the search). The kernels downstream keep that: they pad their products to
    whole blocks of rows (:func:`circuitdag.components.whole_blocks`)."""
    vals = [cur]
    for t in range(len(idx)):
        vals.append((vals[-1] if nested else cur) - D[t])
    if nested and len(idx) == k:  # every candidate removes one more (one cell): the chain itself
        return torch.stack(vals[1:])
    if nested:  # candidate j: the chain up to its last removal
        which = np.searchsorted(idx, np.arange(k), side="right")
    else:
        which = np.zeros(k, dtype=np.int64)
        which[idx] = np.arange(1, len(idx) + 1)
    return torch.stack(vals)[torch.as_tensor(which, device=cur.device)]


class SparseFastPath:
    """The run of the current circuit and the sparse evaluation of candidates (module
    docstring). ``alive``: the circuit ACDC starts from (every edge, or a prefiltered
    start). Counts component evaluations in ``patcher.n_layer_evals``-compatible units
    (:attr:`component_evals`)."""

    def __init__(self, patcher: Patcher, kernels: ComponentKernels, alive: np.ndarray) -> None:
        if patcher.positional:
            raise ValueError("SparseFastPath works on graphs without positions")
        self.p, self.kernels = patcher, kernels
        graph, lay, spec = patcher.graph, patcher.layout, patcher.graph.spec
        self.graph, self.lay, self.spec = graph, lay, spec
        self.component_evals = 0
        exists = (patcher.exists[:, 0, 0] != 0).cpu().numpy()  # rows slots (bool: numpy has no bfloat16)
        self.present = exists.copy()
        dead = ~np.asarray(alive, dtype=bool)
        self.present[lay.edge_row[dead], lay.edge_slot[dead]] = False
        # The run of the starting circuit: sender outputs and unpatched residual streams.
        slots, resid_pre, mlp_in, final = start_run(patcher, alive)
        self.S: list[Tensor] = [slots[:, :, s] for s in range(lay.n_slots)]
        self.S_corr: list[Tensor] = [patcher.S_corr[:, :, s] for s in range(lay.n_slots)]
        # Destination inputs of the current circuit: the unpatched stream minus the
        # deltas of absent senders (shared tensors while nothing is absent).
        self.I: list[Tensor] = []
        for r in range(lay.n_rows):
            L, kind = self.lay.row_layer_kind(r)
            self.I.append(final if kind == Input.RESID else (mlp_in[L] if kind == Input.MLP else resid_pre[L]))
        gone = exists & ~self.present  # rows slots: a prefiltered or resumed start
        if gone.any():
            _subtract_absent(self.I, slots - patcher.S_corr, gone)
        self._kv: dict[tuple[int, int], tuple[Tensor, Tensor]] = {}
        self._D: dict[int, Tensor] = {}
        self._rowpos: dict[int, np.ndarray] = {}
        self._pos_cache: dict[bytes, Tensor] = {}
        self._own_I: set[int] = set()
        self._own_S: set[int] = set()
        self._pending: _Pending | None = None
        # Downstream rows and outputs as the destination started (where its commits changed them):
        # candidates build on these, so their floats do not depend on the earlier batches.
        self._I0: dict[int, Tensor] = {}
        self._S0: dict[int, Tensor] = {}
        self._affected: dict[int, list[int]] = {}
        self._need: dict[int, np.ndarray] = {}
        src = graph.edges.src.astype(np.int64)
        order = np.argsort(src, kind="stable")
        bounds = np.searchsorted(src[order], np.arange(len(graph.nodes) + 1))
        #: Edges out of each node (indices into the edge table).
        self._out = [order[bounds[i] : bounds[i + 1]] for i in range(len(graph.nodes))]
        ap = patcher.data.answer_pos
        self._answers = np.unique(ap.cpu().numpy()) if ap.numel() else np.zeros(0, dtype=np.int64)
        #: Positions before this one never change (see :func:`first_changing_position`).
        self.first = first_changing_position(patcher)

    # ------------------------------------------------------------------ structure
    def affected(self, dest: int, alive: np.ndarray) -> list[int]:
        """Nodes a change at ``dest`` can reach through present edges and that still reach
        ``logits`` (``dest`` first), in topological order; fixed while ACDC decides
        ``dest``, since only edges into ``dest`` change then."""
        hit = self._affected.get(dest)
        if hit is None:
            reach = self.graph.reach
            down = reach.reached_from_source(alive, dest) & reach.reaches_sink(alive, self.graph.sink)
            hit = self._affected[dest] = np.flatnonzero(down).tolist()
            self._needed_positions(hit)
        return hit

    def _needed_positions(self, nodes: list[int]) -> None:
        """For each node of ``nodes`` (an affected set, topological order), the positions
        at which anything that matters reads its output: ``logits`` reads the answer
        positions; a Q, MLP or ``logits`` input reads the positions its node is needed at;
        a K or V input reads every key position up to the last needed query position (all
        positions without a causal mask). A node's consumers are visited nodes, whose
        edges ACDC never changes again, so these sets do not change either: outputs are
        recomputed (MLPs) and kept exact at these positions only. Positions before
        :attr:`first` are left out (their outputs never change); a K or V input still
        reads its whole key range, with zero change before :attr:`first`."""
        graph, lay, P = self.graph, self.lay, self.I[0].shape[1]
        member = set(nodes)
        need = self._need
        need[graph.sink] = self._answers
        every = np.arange(P)

        def key_range(v: int) -> np.ndarray:
            node = graph.nodes[v]
            heads = (
                [v]
                if node.kind == NodeKind.HEAD
                else [graph.node_index[f"a{node.layer}.{h}"] for h in self.spec.query_heads(node.head)]
            )
            last = max(
                (int(need[h].max()) for h in heads if h in member and len(need.get(h, ()))), default=-1
            )
            return every if not self.spec.causal else np.arange(last + 1)

        for u in reversed(nodes):
            if u in need and u != graph.sink and graph.nodes[u].kind != NodeKind.KV:
                continue
            if graph.nodes[u].kind in (NodeKind.KV, NodeKind.LOGITS):
                continue
            slot = lay.edge_slot[self._out[u][0]] if len(self._out[u]) else -1
            parts = []
            for e in self._out[u].tolist():
                v = int(graph.edges.dst[e])
                if v not in member or not self.present[lay.edge_row[e], slot]:
                    continue
                kind = Input(int(graph.edges.input[e]))
                parts.append(key_range(v) if kind in (Input.K, Input.V) else need[v])
            got = np.unique(np.concatenate(parts)) if parts else np.zeros(0, dtype=np.int64)
            need[u] = got[got >= self.first]  # earlier outputs never change

    def bytes_per_candidate(self, dest: int, alive: np.ndarray) -> int:
        """Memory one candidate of ``dest`` needs (inputs, outputs and deltas of the
        affected nodes, and the answer logits), a conservative estimate."""
        B, P, d = self.I[0].shape
        item = torch.finfo(self.p.dtype).bits // 8
        n = len(self.affected(dest, alive))
        vocab = self.p.ref.logits.shape[-1]
        return (6 * n + 8) * B * P * d * item + 4 * B * self.p.data.answer_pos.shape[1] * vocab * item

    def forget_affected(self) -> None:
        """Start a new destination: forget its affected set and what its commits overwrote."""
        for cache in (self._affected, self._need, self._rowpos, self._I0, self._S0):
            cache.clear()

    # ------------------------------------------------------------------ evaluation
    def _delta(self, s: int) -> Tensor:
        """``S[s] - S_corrupted[s]`` (``batch pos d``), cached until ``S[s]`` changes."""
        hit = self._D.get(s)
        if hit is None:
            hit = self._D[s] = self.S[s] - self.S_corr[s]
        return hit

    def _row_positions(self, r: int) -> np.ndarray:
        """Positions at which row ``r``'s input matters (see :meth:`_needed_positions`): its
        node's needed positions for Q and MLP inputs, the key range of its key/value head
        for K and V inputs, the answer positions for ``logits``."""
        hit = self._rowpos.get(r)
        if hit is not None:
            return hit
        L, kind = self.lay.row_layer_kind(r)
        g, lay = self.graph, self.lay
        if kind == Input.RESID:
            pos = self._answers
        elif kind == Input.MLP:
            unit = r - lay.rows(L, kind).start
            pos = self._need[g.node_index[f"m{L}.{unit}" if L in self.spec.neuron_layers else f"m{L}"]]
        elif kind == Input.Q:
            pos = self._need[g.node_index[f"a{L}.{r - lay.rows(L, kind).start}"]]
        else:
            pos = self._key_range(L, r - lay.rows(L, kind).start)
        self._rowpos[r] = pos
        return pos

    def _key_range(self, L: int, kv: int) -> np.ndarray:
        """Key positions the affected query heads of key/value head ``kv`` read."""
        P = self.I[0].shape[1]
        heads = [self.graph.node_index[f"a{L}.{h}"] for h in self.spec.query_heads(kv)]
        last = max((int(self._need[h].max()) for h in heads if len(self._need.get(h, ()))), default=-1)
        return np.arange(P) if not self.spec.causal else np.arange(last + 1)

    def _kv_current(self, L: int, g: int) -> tuple[Tensor, Tensor]:
        hit = self._kv.get((L, g))
        if hit is None:
            _, rk, rv = self.lay.head_rows(L, self.spec.query_heads(g)[0], g)
            hit = self._kv[(L, g)] = self.kernels.keys_values(L, g, self.I[rk], self.I[rv])
            self.component_evals += 1
        return hit

    @torch.no_grad()
    def evaluate(self, dest: int, edges: np.ndarray, alive: np.ndarray, nested: bool = True) -> Tensor:
        """Metric of the K nested candidates "current circuit minus ``edges[:j+1]``" (``nested=False``:
        minus ``edges[j]`` alone; ``edges`` all into ``dest``, alive in the current circuit): K values.
        ``alive`` is the current circuit (for the affected set).

        Every tensor is kept at the positions that matter only (:meth:`_needed_positions`):
        ``k batch n_positions d``."""
        lay, k = self.lay, len(edges)
        affected = self.affected(dest, alive)
        rows_e, slots_e = lay.edge_row[edges], lay.edge_slot[edges]
        pend = _Pending(removed=list(zip(rows_e.tolist(), slots_e.tolist())))
        tpos = self._tpos
        for r in np.unique(rows_e).tolist():
            idx = np.flatnonzero(rows_e == r)
            where = tpos(self._row_positions(r))
            D = torch.stack([self._delta(s)[:, where] for s in slots_e[idx].tolist()])  # n batch pos d
            pend.rows[r] = removal_chain(self.I[r][:, where], D, idx, k, nested)
            pend.own.add(r)
        # slot -> (k batch |need| d new-minus-current output, its positions)
        deltas: dict[int, tuple[Tensor, np.ndarray]] = {}
        sink_row = lay.n_rows - 1

        def row_input(r: int) -> Tensor | None:
            """The candidates' input of row ``r`` (at its positions) if it differs from the
            current one."""
            got = pend.rows.get(r)
            if got is not None:
                return got
            senders = [s for s in deltas if self.present[r, s]]
            if not senders:
                return None
            pos = self._row_positions(r)
            start = self._I0.get(r)  # downstream rows start from the destination's start values
            start = start if start is not None else self.I[r][:, tpos(pos)]
            got = start.unsqueeze(0).expand(k, -1, -1, -1).clone()
            j = int(np.searchsorted(pos, self.first))  # pos is sorted; senders change pos[j:] only
            tail = got[:, :, j:]
            for s in senders:  # summed in place: one buffer however many senders
                delta, have = deltas[s]
                if np.array_equal(have, pos[j:]):
                    tail += delta
                else:
                    tail += delta[:, :, tpos(np.searchsorted(have, pos[j:]))]
            pend.rows[r] = got
            return got

        def batch(x: Tensor) -> Tensor:  # k batch pos d (or batch pos d) -> (k batch) pos d
            return x.expand(k, *x.shape[-3:]).reshape(-1, *x.shape[-2:])

        B, d = self.I[0].shape[0], self.I[0].shape[2]
        kern = self.kernels
        new_kv: dict[tuple[int, int], tuple[Tensor, Tensor]] = {}
        for u in affected:
            node = self.graph.nodes[u]
            if node.kind in (NodeKind.MLP, NodeKind.NEURON, NodeKind.HEAD) and not len(self._need[u]):
                continue  # read only before `first`, where nothing changes
            if node.kind == NodeKind.MLP:
                x = row_input(lay.rows(node.layer, Input.MLP).start)
                if x is None:
                    continue
                at = self._need[u]
                out = kern.mlp(node.layer, batch(x)).reshape(k, B, len(at), d)
                s = lay.mlp_slot(node.layer)
            elif node.kind == NodeKind.NEURON:
                x = row_input(lay.rows(node.layer, Input.MLP).start + node.head)
                if x is None:
                    continue
                at = self._need[u]
                out = kern.neuron(node.layer, node.head, batch(x)).reshape(k, B, len(at), d)
                s = lay.mlp_slot(node.layer) + node.head
            elif node.kind == NodeKind.HEAD:
                L, h, g = node.layer, node.head, self.spec.kv_head(node.head)
                rq, rk, rv = self.lay.head_rows(L, h, self.spec.kv_head(h))
                xq, xk, xv = row_input(rq), row_input(rk), row_input(rv)
                if xq is None and xk is None and xv is None:
                    continue
                at, keys = self._need[u], self._row_positions(rk)
                at_t, keys_t = tpos(at), tpos(keys)
                q = kern.queries(L, [h], batch(xq) if xq is not None else self.I[rq][:, at_t], at_t)
                if xk is None and xv is None:
                    kk, vv = (t[:, keys_t] for t in self._kv_current(L, g))
                elif (L, g) in new_kv:  # another head of the group computed them
                    kk, vv = new_kv[(L, g)]
                else:
                    xk = batch(xk) if xk is not None else self.I[rk][:, keys_t]
                    xv = batch(xv) if xv is not None else self.I[rv][:, keys_t]
                    kk, vv = new_kv[(L, g)] = kern.keys_values(L, g, xk, xv, keys_t)
                q, kk, vv = _rep(q, k, B), _rep(kk, k, B), _rep(vv, k, B)
                out = kern.attend(L, [h], q, kk.unsqueeze(2), vv.unsqueeze(2), at_t, keys_t)
                out = out[:, :, 0].reshape(k, B, len(at), d)
                s = lay.head_slot(L, h)
            else:  # KV nodes are no senders: the heads of their group read their inputs
                continue
            self.component_evals += k
            pend.slots[s] = (out, at)
            s0 = self._S0.get(s)  # the change from the start value: a float that no batching changes
            deltas[s] = (out - (s0 if s0 is not None else self.S[s][:, tpos(at)]), at)
        final = row_input(sink_row)
        if final is None:
            final = self.I[sink_row][:, tpos(self._answers)].unsqueeze(0).expand(k, -1, -1, -1)
        self._pending = pend
        return self.p.final_metric(final, positions=tpos(self._answers))

    def _tpos(self, pos: np.ndarray) -> Tensor:
        key = pos.tobytes()
        hit = self._pos_cache.get(key)
        if hit is None:
            hit = self._pos_cache[key] = torch.as_tensor(pos, dtype=torch.long, device=self.p.device)
        return hit

    def commit(self, n_accepted: int) -> None:
        """Make candidate ``n_accepted`` (1-based; its first ``n_accepted`` removals) of the
        last :meth:`evaluate` the current circuit; 0 keeps the current one. Values are
        written at the positions that matter; the others are never read again."""
        pend, self._pending = self._pending, None
        if pend is None or n_accepted == 0:
            return
        j = n_accepted - 1
        for r, x in pend.rows.items():
            overwrite(self.I, self._own_I, r, self._tpos(self._row_positions(r)), x[j],
                      None if r in pend.own else self._I0)  # fmt: skip
            L, kind = self.lay.row_layer_kind(r)
            if kind in (Input.K, Input.V):
                self._kv.pop((L, r - self.lay.rows(L, kind).start), None)
        for s, (x, at) in pend.slots.items():
            overwrite(self.S, self._own_S, s, self._tpos(at), x[j], self._S0)
            self._D.pop(s, None)
        for r, s in pend.removed[:n_accepted]:
            self.present[r, s] = False


def overwrite(store: list[Tensor], owned: set[int], i: int, where: Tensor | int, value: Tensor,
              before: dict[Any, Tensor] | None, key: Any = None) -> None:  # fmt: skip
    """``store[i][:, where] = value``, cloning ``store[i]`` first (recorded in ``owned``)
    when it may still share storage with the clean run; ``before``, when given, keeps the
    first values overwritten under ``key`` (default ``i``; ``SparseFastPath._I0``)."""
    key = i if key is None else key
    if before is not None and key not in before:
        before[key] = store[i][:, where].clone()
    if i not in owned:
        store[i] = store[i].clone()
        owned.add(i)
    store[i][:, where] = value


def _rep(x: Tensor, k: int, B: int) -> Tensor:
    """``batch ...`` (one value for every candidate) or ``(k batch) ...`` -> ``(k batch) ...``."""
    if x.shape[0] == k * B:
        return x
    return x.unsqueeze(0).expand(k, *x.shape).reshape(k * B, *x.shape[1:])
