"""Kernels over the flat edge table: reachability and counting.

Each kernel has a Numba implementation and a plain-numpy one. ``CIRCUITDAG_KERNELS=numpy``
(or ``numba``) selects one (tests run both and check they agree); by default an edge table
of at least :data:`NUMBA_MIN_EDGES` edges uses Numba and a smaller one numpy: importing
Numba and loading its compiled kernels costs about a second per process, more than the
numpy kernels take over a whole search on a small graph (a prune of a 4,180-edge graph:
3 ms numpy, 0.03 ms Numba; of a 70,651-edge one 13 ms vs 1.8 ms). Numba is imported only
when a kernel first needs it. Both rely on the graph being topologically numbered: every
edge goes from a lower to a higher node index.
"""

from __future__ import annotations

import importlib.util
import os
from collections.abc import Callable
from typing import Any

import numpy as np

#: Edge tables at least this large use the Numba kernels unless CIRCUITDAG_KERNELS says otherwise.
NUMBA_MIN_EDGES = 20_000
# numba is a hard dependency, but keep the package importable without it
_HAVE_NUMBA = importlib.util.find_spec("numba") is not None


def backend(n_edges: int | None = None) -> str:
    """``"numba"`` or ``"numpy"``: ``CIRCUITDAG_KERNELS`` when set, else Numba for an edge
    table of ``n_edges >= NUMBA_MIN_EDGES`` (or unknown size) and numpy below."""
    want = os.environ.get("CIRCUITDAG_KERNELS", "").lower()
    if want == "numpy" or not _HAVE_NUMBA:
        return "numpy"
    if want != "numba" and n_edges is not None and n_edges < NUMBA_MIN_EDGES:
        return "numpy"
    return "numba"


# --------------------------------------------------------------------------- numpy
def _propagate_np(n_nodes, mark, via, alive, order, start):
    """Reachability along alive edges: ``mark[e]`` becomes reached when ``via[e]`` is.
    ``order`` visits edges grouped by ``mark`` so that every ``via`` is final when read
    (src descending for "reaches the sink", dst ascending for "reached from the source")."""
    reach = np.zeros(n_nodes, dtype=np.bool_)
    reach[start] = True
    m_sorted, v_sorted, a_sorted = mark[order], via[order], alive[order]
    bounds = np.flatnonzero(np.diff(m_sorted)) + 1
    for chunk in np.split(np.arange(m_sorted.shape[0]), bounds):
        if chunk.size and np.any(a_sorted[chunk] & reach[v_sorted[chunk]]):
            reach[m_sorted[chunk[0]]] = True
    return reach


# --------------------------------------------------------------------------- numba
_NUMBA: dict[str, Callable[..., Any]] = {}


def _nb(name: str) -> Callable[..., Any]:
    """The Numba kernel ``name`` (``propagate`` or ``on_path``), compiled (or loaded from
    Numba's cache) on first use."""
    if not _NUMBA:
        import numba

        @numba.njit(cache=True)
        def _propagate_nb(n_nodes, mark, via, alive, order, start):  # pragma: no cover
            reach = np.zeros(n_nodes, dtype=np.bool_)
            reach[start] = True
            for i in range(order.shape[0]):
                e = order[i]
                if alive[e] and reach[via[e]]:
                    reach[mark[e]] = True
            return reach

        @numba.njit(cache=True)
        def _on_path_nb(src, dst, alive, from_source, to_sink):  # pragma: no cover
            out = np.zeros(src.shape[0], dtype=np.bool_)
            for e in range(src.shape[0]):
                out[e] = alive[e] and from_source[src[e]] and to_sink[dst[e]]
            return out

        _NUMBA.update(propagate=_propagate_nb, on_path=_on_path_nb)
    return _NUMBA[name]


class Reachability:
    """Precomputed orderings for one edge table (plus always-alive implicit links)."""

    def __init__(self, n_nodes: int, src: np.ndarray, dst: np.ndarray, implicit: tuple[np.ndarray, np.ndarray]):
        self.n_nodes = n_nodes
        self.n_edges = int(src.shape[0])
        self.src = np.concatenate([src, implicit[0]]).astype(np.int64)
        self.dst = np.concatenate([dst, implicit[1]]).astype(np.int64)
        if np.any(self.src >= self.dst):
            raise ValueError("edge table is not topologically numbered (src >= dst)")
        self._n_implicit = int(implicit[0].shape[0])
        self.by_src_desc = np.argsort(-self.src, kind="stable").astype(np.int64)
        self.by_dst_asc = np.argsort(self.dst, kind="stable").astype(np.int64)

    def _alive(self, alive: np.ndarray) -> np.ndarray:
        return np.concatenate([alive.astype(np.bool_), np.ones(self._n_implicit, dtype=np.bool_)])

    def reaches_sink(self, alive: np.ndarray, sink: int) -> np.ndarray:
        """Bool per node: some path of alive edges leads from it to ``sink``."""
        fn = _nb("propagate") if backend(self.n_edges) == "numba" else _propagate_np
        start = np.atleast_1d(np.asarray(sink, dtype=np.int64))
        return fn(self.n_nodes, self.src, self.dst, self._alive(alive), self.by_src_desc, start)

    def reached_from_source(self, alive: np.ndarray, source: int | np.ndarray) -> np.ndarray:
        """Bool per node: some path of alive edges leads from ``source`` (a node or an
        array of nodes) to it."""
        fn = _nb("propagate") if backend(self.n_edges) == "numba" else _propagate_np
        start = np.atleast_1d(np.asarray(source, dtype=np.int64))
        return fn(self.n_nodes, self.dst, self.src, self._alive(alive), self.by_dst_asc, start)

    def on_path(self, alive: np.ndarray, source: int | np.ndarray, sink: int) -> np.ndarray:
        """Bool per edge: alive and on some alive path from ``source`` (a node or an array
        of nodes) to ``sink``."""
        fwd = self.reached_from_source(alive, source)
        bwd = self.reaches_sink(alive, sink)
        src, dst = self.src[: self.n_edges], self.dst[: self.n_edges]
        if backend(self.n_edges) == "numba":
            return _nb("on_path")(src, dst, alive.astype(np.bool_), fwd, bwd)
        return alive.astype(bool) & fwd[src] & bwd[dst]


def count_alive(alive: np.ndarray) -> int:
    return int(np.count_nonzero(alive))
