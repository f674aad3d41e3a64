"""The registry and discover check what a method declares and returns: a plugin named
otherwise than its entry point, a run() that cannot take its options, a result that is no
Found, infinite scores, a record that overwrites what circuitdag writes or that JSON
cannot hold, a circuit off the embed->logits paths; and the command line names each
option as the user gives it (found by the fresh-user verification of issue 22)."""

from __future__ import annotations

from typing import Any, ClassVar

import numpy as np
import pytest

import circuitdag as cd
import circuitdag.algorithms as registry
from circuitdag.algorithms import Algorithm, Found, Option, get_algorithm
from circuitdag.algorithms.base import FLAGGED
from circuitdag.cli import main
from circuitdag.cli.discover import ALGORITHM_FLAGS
from circuitdag.errors import ConfigError


class Misnamed(Algorithm):
    name = "something-else"
    options: ClassVar[tuple[Option, ...]] = ()

    def run(self, patcher: Any, ctx: Any) -> Found:  # pragma: no cover - never runs
        raise AssertionError


class Returns(Algorithm):
    """Returns what ``self.result(patcher)`` makes."""

    name = "returns"
    options: ClassVar[tuple[Option, ...]] = (Option("alpha", float, 1.0, "a knob"),)

    def __init__(self, result: Any) -> None:
        self.result = result

    def run(self, patcher: Any, ctx: Any, alpha: float = 1.0) -> Any:
        return self.result(patcher)


class NoAlpha(Returns):
    def run(self, patcher: Any, ctx: Any) -> Any:  # type: ignore[override]  # pragma: no cover
        raise AssertionError


@pytest.fixture(scope="module")
def model():
    return cd.tasks.get("tracr-reverse").load_model()


def _found(patcher: Any, scores: Any = None, alive: Any = None, record: Any = None) -> Found:
    n = patcher.graph.n_edges
    best = patcher.graph.prune(np.ones(n, dtype=bool))
    return Found(np.zeros(n) if scores is None else scores, best if alive is None else alive, record or {})


def test_a_plugin_must_be_called_by_its_entry_point_name(monkeypatch) -> None:
    monkeypatch.setattr(registry, "BUILTIN", {**registry.BUILTIN, "j-misname": "test_algorithm_checks:Misnamed"})
    monkeypatch.setattr(registry, "_cache", {})
    with pytest.raises(ConfigError, match="'j-misname' .* calls itself 'something-else'; its entry-point name"):
        get_algorithm("j-misname")


@pytest.mark.parametrize(("result", "message"), [
    (lambda p: None, "returned a NoneType; its run must return circuitdag.algorithms.Found"),
    (lambda p: _found(p, scores=np.full(p.graph.n_edges, np.inf)), "returned an infinite score"),
    (lambda p: _found(p, record={"algorithm": "acdc"}), "records algorithm, which circuitdag writes itself"),
    (lambda p: _found(p, record={"x": object()}), "records something circuit.json cannot hold"),
])  # fmt: skip
def test_what_a_method_returns_is_checked(model, result, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        cd.discover(model, "tracr-reverse", Returns(result))


def test_a_run_that_cannot_take_its_options_is_refused(model) -> None:
    with pytest.raises(ConfigError, match="declares the option 'alpha' but its run\\(\\) does not take it"):
        cd.discover(model, "tracr-reverse", NoAlpha(None))


def test_a_class_is_accepted_and_off_path_edges_are_left_out(model) -> None:
    def one_dangling(p: Any) -> Found:
        alive = p.graph.prune(np.ones(p.graph.n_edges, dtype=bool))
        alive[:] = False
        alive[0] = True  # embed -> a head whose output goes nowhere
        return _found(p, alive=alive)

    with pytest.warns(UserWarning, match="chose 1 edges on no path from the embeddings to the logits"):
        c = cd.discover(model, "tracr-reverse", Returns(one_dangling))
    assert c.n_edges == 0
    assert get_algorithm(type(get_algorithm("eap"))).name == "eap"  # a class passes as an instance


def test_the_command_line_names_options_as_they_are_given(tmp_path, capsys) -> None:
    assert set(ALGORITHM_FLAGS) == FLAGGED
    argv = ["discover", "--task", "tracr-reverse", "--out", str(tmp_path)]
    assert main([*argv, "--algorithm", "acdc-prefiltered", "--option", "candidates=0"]) == 2
    assert "--option candidates= must be >= 1, got 0" in capsys.readouterr().err
    assert main([*argv, "--algorithm", "eap", "--option", "candidates=3"]) == 2
    assert "--candidates does not apply to --algorithm eap (it takes --edges, --threshold" in capsys.readouterr().err
    assert main([*argv, "--option", "threshold=0.01", "--threshold", "0.02"]) == 2
    assert "threshold is given twice" in capsys.readouterr().err
    assert main([*argv, "--option", "k_max=3", "--option", "k_max=4"]) == 2
    assert "k_max is given twice" in capsys.readouterr().err
    assert main([*argv, "--algorithm", "eap", "--neurons", "0"]) == 2
    assert "--algorithm eap does not score neurons; --neurons works with acdc, acdc-reference" in capsys.readouterr().err


def test_an_output_path_in_the_way_is_refused_before_the_search(tmp_path, capsys) -> None:
    (tmp_path / "circuit.json").mkdir()
    assert main(["discover", "--task", "tracr-reverse", "--algorithm", "acdc-reference", "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "circuit.json is a directory, where discover writes its circuit.json" in err and err.count("\n") == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["circuit.json"]  # no search ran, no checkpoint


def test_what_a_method_cannot_do_is_refused_before_it_starts(tmp_path, capsys) -> None:
    from circuitdag.sweep.settings import make_settings

    argv = ["discover", "--task", "tracr-reverse", "--out", str(tmp_path)]
    assert main([*argv, "--algorithm", "information-flow-routes", "--positions"]) == 2
    assert "information-flow-routes scores plain graphs only; drop --positions" in capsys.readouterr().err
    assert main([*argv, "--algorithm", "edge-pruning", "--verify-top", "3"]) == 2
    assert "--verify-top compares scores in the metric's units" in capsys.readouterr().err
    with pytest.raises(ConfigError, match="eap-ig-activations scores plain graphs only"):
        make_settings("tracr-reverse", str(tmp_path), algorithm="eap-ig-activations", positions=True)
    with pytest.raises(ConfigError, match="--threshold-range goes with a method whose size is a threshold"):
        make_settings("tracr-reverse", str(tmp_path), algorithm="eap", threshold_range=(0.1, 1.0))
    with pytest.raises(ConfigError, match=r"number of edges \(eap, eap-ig, .*edge-pruning"):
        make_settings("tracr-reverse", str(tmp_path), algorithm="acdc", edges_range=(1, 5))


def test_sweep_takes_the_methods_own_options(tmp_path, capsys) -> None:
    import json

    out = tmp_path / "s"
    argv = ["sweep", "--task", "tracr-reverse", "--algorithm", "eap-ig", "--trials", "2", "--threads", "1", "-q",
            "--out", str(out)]  # fmt: skip
    assert main([*argv, "--option", "ig_steps=3"]) == 0, capsys.readouterr().err
    docs = [json.loads(p.read_text()) for p in sorted(out.glob("trials/*/circuit.json"))]
    assert docs and all(d["ig_steps"] == 3 for d in docs)
    capsys.readouterr()
    for option, message in (("edges=3", "a sweep varies eap-ig's edges itself"),
                            ("colour=red", "--colour does not apply to --algorithm eap-ig"),
                            ("ig_steps=0", "--ig-steps must be >= 1")):  # fmt: skip
        assert main([*argv[:-1], str(tmp_path / option), "--option", option]) == 2
        err = capsys.readouterr().err
        assert message in err and err.count("\n") == 1, err
