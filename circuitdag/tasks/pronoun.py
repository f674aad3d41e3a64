"""The gendered-pronoun task (Mathwin & Corlouer, "Identifying a preliminary circuit for
predicting gendered pronouns in GPT-2 small").

Clean prompts are ``So {name} is a really great friend, isn't`` and four siblings (the
templates and the 10 male + 10 female names of the zoo ``pronoun`` model's card); the
model should continue with " he" or " she". Two corruptions are offered:

``"that-person"`` (task ``pronoun``, the original project's)
    the name is replaced by a gender-neutral filler with the same number of tokens, so
    the layout is kept. Rule: the first of :attr:`PronounTask.fillers`
    (``"that person"``, ``"someone"``, ``"somebody"``) whose token count equals the
    name's. Names are single tokens, so on the zoo model and on GPT-2-style tokenizers,
    where "that person" is two tokens, the filler is ``someone`` (the word the zoo model
    was trained with; after it the zoo model predicts ``they``).
``"opposite-gender"`` (task ``pronoun-opposite``, the control Neel Nanda asked for)
    the name is replaced by a name of the other gender (seeded choice), which flips the
    answer while keeping "there is a name and a pronoun is due" intact; a circuit found
    with it is the part that looks the gender up, not the part that finds the name.

The metric is ``logit_diff`` (correct pronoun minus the other one). Every name and both
answers must be single tokens for the model's tokenizer: names that are not are dropped
with a warning naming them (``strict=True`` refuses instead); answers that are not are
always an error. Prompts are refused unless all of them, clean and corrupted, share one
token layout (:func:`circuitdag.tasks._lm.check_alignment`); the positions are named
``bos So name is w1 w2 w3 w4 comma isn 't`` on the zoo model (no ``bos`` on SmolLM2, whose
predictions are better without it), and the answer is read at the last position.
"""

from __future__ import annotations

import functools
import random
from dataclasses import dataclass
from typing import Any, ClassVar

import torch

from circuitdag.errors import TaskError
from circuitdag.tasks import _lm
from circuitdag.tasks.base import Task, TaskData

CORRUPTIONS = ("that-person", "opposite-gender")
GENDERS = ("male", "female")


@functools.cache
def _card_eval() -> dict[str, Any]:
    from circuitdag.models.zoo import model_card

    return model_card("pronoun")["eval"]


@dataclass(frozen=True)
class PronounPrompts:
    """The text side of :meth:`PronounTask.data`: prompt pairs and their answers."""

    clean: tuple[str, ...]
    corrupted: tuple[str, ...]
    gender: tuple[str, ...]  # "male"/"female" per prompt
    names: dict[str, tuple[str, ...]]  # the names kept, per gender
    templates: tuple[str, ...]  # the templates kept
    filler: str | None  # the neutral filler ("that-person" only)


#: Held-out templates (:meth:`PronounTask.holdout`): the shape of the default five
#: (``So {name} is`` + four words + ``, isn't``), other words, all in the zoo model's vocabulary.
HOLDOUT_TEMPLATES = (
    "So {name} is a really smart teacher, isn't",
    "So {name} is quite a funny writer, isn't",
    "So {name} is a truly brave driver, isn't",
    "So {name} is such a calm player, isn't",
    "So {name} is a pretty busy person, isn't",
)
#: Held-out names: 10 + 10 names of the zoo model's vocabulary that the default set lacks.
HOLDOUT_NAMES: dict[str, tuple[str, ...]] = {
    "male": ("Brian", "Edward", "Frank", "George", "Henry", "Jack", "Kevin", "Mark", "Peter", "Steven"),
    "female": ("Alice", "Claire", "Emily", "Grace", "Jane", "Julia", "Kate", "Nancy", "Rachel", "Rose"),
}


def _unique(items: tuple[str, ...]) -> tuple[str, ...]:
    return tuple(dict.fromkeys(items))


class PronounTask(Task):
    """Gendered pronoun prediction; ``corruption`` picks the counterfactual (see module doc)."""

    name = "pronoun"
    description = "gendered pronoun: 'So John is a really great friend, isn't' -> he/she; name -> 'someone'"
    default_model = "pronoun"
    default_metric = "logit_diff"
    # Chosen on the zoo model (docs/tasks.md): its logit difference is 13.8, so 0.1 keeps
    # the edges that each carry at least 0.7% of it; 0.01 to 1 give 5-7 edges with
    # "that-person" and 5-17 with "opposite-gender", all with faithfulness >= 0.96.
    default_threshold = 0.1
    default_ablation = "resample"
    corruption = "that-person"
    #: Gender-neutral fillers for "that-person", tried in order (see the module doc).
    fillers: tuple[str, ...] = ("that person", "someone", "somebody")
    #: Answer words per gender.
    answers: ClassVar[dict[str, str]] = {"male": "he", "female": "she"}

    def __init__(
        self,
        corruption: str | None = None,
        *,
        strict: bool = False,
        prepend_bos: bool | None = None,
        templates: tuple[str, ...] | None = None,
        names: dict[str, tuple[str, ...]] | None = None,
    ) -> None:
        corruption = corruption or type(self).corruption
        if corruption not in CORRUPTIONS:
            raise TaskError(
                f"unknown pronoun corruption {corruption!r}; choose one of {', '.join(CORRUPTIONS)}"
            )
        self.corruption = corruption
        self.strict = strict
        self.prepend_bos = prepend_bos
        self._templates = tuple(templates) if templates is not None else None
        self._names = {g: tuple(v) for g, v in names.items()} if names is not None else None

    # ------------------------------------------------------------------ inputs
    @property
    def templates(self) -> tuple[str, ...]:
        """Prompt templates with a ``{name}`` slot (default: the zoo card's five)."""
        return self._templates if self._templates is not None else tuple(_card_eval()["templates"])

    @property
    def names(self) -> dict[str, tuple[str, ...]]:
        """Names per gender (default: the zoo card's 10 + 10)."""
        if self._names is not None:
            return self._names
        return {g: tuple(v) for g, v in _card_eval()["names"].items()}

    def load_model(self, device: str = "cpu", dtype: torch.dtype = torch.float32) -> Any:
        from circuitdag.models import load_model

        return load_model(self.default_model, device=device, dtype=dtype)

    # ------------------------------------------------------------------ data
    def _answer_ids(self, tok: Any) -> dict[str, int]:
        out = {}
        for gender in GENDERS:
            word = self.answers[gender]
            token = _lm.single_token(tok, word)
            if token is None:
                raise TaskError(
                    f"{self.name}: the answer {word!r} is not a single token for this model "
                    f"(' {word}' -> {_lm.token_strings(tok, tok.encode(' ' + word, add_special_tokens=False))}); "
                    "the pronoun task needs single-token answers"
                )
            out[gender] = token
        return out

    def drawn(self, seed: int = 0) -> tuple[tuple[str, ...], dict[str, tuple[str, ...]]]:
        """(templates, names per gender) of the prompts of ``seed``: seed 0 (and any seed
        when the task was given its own templates and names) the default set, the zoo
        card's 5 templates and 10 + 10 names; another seed draws as many from the pools
        (the default set plus :data:`HOLDOUT_TEMPLATES` and :data:`HOLDOUT_NAMES`), in pool
        order. :meth:`holdout` is the rest of the pools."""
        if seed == 0 or (self._templates is not None and self._names is not None):
            return self.templates, self.names
        rng = random.Random(f"pronoun-draw-{seed}")  # apart from the opposite-gender draw
        pool_t = _unique(self.templates + HOLDOUT_TEMPLATES)
        picked = set(rng.sample(pool_t, len(self.templates)))
        templates = self.templates if self._templates is not None else tuple(t for t in pool_t if t in picked)
        names = dict(self.names)
        if self._names is None:
            for g in GENDERS:
                pool = _unique(self.names.get(g, ()) + HOLDOUT_NAMES[g])
                chosen = set(rng.sample(pool, len(self.names.get(g, ()))))
                names[g] = tuple(n for n in pool if n in chosen)
        return templates, names

    def _single_token_names(self, tok: Any, all_names: dict[str, tuple[str, ...]]) -> dict[str, tuple[str, ...]]:
        kept, dropped, total = {}, [], 0
        for gender in GENDERS:
            names = all_names.get(gender, ())
            total += len(names)
            ok = [n for n in names if len(_lm.word_tokens(tok, n)) == 1]
            dropped += [
                f"{n} -> {_lm.token_strings(tok, _lm.word_tokens(tok, n))}" for n in names if n not in ok
            ]
            kept[gender] = tuple(ok)
        _lm.drop_or_refuse(self.name, "names", dropped, total, "are not single tokens", self.strict)
        for gender in GENDERS:
            if not kept[gender] and (self.corruption == "opposite-gender" or not any(kept.values())):
                raise TaskError(f"{self.name}: no {gender} name is a single token for this model")
        return kept

    def _filler(self, tok: Any) -> str:
        for filler in self.fillers:
            if len(_lm.word_tokens(tok, filler)) == 1:
                return filler
        shown = {f: _lm.token_strings(tok, _lm.word_tokens(tok, f)) for f in self.fillers}
        raise TaskError(f"{self.name}: no gender-neutral filler is a single token for this model: {shown}")

    @property
    def data_uses_seed(self) -> bool:
        """Every seed but 0 draws other names and templates (:meth:`drawn`);
        "opposite-gender" also draws the name that replaces each name. With its own
        templates and names, "that-person" prompts are the same for every seed."""
        return self.corruption != "that-person" or self._templates is None or self._names is None

    def prompts(self, model: Any, seed: int = 0) -> PronounPrompts:
        """The prompt texts :meth:`data` tokenizes (names and templates that fit the
        model's tokenizer), in template-major order, male names first."""
        tok = _lm.tokenizer_of(model)
        bos = _lm.wants_bos(model, self.prepend_bos)
        all_templates, all_names = self.drawn(seed)
        names = self._single_token_names(tok, all_names)
        probe = next(n for g in GENDERS for n in names[g])
        lengths = {t: len(_lm.encode(tok, t.format(name=probe), bos)) for t in all_templates}
        n_tok = _lm.most_common(lengths.values())
        dropped = [f"{t!r} ({lengths[t]} tokens, not {n_tok})" for t in all_templates if lengths[t] != n_tok]
        _lm.drop_or_refuse(self.name, "templates", dropped, len(all_templates),
                           "do not share the common token layout", self.strict)  # fmt: skip
        templates = tuple(t for t in all_templates if lengths[t] == n_tok)
        filler = self._filler(tok) if self.corruption == "that-person" else None
        rng = random.Random(seed)
        clean, corrupted, gender = [], [], []
        for template in templates:
            for g, other in (("male", "female"), ("female", "male")):
                for name in names[g]:
                    sub = filler if filler is not None else rng.choice(names[other])
                    clean.append(template.format(name=name))
                    corrupted.append(template.format(name=sub))
                    gender.append(g)
        return PronounPrompts(tuple(clean), tuple(corrupted), tuple(gender), names, templates, filler)

    def holdout(self, model: Any, seed: int = 0) -> TaskData:
        """The held-out prompts of ``seed``: the templates and names of the pools that
        :meth:`drawn` did not draw (for seed 0, :data:`HOLDOUT_TEMPLATES` with
        :data:`HOLDOUT_NAMES`), so none is in the discovery prompts (issue 24)."""
        templates, names = self.drawn(seed)
        rest_t = tuple(t for t in _unique(self.templates + HOLDOUT_TEMPLATES) if t not in templates)
        rest_n = {g: tuple(n for n in _unique(self.names.get(g, ()) + HOLDOUT_NAMES[g]) if n not in names[g])
                  for g in GENDERS}  # fmt: skip
        other = type(self)(self.corruption, strict=self.strict, prepend_bos=self.prepend_bos,
                           templates=rest_t or HOLDOUT_TEMPLATES, names=rest_n)  # fmt: skip
        return other.data(model, seed)

    def data(self, model: Any, seed: int = 0) -> TaskData:
        tok = _lm.tokenizer_of(model)
        bos = _lm.wants_bos(model, self.prepend_bos)
        answer = self._answer_ids(tok)
        p = self.prompts(model, seed)
        clean = [_lm.encode(tok, t, bos) for t in p.clean]
        corrupted = [_lm.encode(tok, t, bos) for t in p.corrupted]
        # The name sits right after the template's prefix ("So").
        name_pos = len(_lm.encode(tok, p.templates[0].split("{name}")[0].rstrip(), bos))
        texts: dict[str, Any] = {"clean_text": p.clean, "corrupted_text": p.corrupted, "task": self.name}
        _lm.check_alignment(clean, corrupted, tok, **texts)  # one length for all
        positions = _lm.name_positions(clean, tok, fixed={name_pos: "name"}, bos=bos)
        _lm.check_alignment(clean, corrupted, tok, positions, may_differ={"name"}, **texts)
        n = len(clean)
        other = {"male": "female", "female": "male"}
        return TaskData(
            clean=torch.tensor(clean),
            corrupted=torch.tensor(corrupted),
            answer_pos=torch.full((n, 1), len(clean[0]) - 1),
            correct=torch.tensor([[answer[g]] for g in p.gender]),
            wrong=torch.tensor([[answer[other[g]]] for g in p.gender]),
            position_names=positions,
        )


class PronounOppositeTask(PronounTask):
    """The pronoun task with an opposite-gender name as the counterfactual."""

    name = "pronoun-opposite"
    description = "gendered pronoun, corrupted by a name of the other gender (the control for 'pronoun')"
    corruption = "opposite-gender"


__all__ = ["CORRUPTIONS", "HOLDOUT_NAMES", "HOLDOUT_TEMPLATES", "PronounOppositeTask", "PronounPrompts", "PronounTask"]
