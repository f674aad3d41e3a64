"""circuit.json: read and write circuits (schema ``circuitdag.circuit/1``, no pickle).

The document holds the model identity and architecture (enough to rebuild the graph),
the task, every setting of the run, the metric values, and every edge of the graph with
its name, src, dst, input, positions, score and ``in_circuit``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from circuitdag.circuit import FORMAT, Circuit, circuit_to_dict, save_circuit
from circuitdag.errors import CircuitFileError
from circuitdag.files import read_json
from circuitdag.graph import Graph, ModelSpec, Positions

# Writing lives with the Circuit (circuit.py), so that imports run one way: io -> circuit.
__all__ = ["FORMAT", "circuit_from_dict", "circuit_to_dict", "load_circuit", "save_circuit"]


def circuit_from_dict(doc: dict[str, Any], source: str = "<dict>") -> Circuit:
    if not isinstance(doc, dict) or doc.get("format") != FORMAT:
        got = doc.get("format") if isinstance(doc, dict) else type(doc).__name__
        raise CircuitFileError(f"{source} is not a circuitdag circuit (format {got!r}, expected {FORMAT!r})")
    try:
        layout = doc.get("position_layout")
        positions = None if layout is None else Positions(int(layout["n"]),
            None if layout.get("names") is None else tuple(layout["names"]), tuple(layout["sink"]))  # fmt: skip
        graph = Graph(ModelSpec(**doc["graph"]), positions)
        edges = doc["edges"]
        names = [e["name"] for e in edges]
        if len(names) != graph.n_edges or set(names) != set(graph.edge_names):
            unknown = next((n for n in names if n not in graph.edge_index), None)
            missing = next((n for n in graph.edge_names if n not in set(names)), None)
            what = (f"{unknown!r} is not an edge of its graph" if unknown is not None
                    else f"{missing!r} is missing" if missing is not None else "an edge is listed twice")  # fmt: skip
            raise CircuitFileError(
                f"{source}: its edge list does not match the graph of its model "
                f"({len(names)} edges listed, {graph.n_edges} expected; {what}); the file is damaged"
            )
        in_circuit = np.zeros(graph.n_edges, dtype=bool)
        scores = np.full(graph.n_edges, np.nan)
        for e in edges:
            i = graph.edge_index[e["name"]]
            if not isinstance(e["in_circuit"], bool):
                raise CircuitFileError(f"{source}: edge {e['name']!r} has in_circuit {e['in_circuit']!r}, not true or "
                                       "false; the file is damaged")  # fmt: skip
            in_circuit[i] = e["in_circuit"]
            scores[i] = np.nan if e.get("score") is None else float(e["score"])
    except CircuitFileError:
        raise
    except (KeyError, TypeError, ValueError) as exc:
        raise CircuitFileError(f"{source}: missing or malformed field ({exc}); the file is damaged") from exc
    skip = ("format", "graph", "position_layout", "edges", "n_edges_total", "n_edges")
    meta = {k: v for k, v in doc.items() if k not in skip}
    _check_fields(meta, source)
    return Circuit(graph, in_circuit, scores, meta)


#: Fields of the run record that commands compute with, and the types they must have.
_NUMBERS = ("metric_full", "metric_circuit", "metric_corrupted")
_TEXTS = ("task", "model", "metric", "ablation", "algorithm")


def _check_fields(meta: dict[str, Any], source: str) -> None:
    """Refuse a record whose metric values, seed or names have the wrong type (render,
    explore and curve would fail on them with a traceback)."""
    for k in _NUMBERS:
        v = meta.get(k)
        if v is not None and (isinstance(v, bool) or not isinstance(v, (int, float))):
            raise CircuitFileError(f"{source}: {k} is {v!r}, not a number; the file is damaged")
    seed = meta.get("seed")
    if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int)):
        raise CircuitFileError(f"{source}: seed is {seed!r}, not a whole number; the file is damaged")
    for k in _TEXTS:
        v = meta.get(k)
        if v is not None and not isinstance(v, str):
            raise CircuitFileError(f"{source}: {k} is {v!r}, not text; the file is damaged")


def load_circuit(path: str | Path) -> Circuit:
    """The circuit in ``path`` (a circuit.json). Raises :class:`CircuitFileError` (one line)
    for a file that cannot be read, is not JSON or is not a circuitdag circuit."""
    return circuit_from_dict(read_json(path, "a circuit.json"), str(path))
