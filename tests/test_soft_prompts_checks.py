"""``circuitdag soft-prompts`` refuses what it cannot measure and says what it did: a task
the model's tokenizer cannot spell (unknown tokens, prompts that tokenize alike, one answer
for all), --task with --prompts, more soft tokens than the context holds; its verdict takes
the baseline and the random-direction controls into account; a rerun says which seeds it
reused."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest

from circuitdag.cli import main
from circuitdag.errors import CircuitDagError, ConfigError
from circuitdag.soft_prompts_data import load_examples
from circuitdag.soft_prompts_run import summary


@pytest.fixture(scope="module")
def pronoun():
    from circuitdag.loading import load_model

    return load_model("pronoun")


def _rows(path: Path, rows: list[tuple[str, str, str]]) -> str:
    corrupt = [c.replace(c.split()[1], "someone") for c, _, _ in rows]
    path.write_text("\n".join(json.dumps({"clean": c, "corrupted": x, "correct": r, "wrong": w})
                              for (c, r, w), x in zip(rows, corrupt, strict=True)))  # fmt: skip
    return str(path)


def test_addition_on_a_tokenizer_without_digits_is_refused(pronoun) -> None:
    # the zoo pronoun tokenizer has no digits: every 'a+b=' was '<unk>' x 4 and every answer '<unk>'
    with pytest.raises(ConfigError, match="unknown token '<unk>'.*another --model or --task"):
        load_examples(pronoun, "addition")


def test_prompts_the_tokenizer_cannot_spell_are_refused(pronoun, tmp_path: Path) -> None:
    good = [("So John is a really great friend, isn't", " he", " she"), ("So Mary is a really great friend, isn't", " she", " he")]
    with pytest.raises(CircuitDagError, match="does not know|unknown token"):  # a word not in the vocabulary
        load_examples(pronoun, prompts=_rows(tmp_path / "u.jsonl", [*good * 5, ("So Zyx is a friend, isn't", " he", " she")]))
    with pytest.raises(ConfigError, match="same answer tokens"):
        load_examples(pronoun, prompts=_rows(tmp_path / "a.jsonl", [(c, " he", " she") for c, _, _ in good * 6]))
    with pytest.raises(ConfigError, match="same tokens but want different answers"):
        load_examples(pronoun, prompts=_rows(tmp_path / "d.jsonl", [*good * 5, (good[0][0], " she", " he")] * 2))
    train, held, _ = load_examples(pronoun, prompts=_rows(tmp_path / "ok.jsonl", good * 6))  # spelled: accepted
    assert train.n + held.n == 12


def test_task_and_prompts_together_are_refused(pronoun, tmp_path: Path, capsys) -> None:
    with pytest.raises(ConfigError, match="either --task .* or --prompts"):
        load_examples(pronoun, "pronoun", prompts=str(tmp_path / "p.jsonl"))
    argv = ["soft-prompts", "--model", "pronoun", "--task", "pronoun", "--prompts", str(tmp_path / "p.jsonl"), "-q",
            "--out", str(tmp_path / "o")]  # fmt: skip
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "not both" in err and len(err.strip().splitlines()) == 1
