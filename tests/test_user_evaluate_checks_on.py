"""A fresh user's findings (verify, stop 4): `evaluate C --prompts FILE --tests ...` says
which prompts the tests ran on. Repro: on the zoo pronoun circuit of
`discover --task pronoun --algorithm eap-ig --verify-top 5`, `evaluate circuit.json --prompts
my-prompts.jsonl --tests minimality` (10 prompts in the file) printed minimality with
detail.prompts 100 (the circuit's discovery prompts), no `checks_on`, and discover's saved
`verify` block as if it had been run again."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from circuitdag.cli import main

PROMPTS = [
    {"clean": "So Michael is a really funny cook, isn't", "corrupted": "So Helen is a really funny cook, isn't",
     "correct": "he", "wrong": "she"},
    {"clean": "So Anna is a pretty brave neighbour, isn't", "corrupted": "So Richard is a pretty brave neighbour, isn't",
     "correct": "she", "wrong": "he"},
    {"clean": "So David is a really brave driver, isn't", "corrupted": "So Anna is a really brave driver, isn't",
     "correct": "he", "wrong": "she"},
]  # fmt: skip


def test_evaluate_with_other_prompts_says_the_tests_ran_on_the_discovery_prompts(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], caplog: pytest.LogCaptureFixture
) -> None:
    out = tmp_path / "p"
    assert main(["discover", "--task", "pronoun", "--algorithm", "eap-ig", "--n-prompts", "20", "--verify-top", "2",
                 "--no-svg", "-q", "--out", str(out)]) == 0  # fmt: skip
    prompts = tmp_path / "mine.jsonl"
    prompts.write_text("".join(json.dumps(p) + "\n" for p in PROMPTS))
    capsys.readouterr()
    assert main(["evaluate", str(out / "circuit.json"), "--prompts", str(prompts), "--tests", "equivalence"]) == 0
    captured = capsys.readouterr()
    ev = json.loads(captured.out)
    assert ev["other_data"]["n_prompts"] == 3
    assert ev["checks_on"] == {"prompts": 20, "of": 20, "seed": 0}
    assert ev["tests"]["equivalence"]["detail"]["prompts"] == 20
    assert "verify" not in ev  # discover's saved --verify-top was not run again here
    assert "run on the circuit's own 20 discovery prompts" in caplog.text
