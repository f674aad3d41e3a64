"""A fresh user's findings (verify, stop 32): `discover --algorithm eap-ig --resume` ignored
--resume without a word (EAP-IG keeps no checkpoint), and a tracr task given another model
said "Drop --model" also from `evaluate`, which has no --model."""

from __future__ import annotations

from pathlib import Path

import pytest

from circuitdag.cli import main


def test_resume_of_a_method_without_checkpoints_says_so(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    args = ["discover", "--task", "pronoun", "--algorithm", "eap-ig", "--n-prompts", "8", "--holdout", "0",
            "--no-svg", "-q", "--out", str(tmp_path)]  # fmt: skip
    assert main([*args, "--resume"]) == 0
    err = capsys.readouterr().err
    assert "--resume: --algorithm eap-ig keeps no checkpoint" in err and "acdc" in err and "edge-pruning" in err, err
    assert "from the beginning" in err
    assert main(args) == 0  # without --resume: no note
    assert "--resume" not in capsys.readouterr().err


def test_tracr_task_on_another_model_names_no_missing_option(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["discover", "--task", "pronoun", "--n-prompts", "8", "--holdout", "0", "--no-svg", "-q",
                 "--out", str(tmp_path)]) == 0  # fmt: skip
    capsys.readouterr()
    assert main(["evaluate", str(tmp_path / "circuit.json"), "--task", "tracr-reverse"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "runs on its own compiled model" in err[0] and "Drop --model" not in err[0], err
