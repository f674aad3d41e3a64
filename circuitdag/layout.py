"""Where every edge lives in the dense circuit mask (DESIGN.md, patching).

Sender outputs live in *slots*: slot 0 is ``embed``, then per layer its heads and its MLP
(one slot, or one per neuron for an MLP split into neurons). Destination inputs live in
*rows*: per layer its q rows (one per head), k and v rows (one per key/value head), its
MLP row(s), and finally the ``logits`` row. A circuit is a dense
``absent[row, view, pos, slot]`` matrix; :class:`Layout` maps the flat edge table
(:class:`~circuitdag.graph.Graph`) onto it and knows which slots a row may read.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property

import numpy as np

from circuitdag.graph import Graph, Input, NodeKind


@dataclass(frozen=True)
class Layout:
    """Where each sender (slot) and destination input (row) lives in the dense mask.

    The mask is ``absent[row, view, pos, slot]``. Without positions ``view`` and ``pos``
    have size 1. With positions, ``view`` is the query position ``q`` whose view of the
    model the entry patches and ``pos`` the sender position ``p``: a K or V edge
    ``SRC@p -> a@q`` is ``absent[k_row, q, p, SRC]``; every other input reads its own
    position only, so its edges sit on the diagonal (``absent[q_row, q, q, SRC]``;
    ``SRC@p -> logits`` is ``absent[logits_row, p, p, SRC]``).
    """

    n_layers: int
    n_heads: int
    n_kv: int
    has_mlp: bool
    parallel: bool
    n_pos: int  # positions of the graph; 1 without positions
    positional: bool
    edge_row: np.ndarray  # int64 per edge
    edge_slot: np.ndarray  # int64 per edge
    edge_view: np.ndarray  # int64 per edge (0 without positions)
    edge_pos: np.ndarray  # int64 per edge (0 without positions)
    #: Sender slots (and MLP input rows) of each layer's MLP: 1, or ``d_mlp`` for a layer
    #: split into neurons (``ModelSpec.neuron_layers``); empty means 1 per layer.
    mlp_units: tuple[int, ...] = ()

    def units(self, layer: int) -> int:
        """MLP slots (= MLP input rows) of ``layer``: 0 without MLPs, ``d_mlp`` when split."""
        if not self.has_mlp:
            return 0
        return self.mlp_units[layer] if self.mlp_units else 1

    @cached_property
    def _slot_start(self) -> np.ndarray:
        """First slot of each layer (and, at ``n_layers``, the number of slots)."""
        sizes = [self.n_heads + self.units(L) for L in range(self.n_layers)]
        return np.concatenate([[1], 1 + np.cumsum(sizes, dtype=np.int64)]).astype(np.int64)

    @cached_property
    def _row_start(self) -> np.ndarray:
        """First row of each layer (and, at ``n_layers``, the ``logits`` row)."""
        sizes = [self.n_heads + 2 * self.n_kv + self.units(L) for L in range(self.n_layers)]
        return np.concatenate([[0], np.cumsum(sizes, dtype=np.int64)]).astype(np.int64)

    @property
    def split(self) -> tuple[int, ...]:
        """The layers whose MLP is split into neurons."""
        return tuple(L for L in range(self.n_layers) if self.units(L) > 1)

    @property
    def n_slots(self) -> int:
        return int(self._slot_start[-1])

    def slots_before(self, layer: int) -> int:
        """Number of slots written before block ``layer`` starts (embed + earlier layers)."""
        return int(self._slot_start[layer])

    def head_slot(self, layer: int, head: int) -> int:
        return self.slots_before(layer) + head

    def mlp_slot(self, layer: int) -> int:
        """The (first) slot of the MLP of ``layer``."""
        return self.slots_before(layer) + self.n_heads

    def mlp_slots(self, layer: int) -> slice:
        """The slots of the MLP of ``layer``: one, or one per neuron."""
        return slice(self.mlp_slot(layer), self.mlp_slot(layer) + self.units(layer))

    @property
    def n_rows(self) -> int:
        return int(self._row_start[-1]) + 1

    @property
    def shape(self) -> tuple[int, int, int, int]:
        """Shape of the ``absent`` mask: rows, views, sender positions, slots."""
        return (self.n_rows, self.n_pos, self.n_pos, self.n_slots)

    def rows(self, layer: int, kind: Input) -> slice:
        base = int(self._row_start[min(layer, self.n_layers)])
        if kind == Input.Q:
            return slice(base, base + self.n_heads)
        if kind == Input.K:
            return slice(base + self.n_heads, base + self.n_heads + self.n_kv)
        if kind == Input.V:
            return slice(base + self.n_heads + self.n_kv, base + self.n_heads + 2 * self.n_kv)
        if kind == Input.MLP:
            start = base + self.n_heads + 2 * self.n_kv
            return slice(start, start + self.units(layer))
        return slice(self.n_rows - 1, self.n_rows)

    def row_layer_kind(self, r: int) -> tuple[int, Input]:
        """The layer and input of row ``r`` (``logits``: ``n_layers``, RESID)."""
        if r == self.n_rows - 1:
            return self.n_layers, Input.RESID
        L = int(np.searchsorted(self._row_start, r, side="right")) - 1
        i = r - int(self._row_start[L])
        if i < self.n_heads:
            return L, Input.Q
        if i < self.n_heads + self.n_kv:
            return L, Input.K
        if i < self.n_heads + 2 * self.n_kv:
            return L, Input.V
        return L, Input.MLP

    def head_rows(self, layer: int, head: int, kv: int) -> tuple[int, int, int]:
        """The q row of ``head`` and the k and v rows of its key/value head ``kv``."""
        return (self.rows(layer, Input.Q).start + head, self.rows(layer, Input.K).start + kv,
                self.rows(layer, Input.V).start + kv)  # fmt: skip

    def readable_slots(self, layer: int, kind: Input) -> int:
        """Slots a row of this (layer, input) may read: a prefix of the slot order."""
        if kind == Input.RESID:
            return self.n_slots
        if kind == Input.MLP and not self.parallel:
            return self.slots_before(layer) + self.n_heads
        return self.slots_before(layer)

    def crosses_positions(self, kind: Input) -> bool:
        """Whether rows of this input read other positions (K and V with positions)."""
        return self.positional and kind in (Input.K, Input.V)

    @classmethod
    def of(cls, graph: Graph) -> Layout:
        spec = graph.spec
        empty = np.zeros(0, np.int64)
        units = tuple(spec.units(L) for L in range(spec.n_layers)) if spec.neuron_layers else ()
        lay = cls(spec.n_layers, spec.n_heads, spec.n_kv_heads, not spec.attn_only,
                  spec.parallel_attn_mlp, graph.n_pos, graph.positions is not None,
                  empty, empty, empty, empty, units)  # fmt: skip
        slot_of_comp = np.full(len(graph.components), -1, dtype=np.int64)
        for i, n in enumerate(graph.components):
            if n.kind == NodeKind.EMBED:
                slot_of_comp[i] = 0
            elif n.kind == NodeKind.HEAD:
                slot_of_comp[i] = lay.head_slot(n.layer, n.head)
            elif n.kind == NodeKind.MLP:
                slot_of_comp[i] = lay.mlp_slot(n.layer)
            elif n.kind == NodeKind.NEURON:
                slot_of_comp[i] = lay.mlp_slot(n.layer) + n.head
        t = graph.edges
        rows = np.empty(len(t), dtype=np.int64)
        for e in range(len(t)):
            d = graph.nodes[t.dst[e]]
            kind = Input(t.input[e])
            idx = 0 if d.kind in (NodeKind.MLP, NodeKind.LOGITS) else d.head  # head, kv group or neuron
            rows[e] = lay.rows(d.layer, kind).start + idx
        src_pos = np.maximum(t.src_pos.astype(np.int64), 0)
        dst_pos = t.dst_pos.astype(np.int64)
        object.__setattr__(lay, "edge_row", rows)
        object.__setattr__(lay, "edge_slot", slot_of_comp[t.src.astype(np.int64) // graph.n_pos])
        object.__setattr__(lay, "edge_view", np.where(dst_pos >= 0, dst_pos, src_pos))
        object.__setattr__(lay, "edge_pos", src_pos)
        return lay


__all__ = ["Layout"]
