"""The EAP-IG graph JSON (the MIB circuit-track submission format): read and write.

MIB (Mueller et al. 2025) takes circuits and edge scores as the JSON written by
``Graph.to_json`` of the EAP-IG library (``hannamw/EAP-IG``, ``src/eap/graph.py``; the
version pinned by ``hannamw/MIB-circuit-track``)::

    {"cfg":   {"n_layers": 12, "n_heads": 12, "parallel_attn_mlp": false, "d_model": 768},
     "nodes": {"input": {"in_graph": true}, "a0.h0": {"in_graph": false}, ..., "m0": ...,
               "logits": {"in_graph": true}},
     "edges": {"input->a0.h0<q>": {"score": -0.0003, "in_graph": false}, ...,
               "a0.h1->m0": {...}, "m11->logits": {...}}}

Names, theirs <-> ours: ``input`` <-> ``embed``, ``a{L}.h{H}`` <-> ``a{L}.{H}``, ``m{L}`` and
``logits`` unchanged. An edge into a head carries ``<q>``, ``<k>`` or ``<v>`` as ours does;
edges into an MLP or into ``logits`` carry no suffix (ours: ``<mlp>``, ``<resid>``). Both
graphs have the same edges: every earlier component feeds every later input, an MLP also
reads the heads of its own layer unless ``parallel_attn_mlp``. The file must list every
edge of the model's graph. Scores have the sign of ours (EAP-IG's score is
``(corrupted - clean) . grad`` of a loss, lower is better, so positive = removing the edge
hurts, as for ACDC's ``m(C - e) - m(C)``); they are copied unchanged. The ``nodes`` block
is derived from the edges on export (a node is in the graph when it has an in-graph
outgoing edge and an in-graph incoming edge, ``input`` needing none; ``logits`` always)
and ignored on import, as MIB's edge-level evaluation ignores it (it re-prunes from edges).

Decisions where MIB has no counterpart:

* Grouped-query attention. MIB runs such models with TransformerLens'
  ``ungroup_grouped_query_attention``, so each query head has its own ``<k>``/``<v>``
  edges and ``cfg.n_heads`` counts query heads. Our K/V edges end at the shared key/value
  head ``a{L}.kv{G}``. Export writes one edge per query head of the group with score
  ``s / group`` and the same ``in_graph``; import takes the **sum** of the group's scores
  (exact for EAP/EAP-IG: the gradient at a shared input is the sum of the gradients at its
  copies, the activation difference is the same) and ``in_graph`` = **any** of them (the
  smallest circuit of ours that contains the file's). ``cfg`` then also records
  ``n_key_value_heads`` (EAP-IG's loader ignores extra ``cfg`` keys).
* Untested edges (NaN scores, ACDC): JSON needs a number and MIB's ``torch.argsort``
  ranks NaN first; they are written as ``0.0``, which no real score ranks below under
  MIB's absolute-value ranking. On import a missing or ``null``/``NaN`` score is NaN.
* Position-aware circuits have no MIB equivalent: export refuses them unless asked to
  collapse them with :meth:`Circuit.without_positions` (``collapse_positions=True``).
* Attention-only graphs (no MLP nodes) cannot be written: MIB's graph always has MLPs.
"""

from __future__ import annotations

import math
import re
from pathlib import Path
from typing import Any

import numpy as np

from circuitdag.circuit import Circuit
from circuitdag.errors import CircuitFileError
from circuitdag.files import read_json, write_json
from circuitdag.graph import Graph, Input, Node, NodeKind

FORMAT_NAME = "eap-ig"


def _node_name(node: Node) -> str:
    """Their name of one of our sender/receiver components (not ``kv`` nodes)."""
    if node.kind == NodeKind.EMBED:
        return "input"
    if node.kind == NodeKind.HEAD:
        return f"a{node.layer}.h{node.head}"
    return node.component  # m{L}, logits


def _check_graph(graph: Graph, what: str) -> None:
    if graph.positions is not None:
        raise CircuitFileError(
            f"cannot {what} a position-aware graph: the EAP-IG/MIB graph has no positions "
            "(collapse it: circuitdag export --collapse-positions, or circuit.without_positions() in Python)"
        )
    if graph.spec.attn_only:
        raise CircuitFileError(
            f"cannot {what} an attention-only graph: the EAP-IG/MIB graph always has MLP nodes"
        )


def eapig_edge_names(graph: Graph) -> list[tuple[str, ...]]:
    """For each edge of ``graph`` (table order), its EAP-IG edge name(s): one, or with
    grouped-query attention ``group`` names for a K/V edge (one per query head of the
    key/value head it ends at). The union is exactly EAP-IG's edge set of the model."""
    _check_graph(graph, "map")
    spec, t = graph.spec, graph.edges
    out: list[tuple[str, ...]] = []
    for e in range(graph.n_edges):
        src, dst, kind = graph.nodes[t.src[e]], graph.nodes[t.dst[e]], Input(t.input[e])
        s = _node_name(src)
        if dst.kind == NodeKind.KV:
            out.append(tuple(f"{s}->a{dst.layer}.h{h}<{kind.label}>" for h in spec.query_heads(dst.head)))
        elif dst.kind == NodeKind.HEAD:
            out.append((f"{s}->{_node_name(dst)}<{kind.label}>",))
        else:
            out.append((f"{s}->{_node_name(dst)}",))
    return out


def _cfg(graph: Graph) -> dict[str, Any]:
    spec = graph.spec
    cfg: dict[str, Any] = {"n_layers": spec.n_layers, "n_heads": spec.n_heads,
                           "parallel_attn_mlp": spec.parallel_attn_mlp, "d_model": spec.d_model}  # fmt: skip
    if spec.gqa:
        cfg["n_key_value_heads"] = spec.n_kv_heads
    return cfg


def to_eapig_json(circuit: Circuit, collapse_positions: bool = False) -> dict[str, Any]:
    """The circuit (its ``in_circuit`` and ``scores``) as an EAP-IG graph JSON document.

    Raises :class:`CircuitFileError` for a position-aware circuit (unless
    ``collapse_positions``, which exports :meth:`Circuit.without_positions`: component
    edges, score = the largest ``|score|`` of the position copies) and for attention-only
    graphs. NaN scores are written as ``0.0`` (module docstring)."""
    if collapse_positions:
        circuit = circuit.without_positions()
    graph = circuit.graph
    names = eapig_edge_names(graph)
    scores = np.nan_to_num(np.asarray(circuit.scores, dtype=np.float64), nan=0.0)
    edges: dict[str, dict[str, Any]] = {}
    for e, group in enumerate(names):
        share = float(scores[e]) / len(group)
        for name in group:
            edges[name] = {"score": share, "in_graph": bool(circuit.in_circuit[e])}
    return {"cfg": _cfg(graph), "nodes": _nodes_in_graph(graph, edges), "edges": edges}


def _nodes_in_graph(graph: Graph, edges: dict[str, dict[str, Any]]) -> dict[str, dict[str, bool]]:
    """EAP-IG's node flags from in-graph edges (after its ``prune``): a node is in the graph
    when it sends an in-graph edge and receives one (``input`` needs none); ``logits`` always."""
    sends, receives = set(), set()
    for name, info in edges.items():
        if info["in_graph"]:
            src, dst = name.split("->")
            sends.add(src)
            receives.add(dst.split("<")[0])
    order = ["input"]
    for layer in range(graph.spec.n_layers):
        order += [f"a{layer}.h{h}" for h in range(graph.spec.n_heads)] + [f"m{layer}"]
    nodes = {n: {"in_graph": n in sends and (n == "input" or n in receives)} for n in order}
    nodes["logits"] = {"in_graph": True}
    return nodes


def save_eapig_json(circuit: Circuit, path: str | Path, collapse_positions: bool = False) -> Path:
    """Write :func:`to_eapig_json` to ``path`` atomically; creates the parent directory."""
    doc = to_eapig_json(circuit, collapse_positions)
    return write_json(path, doc, indent=None, option=None)


def is_eapig_json(doc: Any) -> bool:
    """Whether a parsed JSON document looks like an EAP-IG graph (``cfg``, ``nodes``, ``edges``)."""
    return isinstance(doc, dict) and all(isinstance(doc.get(k), dict) for k in ("cfg", "nodes", "edges"))


def _read(path_or_dict: str | Path | dict[str, Any]) -> tuple[Any, str]:
    if not isinstance(path_or_dict, (str, Path)):
        return path_or_dict, "<dict>"  # an already parsed document
    path = Path(path_or_dict)
    return read_json(path, "an EAP-IG graph"), str(path)


def _score(value: Any, name: str, source: str) -> float:
    if value is None:
        return math.nan
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise CircuitFileError(f"{source}: edge {name!r} has score {value!r}, not a number")
    return float(value)


def load_eapig_json(path_or_dict: str | Path | dict[str, Any], graph: Graph) -> Circuit:
    """Read an EAP-IG graph JSON (a path or a parsed document) onto ``graph``.

    Returns a :class:`Circuit` whose ``in_circuit`` is the file's ``in_graph`` and whose
    ``scores`` are the file's scores (NaN where a score is absent or null, as in MIB's
    "binary circuit" files); K/V edges of a grouped-query graph get the sum of their query
    heads' scores and are in the circuit when any of them is (module docstring).
    ``meta`` records ``{"source": ..., "source_format": "eap-ig"}``.

    Raises :class:`CircuitFileError` (one line) when the file is not JSON, lacks
    ``cfg``/``nodes``/``edges``, was made for another architecture (``cfg`` differs from
    ``graph``), names an edge the model does not have, misses one it has, or holds a
    non-numeric score or non-boolean ``in_graph``; and for a position-aware or
    attention-only ``graph``.
    """
    doc, source = _read(path_or_dict)
    if not is_eapig_json(doc):
        keys = sorted(doc) if isinstance(doc, dict) else type(doc).__name__
        raise CircuitFileError(
            f"{source} is not an EAP-IG graph JSON (needs 'cfg', 'nodes' and 'edges'; has {keys})"
        )
    _check_graph(graph, "read an EAP-IG graph onto")
    cfg, spec = doc["cfg"], graph.spec
    want = {**_cfg(graph), "n_key_value_heads": spec.n_kv_heads}
    for key, value in want.items():
        got = cfg.get(key)
        if got is None and key == "n_key_value_heads":  # MIB's files do not record it
            continue
        if got != value:
            raise CircuitFileError(
                f"{source} was made for another model: cfg {key}={got!r}, this model has {value!r}"
            )
    names = eapig_edge_names(graph)
    file_edges: dict[str, Any] = doc["edges"]
    known = {n for group in names for n in group}
    unknown = [n for n in file_edges if n not in known]
    if unknown:
        hint = " (node names are 'input', 'a0.h1', 'm0', 'logits')" if _LOOKS_OURS.search(unknown[0]) else ""
        raise CircuitFileError(
            f"{source}: {len(unknown)} edge(s) are not in this model's graph, e.g. {unknown[0]!r}{hint}"
        )
    missing = [n for n in known if n not in file_edges]
    if missing:
        raise CircuitFileError(
            f"{source}: {len(missing)} edge(s) of this model's graph are missing, e.g. {missing[0]!r}"
        )
    in_circuit = np.zeros(graph.n_edges, dtype=bool)
    scores = np.zeros(graph.n_edges)
    for e, group in enumerate(names):
        for name in group:
            info = file_edges[name]
            flag = info.get("in_graph") if isinstance(info, dict) else None
            if not isinstance(flag, bool):
                raise CircuitFileError(f"{source}: edge {name!r} needs a boolean 'in_graph', got {info!r}")
            in_circuit[e] |= flag
            scores[e] += _score(info.get("score"), name, source)
    return Circuit(graph, in_circuit, scores, {"source": source, "source_format": FORMAT_NAME})


_LOOKS_OURS = re.compile(r"embed|<mlp>|<resid>|a\d+\.\d+")
