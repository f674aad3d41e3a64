"""Export a circuit to the graph JSON that circuit-tracer's and Neuronpedia's viewers read.

circuit-tracer (Hanna, Piotrowski et al. 2025, ``safety-research/circuit-tracer``, the
open implementation of Ameisen et al. 2025's attribution graphs) writes a pruned
attribution graph as one JSON document (``circuit_tracer/utils/create_graph_files.py``,
models in ``circuit_tracer/frontend/graph_models.py``); its local viewer and Neuronpedia's
graph viewer read it, and Neuronpedia validates uploads against a JSON Schema
(``neuronpedia/apps/webapp/app/api/graph/graph-schema.json``)::

    {"metadata": {"slug", "scan", "prompt_tokens", "prompt", ...},
     "qParams":  {"pinnedIds", "supernodes", "linkType", "clickedId", "sg_pos"},
     "nodes":    [{"node_id", "feature", "layer", "ctx_idx", "feature_type", "jsNodeId",
                   "clerp", ...}, ...],
     "links":    [{"source": node_id, "target": node_id, "weight"}, ...]}

A circuitdag circuit maps onto it as follows (docs/export.md has the table):

* Columns are token positions: ``prompt_tokens`` are the task's position names (or
  ``pos <i>``) of a position-aware circuit, and ``ctx_idx`` a node's position. A circuit
  without positions is one column, ``(all positions)``, plus an ``(output)`` column for
  ``logits``: the viewers drop any node whose ``layer_feature_ctx`` id occurs at more than
  2/3 of the prompt's positions, which with one column would be every node.
* Rows are layers: ``layer`` is ``"E"`` for ``embed``, the model layer for heads,
  key/value heads and MLPs, and ``n_layers + 1`` for ``logits`` (as circuit-tracer's
  logit nodes).
* ``feature`` is the component's index in :attr:`Graph.components` (``embed``: the
  position, as circuit-tracer's token nodes), so ``node_id = f"{layer}_{feature}_{ctx_idx}"``
  is unique; ``jsNodeId`` equals it (circuit-tracer's default).
* ``feature_type`` is ``embedding`` / ``logit`` as in circuit-tracer, and ``attention
  head``, ``key/value head``, ``mlp`` or ``mlp neuron`` for the rest (the viewers draw any other type as
  an ordinary feature node); ``clerp`` (the label) is the circuitdag node name. ``logits``
  is the one target logit: ``clerp = 'Output "<metric>" (p=1.000)'`` (the viewer reads
  ``p`` from the label) and ``token_prob`` 1.
* A link joins two nodes; edges between the same pair (a head's ``q``/``k``/``v`` inputs)
  become one link whose ``weight`` is the sum of their scores (the metric change when the
  edge is removed, in metric units; an untested edge counts 0). Each link also lists its
  ``edges`` and ``inputs``. A key/value head's link to each query head of its group
  (grouped-query attention: not an edge, never patched) is a link of weight 0 with
  ``"implicit": true``.

Only the circuit's nodes are written (those touched by an in-circuit edge), with every
``embed`` and ``logits``, as circuit-tracer keeps every token and logit node.
"""

from __future__ import annotations

import math
import re
from pathlib import Path
from typing import Any

import numpy as np

from circuitdag._options import EXPORT_FORMATS
from circuitdag.circuit import Circuit
from circuitdag.errors import ConfigError
from circuitdag.files import write_json
from circuitdag.graph import Input, Node, NodeKind

#: The export formats of ``circuitdag export``.
FORMATS = EXPORT_FORMATS
#: ``feature_type`` by :class:`NodeKind` name.
FEATURE_TYPES = {"EMBED": "embedding", "KV": "key/value head", "HEAD": "attention head", "MLP": "mlp",
                 "NEURON": "mlp neuron", "LOGITS": "logit"}  # fmt: skip
ALL_POSITIONS, OUTPUT = "(all positions)", "(output)"


def _slug(text: str) -> str:
    """A Neuronpedia slug: lower-case letters, digits and dashes."""
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-") or "circuit"


def to_circuit_tracer(circuit: Circuit, slug: str | None = None) -> dict[str, Any]:
    """The circuit as a circuit-tracer / Neuronpedia graph JSON document (module docstring).

    ``slug`` names the graph (default: task, metric and threshold). Scores are finite
    numbers in the file (an untested edge's NaN counts 0)."""
    g = circuit.graph
    meta = circuit.meta
    if g.positions is not None:
        tokens = [g.positions.label(p) if g.positions.names else f"pos {p}" for p in range(g.positions.n)]
        logit_ctx = max(g.positions.sink)
    else:
        tokens = [ALL_POSITIONS]
        logit_ctx = 0
    if len(tokens) < 2:  # one column would make the viewers drop every node (module docstring)
        tokens.append(OUTPUT)
        logit_ctx = len(tokens) - 1
    component = {n.name: i for i, n in enumerate(g.components)}
    metric = str(meta.get("metric", "metric"))

    def node(i: int) -> dict[str, Any]:
        n: Node = g.nodes[i]
        if n.kind == NodeKind.EMBED:
            layer, ctx = "E", max(n.pos, 0)
            feature = ctx
        else:
            layer = str(g.spec.n_layers + 1) if n.kind == NodeKind.LOGITS else str(n.layer)
            ctx = logit_ctx if n.kind == NodeKind.LOGITS else max(n.pos, 0)
            feature = component[n.component]
        node_id = f"{layer}_{feature}_{ctx}"
        logit = n.kind == NodeKind.LOGITS
        return {"node_id": node_id, "feature": feature, "layer": layer, "ctx_idx": ctx,
                "feature_type": FEATURE_TYPES[n.kind.name], "token_prob": 1.0 if logit else 0.0,
                "is_target_logit": logit, "run_idx": 0, "reverse_ctx_idx": 0, "jsNodeId": node_id,
                "clerp": f'Output "{metric}" (p=1.000)' if logit else n.name, "influence": None,
                "activation": None}  # fmt: skip

    t = g.edges
    idx = np.flatnonzero(circuit.in_circuit)
    used = set(t.src[idx].tolist()) | set(t.dst[idx].tolist()) | set(g.sources.tolist()) | {g.sink}
    nodes = {i: node(i) for i in sorted(used)}
    links: dict[tuple[int, int], dict[str, Any]] = {}
    for e in idx.tolist():
        s, d = int(t.src[e]), int(t.dst[e])
        link = links.setdefault((s, d), {"source": nodes[s]["node_id"], "target": nodes[d]["node_id"],
                                         "weight": 0.0, "edges": [], "inputs": []})  # fmt: skip
        score = float(circuit.scores[e])
        link["weight"] += score if math.isfinite(score) else 0.0
        link["edges"].append(g.edge_names[e])
        kind = Input(t.input[e]).label
        if kind not in link["inputs"]:
            link["inputs"].append(kind)
    for s, d in zip(*(x.tolist() for x in g.implicit_edges)):
        if s in nodes and d in nodes:
            links[(s, d)] = {"source": nodes[s]["node_id"], "target": nodes[d]["node_id"], "weight": 0.0,
                             "edges": [], "inputs": [], "implicit": True}  # fmt: skip
    faith = circuit.faithfulness()
    task = str(meta.get("task", "circuit"))
    threshold = meta.get("threshold")
    about = {k: meta.get(k) for k in ("task", "model", "algorithm", "threshold", "metric", "ablation", "positions")}
    about.update(edges=circuit.n_edges, edges_total=g.n_edges, faithfulness=faith)
    description = (f"circuitdag circuit of task {task}: {circuit.n_edges} of {g.n_edges} edges, metric {metric}, "
                   f"ablation {meta.get('ablation', '?')}"
                   + (f", threshold {threshold:g}" if isinstance(threshold, (int, float)) else "")
                   + (f", faithfulness {faith:.3f}" if faith is not None else ""))  # fmt: skip
    from circuitdag._version import __version__

    return {
        "metadata": {
            "slug": _slug(slug or f"{task}-{metric}" + (f"-{threshold:g}" if isinstance(threshold, (int, float))
                                                         else "")),
            "scan": str(meta.get("model") or task),
            "prompt_tokens": tokens,
            "prompt": " ".join(tokens),
            "info": {"description": description,
                     "generator": {"name": "circuitdag", "version": __version__}},
            "circuitdag": about,
        },
        "qParams": {"pinnedIds": [], "supernodes": [], "linkType": "both", "clickedId": "", "sg_pos": ""},
        "nodes": list(nodes.values()),
        "links": list(links.values()),
    }  # fmt: skip


def export_circuit(circuit: Circuit, path: str | Path, fmt: str = "circuit-tracer", slug: str | None = None,
                   collapse_positions: bool = False) -> Path:  # fmt: skip
    """Write ``circuit`` to ``path`` in format ``fmt`` (one of :data:`FORMATS`): the
    circuit-tracer graph JSON (:func:`to_circuit_tracer`) or the EAP-IG/MIB graph JSON
    (:func:`circuitdag.eapig_json.to_eapig_json`); ``collapse_positions`` exports
    :meth:`Circuit.without_positions` (component edges) in either format.
    Raises :class:`ConfigError` for an unknown format, :class:`CircuitFileError` when the
    file cannot be written or the format cannot hold the circuit."""
    from circuitdag.eapig_json import to_eapig_json

    if fmt == "circuit-tracer":  # positions are its columns; collapsed, one column of components
        doc = to_circuit_tracer(circuit.without_positions() if collapse_positions else circuit, slug)
    elif fmt == "eap-ig":
        doc = to_eapig_json(circuit, collapse_positions)
    else:
        raise ConfigError(f"unknown export format {fmt!r}; choose one of {', '.join(FORMATS)}")
    return write_json(path, doc, option="-o")
