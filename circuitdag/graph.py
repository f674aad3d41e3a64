"""Nodes, the flat edge table, names <-> indices, networkx export.

The computational graph of DESIGN.md. Nodes are numbered in a topological order:
``embed`` first, then per layer L its key/value heads (grouped-query models only), its
heads ``a{L}.{H}`` and its MLP ``m{L}``, and ``logits`` last. An MLP layer listed in
``ModelSpec.neuron_layers`` is split into its neurons ``m{L}.{n}`` instead: each neuron is
a node with its own copy of the MLP input and writes ``act_n * W_out[n] + b_out / d_mlp``
(so the neurons of a layer sum to the MLP's output; docs/neurons.md). Every edge goes from a
lower to a higher node index.

The edge table is a set of flat numpy arrays built once (:class:`EdgeTable`), stored in
the order ACDC visits them: destinations in reverse topological order, and for each
destination its inputs in the order q, k, v (heads), mlp, resid (logits), and for each
input the senders from the latest to the earliest. Names are derived, never stored.

Grouped-query attention: with fewer key/value heads than query heads, the key and value
inputs belong to the key/value head ``a{L}.kv{G}``, shared by query heads
``G*group .. (G+1)*group-1``; K and V edges end there (``a0.1->a1.kv0<k>``), Q edges end at
the query head. Without grouping the key/value inputs are the head's own
(``a0.1->a1.0<k>``) and no ``kv`` nodes exist.

Position-aware graphs (``Graph(spec, Positions(...))``): every node except ``logits`` is a
(component, position) pair named ``a1.0@name`` (the task's position name, or the index).
Nodes are numbered component-major (all positions of ``embed``, then of the next
component, ...), which keeps the numbering topological. Q, MLP and logits edges join one
position (``m0@3->a1.2@3<q>``); K and V edges go from ``SRC@p`` to ``a1.2@q`` for every
``p <= q`` (every ``p`` in a non-causal model such as tracr's); ``logits`` reads the task's answer positions. Senders are ordered latest
component first, then latest position first.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from enum import IntEnum
from functools import cached_property

import numpy as np

from circuitdag._kernels import Reachability
from circuitdag.errors import CircuitFileError


class NodeKind(IntEnum):
    EMBED = 0
    KV = 1
    HEAD = 2
    MLP = 3
    LOGITS = 4
    NEURON = 5  # one neuron of an MLP split with ``ModelSpec.neuron_layers``


class Input(IntEnum):
    """Which input of the destination an edge feeds."""

    Q = 0
    K = 1
    V = 2
    MLP = 3
    RESID = 4

    @property
    def label(self) -> str:
        return self.name.lower()


@dataclass(frozen=True)
class ModelSpec:
    """The facts about a model's architecture that fix its graph."""

    n_layers: int
    n_heads: int
    n_kv_heads: int
    d_model: int
    attn_only: bool = False
    parallel_attn_mlp: bool = False
    causal: bool = True  # False: every query attends to every position (tracr)
    #: MLP layers split into one node per neuron (``m{L}.{n}``), and the neurons per MLP.
    neuron_layers: tuple[int, ...] = ()
    d_mlp: int = 0

    def __post_init__(self) -> None:
        if self.n_heads % self.n_kv_heads:
            raise ValueError(f"n_heads={self.n_heads} is not a multiple of n_kv_heads={self.n_kv_heads}")
        layers = tuple(sorted({int(L) for L in self.neuron_layers}))
        object.__setattr__(self, "neuron_layers", layers)
        if layers:
            if self.attn_only:
                raise ValueError("an attention-only model has no MLP neurons to split")
            if self.d_mlp < 1:
                raise ValueError("neuron_layers needs d_mlp, the number of neurons per MLP")
            bad = [L for L in layers if not 0 <= L < self.n_layers]
            if bad:
                raise ValueError(f"MLP layer(s) {bad} do not exist; the model has layers 0..{self.n_layers - 1}")

    def units(self, layer: int) -> int:
        """Sender nodes the MLP of ``layer`` is made of: ``d_mlp`` neurons when the layer is
        split, else 1 (0 in attention-only models)."""
        if self.attn_only:
            return 0
        return self.d_mlp if layer in self.neuron_layers else 1

    @property
    def gqa(self) -> bool:
        return self.n_kv_heads != self.n_heads

    @property
    def group(self) -> int:
        """Query heads per key/value head (1 without grouped-query attention)."""
        return self.n_heads // self.n_kv_heads

    def kv_head(self, head: int) -> int:
        """The key/value head query head ``head`` reads (Hugging Face's ``repeat_kv``)."""
        return head // self.group

    def query_heads(self, kv_head: int) -> range:
        """The contiguous query heads that share key/value head ``kv_head``."""
        return range(kv_head * self.group, (kv_head + 1) * self.group)


@dataclass(frozen=True)
class Positions:
    """The token layout of a position-aware graph: ``n`` positions, optional names (one
    per position, unique, made of letters, digits, ``_`` and ``'``), and the positions
    whose residual stream the unembedding reads (the task's answer positions)."""

    n: int
    names: tuple[str, ...] | None = None
    sink: tuple[int, ...] = ()

    def __post_init__(self) -> None:
        if self.n < 1:
            raise ValueError(f"a position-aware graph needs at least one position, got {self.n}")
        if self.names is not None:
            names = tuple(self.names)
            bad = [x for x in names if not _POS_NAME.match(x) or x.isdigit()]
            if len(names) != self.n or bad or len(set(names)) != len(names):
                dup = sorted({x for x in names if names.count(x) > 1})
                raise ValueError(
                    f"position names must be {self.n} unique words (letters, digits, _ or '), got {names}"
                    + (f"; repeated: {dup}" if dup else "") + (f"; not words: {bad}" if bad else "")
                )
            object.__setattr__(self, "names", names)
        sink = tuple(sorted({int(p) for p in self.sink})) or (self.n - 1,)
        if sink[0] < 0 or sink[-1] >= self.n:
            raise ValueError(f"answer positions {sink} are outside 0..{self.n - 1}")
        object.__setattr__(self, "sink", sink)

    def label(self, p: int) -> str:
        return self.names[p] if self.names else str(p)


_POS_NAME = re.compile(r"^[A-Za-z0-9_']+$")


@dataclass(frozen=True)
class Node:
    name: str
    kind: NodeKind
    layer: int  # -1 for embed, n_layers for logits
    head: int = -1  # head index; kv-group index for KV nodes
    pos: int = -1  # token position (position-aware graphs; -1 otherwise and for logits)

    @property
    def component(self) -> str:
        """The name without ``@position``."""
        return self.name.split("@", 1)[0]

    @property
    def inputs(self) -> tuple[Input, ...]:
        return _NODE_INPUTS[self.kind]


_NODE_INPUTS = {
    NodeKind.EMBED: (),
    NodeKind.KV: (Input.K, Input.V),
    NodeKind.HEAD: (Input.Q,),  # K/V are added for non-GQA heads by Graph
    NodeKind.MLP: (Input.MLP,),
    NodeKind.LOGITS: (Input.RESID,),
    NodeKind.NEURON: (Input.MLP,),  # each neuron reads its own copy of the MLP input
}


@dataclass(frozen=True, eq=False)
class EdgeTable:
    """The flat edge table. ``src``/``dst`` index :attr:`Graph.nodes`."""

    src: np.ndarray  # int32
    dst: np.ndarray  # int32
    input: np.ndarray  # int8, Input
    src_pos: np.ndarray  # int32, -1 without positions
    dst_pos: np.ndarray  # int32, -1 without positions

    def __len__(self) -> int:
        return int(self.src.shape[0])


class Graph:
    """The computational graph of one model architecture; position-aware when
    ``positions`` is given."""

    def __init__(self, spec: ModelSpec, positions: Positions | None = None) -> None:
        self.spec = spec
        self.positions = positions
        comps: list[Node] = [Node("embed", NodeKind.EMBED, -1)]
        for layer in range(spec.n_layers):
            if spec.gqa:
                comps += [Node(f"a{layer}.kv{g}", NodeKind.KV, layer, g) for g in range(spec.n_kv_heads)]
            comps += [Node(f"a{layer}.{h}", NodeKind.HEAD, layer, h) for h in range(spec.n_heads)]
            if layer in spec.neuron_layers:
                comps += [Node(f"m{layer}.{i}", NodeKind.NEURON, layer, i) for i in range(spec.d_mlp)]
            elif not spec.attn_only:
                comps.append(Node(f"m{layer}", NodeKind.MLP, layer))
        logits = Node("logits", NodeKind.LOGITS, spec.n_layers)
        #: The position-free components, in topological order (``logits`` last).
        self.components: tuple[Node, ...] = (*comps, logits)
        if positions is not None and spec.neuron_layers:
            raise ValueError("neuron nodes are not available in position-aware graphs yet; "
                             "split MLPs into neurons without positions")
        if positions is None:
            nodes = [*comps, logits]
        else:
            nodes = [Node(f"{c.name}@{positions.label(p)}", c.kind, c.layer, c.head, p)
                     for c in comps for p in range(positions.n)] + [logits]  # fmt: skip
        self.nodes: tuple[Node, ...] = tuple(nodes)
        self.node_index: dict[str, int] = {n.name: i for i, n in enumerate(nodes)}
        self.edges = self._build_edges()

    @property
    def n_pos(self) -> int:
        """Positions per component (1 without positions)."""
        return self.positions.n if self.positions else 1

    @property
    def sink(self) -> int:
        """Index of ``logits``."""
        return len(self.nodes) - 1

    @cached_property
    def sources(self) -> np.ndarray:
        """Indices of the ``embed`` nodes (one per position)."""
        return np.arange(self.n_pos, dtype=np.int64)

    @cached_property
    def node_layer(self) -> np.ndarray:
        """Layer of each node (-1 embed, ``n_layers`` logits)."""
        return np.asarray([n.layer for n in self.nodes], dtype=np.int64)

    @cached_property
    def node_pos(self) -> np.ndarray:
        """Position of each node (-1 without positions and for logits)."""
        return np.asarray([n.pos for n in self.nodes], dtype=np.int64)

    def node_at(self, comp: int, pos: int) -> int:
        """Node index of component ``comp`` (index into :attr:`components`) at ``pos``."""
        if self.components[comp].kind == NodeKind.LOGITS:
            return self.sink
        return comp * self.n_pos + max(pos, 0)

    # ------------------------------------------------------------------ structure
    def node_inputs(self, node: Node) -> tuple[Input, ...]:
        if node.kind == NodeKind.HEAD and not self.spec.gqa:
            return (Input.Q, Input.K, Input.V)
        return node.inputs

    def is_sender(self, node: Node) -> bool:
        return node.kind in (NodeKind.EMBED, NodeKind.HEAD, NodeKind.MLP, NodeKind.NEURON)

    def senders_of(self, node: Node) -> list[int]:
        """Component indices whose output is in the residual stream when ``node`` reads it,
        latest first."""
        if node.kind in (NodeKind.MLP, NodeKind.NEURON) and not self.spec.parallel_attn_mlp:
            limit_layer, include_same_layer_heads = node.layer, True
        else:
            limit_layer, include_same_layer_heads = node.layer, False
        out = []
        for i, s in enumerate(self.components):
            if not self.is_sender(s):
                continue
            if s.kind == NodeKind.EMBED or s.layer < limit_layer or include_same_layer_heads and s.layer == node.layer and s.kind == NodeKind.HEAD:
                out.append(i)
        return out[::-1]

    def _sender_positions(self, kind: Input, dst_pos: int) -> list[int]:
        """Positions a destination input at ``dst_pos`` reads, latest first."""
        if self.positions is None:
            return [-1]
        if kind in (Input.K, Input.V):
            last = dst_pos if self.spec.causal else self.positions.n - 1
            return list(range(last, -1, -1))
        if kind == Input.RESID:
            return list(self.positions.sink[::-1])
        return [dst_pos]

    def _build_edges(self) -> EdgeTable:
        src, dst, inp, spos, dpos = [], [], [], [], []
        for d in range(len(self.nodes) - 1, -1, -1):
            node = self.nodes[d]
            if node.kind == NodeKind.EMBED:
                continue
            senders = self.senders_of(node)
            for kind in self.node_inputs(node):
                for s in senders:
                    for p in self._sender_positions(kind, node.pos):
                        src.append(self.node_at(s, p))
                        dst.append(d)
                        inp.append(int(kind))
                        spos.append(p)
                        dpos.append(node.pos)
        return EdgeTable(
            src=np.asarray(src, dtype=np.int32),
            dst=np.asarray(dst, dtype=np.int32),
            input=np.asarray(inp, dtype=np.int8),
            src_pos=np.asarray(spos, dtype=np.int32),
            dst_pos=np.asarray(dpos, dtype=np.int32),
        )

    @property
    def n_edges(self) -> int:
        return len(self.edges)

    @cached_property
    def implicit_edges(self) -> tuple[np.ndarray, np.ndarray]:
        """Always-present (src, dst) node links that are not edges: a key/value head
        feeds each query head of its group."""
        src, dst = [], []
        if self.spec.gqa:
            for i, n in enumerate(self.nodes):
                if n.kind == NodeKind.HEAD:
                    kv = f"a{n.layer}.kv{n.head // self.spec.group}"
                    if self.positions is not None:
                        kv += f"@{self.positions.label(n.pos)}"
                    src.append(self.node_index[kv])
                    dst.append(i)
        return np.asarray(src, dtype=np.int32), np.asarray(dst, dtype=np.int32)

    @cached_property
    def incoming(self) -> dict[int, np.ndarray]:
        """Edge indices into each destination node, in ACDC's visiting order."""
        out: dict[int, list[int]] = {}
        for e, d in enumerate(self.edges.dst.tolist()):
            out.setdefault(d, []).append(e)
        return {d: np.asarray(v, dtype=np.int64) for d, v in out.items()}

    @cached_property
    def reach(self) -> Reachability:
        """Reachability kernels over this edge table (plus the implicit kv links)."""
        return Reachability(len(self.nodes), self.edges.src, self.edges.dst, self.implicit_edges)

    def prune(self, alive: np.ndarray) -> np.ndarray:
        """The edges of ``alive`` that lie on a path of alive edges from an ``embed`` node to
        ``logits`` (ACDC's last step; every circuit is pruned this way)."""
        return self.reach.on_path(np.asarray(alive, dtype=bool), self.sources, self.sink)

    def visit_order(self) -> list[int]:
        """Destination nodes in the order ACDC visits them (reverse topological)."""
        return [d for d in range(len(self.nodes) - 1, -1, -1) if d in self.incoming]

    # ------------------------------------------------------------------ names
    def edge_name(self, e: int) -> str:
        t = self.edges
        return f"{self.nodes[t.src[e]].name}->{self.nodes[t.dst[e]].name}<{Input(t.input[e]).label}>"

    @cached_property
    def edge_names(self) -> tuple[str, ...]:
        return tuple(self.edge_name(e) for e in range(self.n_edges))

    @cached_property
    def edge_index(self) -> dict[str, int]:
        return {n: i for i, n in enumerate(self.edge_names)}

    def edges_by_name(self, names: set[str] | list[str]) -> np.ndarray:
        """Boolean mask over edges; raises if a name is not an edge of this graph."""
        mask = np.zeros(self.n_edges, dtype=bool)
        unknown = [n for n in names if n not in self.edge_index]
        if unknown:
            raise CircuitFileError(
                f"{len(unknown)} edge name(s) are not in this model's graph, e.g. {unknown[0]!r}; "
                "was the circuit made for another model?"
            )
        mask[[self.edge_index[n] for n in names]] = True
        return mask

    @cached_property
    def plain(self) -> Graph:
        """The graph without positions (itself when it has none)."""
        return self if self.positions is None else Graph(self.spec)

    @cached_property
    def plain_edge(self) -> np.ndarray:
        """For each edge, the index of the same edge in :attr:`plain` (positions dropped)."""
        if self.positions is None:
            return np.arange(self.n_edges)
        t = self.edges
        names = [f"{self.nodes[s].component}->{self.nodes[d].component}<{Input(i).label}>"
                 for s, d, i in zip(t.src.tolist(), t.dst.tolist(), t.input.tolist())]  # fmt: skip
        return np.asarray([self.plain.edge_index[n] for n in names], dtype=np.int64)

    # ------------------------------------------------------------------ export
    def to_networkx(self, alive: np.ndarray | None = None):  # -> nx.MultiDiGraph
        """A networkx MultiDiGraph of the (alive) edges; edge key is the input label."""
        import networkx as nx

        g = nx.MultiDiGraph()
        for n in self.nodes:
            g.add_node(n.name, kind=n.kind.name.lower(), layer=n.layer, head=n.head, pos=n.pos)
        for e in range(self.n_edges):
            if alive is None or alive[e]:
                t = self.edges
                g.add_edge(
                    self.nodes[t.src[e]].name, self.nodes[t.dst[e]].name,
                    key=Input(t.input[e]).label, name=self.edge_names[e],
                )  # fmt: skip
        return g


_EDGE_RE = re.compile(r"^(?P<src>[^-<>]+)->(?P<dst>[^-<>]+)<(?P<input>q|k|v|mlp|resid)>$")


def parse_edge_name(name: str) -> tuple[str, str, str]:
    """``"a0.1->a1.0<k>"`` -> ``("a0.1", "a1.0", "k")``; positions stay in the node names
    (``"a0.1@name->a1.0@end<k>"`` -> ``("a0.1@name", "a1.0@end", "k")``)."""
    m = _EDGE_RE.match(name)
    if not m:
        raise CircuitFileError(f"{name!r} is not an edge name like 'a0.1->a1.0<k>'")
    return m["src"], m["dst"], m["input"]
