"""``--test-option`` and ``--verify-top`` refused in one line before any work when they cannot
do what they say (fresh-user report, items 5 and 6): a range error named only the given
option's range ("circuits must be in [1, 100000) for counts and epsilon, (1, 100000) for q");
``--test-option circuits=5`` without ``--tests`` was silently ignored; ``circuits=5`` (a test
that cannot decide at alpha 0.05) ran the whole discovery first; ``--verify-top`` on ACDC
compared ACDC's measured scores with single removals from the full model and printed them as
"estimates off by >2x"; ``--verify-top 100000`` was not capped."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pytest

import circuitdag as cd
import circuitdag.cli.discover as discover_cli
from circuitdag.cli import main
from circuitdag.cli.discover import parse_test_options
from circuitdag.errors import ConfigError


@pytest.mark.parametrize(("item", "says", "not_says"), [
    ("circuits=0", "circuits must be a whole number from 1 to 99999", "for q"),
    ("permutations=100000", "permutations must be a whole number from 1 to 99999", "for q"),
    ("epsilon=nan", "epsilon must be in [0, 0.5)", "for counts"),
    ("q=1", "q must be in (0, 1)", "for counts"),
])  # fmt: skip
def test_a_range_error_names_only_the_given_option(item: str, says: str, not_says: str) -> None:
    with pytest.raises(ConfigError) as err:
        parse_test_options([item])
    assert says in str(err.value) and not_says not in str(err.value)


@pytest.fixture
def no_work(monkeypatch: pytest.MonkeyPatch) -> None:
    """discover fails the test if it gets as far as loading the model."""

    def load(args: object) -> None:
        raise AssertionError("discover loaded the model before refusing")

    monkeypatch.setattr(discover_cli, "load", load)


@pytest.mark.parametrize(("argv", "says"), [
    (["--test-option", "circuits=30"], "which run only with --tests"),
    (["--tests", "equivalence", "--test-option", "circuits=30"],
     "circuits is an option of the sufficiency test, which --tests does not run (equivalence)"),
    (["--tests", "--test-option", "circuits=5"], "sufficiency cannot decide at alpha 0.05 with circuits=5"),
    (["--tests", "independence", "--test-option", "permutations=1"], "independence cannot decide"),
    (["--verify-top", "3"], "acdc's scores are metric changes it measured by patching already"),
    (["--algorithm", "acdc-prefiltered", "--verify-top", "3"], "acdc-prefiltered's scores are metric changes"),
    (["--algorithm", "edge-pruning", "--verify-top", "3"], "edge-pruning's scores are not"),
])  # fmt: skip
def test_refused_in_one_line_before_any_work(argv: list[str], says: str, no_work: None, tmp_path: Path,
                                             capsys: pytest.CaptureFixture[str]) -> None:  # fmt: skip
    assert main(["discover", "--task", "pronoun", "--out", str(tmp_path), *argv]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and says in err[0], err


def test_test_options_that_decide_are_taken(tmp_path: Path) -> None:
    got = parse_test_options(["circuits=20", "permutations=20", "q=0.9"], ("independence", "minimality", "sufficiency"))
    assert got == {"circuits": 20, "permutations": 20, "q": 0.9}


def test_evaluate_refuses_verify_top_on_an_acdc_circuit(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "acdc"
    assert main(["discover", "--task", "pronoun", "--n-prompts", "10", "--holdout", "0", "--no-svg", "-q", "--out",
                 str(out)]) == 0  # fmt: skip
    capsys.readouterr()
    assert main(["evaluate", str(out / "circuit.json"), "--verify-top", "2"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "acdc's scores are metric changes it measured" in err[0]


def test_verify_top_is_capped_at_the_scored_edges(caplog: pytest.LogCaptureFixture) -> None:
    from circuitdag.prepare import prepare
    from circuitdag.tasks import get_task
    from circuitdag.trust import assess

    task = get_task("pronoun")
    model = task.load_model()
    patcher, _ = prepare(model, task, n_prompts=10)
    circuit = cd.discover(model, task, "eap", n_prompts=10)
    scored = int(np.isfinite(circuit.scores).sum())
    with caplog.at_level(logging.WARNING, logger="circuitdag"):
        assess(circuit, patcher, verify_top=100_000)
    assert circuit.meta["verify"]["n"] == scored and circuit.meta["verify"]["n_checked"] == scored
    assert f"--verify-top 100000 capped at {scored} (the edges the method scored)" in caplog.text


def test_evaluate_refuses_test_options_that_cannot_act(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "eap"
    assert main(["discover", "--task", "pronoun", "--algorithm", "eap", "--n-prompts", "10", "--holdout", "0",
                 "--no-svg", "-q", "--out", str(out)]) == 0  # fmt: skip
    for argv, says in ((["--test-option", "circuits=30"], "which run only with --tests"),
                       (["--tests", "sufficiency", "--test-option", "circuits=5"], "sufficiency cannot decide")):
        capsys.readouterr()
        assert main(["evaluate", str(out / "circuit.json"), *argv]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and says in err[0], err
