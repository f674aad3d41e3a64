"""The a/an task (Miller & Neo, "We found an ' an' neuron").

Clean prompts are ``I climbed the apple tree and picked`` and its siblings (the five
templates and ten fruits of the zoo ``an`` model's card); the answer is " an" before a
vowel fruit and " a" before a consonant fruit. The corrupted prompt swaps the fruit with
its partner of the other class (apple <-> lemon, orange <-> pear, ...: the card's
``eval.corrupted_pairs``), which flips the answer, as the original "apple tree" /
"lemon tree" patching did. The metric is ``logit_diff`` (correct article minus the other).

A fruit that is not a single token for the model's tokenizer is dropped with its partner
(with a warning naming it; ``strict=True`` refuses instead). Prompts must share one token
layout (:func:`circuitdag.tasks._lm.check_alignment`); positions are named
``bos w1 w2 the noun w3 and end`` on the zoo model.
"""

from __future__ import annotations

import functools
from typing import Any

import torch

from circuitdag.errors import TaskError
from circuitdag.tasks import _lm
from circuitdag.tasks.base import Task, TaskData


@functools.cache
def _card() -> dict[str, Any]:
    from circuitdag.models.zoo import model_card

    return model_card("an")


class AnNeuronTask(Task):
    """Predict " an" vs " a" from the fruit named earlier in the sentence."""

    name = "an-neuron"
    description = (
        "a/an: 'I climbed the apple tree and picked' -> an (lemon -> a); fruit swapped with its pair"
    )
    default_model = "an"
    default_metric = "logit_diff"
    # Chosen on the zoo model (docs/tasks.md): its logit difference is 9.3; 0.1 gives 11 edges
    # with faithfulness 0.99, 0.3 to 1 give 6 edges with 0.97, 0.01 gives 17.
    default_threshold = 0.1
    default_ablation = "resample"
    data_uses_seed = False  # every fruit pair in every template, in a fixed order

    def __init__(self, *, strict: bool = False, prepend_bos: bool | None = None) -> None:
        self.strict = strict
        self.prepend_bos = prepend_bos

    @property
    def templates(self) -> tuple[str, ...]:
        return tuple(_card()["training"]["data"]["task_templates"])

    @property
    def pairs(self) -> tuple[tuple[str, str], ...]:
        """(vowel fruit, consonant fruit) pairs."""
        return tuple((a, b) for a, b in _card()["eval"]["corrupted_pairs"])

    def load_model(self, device: str = "cpu", dtype: torch.dtype = torch.float32) -> Any:
        from circuitdag.models import load_model

        return load_model(self.default_model, device=device, dtype=dtype)

    def data(self, model: Any, seed: int = 0) -> TaskData:
        tok = _lm.tokenizer_of(model)
        bos = _lm.wants_bos(model, self.prepend_bos)
        article = {}
        for word in ("an", "a"):
            token = _lm.single_token(tok, word)
            if token is None:
                raise TaskError(f"{self.name}: the answer {word!r} is not a single token for this model")
            article[word] = token
        pairs, dropped = [], []
        for vowel, consonant in self.pairs:
            split = [f for f in (vowel, consonant) if len(_lm.word_tokens(tok, f)) != 1]
            if split:
                dropped.append(f"{vowel}/{consonant} ({', '.join(split)} splits)")
            else:
                pairs.append((vowel, consonant))
        _lm.drop_or_refuse(
            self.name, "fruit pairs", dropped, len(self.pairs), "are not single tokens", self.strict
        )
        clean_text, corrupted_text, answers = [], [], []
        for template in self.templates:
            for vowel, consonant in pairs:
                for fruit, other, ans in ((vowel, consonant, "an"), (consonant, vowel, "a")):
                    clean_text.append(template.format(noun=fruit))
                    corrupted_text.append(template.format(noun=other))
                    answers.append(ans)
        clean = [_lm.encode(tok, t, bos) for t in clean_text]
        corrupted = [_lm.encode(tok, t, bos) for t in corrupted_text]
        texts: dict[str, Any] = {"clean_text": clean_text, "corrupted_text": corrupted_text, "task": self.name}
        _lm.check_alignment(clean, corrupted, tok, **texts)
        noun_pos = len(_lm.encode(tok, self.templates[0].split("{noun}")[0].rstrip(), bos))
        positions = _lm.name_positions(clean, tok, fixed={noun_pos: "noun"}, bos=bos)
        _lm.check_alignment(clean, corrupted, tok, positions, may_differ={"noun"}, **texts)
        flip = {"an": "a", "a": "an"}
        return TaskData(
            clean=torch.tensor(clean),
            corrupted=torch.tensor(corrupted),
            answer_pos=torch.full((len(clean), 1), len(clean[0]) - 1),
            correct=torch.tensor([[article[a]] for a in answers]),
            wrong=torch.tensor([[article[flip[a]]] for a in answers]),
            position_names=positions,
        )


__all__ = ["AnNeuronTask"]
