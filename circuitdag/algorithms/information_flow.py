"""Information flow routes as a registered method (Ferrando & Voita 2024, "Information Flow
Routes: Automatically Interpreting Language Models at Scale"), as MIB's circuit track runs
it (hannamw/EAP-IG, ``get_scores_information_flow_routes``).

No counterfactual and no gradient: one clean run. A destination's input ``x`` (the residual
stream it reads, before its LayerNorm) is a sum of its senders' outputs ``S_s`` (plus
biases); the *proximity* of sender ``s`` is how much of ``x`` it accounts for in L1,

    proximity(s) = max(0, ||x||_1 - ||x - S_s||_1)

and its importance at a position is ``proximity(s) / sum over senders of proximity``. An
edge's score is that importance averaged over the prompt's real positions (those at or
before its last answer position in a causal model, :func:`circuitdag.runs.real_positions`;
MIB: the non-padding tokens), then over prompts. Scores are in [0, 1] and the scores of
the edges into one destination sum to 1 (less where, at some position, no sender is
closer to the input than zero is: MIB's code divides by 0 there, here the shares are 0);
q, k and v inputs of a layer read the same
residual stream, so they score alike. The task's metric, corrupted prompts and ablation are
not used (circuit.json still records them: the circuit's faithfulness is measured with
them). Cost: one pass over the cached clean run. Plain graphs only (no ``--positions``, no
``--neurons``).
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, ClassVar

import numpy as np
import torch
from tqdm.auto import tqdm

from circuitdag.algorithms.attribution import default_attribution_edges
from circuitdag.algorithms.base import Algorithm, Found, Option, RunContext
from circuitdag.attribution import top_edges
from circuitdag.errors import ConfigError
from circuitdag.graph import Graph, Input
from circuitdag.runs import real_positions

if TYPE_CHECKING:
    from circuitdag.patching import Patcher


def information_flow_scores(patcher: Patcher, batch_size: int = 8, progress: bool = False) -> np.ndarray:
    """The score of every edge (module docstring): float64, edge-table order, in [0, 1].
    Raises :class:`ConfigError` on position-aware graphs and neuron nodes."""
    if patcher.positional:
        raise ConfigError("information-flow-routes scores plain graphs only; drop --positions")
    if patcher.neurons:
        raise ConfigError("information-flow-routes does not score neuron nodes (--neurons); use acdc")
    lay, n = patcher.layout, patcher.layout.n_layers
    weights = real_positions(patcher.data, patcher.graph.spec.causal).to(torch.float64)  # batch pos
    weights = (
        weights / weights.sum(1, keepdim=True).clamp(min=1) / patcher.B
    )  # mean over positions, then prompts
    dense = torch.zeros(lay.n_rows, lay.n_slots, dtype=torch.float64, device=patcher.device)
    sites = [(L, kind) for L in range(n) for kind in (Input.Q, Input.K, Input.V, Input.MLP)
             if kind != Input.MLP or lay.has_mlp] + [(n, Input.RESID)]  # fmt: skip
    for L, kind in tqdm(sites, desc="IFR", unit="input", disable=not progress):
        if kind == Input.RESID:
            x_all = patcher.resid_final
        elif kind == Input.MLP:
            x_all = patcher.mlp_in[L]
        else:
            x_all = patcher.resid_pre[L]
        k = lay.readable_slots(L, kind)
        score = torch.zeros(k, dtype=torch.float64, device=patcher.device)
        for i in range(0, patcher.B, batch_size):
            x = x_all[i : i + batch_size].unsqueeze(2)  # b pos 1 d
            S = patcher.S_clean[i : i + batch_size, :, :k]  # b pos k d
            proximity = (x.abs().sum(-1) - (x - S).abs().sum(-1)).clamp(min=0).to(torch.float64)  # b pos k
            importance = proximity / proximity.sum(-1, keepdim=True).clamp(
                min=torch.finfo(torch.float64).tiny
            )
            score += torch.einsum("bpk,bp->k", importance, weights[i : i + batch_size])
        dense[lay.rows(L, kind), :k] = score
    return dense[lay.edge_row, lay.edge_slot].cpu().numpy()


def routes(graph: Graph, scores: np.ndarray, n_edges: int | None = None,
           threshold: float | None = None) -> np.ndarray:  # fmt: skip
    """The edges of the routes to the prediction, built top-down from ``logits`` as
    Ferrando & Voita build them: an edge is a candidate once its destination is on a route;
    the best candidate is taken next (``n_edges`` of them), or every candidate with
    ``score >= threshold``. A share is relative to its destination, so a global top-N
    would fill the budget with the edges of nodes that have one sender (a share of 1) and
    reach no route from the logits (the circuit came out empty)."""
    import heapq

    top_edges(scores, n_edges, threshold)  # checks the size arguments
    into: dict[int, list[int]] = {}
    for e, d in enumerate(graph.edges.dst.tolist()):
        into.setdefault(d, []).append(e)
    src = graph.edges.src.tolist()
    ok = np.isfinite(scores)
    keep = np.zeros(graph.n_edges, dtype=bool)
    reached = {int(graph.sink)}
    heap = [(-float(scores[e]), e) for e in into.get(int(graph.sink), []) if ok[e]]
    heapq.heapify(heap)
    while heap and (n_edges is None or int(keep.sum()) < n_edges):
        neg, e = heapq.heappop(heap)
        if threshold is not None and -neg < threshold:
            break  # every other candidate scores less
        keep[e] = True
        if src[e] not in reached:
            reached.add(src[e])
            for f in into.get(src[e], []):
                if ok[f]:
                    heapq.heappush(heap, (-float(scores[f]), f))
    return keep


class InformationFlowRoutes(Algorithm):
    name = "information-flow-routes"
    summary = "information flow routes: each sender's L1 share of a destination's input, no counterfactual"
    source = "Ferrando & Voita 2024, Information Flow Routes (as MIB runs it)"
    score_meaning = "mean share of the destination's input accounted for by the sender (L1 proximity, in [0, 1])"
    size_knob = "edges"
    positions = False  # plain graphs only
    metric_scores = False  # shares of the destination's input
    refusals: ClassVar[dict[str, str]] = {
        "prefilter": "--prefilter goes with --algorithm acdc",
    }
    options: ClassVar[tuple[Option, ...]] = (
        Option("edges", int, None, "keep the N edges with the largest score (default 1% of the graph)", minimum=0),
        Option("threshold", float, None, "keep every edge with score >= this (a share, 0..1)", minimum=0),
        Option("batch_size", int, 8, "prompts per chunk of the proximity computation", minimum=1),
    )

    def run(self, patcher: Patcher, ctx: RunContext, edges: int | None = None, threshold: float | None = None,
            batch_size: int = 8) -> Found:  # fmt: skip
        if edges is not None and threshold is not None:
            raise ConfigError(f"give either --edges N or --threshold X for --algorithm {self.name}, not both")
        if edges is None and threshold is None:
            edges = default_attribution_edges(patcher.graph.n_edges)
        t0 = time.perf_counter()
        scores = information_flow_scores(patcher, batch_size, ctx.progress)
        keep = routes(patcher.graph, scores, None if edges is None else min(edges, patcher.graph.n_edges), threshold)
        return Found(scores, patcher.graph.prune(keep),
                     record={"threshold": threshold, "edges_requested": edges, "edges_selected": int(keep.sum()),
                             "counterfactual": False},
                     stats={"seconds": round(time.perf_counter() - t0, 4)})  # fmt: skip
