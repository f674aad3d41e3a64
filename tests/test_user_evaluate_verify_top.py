"""A fresh user's findings (verify, stop 4): `evaluate --verify-top` is refused, as `discover`
refuses it, for a circuit whose scores are not in the metric's units. Repro: on the zoo
pronoun circuit of `discover --algorithm edge-pruning`, `evaluate circuit.json --verify-top 3`
compared gate probabilities (0.999) with exact metric changes (11.6) and reported "5/6 off by
>2x"; on an information-flow-routes circuit (shares) 6/6 and Spearman n/a."""

from __future__ import annotations

from pathlib import Path

import pytest

from circuitdag.cli import main


@pytest.mark.parametrize("algorithm", ["information-flow-routes", "eap"])
def test_evaluate_verify_top_only_for_scores_in_metric_units(algorithm: str, tmp_path: Path,
                                                              capsys: pytest.CaptureFixture[str]) -> None:  # fmt: skip
    out = tmp_path / algorithm
    assert main(["discover", "--task", "pronoun", "--algorithm", algorithm, "--n-prompts", "10", "--holdout", "0",
                 "--no-svg", "-q", "--out", str(out)]) == 0  # fmt: skip
    capsys.readouterr()
    code = main(["evaluate", str(out / "circuit.json"), "--verify-top", "2"])
    if algorithm == "eap":
        assert code == 0 and '"verify"' in capsys.readouterr().out
    else:
        assert code == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and "information-flow-routes's scores are not" in err[0] and "drop --verify-top" in err[0]
