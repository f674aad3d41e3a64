import json

import numpy as np
import pytest
from randmodel import random_data, random_tiny

from circuitdag.discovery import run_acdc
from circuitdag.errors import CircuitFileError
from circuitdag.graph import Graph
from circuitdag.io import load_circuit, save_circuit
from circuitdag.models import spec_of
from circuitdag.patching import Patcher


@pytest.fixture(scope="module")
def circuit():
    model = random_tiny()
    p = Patcher(model, Graph(spec_of(model)), random_data())
    return run_acdc(p, 0.01, meta={"task": "random-test", "model": "tiny", "metric": "kl", "seed": 0})


def test_roundtrip(circuit, tmp_path):
    path = save_circuit(circuit, tmp_path / "c.json")
    back = load_circuit(path)
    assert back.same_as(circuit)
    np.testing.assert_array_equal(np.isnan(back.scores), np.isnan(circuit.scores))
    np.testing.assert_array_equal(back.scores[~np.isnan(back.scores)], circuit.scores[~np.isnan(circuit.scores)])
    assert back.meta == json.loads(json.dumps(circuit.meta))
    doc = json.loads(path.read_text())
    assert doc["format"] == "circuitdag.circuit/1"
    assert {"name", "src", "dst", "input", "src_pos", "dst_pos", "score", "in_circuit"} <= set(doc["edges"][0])
    assert doc["n_edges"] == circuit.n_edges and doc["threshold"] == 0.01


def test_damaged_files(circuit, tmp_path):
    path = save_circuit(circuit, tmp_path / "c.json")
    doc = json.loads(path.read_text())
    doc["edges"] = doc["edges"][:-1]
    path.write_text(json.dumps(doc))
    with pytest.raises(CircuitFileError, match="does not match the graph"):
        load_circuit(path)
    doc = json.loads(save_circuit(circuit, tmp_path / "c.json").read_text())
    doc["edges"][0]["name"] = "a9.9->logits<resid>"  # same count, one unknown name: the message names it
    path.write_text(json.dumps(doc))
    with pytest.raises(CircuitFileError, match=r"'a9.9->logits<resid>' is not an edge"):
        load_circuit(path)
    del doc["graph"]
    path.write_text(json.dumps(doc))
    with pytest.raises(CircuitFileError, match="malformed"):
        load_circuit(path)
    path.write_bytes(b"\xff\xfe\x00garbage")  # not UTF-8: a one-line error, not a traceback
    with pytest.raises(CircuitFileError, match="not UTF-8"):
        load_circuit(path)


def test_svg(circuit, tmp_path):
    svg = circuit.to_svg(tmp_path / "c.svg").read_text()
    assert "<svg" in svg and "logits" in svg


def test_svg_links_a_key_value_head_to_its_query_heads():
    import numpy as np

    from circuitdag.circuit import Circuit
    from circuitdag.graph import Graph, ModelSpec
    from circuitdag.render import to_dot

    g = Graph(ModelSpec(n_layers=2, n_heads=4, n_kv_heads=2, d_model=8))
    alive = g.edges_by_name(["embed->a1.kv0<v>", "a1.1->logits<resid>"])
    src = to_dot(Circuit(g, alive, np.full(g.n_edges, np.nan))).source
    assert '"a1.kv0" -> "a1.1"' in src.replace("\t", "") and "dashed" in src
    assert '"a1.kv0" -> "a1.0"' not in src  # a1.0 is not in the circuit


def test_svg_has_a_legend_and_the_faithfulness_in_its_title(tmp_path):
    """Every SVG says what colour and width mean (with the width scale in metric units) and
    lists the circuit's edges by name, so none needs hovering; the title has faithfulness."""
    import html
    import math
    import xml.dom.minidom

    import numpy as np

    from circuitdag.circuit import Circuit
    from circuitdag.graph import Graph, ModelSpec

    g = Graph(ModelSpec(n_layers=2, n_heads=2, n_kv_heads=2, d_model=8))
    given = {"embed->a0.1<v>": 0.5, "a0.1->a1.0<k>": 2.0, "a1.0->logits<resid>": -4.0, "embed->a1.0<q>": np.nan}
    alive = g.edges_by_name(list(given))
    scores = np.full(g.n_edges, np.nan)
    for name, s in given.items():
        scores[g.edge_names.index(name)] = s
    meta = {"task": "prompts:/some/dir/mine.jsonl", "metric": "kl", "ablation": "resample", "threshold": 0.01,
            "metric_full": 0.0, "metric_circuit": 0.1, "metric_corrupted": 2.0}  # fmt: skip
    svg = Circuit(g, alive, scores, meta).to_svg(tmp_path / "c.svg").read_text()
    xml.dom.minidom.parseString(svg)  # still well-formed
    text = html.unescape(svg)
    assert "prompts:mine.jsonl" in text and "faithfulness=0.950" in text
    assert "colour = the input the edge feeds:" in text
    for label in ("q", "k", "v", "resid"):
        assert f">{label}</text>" in text
    assert "width = |score|" in text and "in kl units" in text and ">4<" in text and ">2<" in text  # top, top/2
    listed = [n for n in g.edge_names if n in text]
    assert sorted(listed) == sorted(g.edge_names[e] for e in np.flatnonzero(alive))
    first = min((text.index(n + "  "), n) for n in listed)[1]
    assert first == "a1.0->logits<resid>" and "untested" in text  # largest |score| first; NaN says so
    assert not math.isnan(float(svg.split('height="')[1].split("pt")[0]))
