"""The validation step between a task and the engine (circuitdag.tasks.validate): one test
per kind of task data it refuses or warns about, through prepare() and the CLI."""

from __future__ import annotations

import re
from dataclasses import replace

import pytest
import torch

from circuitdag.cli import main
from circuitdag.errors import TaskError
from circuitdag.models import load_model
from circuitdag.prepare import prepare
from circuitdag.tasks import _cache
from circuitdag.tasks.base import Task, TaskData
from circuitdag.tasks.pronoun import PronounTask
from circuitdag.tasks.validate import check_metric_gap

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def zoo():
    return load_model("pronoun")


@pytest.fixture(scope="module")
def good(zoo) -> TaskData:
    return PronounTask().data(zoo)


class Given(Task):
    """A plugin task that returns the data it is given."""

    name = "given"
    default_metric = "logit_diff"

    def __init__(self, data: TaskData) -> None:
        self._data = data

    def data(self, model, seed=0):
        return self._data


def _with(data: TaskData, name: str, i: int, j: int, value: int) -> TaskData:
    t = getattr(data, name).clone()
    t[i, j] = value
    return replace(data, **{name: t})


def refused(zoo, data: TaskData, match: str, ablation: str = "resample") -> str:
    with pytest.raises(TaskError, match=match) as info:
        prepare(zoo, Given(data), ablation=ablation)
    msg = str(info.value)
    assert "\n" not in msg and msg.startswith("given: ")
    return msg


def test_a_token_the_model_cannot_embed(zoo, good) -> None:
    refused(zoo, _with(good, "clean", 7, 3, 113), r"clean prompt 7 has token id 113 at position 3, but the model "
            r"embeds ids 0\.\.112 only")  # fmt: skip
    refused(zoo, _with(good, "corrupted", 2, 0, -1), "corrupted prompt 2 has token id -1 at position 0")


def test_an_answer_the_model_cannot_unembed(zoo, good) -> None:
    refused(zoo, _with(good, "correct", 4, 0, 5000), r"the correct answer of prompt 4 \(slot 0, position 10\) is "
            r"token id 5000, but the model's logits cover ids 0\.\.112 only")  # fmt: skip
    refused(zoo, _with(good, "wrong", 9, 0, 113), "the wrong answer of prompt 9")


def test_an_answer_position_outside_the_prompt(zoo, good) -> None:
    refused(zoo, _with(good, "answer_pos", 5, 0, 11), r"prompt 5 reads answer 0 at position 11, outside its 11 "
            r"tokens \(positions 0\.\.10\)")  # fmt: skip
    refused(zoo, _with(good, "answer_pos", 0, 0, -2), "prompt 0 reads answer 0 at position -2")


def test_an_answer_position_in_the_padding(zoo, good) -> None:
    pad = torch.zeros(good.n_prompts, 3, dtype=good.clean.dtype)  # <|endoftext|>, the pad token
    padded = replace(good, clean=torch.cat([good.clean, pad], 1), corrupted=torch.cat([good.corrupted, pad], 1),
                     position_names=None)  # fmt: skip
    prepare(zoo, Given(padded))  # the answer before the padding: fine
    refused(zoo, _with(padded, "answer_pos", 6, 0, 12), r"prompt 6 reads answer 0 at position 12, which is padding "
            r"\(token '<\|endoftext\|>' from position 11 on\)")  # fmt: skip


def test_every_answer_slot_invalid(zoo, good) -> None:
    none = replace(good, valid=torch.zeros_like(good.answer_pos, dtype=torch.bool))
    msg = refused(zoo, none, r"every answer slot is marked invalid \(valid is False for all 100 slots\)")
    assert "float16" not in msg  # (the NaN metric it caused used to blame float16)


def test_corrupted_prompts_identical_to_the_clean_ones(zoo, good, tmp_path, capsys) -> None:
    same = replace(good, corrupted=good.clean.clone())
    refused(zoo, same, "the corrupted prompts are identical to the clean ones \\(all 100\\), so resample ablation")
    prepare(zoo, Given(same), ablation="zero")  # other ablations do not read them
    # discover used to return an empty circuit; now it stops with exit 2 and writes nothing.
    _cache["given"] = Given(same)
    try:
        for cmd in ("discover", "sweep"):
            out = tmp_path / cmd
            code = main([cmd, "--task", "given", "--model", "pronoun", "--out", str(out), "-q", "--threads", "1",
                         *(["--trials", "2"] if cmd == "sweep" else [])])  # fmt: skip
            err = capsys.readouterr().err.strip().splitlines()
            assert code == 2 and "the corrupted prompts are identical to the clean ones" in err[-1]
            assert not out.exists() or not any(out.rglob("*")), sorted(out.rglob("*"))
    finally:
        del _cache["given"]


def test_some_corrupted_prompts_identical_warns(zoo, good) -> None:
    some = replace(good, corrupted=torch.where(torch.arange(good.n_prompts)[:, None] < 3, good.clean, good.corrupted))
    with pytest.warns(UserWarning, match="3 of 100 corrupted prompts are identical to their clean prompt"):
        prepare(zoo, Given(some))


def test_a_corruption_the_model_cannot_see_is_refused(zoo, good) -> None:
    """Corrupted prompts that differ only after the answer: a causal model's metric is
    exactly the clean one, so every circuit would be empty."""
    extra = torch.full((good.n_prompts, 1), 5)
    after = replace(good, clean=torch.cat([good.clean, extra], 1), corrupted=torch.cat([good.clean, extra + 1], 1),
                    position_names=None)  # fmt: skip
    refused(zoo, after, r"the full model and the resample-ablated model have the same metric \(metric logit_diff: "
            r"full model -13\.77\d*, resample-ablated -13\.77\d*\)")  # fmt: skip


def test_a_model_that_barely_does_the_task_warns_with_both_numbers() -> None:
    with pytest.warns(UserWarning, match=r"the model barely does this task \(metric logit_diff: full model -0\.31, "
                      r"resample-ablated -0\.3, a gap of 0\.01 logits, under 0\.1 logits\)"):  # fmt: skip
        check_metric_gap(-0.31, -0.30, "logit_diff", "resample", "t")
    with pytest.warns(UserWarning, match="barely does this task"):
        check_metric_gap(0.0, 0.0004, "kl", "zero", "t")
    check_metric_gap(-13.77, -0.5, "logit_diff", "resample", "t")  # the zoo pronoun model: no warning


def test_a_gap_under_a_tenth_of_a_logit_warns_and_is_returned() -> None:
    """Issue 25: a random StableLM's logit-difference gap of 0.001 (faithfulness 49.4) passed
    both the 5% relative rule and the 1e-3 absolute one; in logits, a gap under 0.1 means
    the corruption changes the answer's odds by under 11%."""
    with pytest.warns(UserWarning, match=r"barely does this task .*a gap of 0\.001 logits, under 0\.1 logits"):
        said = check_metric_gap(-0.0021, -0.0011, "logit_diff", "resample", "t")
    assert len(said) == 1 and "not meaningful" in said[0]
    with pytest.warns(UserWarning, match="barely does this task"):  # a gap no relative rule catches
        check_metric_gap(-0.06, 0.0, "logit_diff", "resample", "t")
    with pytest.warns(UserWarning, match="barely does this task"):
        check_metric_gap(-0.5, -0.495, "prob", "resample", "t")
    assert check_metric_gap(-2.0, -0.5, "logit_diff", "resample", "t") == []


def test_a_model_that_prefers_the_wrong_answer_warns() -> None:
    """The fresh-user walkthrough's random GPT-2: full 0.0033 vs corrupted 0.0013 under
    logit_diff passed the gap rules; a non-negative stored logit_diff means the full model
    favours the wrong answer on average."""
    with pytest.warns(UserWarning) as got:  # and its 0.002-logit gap is negligible
        check_metric_gap(0.0033, 0.0013, "logit_diff", "resample", "t")
    assert re.search(r"does not prefer the correct answer on average \(metric logit_diff: full model 0\.0033, "
                     r"resample-ablated 0\.0013", str(got[0].message))  # fmt: skip


def test_a_wrong_preference_does_not_hide_a_negligible_gap() -> None:
    """Both warnings fire: the "does not prefer" warning used to return before the gap
    check, so a random model's 0.0004-logit gap went unreported (issue 25, item 6)."""
    with pytest.warns(UserWarning) as got:
        check_metric_gap(0.0005, 0.0001, "logit_diff", "resample", "t")
    text = " | ".join(str(w.message) for w in got)
    assert "does not prefer the correct answer" in text and "barely does this task" in text


def test_cli_prints_the_gap_warning_as_one_line_and_circuit_json_records_it(tiny_gpt2_dir, tmp_path, capsys) -> None:
    """Issue 25: discover on a random model printed a Python UserWarning with its source line,
    and circuit.json said nothing; now one ``circuitdag: warning:`` line per warning, the
    same messages under circuit.json's ``warnings``."""
    import json
    import sys
    import warnings

    rows = [{"clean": f"{a} is {adj}", "corrupted": f"{b} is {adj}", "correct": ca, "wrong": cb}
            for (a, ca), (b, cb) in [(("john", "he"), ("mary", "she")), (("anna", "she"), ("tom", "he"))]
            for adj in ("great", "nice", "good")]  # fmt: skip
    prompts = tmp_path / "p.jsonl"
    prompts.write_text("".join(json.dumps(r) + "\n" for r in rows))
    def show(message, category, filename, lineno, file=None, line=None) -> None:  # Python's default showwarning
        sys.stderr.write(warnings.formatwarning(message, category, filename, lineno, line))

    with warnings.catch_warnings():  # printed as in a user's shell, not raised by the suite's filter
        warnings.simplefilter("always")
        warnings.showwarning = show
        code = main(["discover", "--task", f"prompts:{prompts}", "--model", str(tiny_gpt2_dir), "--algorithm", "eap",
                     "--edges", "5", "--out", str(tmp_path / "c"), "-q", "--threads", "1"])  # fmt: skip
    err = capsys.readouterr().err
    assert code == 0, err
    said = json.loads((tmp_path / "c" / "circuit.json").read_text()).get("warnings")
    assert said, "a random GPT-2 does not do the task: circuit.json must say so"
    lines = [line for line in err.splitlines() if line.startswith("circuitdag: warning: ")]
    assert lines == [f"circuitdag: warning: {w}" for w in said]
    assert "UserWarning" not in err and "warnings.warn" not in err
