"""`circuitdag export --format circuit-tracer`: the graph JSON validates against the schema
Neuronpedia checks uploads with, keeps what the viewers rely on, and carries every circuit
edge exactly once."""

from __future__ import annotations

import json
import re

import jsonschema
import numpy as np
import pytest

from circuitdag.circuit import Circuit
from circuitdag.cli import main
from circuitdag.export import export_circuit, to_circuit_tracer
from circuitdag.graph import Graph, ModelSpec, Positions

# The graph JSON schema, transcribed from Neuronpedia's validator
# (hijohnnylin/neuronpedia, apps/webapp/app/api/graph/graph-schema.json, "Anthropic
# Attribution Graph" 1.0.0): the required fields and their types; optional fields that
# circuit-tracer writes (circuit_tracer/frontend/graph_models.py) are typed too.
_NUMBER_OR_NULL = {"type": ["number", "null"]}
SCHEMA = {
    "$schema": "http://json-schema.org/draft-07/schema#",
    "type": "object",
    "required": ["metadata", "qParams", "nodes", "links"],
    "properties": {
        "metadata": {
            "type": "object",
            "required": ["slug", "scan", "prompt_tokens", "prompt"],
            "properties": {"slug": {"type": "string"}, "scan": {"type": "string"},
                           "prompt_tokens": {"type": "array", "items": {"type": "string"}},
                           "prompt": {"type": "string"}, "node_threshold": {"type": "number"},
                           "info": {"type": "object"}},
        },
        "qParams": {"type": "object", "properties": {
            "pinnedIds": {"type": "array", "items": {"type": "string"}}, "supernodes": {"type": "array"},
            "linkType": {"type": "string"}, "clickedId": {"type": "string"}, "sg_pos": {"type": "string"}}},
        "nodes": {"type": "array", "items": {
            "type": "object",
            "required": ["node_id", "feature", "layer", "ctx_idx", "feature_type", "jsNodeId", "clerp"],
            "properties": {"node_id": {"type": "string"}, "feature": {"type": ["integer", "null"]},
                           "layer": {"type": ["string", "integer"]}, "ctx_idx": {"type": "integer"},
                           "feature_type": {"type": "string"}, "jsNodeId": {"type": "string"},
                           "clerp": {"type": "string"}, "influence": _NUMBER_OR_NULL, "activation": _NUMBER_OR_NULL,
                           "token_prob": {"type": "number"}, "is_target_logit": {"type": "boolean"},
                           "run_idx": {"type": "integer"}, "reverse_ctx_idx": {"type": "integer"}},
        }},
        "links": {"type": "array", "items": {
            "type": "object", "required": ["source", "target", "weight"],
            "properties": {"source": {"type": "string"}, "target": {"type": "string"}, "weight": {"type": "number"}},
        }},
    },
}  # fmt: skip


def circuit(graph: Graph, names: list[str], untested: tuple[str, ...] = ()) -> Circuit:
    keep = graph.edges_by_name(set(names))
    scores = np.full(graph.n_edges, np.nan)
    for i, e in enumerate(np.flatnonzero(keep)):
        if graph.edge_names[e] not in untested:
            scores[e] = 0.1 * (i + 1)
    return Circuit(graph, keep, scores, {"task": "toy", "model": "toy-2l", "metric": "kl", "ablation": "resample",
                                         "threshold": 0.01, "metric_full": 0.0, "metric_circuit": 0.1,
                                         "metric_corrupted": 1.0})  # fmt: skip


def check_viewer_rules(doc: dict, c: Circuit) -> None:
    """What the viewers need beyond the schema (circuit-tracer's frontend, util-cg.js
    formatData): unique node ids and layer_feature_ctx ids, links between listed nodes,
    positions inside the prompt, more than one column (else every node is dropped as
    'occurring at more than 2/3 of the tokens'), a logit label with '(p=...)'."""
    jsonschema.validate(doc, SCHEMA)
    nodes = {n["node_id"]: n for n in doc["nodes"]}
    assert len(nodes) == len(doc["nodes"])
    assert len({f"{n['layer']}_{n['feature']}_{n['ctx_idx']}" for n in doc["nodes"]}) == len(nodes)
    tokens = doc["metadata"]["prompt_tokens"]
    assert len(tokens) >= 2 and all(0 <= n["ctx_idx"] < len(tokens) for n in nodes.values())
    assert all(link["source"] in nodes and link["target"] in nodes for link in doc["links"])
    logits = [n for n in nodes.values() if n["feature_type"] == "logit"]
    assert len(logits) == 1 and logits[0]["is_target_logit"] and re.search(r"\(p=[\d.]+\)", logits[0]["clerp"])
    assert re.fullmatch(r"[a-z0-9-]+", doc["metadata"]["slug"])
    # Every circuit edge is on exactly one link, between the nodes it joins, with its score in the weight.
    g = c.graph
    name_of = {n["node_id"]: n["clerp"] for n in nodes.values()}
    name_of.update({n["node_id"]: "logits" for n in logits})
    listed = [e for link in doc["links"] for e in link["edges"]]
    assert sorted(listed) == sorted(c.edge_names)
    for link in doc["links"]:
        weight = 0.0
        for e in link["edges"]:
            i = g.edge_index[e]
            assert g.nodes[g.edges.src[i]].name == name_of[link["source"]]
            assert g.nodes[g.edges.dst[i]].name == name_of[link["target"]]
            weight += 0.0 if np.isnan(c.scores[i]) else c.scores[i]
        assert link["weight"] == pytest.approx(weight)


def test_plain_circuit():
    g = Graph(ModelSpec(n_layers=2, n_heads=2, n_kv_heads=2, d_model=8))
    c = circuit(g, ["embed->a0.1<v>", "a0.1->a1.0<q>", "a0.1->a1.0<k>", "embed->a1.0<v>", "a1.0->logits<resid>",
                    "embed->m1<mlp>", "m1->logits<resid>"], untested=("embed->m1<mlp>",))  # fmt: skip
    doc = to_circuit_tracer(c)
    check_viewer_rules(doc, c)
    assert doc["metadata"]["prompt_tokens"] == ["(all positions)", "(output)"]
    assert doc["metadata"]["slug"] == "toy-kl-0-01" and doc["metadata"]["scan"] == "toy-2l"
    nodes = {n["clerp"]: n for n in doc["nodes"]}
    assert nodes["embed"]["node_id"] == "E_0_0" and nodes["embed"]["feature_type"] == "embedding"
    assert (nodes["a1.0"]["layer"], nodes["a1.0"]["feature_type"], nodes["m1"]["feature_type"]) == (
        "1", "attention head", "mlp")
    assert nodes['Output "kl" (p=1.000)']["layer"] == "3" and nodes['Output "kl" (p=1.000)']["ctx_idx"] == 1
    assert set(nodes) == {"embed", "a0.1", "a1.0", "m1", 'Output "kl" (p=1.000)'}  # only the circuit's nodes
    qk = next(link for link in doc["links"] if link["inputs"] == ["q", "k"])
    assert qk["edges"] == ["a0.1->a1.0<q>", "a0.1->a1.0<k>"] and len(doc["links"]) == 6
    assert doc["metadata"]["circuitdag"]["edges"] == 7 and doc["metadata"]["circuitdag"]["faithfulness"] == 0.9


def test_position_aware_circuit_with_grouped_query_attention():
    g = Graph(ModelSpec(n_layers=2, n_heads=4, n_kv_heads=2, d_model=8),
              Positions(3, ("name", "is", "end"), (2,)))  # fmt: skip
    names = ["embed@name->a0.kv0@name<v>", "a0.1@end->a1.2@end<q>", "embed@end->a0.1@end<q>",
             "a0.1@end->logits<resid>", "a1.2@end->logits<resid>", "embed@is->a1.kv1@end<k>"]  # fmt: skip
    c = circuit(g, [n for n in names if n in g.edge_index])
    assert c.n_edges == 6
    doc = to_circuit_tracer(c, slug="Pronoun circuit!")
    check_viewer_rules(doc, c)
    assert doc["metadata"]["prompt_tokens"] == ["name", "is", "end"] and doc["metadata"]["slug"] == "pronoun-circuit"
    nodes = {n["clerp"]: n for n in doc["nodes"]}
    assert nodes["a1.2@end"]["ctx_idx"] == 2 and nodes["a0.kv0@name"]["feature_type"] == "key/value head"
    assert {nodes[f"embed@{p}"]["ctx_idx"] for p in ("name", "is", "end")} == {0, 1, 2}  # every token node
    cross = next(link for link in doc["links"] if link["edges"] == ["embed@is->a1.kv1@end<k>"])
    assert (cross["source"], cross["target"]) == ("E_1_1", nodes["a1.kv1@end"]["node_id"])
    implicit = [link for link in doc["links"] if link.get("implicit")]
    # a1.kv1@end feeds a1.2@end and a1.3@end; only a1.2@end is in the circuit. a0.kv0@name: no query head.
    assert [(link["source"], link["target"], link["weight"]) for link in implicit] == [
        (nodes["a1.kv1@end"]["node_id"], nodes["a1.2@end"]["node_id"], 0.0)]


def test_export_command(tmp_path, capsys):
    g = Graph(ModelSpec(n_layers=1, n_heads=1, n_kv_heads=1, d_model=4))
    c = circuit(g, ["embed->a0.0<v>", "a0.0->logits<resid>"])
    c.save(tmp_path / "circuit.json")
    assert main(["export", str(tmp_path / "circuit.json")]) == 0
    doc = json.loads((tmp_path / "circuit.circuit-tracer.json").read_text())
    jsonschema.validate(doc, SCHEMA)
    assert main(["export", str(tmp_path / "circuit.json"), "--format", "eap-ig", "-o", str(tmp_path / "m.json")]) == 0
    assert json.loads((tmp_path / "m.json").read_text())["edges"]["input->a0.h0<v>"]["in_graph"] is True
    capsys.readouterr()
    assert main(["export", str(tmp_path / "missing.json")]) == 2
    assert "cannot read" in capsys.readouterr().err
    with pytest.raises(Exception, match="unknown export format"):
        export_circuit(c, tmp_path / "x.json", "graphml")
