import numpy as np
import pytest

from circuitdag.errors import CircuitFileError
from circuitdag.graph import Graph, ModelSpec, NodeKind, parse_edge_name


def n_edges_formula(L, H, mlp):
    """Count edges from the DESIGN.md rule, independently of the graph code."""
    total = 0
    for layer in range(L):
        before = 1 + layer * (H + mlp)
        total += 3 * H * before  # q, k, v of each head
        if mlp:
            total += before + H  # the MLP also reads its own layer's heads
    return total + 1 + L * (H + mlp)  # logits reads everything


@pytest.mark.parametrize("L,H,attn_only", [(1, 1, False), (2, 3, False), (3, 2, True), (4, 4, False)])
def test_edge_count(L, H, attn_only):
    g = Graph(ModelSpec(L, H, H, 8, attn_only=attn_only))
    assert g.n_edges == n_edges_formula(L, H, 0 if attn_only else 1)
    assert len(set(g.edge_names)) == g.n_edges
    assert np.all(g.edges.src < g.edges.dst)


def test_gpt2_small_edge_count():
    # GPT-2 small: "about 32,000 edges" (DESIGN.md), q/k/v inputs separate.
    assert Graph(ModelSpec(12, 12, 12, 768)).n_edges == 32491


def test_names_and_order():
    g = Graph(ModelSpec(2, 2, 2, 8))
    assert g.edge_names[0] == "m1->logits<resid>"
    assert "a0.1->a1.0<k>" in g.edge_index
    assert "embed->m0<mlp>" in g.edge_index and "a0.1->m0<mlp>" in g.edge_index
    assert "a1.0->m0<mlp>" not in g.edge_index
    order = [g.nodes[d].name for d in g.visit_order()]
    assert order == ["logits", "m1", "a1.1", "a1.0", "m0", "a0.1", "a0.0"]
    # within a destination: q, then k, then v; senders latest first
    into = [g.edge_names[e] for e in g.incoming[g.node_index["a1.0"]]]
    assert into[:4] == ["m0->a1.0<q>", "a0.1->a1.0<q>", "a0.0->a1.0<q>", "embed->a1.0<q>"]
    assert into[4].endswith("<k>") and into[-1] == "embed->a1.0<v>"
    assert parse_edge_name("a0.1->a1.0<k>") == ("a0.1", "a1.0", "k")


def test_parallel_attn_mlp_does_not_read_same_layer_heads():
    g = Graph(ModelSpec(2, 2, 2, 8, parallel_attn_mlp=True))
    assert "a1.0->m1<mlp>" not in g.edge_index and "a0.0->m1<mlp>" in g.edge_index


def test_gqa_kv_nodes():
    g = Graph(ModelSpec(2, 4, 2, 8))
    kv = [n.name for n in g.nodes if n.kind == NodeKind.KV]
    assert kv == ["a0.kv0", "a0.kv1", "a1.kv0", "a1.kv1"]
    assert "a0.3->a1.kv1<k>" in g.edge_index and "a0.3->a1.2<q>" in g.edge_index
    assert "a0.3->a1.2<k>" not in g.edge_index
    s, d = g.implicit_edges
    pairs = {(g.nodes[a].name, g.nodes[b].name) for a, b in zip(s, d)}
    assert ("a1.kv1", "a1.2") in pairs and ("a1.kv1", "a1.3") in pairs and ("a1.kv0", "a1.1") in pairs


def test_edges_by_name_and_networkx():
    g = Graph(ModelSpec(1, 2, 2, 8))
    mask = g.edges_by_name({"embed->a0.1<v>", "m0->logits<resid>"})
    assert mask.sum() == 2
    with pytest.raises(CircuitFileError, match="not in this model's graph"):
        g.edges_by_name({"a9.9->logits<resid>"})
    nxg = g.to_networkx(mask)
    assert nxg.number_of_edges() == 2 and nxg.has_edge("embed", "a0.1", key="v")
