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
    # spelled: accepted. Seven distinct prompts, each twice: --holdout draws prompts, not rows, so the
    # held-out side (2 of 7) holds no copy of a training prompt
    names = [("Michael", " he", " she"), ("Helen", " she", " he"), ("Anna", " she", " he"), ("Richard", " he", " she"),
             ("David", " he", " she"), ("John", " he", " she"), ("Mary", " she", " he")]  # fmt: skip
    seven = [(f"So {n} is a really great friend, isn't", r, w) for n, r, w in names]
    train, held, _ = load_examples(pronoun, prompts=_rows(tmp_path / "ok.jsonl", seven * 2))
    assert (train.n, held.n) == (10, 4)
    spelled = lambda ex: {tuple(ex.tokens[r].tolist()) for r in range(ex.n)}
    assert not spelled(train) & spelled(held)


def test_task_and_prompts_together_are_refused(pronoun, tmp_path: Path, capsys) -> None:
    with pytest.raises(ConfigError, match="either --task .* or --prompts"):
        load_examples(pronoun, "pronoun", prompts=str(tmp_path / "p.jsonl"))
    argv = ["soft-prompts", "--model", "pronoun", "--task", "pronoun", "--prompts", str(tmp_path / "p.jsonl"), "-q",
            "--out", str(tmp_path / "o")]  # fmt: skip
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "not both" in err and len(err.strip().splitlines()) == 1


def _report(base: float, sols: list[float], along: list[float], random_far: float) -> dict:
    """A hand-made report of two solutions: held-out accuracy ``base`` without a prompt,
    ``sols`` at the solutions, ``along`` between them, ``random_far`` at the far end of a random move."""
    seed = [{"heldout": {"accuracy": a}, "init_heldout": {"accuracy": 0.0}, "nearest": {"heldout": {"accuracy": 0.0},
             "tokens": ["x"]}, "nearest_cosine": {"heldout": {"accuracy": 0.0}}, "init_tokens": ["y"]} for a in sols]
    seg = {"pair": [0, 1], "t": [0.0, 0.5, 1.0], "accuracy": [sols[0], *along, sols[1]], "metric": [1.0, 1.0, 1.0],
           "norm_kept_accuracy": [sols[0], *along, sols[1]], "random_accuracy": [[sols[0], random_far, random_far]],
           "random_metric": [[1.0, 0.0, 0.0]], "midpoint_norm_ratio": 0.8, "cosine": 0.3}  # fmt: skip
    return {"n_heldout": 30, "baseline": {"accuracy": base}, "seeds": seed, "segments": [seg]}


def test_the_verdict_takes_the_controls_into_account() -> None:
    # the headline said "convex: yes" for each of these
    cases = [((1.0, [1.0, 1.0], [1.0], 1.0), "not testable: no prompt needed", "already does the task without"),
             ((0.1, [0.1, 0.13], [0.1], 0.1), "not testable: training failed", "do no better than no prompt"),
             ((0.0, [1.0, 1.0], [1.0], 1.0), "convex, random directions too", "so is a ball of that radius"),
             ((0.0, [1.0, 1.0], [1.0], 0.2), "convex", "convex: yes (random directions of the same length leave"),
             ((0.0, [1.0, 1.0], [0.7], 0.2), "not convex, interpolants special", "convex: no, but the region"),
             ((0.0, [1.0, 1.0], [0.2], 0.2), "not convex", "convex: no (an interpolant")]  # fmt: skip
    for args, kind, text in cases:
        sm = summary(_report(*args))
        assert sm["verdict"] == kind and text in sm["verdict_text"], (args, sm["verdict"], sm["verdict_text"])
    assert summary(_report(1.0, [1.0, 1.0], [1.0], 1.0))["convex"]  # convex by the write-up's test, yet not testable


def _argv(out: Path, *more: str) -> list[str]:
    """The command on the zoo pronoun model's own task (a second or two)."""
    return ["soft-prompts", "--model", "pronoun", "--task", "pronoun", "--tokens", "1", "--seeds", "2", "--steps", "2",
            "--segment-points", "2", "--simplex-steps", "1", "--random-directions", "1", "--n-prompts", "8", "-q",
            "--out", str(out), *more]  # fmt: skip


def test_the_command_states_the_verdict(tmp_path: Path, capsys) -> None:
    assert main(_argv(tmp_path)) == 0, capsys.readouterr().err
    r = json.loads((tmp_path / "report.json").read_text())
    assert r["baseline"]["accuracy"] == 1.0  # the zoo pronoun model does its own task without a prompt
    assert r["summary"]["verdict"] == "not testable: no prompt needed"
    line = capsys.readouterr().out
    assert "not testable: the model already does the task without a prompt" in line and "convex: yes" not in line
    assert "**not testable: the model already does the task" in (tmp_path / "report.md").read_text()


def test_a_rerun_says_which_seeds_it_reused(tmp_path: Path, caplog) -> None:
    assert main(_argv(tmp_path)) == 0
    caplog.set_level(logging.INFO, logger="circuitdag")
    assert not [m for m in caplog.messages if m.startswith("reusing")]
    assert main(_argv(tmp_path)) == 0
    reuse = [m for m in caplog.messages if m.startswith("reusing")]
    want = f"reusing seeds 0, 1 from {tmp_path / 'prompts'} (trained with the same settings; delete them to retrain)"
    assert reuse == [want]


def test_more_soft_tokens_than_the_context_asks_for_fewer(tmp_path: Path, capsys) -> None:
    assert main([*_argv(tmp_path), "--tokens", "40"]) == 2  # the zoo model's context is 32
    err = capsys.readouterr().err.strip()
    assert "40 soft tokens + the longest prompt (" in err and "exceed the model's context of 32; use --tokens <= " in err
    n = int(err.split("longest prompt (")[1].split()[0])
    assert err.endswith(f"--tokens <= {32 - n}") and len(err.splitlines()) == 1
