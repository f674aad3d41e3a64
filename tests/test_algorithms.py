"""Algorithm plugins: the registry, one signature for every method, and a third-party
method (tests/algorithm_plugin_example, one file) registered through the
``circuitdag.algorithms`` entry point and run with no change to circuitdag through
``discover``, ``sweep``, ``curve``, ``explore`` and ``cd.discover``.

The example is installed into a temporary folder (``pip install --no-deps
--no-build-isolation --target``), never into the shared environment."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import circuitdag as cd
import circuitdag.algorithms as registry
from circuitdag.algorithms import Algorithm, Option, algorithm_names, get_algorithm
from circuitdag.cli import main
from circuitdag.errors import ConfigError

EXAMPLE = Path(__file__).resolve().parent / "algorithm_plugin_example"


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Path:
    src = tmp_path_factory.mktemp("src") / "plugin"
    shutil.copytree(EXAMPLE, src, ignore=shutil.ignore_patterns("build", "*.egg-info", "__pycache__"))
    target = tmp_path_factory.mktemp("site")
    cmd = [sys.executable, "-m", "pip", "install", "--no-deps", "--no-build-isolation", "--no-index", "--quiet",
           "--target", str(target), str(src)]  # fmt: skip
    proc = subprocess.run(cmd, check=False, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    return target


@pytest.fixture
def plugin(installed: Path, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setattr(registry, "_cache", {})
    monkeypatch.syspath_prepend(str(installed))
    yield
    sys.modules.pop("circuitdag_edge_patching", None)


def test_builtins_are_listed_without_importing_them() -> None:
    assert algorithm_names()[:4] == ["acdc", "acdc-reference", "eap", "eap-ig"]
    assert get_algorithm("eap-ig").size_knob == "edges" and get_algorithm("acdc").exact


def test_unknown_algorithm_and_foreign_options_are_one_line(tmp_path, capsys) -> None:
    with pytest.raises(ConfigError, match="unknown algorithm 'nope'; choose one of acdc, acdc-reference, eap, eap-ig"):
        get_algorithm("nope")
    assert main(["discover", "--algorithm", "eap", "--k-max", "3", "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "--k-max does not apply to --algorithm eap" in err and err.count("\n") == 1
    assert main(["discover", "--option", "colour=red", "--out", str(tmp_path)]) == 2
    assert "--colour does not apply to --algorithm acdc" in capsys.readouterr().err


def test_options_are_checked_by_their_method() -> None:
    opt = Option("n", int, 3, "a count", minimum=1, maximum=10)
    assert opt.check(4) == 4 and opt.check(4.0) == 4
    for bad, msg in ((0, ">= 1"), (11, "at most 10"), (2.5, "whole number"), ("x", "a number"), (True, "a number")):
        with pytest.raises(ConfigError, match=msg):
            opt.check(bad)
    with pytest.raises(ConfigError, match="finite"):
        Option("t", float, None, "").check(float("inf"))
    with pytest.raises(ConfigError, match="either --edges N or --threshold X"):
        get_algorithm("eap").check({"edges": 3, "threshold": 0.1})


def test_a_broken_plugin_is_skipped_with_a_warning(tmp_path, monkeypatch) -> None:
    info = tmp_path / "broken_method-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: broken-method\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text("[circuitdag.algorithms]\nbroken = no_such_module_xyz:Method\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setattr(registry, "_cache", {})
    assert "broken" in algorithm_names()
    with pytest.warns(RuntimeWarning, match="broken.*broken-method.*failed to load"):
        names = [m.name for m in registry.all_algorithms()]
    assert "broken" not in names and "acdc" in names


def _scores(doc: dict) -> np.ndarray:
    return np.array([np.nan if e["score"] is None else e["score"] for e in doc["edges"]])


def test_a_plugin_runs_everywhere(plugin, tmp_path, capsys) -> None:
    """The example method: listed, run by discover (its own option through --option), by
    cd.discover, by sweep (its size knob is an edge count), by curve and by explore."""
    assert main(["algorithms"]) == 0
    out = capsys.readouterr().out
    assert "edge-patching  (exact; size: --edges)" in out and "--option max_edges_scored= INT" in out

    run = tmp_path / "run"
    argv = ["discover", "--algorithm", "edge-patching", "--edges", "5", "--option", "max_edges_scored=40",
            "--out", str(run), "-q", "--no-svg", "--threads", "1"]  # fmt: skip
    assert main(argv) == 0
    doc = json.loads((run / "circuit.json").read_text())
    assert doc["algorithm"] == "edge-patching" and doc["exact"] is True and doc["edges_requested"] == 5
    assert np.isfinite(_scores(doc)).sum() == 40 and 0 < sum(e["in_circuit"] for e in doc["edges"]) <= 5

    # The same scores from Python, and they are what exact patching of one edge measures.
    task = cd.tasks.get("tracr-reverse")
    circuit = cd.discover(task.load_model(), task, "edge-patching", edges=5, max_edges_scored=40)
    np.testing.assert_allclose(circuit.scores, _scores(doc), rtol=1e-6, atol=1e-9)
    assert circuit.meta["algorithm"] == "edge-patching"

    assert main(["curve", str(run / "circuit.json"), "--out", str(tmp_path / "curve"), "-q"]) == 0
    assert main(["explore", str(run / "circuit.json"), "-o", str(tmp_path / "x.html")]) == 0
    assert (tmp_path / "x.html").stat().st_size > 1000

    sweep_out = tmp_path / "sweep"
    assert main(["sweep", "--algorithm", "edge-patching", "--edges-range", "1", "8", "--trials", "2", "--ablation",
                 "zero", "--sampler-seed", "0", "--out", str(sweep_out), "-q"]) == 0  # fmt: skip
    pareto = json.loads((sweep_out / "pareto.json").read_text())
    assert pareto["points"] and all("edges_requested_range" in p for p in pareto["points"])
    capsys.readouterr()


def test_a_method_is_one_class(tmp_path) -> None:
    """A method defined in a test, passed as an object: the run record is written for it."""
    from circuitdag.algorithms import Found

    class KeepAll(Algorithm):
        name = "keep-all"
        summary = "every edge"
        score_meaning = "none"

        def run(self, patcher, ctx):
            n = patcher.graph.n_edges
            return Found(np.zeros(n), np.ones(n, dtype=bool), stats={"passes": 0})

    task = cd.tasks.get("tracr-reverse")
    circuit = cd.discover(task.load_model(), task, KeepAll())
    assert circuit.n_edges == circuit.graph.n_edges and circuit.faithfulness() == pytest.approx(1.0)
    assert circuit.meta["algorithm"] == "keep-all" and circuit.meta["stats"]["passes"] == 0
