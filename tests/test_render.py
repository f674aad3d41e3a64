"""Drawing time is bounded: a large circuit is drawn as its largest edges, graphviz is
stopped when it runs too long, and ``discover`` keeps circuit.json whatever the drawing does."""

from __future__ import annotations

import html
import json
import time
from pathlib import Path

import numpy as np
import pytest

from circuitdag import render
from circuitdag.circuit import Circuit
from circuitdag.cli import main
from circuitdag.graph import Graph, ModelSpec
from circuitdag.io import load_circuit


def large_circuit(n_edges: int = 3000) -> Circuit:
    """A circuit of ``n_edges`` edges with random scores on a 12-layer graph (no grouped-query
    heads, so every drawn line is a circuit edge)."""
    g = Graph(ModelSpec(n_layers=12, n_heads=8, n_kv_heads=8, d_model=64))
    rng = np.random.default_rng(0)
    alive = np.zeros(g.n_edges, dtype=bool)
    alive[rng.choice(g.n_edges, n_edges, replace=False)] = True
    scores = rng.standard_normal(g.n_edges)
    return Circuit(g, alive, scores, {"task": "big", "metric": "kl", "ablation": "resample"})


@pytest.mark.timeout(120)
def test_a_large_circuit_is_drawn_as_its_top_edges_in_bounded_time(tmp_path: Path) -> None:
    circuit = large_circuit()
    shown = render.drawn_edges(circuit, render.MAX_EDGES)
    idx = np.flatnonzero(circuit.in_circuit)
    top = idx[np.argsort(-np.abs(circuit.scores[idx]))[: render.MAX_EDGES]]
    assert sorted(shown.tolist()) == sorted(top.tolist())
    note = f"top {render.MAX_EDGES} of 3000 edges by |score|; the whole circuit: circuitdag explore"
    assert note in render.to_dot(circuit).source  # before drawing: today's code would not return
    t0 = time.perf_counter()
    svg = html.unescape(circuit.to_svg(tmp_path / "c.svg").read_text())
    assert time.perf_counter() - t0 < 60
    assert f"{note} {tmp_path / 'c.json'}" in svg
    assert svg.count('class="edge"') == render.MAX_EDGES
    assert "edges, largest |score| first (3000)" in svg  # the legend still counts the whole circuit
    # --max-edges on render: 0 draws every edge of a small circuit, N its N largest.
    few = large_circuit(40)
    path = tmp_path / "few.json"
    few.save(path)
    assert main(["render", str(path), "--max-edges", "0", "-o", str(tmp_path / "all.svg")]) == 0
    assert (tmp_path / "all.svg").read_text().count('class="edge"') == 40
    assert main(["render", str(path), "--max-edges", "10"]) == 0
    drawn = html.unescape((tmp_path / "few.svg").read_text())
    assert drawn.count('class="edge"') == 10 and f"top 10 of 40 edges by |score|; the whole circuit: " \
        f"circuitdag explore {path}" in drawn  # fmt: skip


def test_render_refuses_a_negative_cap(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "c.json"
    large_circuit(5).save(path)
    assert main(["render", str(path), "--max-edges", "-1"]) == 2
    assert capsys.readouterr().err.strip() == "circuitdag: error: --max-edges must be >= 0 (0 draws every edge), got -1"


def test_discover_no_svg_writes_no_svg(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "rev"
    out.mkdir()
    (out / "circuit.svg").write_text("an earlier run's drawing")
    code = main(["discover", "--task", "tracr-reverse", "--ablation", "zero", "--out", str(out), "--no-svg", "-q",
                 "--threads", "1"])  # fmt: skip
    printed = capsys.readouterr()
    assert code == 0, printed.err
    assert not (out / "circuit.svg").exists() and load_circuit(out / "circuit.json").n_edges == 8
    assert f"-> {out}/circuit.json;" in printed.out or printed.out.rstrip().endswith(f"-> {out}/circuit.json")


@pytest.fixture
def hanging_dot(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A `dot` on PATH that never finishes (its child `sleep` too), and a 1 s time limit."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    fake = bin_dir / "dot"
    fake.write_text("#!/bin/sh\nsleep 30\n")
    fake.chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}:{__import__('os').environ['PATH']}")
    monkeypatch.setattr(render, "DOT_TIMEOUT_S", 1.0)
    return fake


@pytest.mark.timeout(60)
def test_a_hanging_dot_is_stopped_with_one_warning(hanging_dot: Path, tmp_path: Path,
                                                   capsys: pytest.CaptureFixture[str]) -> None:  # fmt: skip
    out = tmp_path / "rev"
    t0 = time.perf_counter()
    code = main(["discover", "--task", "tracr-reverse", "--ablation", "zero", "--out", str(out), "-q",
                 "--threads", "1"])  # fmt: skip
    printed = capsys.readouterr()
    assert code == 0 and time.perf_counter() - t0 < 20
    lines = printed.err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("circuitdag: warning: circuit.svg not drawn (graphviz's `dot` "
                                                   "did not finish the drawing in 1 s and was stopped")  # fmt: skip
    assert f"circuitdag explore {out}/circuit.json" in lines[0] and lines[0].endswith(f"{out}/circuit.json is saved")
    assert not (out / "circuit.svg").exists()
    doc = json.loads((out / "circuit.json").read_text())  # intact: loads, with its edges
    assert load_circuit(out / "circuit.json").n_edges == 8 and doc["format"] == "circuitdag.circuit/1"
    assert f"-> {out}/circuit.json;" in printed.out or printed.out.rstrip().endswith(f"-> {out}/circuit.json")
    # `render` has nothing else to save: the same message is its one-line error.
    code = main(["render", str(out / "circuit.json"), "--timeout", "1"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and err.startswith("circuitdag: error: graphviz's `dot` did not finish") and "\n" not in err
