"""A circuit in a researcher's tools: pandas, networkx, and a short repr."""

import numpy as np
import pytest
from randmodel import random_data, random_tiny

from circuitdag.discovery import run_acdc
from circuitdag.graph import Graph, Positions
from circuitdag.models import spec_of
from circuitdag.patching import Patcher


@pytest.fixture(scope="module", params=[False, True], ids=["plain", "positions"])
def circuit(request):
    model = random_tiny()
    graph = Graph(spec_of(model), Positions(6, sink=(5,)) if request.param else None)
    return run_acdc(Patcher(model, graph, random_data(), metric="kl"), 0.01, meta={"task": "random"})


def test_to_pandas_has_one_row_per_edge(circuit):
    df = circuit.to_pandas()
    g = circuit.graph
    assert len(df) == g.n_edges and list(df["edge"]) == list(g.edge_names)
    assert df["in_circuit"].sum() == circuit.n_edges
    np.testing.assert_array_equal(df["score"].to_numpy(), circuit.scores)
    row = df.iloc[int(np.flatnonzero(circuit.in_circuit)[0])]
    assert row["edge"] == f"{row['src']}->{row['dst']}<{row['input']}>"
    if g.positions is None:
        assert (df["src_pos"] == -1).all()
    else:
        assert (df["src_pos"] >= 0).all()
    kept = circuit.to_pandas(circuit_only=True)
    assert len(kept) == circuit.n_edges and kept["in_circuit"].all()


def test_to_networkx_holds_the_circuit_with_scores(circuit):
    nx_graph = circuit.to_networkx()
    assert nx_graph.number_of_edges() == circuit.n_edges
    assert set(nx_graph.nodes) == circuit.node_names
    names = list(circuit.graph.edge_names)
    for _, _, data in nx_graph.edges(data=True):
        assert data["score"] == circuit.scores[names.index(data["name"])]
    assert circuit.to_networkx(all_nodes=True).number_of_nodes() == len(circuit.graph.nodes)


def test_repr_is_one_short_line(circuit):
    text = repr(circuit)
    assert text.startswith(f"Circuit({circuit.n_edges}/{circuit.graph.n_edges} edges, ")
    assert "task=random" in text and "faithfulness=" in text and "\n" not in text and len(text) < 200
