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


def test_a_prompts_file_that_repeats_rows_is_noted(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """(verify, stop 32, D11) Five copies of one row were accepted without a word."""
    import json

    row = {"clean": "So John is a really great friend, isn't", "corrupted": "So Mary is a really great friend, isn't",
           "correct": "he", "wrong": "she"}  # fmt: skip
    other = {**row, "clean": "So Paul is a really great friend, isn't"}
    (tmp_path / "p.jsonl").write_text("".join(json.dumps(r) + "\n" for r in [row, row, other, row]))
    args = ["discover", "--prompts", str(tmp_path / "p.jsonl"), "--model", "pronoun", "--holdout", "0", "--no-svg",
            "--out", str(tmp_path / "out")]  # fmt: skip
    assert main(args) == 0
    err = capsys.readouterr().err
    assert f"{tmp_path / 'p.jsonl'} repeats 2 of its 4 rows" in err, err
    assert main([*args, "-q"]) == 0  # quiet: no note
    assert "repeats" not in capsys.readouterr().err
