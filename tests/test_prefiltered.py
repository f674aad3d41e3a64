"""acdc-prefiltered: attribution ranks, exact ACDC tests the top N; a registered method of
its own, the same run as the ``--prefilter`` shorthand of ``acdc``."""

from __future__ import annotations

import json

import numpy as np
import pytest

import circuitdag as cd
from circuitdag.algorithms import get_algorithm
from circuitdag.cli import main
from circuitdag.errors import ConfigError


@pytest.fixture(scope="module")
def model():
    return cd.tasks.get("tracr-reverse").load_model()


@pytest.mark.parametrize("attribution", ["eap", "eap-ig"])
def test_it_is_the_prefilter_shorthand(model, attribution: str) -> None:
    own = cd.discover(model, "tracr-reverse", "acdc-prefiltered", candidates=20, attribution=attribution,
                      ig_steps=3, threshold=0.005)  # fmt: skip
    short = cd.discover(model, "tracr-reverse", "acdc", prefilter=f"{attribution}:20", ig_steps=3, threshold=0.005)
    assert own.same_as(short)
    np.testing.assert_array_equal(own.scores, short.scores)
    pre = own.meta["prefilter"]
    assert own.meta["algorithm"] == "acdc-prefiltered" and pre["method"] == attribution and pre["edges"] == 20
    assert pre["kept"] == own.n_edges <= pre["tested"] <= 20
    steps = {"ig_steps": 3} if attribution == "eap-ig" else {}
    attributed = cd.discover(model, "tracr-reverse", attribution, edges=20, **steps)
    assert not (own.in_circuit & ~attributed.in_circuit).any()  # ACDC kept only candidates
    assert (np.isfinite(own.scores) <= attributed.in_circuit).all()  # and tested only them


def test_its_options_are_checked_once_in_one_line(tmp_path, capsys) -> None:
    method = get_algorithm("acdc-prefiltered")
    assert not method.exact and method.size_knob == "threshold" and not method.neurons
    with pytest.raises(ConfigError, match=r"^--option attribution= must be one of eap, eap-ig, got 'acdc'$"):
        method.check({"attribution": "acdc"})
    with pytest.raises(ConfigError, match=r"^--option candidates= must be >= 1, got 0$"):
        method.check({"candidates": 0})
    with pytest.raises(ConfigError, match="--prefilter is the shorthand of --algorithm acdc"):
        method.check({"prefilter": "eap-ig:5"})
    assert main(["discover", "--task", "tracr-reverse", "--algorithm", "acdc-prefiltered", "--option",
                 "candidates=many", "--out", str(tmp_path)]) == 2  # fmt: skip
    assert capsys.readouterr().err == "circuitdag: error: --option candidates= must be a number, got 'many'\n"


def test_the_command_line_runs_it(tmp_path, capsys) -> None:
    argv = ["discover", "--task", "tracr-reverse", "--algorithm", "acdc-prefiltered", "--option", "candidates=40",
            "--ig-steps", "3", "--out", str(tmp_path), "-q", "--no-svg"]  # fmt: skip
    assert main(argv) == 0, capsys.readouterr().err
    doc = json.loads((tmp_path / "circuit.json").read_text())
    assert doc["algorithm"] == "acdc-prefiltered" and doc["prefilter"]["edges"] == 40
    assert "prefilter eap-ig:40: ACDC tested" in capsys.readouterr().out
