"""The ground-truth circuit of a tracr-compiled model, derived from its weights.

A compiled model (:class:`~circuitdag.models.hooked.TinyTransformer` with tracr's weights:
no LayerNorm, zero biases, non-causal attention) is re-run here in float64 numpy with
ACDC's edge patching written from scratch (DESIGN.md, "Patching semantics"): a receiver
input is the sum over present edges of the sender's output in this pass plus the sum over
absent edges of the sender's output in the corrupted run (zeros under zero ablation).
Keeping this independent of :mod:`circuitdag.patching` is the point: the ground truth
ACDC is scored against does not come from the engine being scored.

The rule (docs/tracr.md, "The computational graph and the ground-truth rule"):

1. **structural** edges: sender write matrix @ receiver read matrix has Frobenius norm
   > :data:`WEIGHT_EPS`, and the edge lies on an ``embed -> logits`` path of such edges;
2. per ablation, an exact-output ACDC over the structural edges: destinations in reverse
   topological order, each incoming edge removed and kept removed iff every output value
   at every answer position of every probe input stays within :data:`TOL` of the full
   model's; then edges off every ``embed -> logits`` path are dropped. What remains is the
   ground truth (``edges``); the other structural edges are ``inert``.

:func:`derive_ground_truth` also checks that the result does not depend on the order in
which a destination's edges are tried and that the circuit reproduces the full model,
raising :class:`TracrCheckError` otherwise. No JAX is needed here.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from circuitdag.errors import CircuitDagError
from circuitdag.models.hooked import TinyTransformer

__all__ = [
    "TOL", "WEIGHT_EPS", "NodeGraph", "NodeModel", "Probe", "TracrCheckError", "derive_ground_truth",
    "exact_acdc", "make_probe",
]  # fmt: skip

#: Output deviation (max abs, any input, any answer position) below which an edge is inert.
TOL = 1e-4
#: A weight product with Frobenius norm below this is zero (tracr weights are O(1)..O(100)).
WEIGHT_EPS = 1e-8

Edge = tuple[str, str, str]  # (src, dst, input)


class TracrCheckError(CircuitDagError):
    """A check of a compiled tracr model failed (port, decoded outputs, ground truth)."""


@dataclass
class NodeGraph:
    """The full (non-positional) edge graph of a model, as in DESIGN.md, listed in
    topological order of the destination."""

    nodes: list[str]
    edges: list[Edge]

    @staticmethod
    def of(n_layers: int, n_heads: int) -> NodeGraph:
        nodes, edges = ["embed"], []
        for layer in range(n_layers):
            upstream = list(nodes)
            heads = [f"a{layer}.{h}" for h in range(n_heads)]
            for h in heads:
                edges += [(s, h, kind) for kind in "qkv" for s in upstream]
            nodes += heads
            edges += [(s, f"m{layer}", "mlp") for s in nodes]
            nodes.append(f"m{layer}")
        edges += [(s, "logits", "resid") for s in nodes]
        return NodeGraph(nodes + ["logits"], edges)

    @staticmethod
    def name(e: Edge) -> str:
        return f"{e[0]}->{e[1]}<{e[2]}>"


class NodeModel:
    """Forward passes with a circuit, in float64 numpy, from a TinyTransformer's weights
    (which must have zero biases: tracr implements constants through a ``one`` direction)."""

    def __init__(self, model: TinyTransformer) -> None:
        w = {k: v.detach().double().cpu().numpy() for k, v in model.named_weights().items()}
        self.w, self.cfg = w, model.cfg
        self.graph = NodeGraph.of(model.cfg.n_layers, model.cfg.n_heads)
        self.index = {e: i for i, e in enumerate(self.graph.edges)}
        self.incoming: dict[tuple[str, str], list[str]] = {}
        for s, d, k in self.graph.edges:
            self.incoming.setdefault((d, k), []).append(s)

    def write_matrix(self, node: str) -> np.ndarray:
        """What ``node`` writes to the residual stream: (inputs, d_model)."""
        w = self.w
        if node == "embed":
            return np.concatenate([w["embed.W_E"], w["pos_embed.W_pos"]], 0)
        if node.startswith("a"):
            layer, h = map(int, node[1:].split("."))
            return w[f"blocks.{layer}.attn.W_O"][h]
        return w[f"blocks.{node[1:]}.mlp.W_out"]

    def read_matrix(self, node: str, kind: str) -> np.ndarray:
        """What input ``kind`` of ``node`` reads from the residual stream: (d_model, width)."""
        w = self.w
        if node == "logits":
            return w["unembed.W_U"]
        if node.startswith("a"):
            layer, h = map(int, node[1:].split("."))
            return w[f"blocks.{layer}.attn.W_{kind.upper()}"][h]
        return w[f"blocks.{node[1:]}.mlp.W_in"]

    def structural(self) -> np.ndarray:
        """Edges whose weight product is non-zero and that lie on an embed->logits path."""
        g = self.graph
        nz = np.array(
            [
                np.linalg.norm(self.write_matrix(s) @ self.read_matrix(d, k)) > WEIGHT_EPS
                for s, d, k in g.edges
            ]
        )
        return on_path(g, nz)

    def run(
        self,
        tokens: np.ndarray,
        present: np.ndarray | None = None,
        corrupt: Mapping[str, np.ndarray] | None = None,
    ) -> tuple[np.ndarray, dict[str, np.ndarray]]:
        """Output-space values (batch pos d_out) and every node's output (batch pos d_model).

        ``present`` is a bool mask over ``graph.edges`` (None = all present); an absent
        edge carries the sender's output from ``corrupt`` (None = zero ablation).
        """
        w, cfg = self.w, self.cfg
        out: dict[str, np.ndarray] = {
            "embed": w["embed.W_E"][tokens] + w["pos_embed.W_pos"][: tokens.shape[1]]
        }

        def inp(dst: str, kind: str) -> np.ndarray:
            total: np.ndarray | float = 0.0
            for s in self.incoming[(dst, kind)]:
                if present is None or present[self.index[(s, dst, kind)]]:
                    total = total + out[s]
                elif corrupt is not None:
                    total = total + corrupt[s]
            return total if isinstance(total, np.ndarray) else np.zeros_like(out["embed"])

        for layer in range(cfg.n_layers):
            b = f"blocks.{layer}"
            for h in range(cfg.n_heads):
                node = f"a{layer}.{h}"
                q = inp(node, "q") @ w[f"{b}.attn.W_Q"][h]
                k = inp(node, "k") @ w[f"{b}.attn.W_K"][h]
                v = inp(node, "v") @ w[f"{b}.attn.W_V"][h]
                scores = np.einsum("bqe,bke->bqk", q, k) / np.sqrt(cfg.d_head)
                scores = scores - scores.max(-1, keepdims=True)
                pattern = np.exp(scores)
                pattern /= pattern.sum(-1, keepdims=True)
                out[node] = np.einsum("bqk,bke->bqe", pattern, v) @ w[f"{b}.attn.W_O"][h]
            node = f"m{layer}"
            x = inp(node, "mlp")
            out[node] = np.maximum(x @ w[f"{b}.mlp.W_in"], 0.0) @ w[f"{b}.mlp.W_out"]
        return inp("logits", "resid") @ w["unembed.W_U"], out


def on_path(g: NodeGraph, alive: np.ndarray) -> np.ndarray:
    """Mask of the edges in ``alive`` that lie on some embed->logits path."""
    alive = alive.copy()
    while True:
        reach_from_embed, reach_logits = {"embed"}, {"logits"}
        for i, (s, d, _) in enumerate(g.edges):  # edges are listed in topological order of dst
            if alive[i] and s in reach_from_embed:
                reach_from_embed.add(d)
        for i, (s, d, _) in reversed(list(enumerate(g.edges))):
            if alive[i] and d in reach_logits:
                reach_logits.add(s)
        new = np.array(
            [a and s in reach_from_embed and d in reach_logits for a, (s, d, _) in zip(alive, g.edges)]
        )
        if (new == alive).all():
            return new
        alive = new


@dataclass
class Probe:
    """Inputs on which the ground truth is decided, for one ablation."""

    tokens: np.ndarray  # (batch pos) token ids, BOS first
    corrupt: dict[str, np.ndarray] | None  # node outputs of the counterfactual run; None = zero
    mask: np.ndarray  # (batch pos) answer positions that count
    full: np.ndarray  # (batch pos d_out) the full model's output
    full_nodes: dict[str, np.ndarray]  # every node's output in the full model


def make_probe(nm: NodeModel, tokens: np.ndarray, mask: np.ndarray, corrupted: np.ndarray | None) -> Probe:
    """A probe on ``tokens`` (batch pos); ``corrupted`` (same shape) are the resample
    counterfactuals, or None for zero ablation."""
    full, full_nodes = nm.run(tokens)
    corrupt = None if corrupted is None else nm.run(corrupted)[1]
    return Probe(tokens, corrupt, mask, full, full_nodes)


def deviation(nm: NodeModel, probe: Probe, present: np.ndarray) -> tuple[float, float]:
    """(max abs deviation, mean l2 deviation) of the outputs from the full model's."""
    out, _ = nm.run(probe.tokens, present, probe.corrupt)
    diff = np.linalg.norm(out - probe.full, axis=-1)[probe.mask]
    return float(np.abs(out - probe.full)[probe.mask].max()), float(diff.mean())


def exact_acdc(
    nm: NodeModel, probe: Probe, start: np.ndarray, reverse_senders: bool, threshold: float | None = None
) -> np.ndarray:
    """ACDC over the edges in ``start`` (DESIGN.md, "Patching semantics").

    With ``threshold=None`` an edge stays removed iff every output value stays within
    :data:`TOL` of the full model's (the ground-truth rule). With a threshold it is plain
    ACDC with the l2 metric (mean over prompts and answer positions of the l2 distance
    to the full model's output): removed iff ``m_new - m_cur < threshold``.
    """
    g, cfg = nm.graph, nm.cfg
    present = start.copy()
    m_cur = 0.0
    dsts = ["logits"]
    for layer in reversed(range(cfg.n_layers)):
        dsts += [f"m{layer}"] + [f"a{layer}.{h}" for h in reversed(range(cfg.n_heads))]
    for dst in dsts:
        if dst != "logits" and not _reaches_logits(g, present, dst):
            continue
        incoming = [i for i, (s, d, _) in enumerate(g.edges) if d == dst and present[i]]
        for i in reversed(incoming) if reverse_senders else incoming:
            present[i] = False
            max_abs, m_new = deviation(nm, probe, present)
            if threshold is None:
                present[i] = max_abs >= TOL
            elif m_new - m_cur < threshold:
                m_cur = m_new
            else:
                present[i] = True
    return on_path(g, present)


def _reaches_logits(g: NodeGraph, present: np.ndarray, node: str) -> bool:
    reach = {"logits"}
    for i, (s, d, _) in reversed(list(enumerate(g.edges))):
        if present[i] and d in reach:
            reach.add(s)
    return node in reach


def inert_reason(nm: NodeModel, probe: Probe, edge: Edge, circuit: np.ndarray) -> str:
    """Why an inert edge cannot change the output (the first reason that applies)."""
    s, d, kind = edge
    if probe.corrupt is not None and np.abs(probe.full_nodes[s] - probe.corrupt[s]).max() < TOL:
        return "sender output is the same on every counterfactual"
    with_e = circuit.copy()
    with_e[nm.index[edge]] = True
    without = with_e.copy()
    without[nm.index[edge]] = False
    _, a = nm.run(probe.tokens, with_e, probe.corrupt)
    _, b = nm.run(probe.tokens, without, probe.corrupt)
    if np.abs(a[d] - b[d]).max() < TOL:
        if kind in "qk":
            return "attention pattern of the receiver does not change"
        return "receiver output does not change"
    return "receiver output changes but the change does not reach the output"


def derive_ground_truth(
    nm: NodeModel,
    probes: Mapping[str, Probe],
    task_probes: Mapping[str, Probe],
    threshold: float,
    label: str = "",
) -> dict[str, Any]:
    """The ground truth of every ablation in ``probes`` (``zero``, ``resample``).

    ``probes`` decide the ground truth (the whole input space, several counterfactuals per
    input under resample); ``task_probes`` are the task's default data (what ACDC sees),
    on which plain ACDC at ``threshold`` is run to record whether it finds the ground truth
    (``acdc_on_task_data_matches``) and the smallest effect of one ground-truth edge
    (``min_effect_on_task_data``, l2). Raises :class:`TracrCheckError` when the ground
    truth depends on the edge order or does not reproduce the full model.
    """
    g = nm.graph
    structural = nm.structural()
    result: dict[str, Any] = {
        "rule": (
            "structural = sender write @ receiver read != 0, on an embed->logits path; edges = "
            f"ACDC over the structural edges keeping an edge iff removing it moves some output "
            f"value by >= {TOL} (max abs, any input of the input space, any answer position); "
            "inert = structural - edges"
        ),
        "tolerance": TOL,
        "n_full_graph_edges": len(g.edges),
        "structural": [g.name(e) for e, m in zip(g.edges, structural) if m],
    }
    where = f"{label}: " if label else ""
    for ablation, probe in probes.items():
        a = exact_acdc(nm, probe, structural, reverse_senders=True)
        b = exact_acdc(nm, probe, structural, reverse_senders=False)
        if not (a == b).all():
            raise TracrCheckError(
                f"{where}the {ablation}-ablation ground truth depends on the order edges are tried in"
            )
        max_dev, _ = deviation(nm, probe, a)
        if not max_dev < TOL:
            raise TracrCheckError(
                f"{where}the {ablation}-ablation ground truth moves the output by {max_dev:.3g}"
            )
        # Effects, for the docs and the default threshold: removing one ground-truth
        # edge from the ground-truth circuit, and one inert edge from the full model.
        gt_effects, inert_effects = {}, {}
        for i in np.flatnonzero(a):
            c = a.copy()
            c[i] = False
            gt_effects[g.name(g.edges[i])] = deviation(nm, probe, c)
        inert = np.flatnonzero(structural & ~a)
        for i in inert:
            c = structural.copy()
            c[i] = False
            inert_effects[g.name(g.edges[i])] = deviation(nm, probe, c)
        single = [g.name(g.edges[i]) for i in inert if inert_effects[g.name(g.edges[i])][0] < TOL]
        task_probe = task_probes[ablation]
        result[ablation] = {
            "edges": [g.name(e) for e, m in zip(g.edges, a) if m],
            "inert": [g.name(g.edges[i]) for i in inert],
            "why": {g.name(g.edges[i]): inert_reason(nm, probe, g.edges[i], a) for i in inert},
            "inert_alone": single,
            "min_effect_in_circuit": {
                "max_abs": min((v[0] for v in gt_effects.values()), default=None),
                "mean_l2": min((v[1] for v in gt_effects.values()), default=None),
            },
            "max_inert_effect_alone": {
                "max_abs": max((v[0] for v in inert_effects.values()), default=0.0),
                "mean_l2": max((v[1] for v in inert_effects.values()), default=0.0),
            },
            "min_effect_on_task_data": _min_effect(nm, task_probe, a),
            "acdc_on_task_data_matches": _acdc_matches(nm, task_probe, a, threshold),
        }
    return result


def _min_effect(nm: NodeModel, probe: Probe, circuit: np.ndarray) -> float | None:
    """Smallest mean-l2 change from removing one ground-truth edge from the ground-truth
    circuit, on the task's default data: what ACDC sees."""
    effects = []
    for i in np.flatnonzero(circuit):
        c = circuit.copy()
        c[i] = False
        effects.append(deviation(nm, probe, c)[1])
    return min(effects, default=None)


def _acdc_matches(nm: NodeModel, probe: Probe, circuit: np.ndarray, threshold: float) -> bool:
    """Does plain ACDC (l2, ``threshold``, full graph, either edge order) on the task's
    default data recover exactly ``circuit``?"""
    start = np.ones(len(nm.graph.edges), dtype=bool)
    return all(
        (exact_acdc(nm, probe, start, rev, threshold=threshold) == circuit).all() for rev in (True, False)
    )
