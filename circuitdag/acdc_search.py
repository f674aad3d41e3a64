"""The ACDC algorithm (Conmy et al. 2023): a sequential reference and an exact fast path.

Both follow DESIGN.md exactly:

1. start with every edge present; ``m_cur`` is the metric of the full model;
2. visit destinations in reverse topological order (:meth:`Graph.visit_order`), skipping a
   node that no longer reaches ``logits``;
3. for each incoming edge in table order: remove it and measure ``m_new``; if
   ``m_new - m_cur < threshold`` it stays removed and ``m_cur = m_new``, else it goes back;
4. finally keep only edges on a path from ``embed`` to ``logits``.

:func:`acdc_reference` runs one full forward pass per edge. :func:`acdc_fast` gives the
identical result with speculative batching: for the next K edges e1..eK of the current
destination it evaluates the nested circuits G - {e1..ej} (j = 1..K) as one batch, then
walks j = 1..K accepting while the threshold test passes; at the first kept edge the rest
of the batch is discarded. A batch recomputes only the heads and MLPs its candidates
change (:mod:`circuitdag.recompute`), or, where the per-component kernels do not fit the
model, runs the blocks from the destination's layer on.
"""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from circuitdag._kernels import backend
from circuitdag.checkpoint import Checkpointer, SearchState, load_checkpoint
from circuitdag.errors import CheckpointError, ConfigError
from circuitdag.graph import Graph, NodeKind
from circuitdag.patching import Patcher
from circuitdag.prepare import check_threshold, metric_gap
from circuitdag.recompute import SparseFastPath
from circuitdag.recompute_positions import PositionalFastPath

log = logging.getLogger("circuitdag")


def _initial_state(patcher: Patcher, start: np.ndarray | None = None, reference: bool = False) -> SearchState:
    """Every edge present, or the circuit ``start`` (a prefiltered run) pruned to paths."""
    n = patcher.graph.n_edges
    alive = np.ones(n, dtype=bool) if start is None else patcher.graph.prune(_check_start(start, n))
    m = patcher.reference_metric(alive) if reference else patcher.circuit_metric(alive)
    return SearchState(alive, np.full(n, np.nan), m)


def _start_or_resume(
    patcher: Patcher,
    order: list[int],
    info: dict[str, Any],
    checkpoint: str | Path | None,
    resume: bool,
    start: np.ndarray | None,
    stats: dict[str, Any] | None,
    reference: bool,
) -> SearchState:
    """The state a run begins from: the checkpoint's when resuming from one that exists
    (checked against the graph and against the metric of its circuit measured now), else
    the start circuit (``stats`` seeds its run statistics, saved with the checkpoint)."""
    if not (resume and checkpoint is not None and Path(checkpoint).exists()):
        state = _initial_state(patcher, start, reference)
        state.stats.update(stats or {})
        state.stats["threads"] = torch.get_num_threads()  # what --resume reuses (checkpoint_threads)
        return state
    graph = patcher.graph
    position = np.full(len(graph.nodes), len(order), dtype=np.int64)
    position[order] = np.arange(len(order))
    subset = start is not None or info.get("prefilter") is not None
    state = load_checkpoint(checkpoint, info, tested_by=position[graph.edges.dst], n_destinations=len(order),
                            subset_start=subset)  # fmt: skip
    _check_resumed_metric(patcher, state, checkpoint, reference)
    log.info("resuming ACDC at destination %d/%d", state.next_dest, len(order))
    return state


def _check_resumed_metric(patcher: Patcher, state: SearchState, checkpoint: str | Path, reference: bool) -> None:
    """Refuse a checkpoint whose circuit scores differently now than when it was saved: the
    model, its weights or the code changed under the same settings, and every later
    decision would compare against the wrong base. Tolerance: rounding in the model's
    dtype (1e-3 of the metric gap; 5% in 16-bit floats)."""
    now = patcher.reference_metric(state.alive) if reference else patcher.circuit_metric(state.alive)
    gap = abs(metric_gap(patcher))
    rel = 5e-2 if torch.finfo(patcher.dtype).bits <= 16 else 1e-3
    if not abs(now - state.m_cur) <= rel * gap + 1e-6 * abs(state.m_cur):
        raise CheckpointError(
            f"checkpoint {checkpoint}: its circuit has metric {now:.6g} now but {state.m_cur:.6g} when it was saved, "
            "so the model or its weights changed since; delete it, or rerun without --resume to start over"
        )


def _check_start(start: np.ndarray, n: int) -> np.ndarray:
    start = np.asarray(start)
    if start.dtype != bool or start.shape != (n,):
        raise ConfigError(f"the starting circuit must be a boolean mask over the {n} edges, got {start.dtype} {start.shape}")
    return start


def _work(graph: Graph, dest: int, n_edges: int, per_edge: bool = False) -> int:
    """Progress units of evaluating ``n_edges`` edges into ``dest``. On the layer-by-layer
    path each candidate runs the blocks from the destination's layer to the end, so an
    edge's cost is about that number of blocks (+1 for the unembedding), and an honest ETA
    weighs edges by it; on the component path (``per_edge``) a candidate recomputes a few
    components wherever it is, and every edge counts 1."""
    return n_edges * (1 if per_edge else graph.spec.n_layers - _dest_layer(graph, dest) + 1)


def acdc_reference(
    patcher: Patcher,
    threshold: float,
    progress: bool = False,
    max_destinations: int | None = None,
    start: np.ndarray | None = None,
    checkpoint: str | Path | None = None,
    resume: bool = False,
    checkpoint_every: float = 30.0,
    run_info: dict[str, Any] | None = None,
    stats: dict[str, Any] | None = None,
) -> SearchState:
    """Sequential ACDC: one full forward pass per edge (the slow, obviously correct one).

    ``max_destinations`` stops after that many destinations (benchmarks on big graphs);
    the edges into the others stay present. ``start`` (a boolean mask over edges) makes
    ACDC begin from that circuit instead of the full graph (prefiltered ACDC): only its
    edges are tested, the others stay removed. ``checkpoint``, ``resume``,
    ``checkpoint_every``, ``run_info``, ``stats``: as in :func:`acdc_fast`
    (:mod:`circuitdag.checkpoint`)."""
    threshold = check_threshold(threshold)
    graph = patcher.graph
    reach = graph.reach
    order = graph.visit_order()[:max_destinations]
    info = _checkpoint_info(threshold, graph, run_info, "acdc-reference")
    state = _start_or_resume(patcher, order, info, checkpoint, resume, start, stats, reference=True)
    saver = Checkpointer(checkpoint, info, checkpoint_every)
    alive, scores, sink = state.alive, state.scores, graph.sink
    total = sum(int(alive[graph.incoming[d]].sum()) for d in order[state.next_dest :])
    bar = tqdm(total=total, desc="ACDC (reference)", unit="edge", disable=not progress)
    for pos in range(state.next_dest, len(order)):
        dest = order[pos]
        inc = graph.incoming[dest]
        edges = inc[alive[inc]]
        if not reach.reaches_sink(alive, sink)[dest]:
            bar.total -= len(edges)
            bar.refresh()
            edges = edges[:0]
        for e in edges:
            alive[e] = False
            m_new = patcher.reference_metric(alive)
            scores[e] = m_new - state.m_cur
            if m_new - state.m_cur < threshold:
                state.m_cur = m_new
            else:
                alive[e] = True
            bar.update(1)
        state.next_dest = pos + 1
        saver.boundary(state, last=pos == len(order) - 1)
    bar.close()
    state.alive = graph.prune(alive)
    return state


def _checkpoint_info(threshold: float, graph: Graph, run_info: dict[str, Any] | None, algorithm: str) -> dict[str, Any]:
    """What a checkpoint must share with the run that resumes it."""
    return {"threshold": threshold, "n_edges": graph.n_edges, "algorithm": algorithm, **(run_info or {})}


def _memory_budget(patcher: Patcher) -> int:
    """Bytes the candidate batch may use: part of free CUDA memory, or of free RAM."""
    if patcher.device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(patcher.device)
        return int(free * 0.4)
    try:
        avail = os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):  # pragma: no cover
        avail = 8 << 30
    return int(min(avail * 0.3, 6 << 30))


def max_candidates(patcher: Patcher, budget_bytes: int | None = None) -> int:
    """Largest K whose batch fits the memory budget (a conservative estimate: in-pass
    sender deltas, per-head inputs and activations, and the logits, per candidate)."""
    spec, lay = patcher.graph.spec, patcher.layout
    item = torch.finfo(patcher.dtype).bits // 8
    # Sender deltas (one copy), then activations and logits in every view.
    per_token = spec.d_model * (lay.n_slots + patcher.V * (8 * spec.n_heads + 16)) + 4 * patcher.ref.logits.shape[-1]
    per_cand = patcher.B * patcher.P * per_token * item
    budget = _memory_budget(patcher) if budget_bytes is None else budget_bytes
    return max(1, min(512, budget // max(per_cand, 1)))


class BatchSizer:
    """Chooses K, the number of speculative candidates per batch, to maximise the edges
    decided per second.

    Model: a batch of K candidates through ``layers`` blocks costs ``(c0 + c1 K) * layers``
    seconds (c0: per-pass overhead, c1: per-candidate compute), fitted by least squares on
    recent batches; each candidate is accepted with probability r (a decayed count), so a
    batch decides ``(1 - r^K) / (1 - r)`` edges in expectation. Overhead-bound passes (tiny
    models, GPUs) get large K; compute-bound ones (big models on a CPU) get small K. K never
    changes the circuit, only the speed; on the component path not even a score's last bit
    (:func:`circuitdag.recompute.removal_chain`).
    """

    def __init__(self, k_init: int, k_max: int) -> None:
        self.k = max(1, min(k_init, k_max))
        self.k_max = k_max
        self.acc, self.kept = 4.0, 1.0  # prior: acceptance rate 0.8
        self.obs: list[tuple[int, float]] = []

    def update(self, k: int, accepted: int, seconds: float, layers: int) -> int:
        self.acc = 0.95 * self.acc + accepted
        self.kept = 0.95 * self.kept + (1 if accepted < k else 0)
        self.obs = (self.obs + [(k, seconds / max(layers, 1))])[-32:]
        ks = np.array([o[0] for o in self.obs], dtype=float)
        ts = np.array([o[1] for o in self.obs])
        if np.ptp(ks) == 0:  # one K seen so far: explore upwards after a full batch
            self.k = min(2 * self.k, self.k_max) if accepted == k else max(1, self.k // 2)
            return self.k
        c1 = max(float(np.cov(ks, ts, bias=True)[0, 1] / ks.var()), 1e-12)
        c0 = max(float(ts.mean() - c1 * ks.mean()), 1e-9)
        r = min(self.acc / (self.acc + self.kept), 1 - 1e-6)
        cand = np.arange(1, self.k_max + 1, dtype=float)
        rate = (1 - r**cand) / (1 - r) / (c0 + c1 * cand)
        best = int(cand[int(np.argmax(rate))])
        # Move at most a factor 2 per batch so one noisy timing cannot swing K wildly.
        self.k = int(min(max(best, self.k // 2, 1), 2 * self.k, self.k_max))
        return self.k


def _dest_layer(graph: Graph, dest: int) -> int:
    node = graph.nodes[dest]
    return graph.spec.n_layers if node.kind == NodeKind.LOGITS else node.layer


def _live_positions(graph: Graph, reaching: np.ndarray, layer: int) -> list[int] | None:
    """Positions that need their own view in a fast pass starting at ``layer``: those of
    the nodes from ``layer`` on that still reach ``logits``, and the answer positions
    (None without positions)."""
    if graph.positions is None:
        return None
    keep = reaching & (graph.node_layer >= layer) & (graph.node_pos >= 0)
    return sorted(set(graph.node_pos[keep].tolist()) | set(graph.positions.sink))


def acdc_fast(
    patcher: Patcher,
    threshold: float,
    k_init: int = 8,
    k_max: int | None = None,
    progress: bool = False,
    checkpoint: str | Path | None = None,
    resume: bool = False,
    checkpoint_every: float = 30.0,
    run_info: dict[str, Any] | None = None,
    max_destinations: int | None = None,
    start: np.ndarray | None = None,
    stats: dict[str, Any] | None = None,
    sparse: bool | None = None,
) -> SearchState:
    """Exact speculative-batched ACDC (same edges as :func:`acdc_reference`, also with
    ``start``).

    K starts at ``k_init`` and then follows :class:`BatchSizer`; it never exceeds ``k_max``
    (default: what fits the memory budget, see :func:`max_candidates`). With
    ``checkpoint``, the state is written there (atomically) at most every
    ``checkpoint_every`` seconds after a destination is finished; ``resume=True``
    continues from that file (``stats`` seeds the run statistics of a fresh run and is
    saved with it).

    Candidates are evaluated from a cached run of the current circuit, valid for the whole
    search because ACDC changes the edges into a node only when it visits it, after every
    node upstream of it has been used. By default (``sparse=None``) a candidate recomputes
    only the heads and MLPs it changes (:mod:`circuitdag.recompute`; plain and
    position-aware graphs), on models whose per-component kernels reproduce the model's
    hooks (:meth:`Patcher.kernels`); elsewhere, or with ``sparse=False``, the layer-by-layer
    path resumes each candidate at the destination's layer (:meth:`Patcher.rebase`,
    :meth:`Patcher.candidate_metrics`). ``sparse=True`` raises :class:`ConfigError` where
    the component path cannot run. ``stats["fast_path"]`` says which ran.
    """
    threshold = check_threshold(threshold)
    graph = patcher.graph
    reach = graph.reach
    sink = graph.sink
    order = graph.visit_order()[:max_destinations]
    info = _checkpoint_info(threshold, graph, run_info, "acdc")
    state = _start_or_resume(patcher, order, info, checkpoint, resume, start, stats, reference=False)
    saver = Checkpointer(checkpoint, info, checkpoint_every)
    # A resumed run rebuilds the component path's cached run by redoing the accepted
    # removals from the start circuit (_replay): the same floats as the uninterrupted run.
    begun = state.alive | np.isfinite(state.scores)  # the search's start circuit: every tested edge was in it
    fast = _sparse_path(patcher, begun, sparse)
    if fast is not None and state.next_dest > 0:
        _replay(patcher, fast, state, order, begun)
    if fast is None:
        patcher.rebase(state.alive)
        k_max = k_max or max_candidates(patcher)
    else:  # the batch is capped per destination by what its affected nodes need
        k_max = k_max or 512
    sizer = BatchSizer(k_init, k_max)
    absent = patcher.absent_matrix(state.alive)
    stats = state.stats
    stats.setdefault("batches", 0)
    stats.setdefault("candidates_evaluated", 0)
    stats.setdefault("candidates_discarded", 0)
    stats.setdefault("edges_tested", 0)
    stats["fast_path"] = "layers" if fast is None else "components"
    c0 = 0 if fast is None else fast.component_evals
    # Progress counts the work of tested edges only (see _work): skipped destinations
    # shrink the total instead of advancing the bar, so the ETA stays honest.
    per_edge = fast is not None
    pending = [_work(graph, d, int(state.alive[graph.incoming[d]].sum()), per_edge) for d in order[state.next_dest :]]
    bar = tqdm(total=sum(pending), desc="ACDC", unit="edge" if per_edge else "block", disable=not progress,
               bar_format="{l_bar}{bar}| {percentage:3.0f}% [{elapsed}<{remaining}{postfix}]")  # fmt: skip
    for pos in range(state.next_dest, len(order)):
        dest = order[pos]
        inc = graph.incoming[dest]
        edges = inc[state.alive[inc]]
        reaching = reach.reaches_sink(state.alive, sink)
        if reaching[dest] and len(edges):
            live = _live_positions(graph, reaching, _dest_layer(graph, dest))
            _decide_destination(patcher, state, absent, dest, edges, threshold, sizer, stats, bar, live, fast)
        else:
            bar.total -= _work(graph, dest, len(edges), per_edge)
            bar.refresh()
        bar.set_postfix_str(f"destination {pos + 1}/{len(order)}, {stats['edges_tested']} edges tested", refresh=False)
        state.next_dest = pos + 1
        saver.boundary(state, last=pos == len(order) - 1)
    bar.close()
    if fast is not None:
        stats["component_evaluations"] = stats.get("component_evaluations", 0) + fast.component_evals - c0
    stats["k_max"] = int(k_max)
    stats["kernels"] = backend(graph.n_edges)
    state.alive = graph.prune(state.alive)
    return state


def _decide_destination(
    patcher: Patcher,
    state: SearchState,
    absent: torch.Tensor,
    dest: int,
    edges: np.ndarray,
    threshold: float,
    sizer: BatchSizer,
    stats: dict[str, Any],
    bar: tqdm,
    live: list[int] | None = None,
    fast: SparseFastPath | PositionalFastPath | None = None,
) -> None:
    """Run the speculative batches for one destination; updates ``state`` and ``absent``
    in place. With ``fast`` candidates are evaluated by recomputing only what they
    change."""
    lay = patcher.layout
    layer = _dest_layer(patcher.graph, dest)
    dev = patcher.device
    # The destination's cells (row, view) of the absent mask; candidates differ only there.
    cells, local_cell = np.unique(np.stack([lay.edge_row[edges], lay.edge_view[edges]], 1),
                                  axis=0, return_inverse=True)  # fmt: skip
    local_cell = local_cell.reshape(-1)
    cell_rows, cell_views = torch.as_tensor(cells[:, 0], device=dev), torch.as_tensor(cells[:, 1], device=dev)
    i = 0
    n_layers = patcher.graph.spec.n_layers - layer + 1
    cap = len(edges)
    if fast is not None:
        fast.forget_affected()
        cap = max(1, _memory_budget(patcher) // fast.bytes_per_candidate(dest, state.alive))
    if isinstance(fast, PositionalFastPath):
        edges = _decide_inert(fast, state, absent, edges, threshold, stats, bar)
    while i < len(edges):
        k = min(sizer.k, len(edges) - i, cap)
        t0 = time.perf_counter()
        if fast is not None:
            m = fast.evaluate(dest, edges[i : i + k], state.alive).tolist()
        else:
            m = _layer_candidates(patcher, absent, layer, edges, i, k, cells, local_cell, cell_rows, cell_views, live)
        stats["batches"] += 1
        stats["candidates_evaluated"] += k
        accepted = 0
        for j in range(k):
            e = edges[i + j]
            diff = m[j] - state.m_cur
            state.scores[e] = diff
            if diff < threshold:
                state.alive[e] = False
                absent[lay.edge_row[e], lay.edge_view[e], lay.edge_pos[e], lay.edge_slot[e]] = 1.0
                state.m_cur = m[j]
                accepted += 1
            else:
                break
        if fast is not None:
            fast.commit(accepted)
        decided = accepted + (1 if accepted < k else 0)
        stats["candidates_discarded"] += k - decided
        stats["edges_tested"] += decided
        bar.update(_work(patcher.graph, dest, decided, fast is not None))
        i += decided
        sizer.update(k, accepted, time.perf_counter() - t0, n_layers)


def _replay(patcher: Patcher, fast: SparseFastPath | PositionalFastPath, state: SearchState, order: list[int],
            alive: np.ndarray) -> None:  # fmt: skip
    """Bring ``fast``, built on the search's start circuit, to the resumed ``state``: redo,
    destination by destination in ACDC's order, the removals it accepted (the edges into
    the finished destinations that are gone now; every edge ACDC tested has a score).

    Each destination's removals are evaluated and committed as one nested batch, the same
    computation as the search's, which is the same float whatever the batch size
    (:func:`circuitdag.recompute.removal_chain`), so the resumed run continues from the
    uninterrupted run's cached values, not from a recomputation that rounds differently.
    ``state.stats["resume"]`` records the edges redone and whether the last one reproduced
    the checkpoint's metric exactly (not on another machine, library or thread count)."""
    graph = patcher.graph  # alive: the start circuit (changed in place as the removals are redone)
    redone, last = 0, None
    for dest in order[: state.next_dest]:
        inc = graph.incoming[dest]
        gone = inc[alive[inc] & ~state.alive[inc]]
        if not len(gone):
            continue
        fast.forget_affected()
        cap = max(1, _memory_budget(patcher) // fast.bytes_per_candidate(dest, alive))
        if isinstance(fast, PositionalFastPath):
            inert = fast.inert(gone)
            fast.remove(gone[inert])
            alive[gone[inert]] = False
            gone = gone[~inert]
        for at in range(0, len(gone), cap):
            chunk = gone[at : at + cap]
            last = float(fast.evaluate(dest, chunk, alive)[-1])
            fast.commit(len(chunk))
            alive[chunk] = False
            redone += len(chunk)
    state.stats["resume"] = {"edges_redone": redone, "same_metric": last is None or last == state.m_cur}
    if last is not None and last != state.m_cur:
        log.info("resuming: the redone removals give metric %r, the checkpoint %r (rounding of another setup)",
                 last, state.m_cur)  # fmt: skip


def _decide_inert(fast: PositionalFastPath, state: SearchState, absent: torch.Tensor, edges: np.ndarray,
                 threshold: float, stats: dict[str, Any], bar: tqdm) -> np.ndarray:  # fmt: skip
    """Decide the edges into one destination whose senders sit before the first position
    where clean and ablated runs differ (:meth:`PositionalFastPath.inert`): removing one
    changes nothing, so its score is exactly 0 wherever ACDC's order puts it, and it is
    removed when 0 < ``threshold``, without changing the metric. Returns the other edges,
    in order."""
    inert = fast.inert(edges)
    if not inert.any():
        return edges
    dead = edges[inert]
    state.scores[dead] = 0.0
    stats["edges_tested"] += len(dead)
    stats["inert_edges"] = stats.get("inert_edges", 0) + len(dead)
    bar.update(len(dead))
    if 0.0 < threshold:
        lay = fast.lay
        state.alive[dead] = False
        absent[lay.edge_row[dead], lay.edge_view[dead], lay.edge_pos[dead], lay.edge_slot[dead]] = 1.0
        fast.remove(dead)
    return edges[~inert]


def _layer_candidates(patcher: Patcher, absent: torch.Tensor, layer: int, edges: np.ndarray, i: int, k: int,
                      cells: np.ndarray, local_cell: np.ndarray, cell_rows: torch.Tensor, cell_views: torch.Tensor,
                      live: list[int] | None) -> list[float]:  # fmt: skip
    """Metrics of the nested candidates ``edges[i .. i+j]`` (j < k) by the layer-by-layer
    fast pass (:meth:`Patcher.candidate_metrics`)."""
    lay, dev = patcher.layout, patcher.device
    pos, slots = lay.edge_pos[edges], lay.edge_slot[edges]
    # Nested candidates: candidate j removes edges i .. i+j on top of the current circuit.
    steps = torch.zeros(k, len(cells), absent.shape[2], lay.n_slots, dtype=patcher.dtype, device=dev)
    at = slice(i, i + k)
    steps[torch.arange(k, device=dev), torch.as_tensor(local_cell[at], device=dev),
          torch.as_tensor(pos[at], device=dev), torch.as_tensor(slots[at], device=dev)] = 1.0  # fmt: skip
    cand = absent[cell_rows, cell_views].unsqueeze(0) + steps.cumsum(0)
    return patcher.candidate_metrics(absent, layer, cell_rows, cand, cell_views, live).tolist()


def _sparse_path(patcher: Patcher, alive: np.ndarray, want: bool | None) -> SparseFastPath | PositionalFastPath | None:
    """The component-level fast path for ``patcher`` from circuit ``alive``, or None where
    it cannot run (``want=True`` then raises)."""
    if want is False:
        if patcher.neurons:
            raise ConfigError("neuron nodes need the component fast path; the layer-by-layer path has none")
        return None
    why = None
    if patcher.kernels() is None:
        why = f"the per-component kernels do not reproduce this model ({patcher.kernel_problem})"
    if why is not None:
        if want or patcher.neurons:  # the layer path has no neuron nodes
            raise ConfigError(f"the sparse fast path cannot run: {why}")
        log.info("%s", why)
        return None
    kind = PositionalFastPath if patcher.positional else SparseFastPath
    return kind(patcher, patcher.kernels(), alive)  # type: ignore[arg-type]
