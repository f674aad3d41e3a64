"""reload(): the run a saved circuit was found on, rebuilt from its record, gives the
circuit's recorded metric back (model, prompts, BOS decision, graph, positions)."""

import json

import numpy as np
import pytest

import circuitdag as cd
from circuitdag.errors import CircuitFileError, ConfigError
from circuitdag.reload import reload


@pytest.mark.parametrize("positions", [False, True], ids=["plain", "positions"])
def test_a_saved_circuit_reloads_to_its_own_metric(tmp_path, positions):
    circuit = cd.discover("pronoun", "pronoun", "acdc", positions=positions)
    circuit.save(tmp_path / "c.json")
    back = cd.load_circuit(tmp_path / "c.json")
    run = reload(back)
    assert run.patcher.graph.edge_names == back.graph.edge_names
    assert run.patcher.circuit_metric(back.in_circuit) == pytest.approx(back.meta["metric_circuit"], rel=1e-6)
    assert run.run["data_sha256"] == back.meta["data_sha256"]


def test_the_bos_decision_is_carried_over(tmp_path):
    """A circuit found with --prepend-bos no reloads without BOS (compare's reload used to
    drop it, so its prompts differed from the circuit's)."""
    from circuitdag.cli import main

    assert main(["discover", "--task", "pronoun", "--prepend-bos", "no", "--out", str(tmp_path), "-q", "--no-svg",
                 "--threads", "1"]) == 0  # fmt: skip
    back = cd.load_circuit(tmp_path / "circuit.json")
    assert back.meta["prepend_bos"] is False or back.meta["prepend_bos"] == "no"
    run = reload(back)
    assert run.run["data_sha256"] == back.meta["data_sha256"]
    from circuitdag.compare import load_side

    side = load_side("A", back)
    np.testing.assert_array_equal(side.data.clean.numpy(), run.patcher.data.clean.numpy())


def test_a_circuit_without_task_or_of_another_graph_is_refused(tmp_path):
    circuit = cd.discover("pronoun", "pronoun", "acdc")
    with pytest.raises(ConfigError, match="does not name its task"):
        reload({**circuit.meta, "task": None})
    doc = json.loads(json.dumps(circuit.meta))
    other = cd.discover("pronoun", "pronoun", "acdc", positions=True)
    with pytest.raises(CircuitFileError, match="was made on a graph of"):
        reload(cd.Circuit(other.graph, other.in_circuit, other.scores, {**doc, "positions": False}))
