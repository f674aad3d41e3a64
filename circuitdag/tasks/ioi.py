"""The indirect-object-identification task (Wang et al. 2022, "Interpretability in the Wild").

Clean prompts name two people and then one of them again; the model should complete the
sentence with the *other* one, the indirect object (IO)::

    When Mary and John went to the store, John gave a drink to      -> " Mary"   (ABBA)
    When John and Mary went to the store, John gave a drink to      -> " Mary"   (BABA)

Five templates in the paper's style (``When/After/While/As ... the {place}, {S2} gave a
{object} to``), the paper's eight places (store, garden, restaurant, ...) and eight objects
(ring, kiss, drink, ...), and :data:`NAMES`, 60 common first names. Prompt ``i`` uses order
``orders[i % len(orders)]`` (ABBA, BABA, ABBA, ...) and template ``i // len(orders)``
cyclically; the two names, the place and the object are drawn with ``random.Random(seed)``.

Corruption: the "ABC" distribution of the IOI paper, exactly as ACDC builds it
(``gen_flipped_prompts`` of IO, S and S1 to random names): the same sentence, template,
place and object with all three name mentions replaced by three *distinct* names, none of
them the prompt's IO or S (``When Alice and Paul went to the store, Kate gave a drink
to``). It keeps the sentence and the fact that a name is due, and removes which name:
the full model's logit difference IO - S on it is about 0.

Metric: ``logit_diff`` at the last position, ``correct`` = the IO token, ``wrong`` = the S
token.

Positions. Position-aware mode needs one token layout for every prompt, but ABBA and BABA
put IO and S1 at swapped positions. With both orders (the default) the two first name
slots are named by place, not role: ``name1`` and ``name2``; the third mention is always
the subject, ``S2``; the last position (``to``, where the answer is read) is ``end``;
``place`` and ``object`` are the varying nouns; the rest are named by
:func:`~circuitdag.tasks._lm.name_positions`. On SmolLM2::

    w1 name1 and name2 w2 w3 the place comma S2 w4 a object end

With a single order (``IOITask(orders=("ABBA",))``) every prompt has IO and S1 at the same
positions, and they are named by role: ``IO`` and ``S1`` (ABBA: ``w1 IO and S1 ...``).

Names, places, objects that are not single tokens for the model's tokenizer are dropped
with a warning naming them (``strict=True`` refuses instead); fewer than :data:`MIN_NAMES`
names left is an error (ABC needs three names besides IO and S). Templates whose layout
(length and slot positions) differs from the most common one are dropped the same way.
"""

from __future__ import annotations

import random
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

from circuitdag.errors import TaskError
from circuitdag.tasks import _lm
from circuitdag.tasks.base import Task, TaskData

#: Common first names (men's and women's); the ones that are single tokens for the
#: model are used.
NAMES: tuple[str, ...] = (
    "John", "Mary", "James", "Sarah", "David", "Emma", "Michael", "Anna", "Robert", "Lisa",
    "Thomas", "Kate", "Daniel", "Laura", "Paul", "Rachel", "Mark", "Alice", "Peter", "Emily",
    "George", "Jessica", "Richard", "Amy", "Andrew", "Helen", "Steven", "Julia", "Kevin", "Susan",
    "Brian", "Rose", "Jason", "Grace", "Eric", "Claire", "Adam", "Linda", "Scott", "Jennifer",
    "Ryan", "Nancy", "Frank", "Karen", "Simon", "Sophie", "Henry", "Lucy", "Martin", "Victoria",
    "Luke", "Hannah", "Jack", "Ruth", "Matthew", "Diana", "Tom", "Maria", "Sam", "Elizabeth",
)  # fmt: skip

#: Prompt templates: ``{name1} {name2} {S2}`` are the name mentions; the prompt ends right
#: before the answer.
TEMPLATES: tuple[str, ...] = (
    "When {name1} and {name2} went to the {place}, {S2} gave a {object} to",
    "After {name1} and {name2} went to the {place}, {S2} gave a {object} to",
    "While {name1} and {name2} were at the {place}, {S2} gave a {object} to",
    "As {name1} and {name2} walked to the {place}, {S2} gave a {object} to",
    "When {name1} and {name2} got to the {place}, {S2} handed a {object} to",
)
#: The IOI paper's places and objects.
PLACES: tuple[str, ...] = ("store", "garden", "restaurant", "school", "hospital", "office", "house", "station")  # fmt: skip
OBJECTS: tuple[str, ...] = ("ring", "kiss", "bone", "basketball", "computer", "necklace", "drink", "snack")  # fmt: skip
ORDERS = ("ABBA", "BABA")
#: IO, S and ABC's three other names.
MIN_NAMES = 5
_NAME_SLOTS = ("name1", "name2", "S2")
_SLOTS = (*_NAME_SLOTS, "place", "object")


@dataclass(frozen=True)
class IOIPrompts:
    """The text side of :meth:`IOITask.data`: prompt pairs, their names and layout."""

    clean: tuple[str, ...]
    corrupted: tuple[str, ...]
    io: tuple[str, ...]  # the indirect object (the answer) per prompt
    s: tuple[str, ...]  # the subject per prompt
    order: tuple[str, ...]  # "ABBA"/"BABA" per prompt
    templates: tuple[str, ...]  # the templates kept
    names: tuple[str, ...]  # the names kept
    slot_pos: dict[str, int]  # token position of each slot (-1: not in the templates)


class IOITask(Task):
    """Indirect object identification with the ABC counterfactual (see the module doc)."""

    name = "ioi"
    description = "IOI: 'When Mary and John went to the store, John gave a drink to' -> Mary; ABC names"
    default_model = "smollm2-135m"
    default_metric = "logit_diff"
    # SmolLM2's mean logit difference IO - S is 5.4 (docs/tasks.md); 0.05 keeps the edges
    # that each carry at least about 1% of it.
    default_threshold = 0.05
    default_ablation = "resample"
    n_prompts = 100

    def __init__(
        self,
        *,
        n_prompts: int | None = None,
        orders: Sequence[str] = ORDERS,
        strict: bool = False,
        prepend_bos: bool | None = None,
        templates: Sequence[str] = TEMPLATES,
        names: Sequence[str] = NAMES,
        places: Sequence[str] = PLACES,
        objects: Sequence[str] = OBJECTS,
    ) -> None:
        bad = [o for o in orders if o not in ORDERS]
        if bad or not orders:
            raise TaskError(f"ioi: orders must be a non-empty subset of {ORDERS}, got {tuple(orders)}")
        for t in templates:
            missing = [s for s in _NAME_SLOTS if "{" + s + "}" not in t]
            if missing:
                raise TaskError(
                    f"ioi: template {t!r} lacks the slot(s) {', '.join('{' + s + '}' for s in missing)}"
                )
        self.n_prompts = int(n_prompts if n_prompts is not None else type(self).n_prompts)
        if self.n_prompts < 1:
            raise TaskError(f"ioi: n_prompts must be at least 1, got {self.n_prompts}")
        if not (names and places and objects):
            raise TaskError("ioi: names, places and objects must not be empty")
        self.orders = tuple(dict.fromkeys(orders))
        self.strict = strict
        self.prepend_bos = prepend_bos
        self.templates = tuple(templates)
        self.names = tuple(names)
        self.places = tuple(places)
        self.objects = tuple(objects)

    def load_model(self, device: str = "cpu", dtype: torch.dtype = torch.float32) -> Any:
        from circuitdag.models import load_model

        return load_model(self.default_model, device=device, dtype=dtype)

    # ------------------------------------------------------------------ text
    def _single_tokens(self, tok: Any, words: tuple[str, ...], what: str) -> tuple[str, ...]:
        # One token after a space, and a known one (word-level tokenizers map unknown words
        # to a single <unk>, which single_token rejects).
        ok = tuple(
            w for w in words if len(_lm.word_tokens(tok, w)) == 1 and _lm.single_token(tok, w) is not None
        )
        dropped = [f"{w} -> {_lm.token_strings(tok, _lm.word_tokens(tok, w))}" for w in words if w not in ok]
        _lm.drop_or_refuse(self.name, what, dropped, len(words), "are not single tokens", self.strict)
        return ok

    def _layout(self, tok: Any, template: str, bos: bool, probe: dict[str, str]) -> tuple[int, ...]:
        """(token count, position of each slot) of ``template`` filled with ``probe``."""
        text = template.format(**probe)
        out = [len(_lm.encode(tok, text, bos))]
        for slot in _SLOTS:
            head, sep, _ = template.partition("{" + slot + "}")
            out.append(len(_lm.encode(tok, head.format(**probe).rstrip(), bos)) if sep else -1)
        return tuple(out)

    def prompts(self, model: Any, seed: int = 0) -> IOIPrompts:
        """The prompt texts :meth:`data` tokenizes, with the names and templates kept."""
        tok = _lm.tokenizer_of(model)
        bos = _lm.wants_bos(model, self.prepend_bos)
        names = self._single_tokens(tok, self.names, "names")
        if len(names) < MIN_NAMES:
            raise TaskError(
                f"{self.name}: only {len(names)} of the names are single tokens for this model "
                f"({', '.join(names) or 'none'}); IOI with the ABC corruption needs at least {MIN_NAMES}"
            )
        places = self._single_tokens(tok, self.places, "places")
        objects = self._single_tokens(tok, self.objects, "objects")
        probe = {
            "name1": names[0],
            "name2": names[1],
            "S2": names[1],
            "place": places[0],
            "object": objects[0],
        }
        layouts = {t: self._layout(tok, t, bos, probe) for t in self.templates}
        common = Counter(layouts.values()).most_common(1)[0][0]
        dropped = [f"{t!r} ({layouts[t][0]} tokens)" for t in self.templates if layouts[t] != common]
        _lm.drop_or_refuse(self.name, "templates", dropped, len(self.templates),
                           "do not share the common token layout", self.strict)  # fmt: skip
        templates = tuple(t for t in self.templates if layouts[t] == common)
        rng = random.Random(seed)
        clean, corrupted, ios, ss, orders = [], [], [], [], []
        for i in range(self.n_prompts):
            order = self.orders[i % len(self.orders)]
            template = templates[(i // len(self.orders)) % len(templates)]
            io, s = rng.sample(names, 2)
            fill = {"place": rng.choice(places), "object": rng.choice(objects)}
            first, second = (io, s) if order == "ABBA" else (s, io)
            clean.append(template.format(name1=first, name2=second, S2=s, **fill))
            a, b, c = rng.sample([n for n in names if n not in (io, s)], 3)
            corrupted.append(template.format(name1=a, name2=b, S2=c, **fill))
            ios.append(io)
            ss.append(s)
            orders.append(order)
        slot_pos = dict(zip(_SLOTS, common[1:]))
        return IOIPrompts(tuple(clean), tuple(corrupted), tuple(ios), tuple(ss), tuple(orders), templates, names,
                          slot_pos)  # fmt: skip

    # ------------------------------------------------------------------ tokens
    def slot_names(self) -> dict[str, str]:
        """Position name of each name slot: role-free with both orders, by role with one."""
        if self.orders == ("ABBA",):
            return {"name1": "IO", "name2": "S1", "S2": "S2"}
        if self.orders == ("BABA",):
            return {"name1": "S1", "name2": "IO", "S2": "S2"}
        return {s: s for s in _NAME_SLOTS}

    def data(self, model: Any, seed: int = 0) -> TaskData:
        tok = _lm.tokenizer_of(model)
        bos = _lm.wants_bos(model, self.prepend_bos)
        p = self.prompts(model, seed)
        clean = [_lm.encode(tok, t, bos) for t in p.clean]
        corrupted = [_lm.encode(tok, t, bos) for t in p.corrupted]
        texts: dict[str, Any] = {"clean_text": p.clean, "corrupted_text": p.corrupted, "task": self.name}
        _lm.check_alignment(clean, corrupted, tok, **texts)  # one length for all
        slot_pos = p.slot_pos
        roles = self.slot_names()
        fixed = {slot_pos[s]: roles[s] for s in _NAME_SLOTS}
        fixed |= {slot_pos[s]: s for s in ("place", "object") if slot_pos[s] >= 0}
        n_pos = len(clean[0])
        fixed[n_pos - 1] = "end"
        positions = _lm.name_positions(clean, tok, fixed=fixed, bos=bos)
        _lm.check_alignment(clean, corrupted, tok, positions, may_differ=set(roles.values()), **texts)
        io = [_lm.word_tokens(tok, n)[0] for n in p.io]
        s = [_lm.word_tokens(tok, n)[0] for n in p.s]
        # The slots must hold the names (a template whose words merge with a name would not).
        for i, (ids, order) in enumerate(zip(clean, p.order)):
            want = {"name1": io[i], "name2": s[i]} if order == "ABBA" else {"name1": s[i], "name2": io[i]}
            want["S2"] = s[i]
            if any(ids[slot_pos[k]] != v for k, v in want.items()):
                raise TaskError(
                    f"{self.name}: prompt {i} does not hold its names at the template's name positions "
                    f"{[slot_pos[k] for k in _NAME_SLOTS]}: {p.clean[i]!r} -> {_lm.token_strings(tok, ids)}"
                )
        n = len(clean)
        return TaskData(
            clean=torch.tensor(clean),
            corrupted=torch.tensor(corrupted),
            answer_pos=torch.full((n, 1), n_pos - 1),
            correct=torch.tensor(io).unsqueeze(1),
            wrong=torch.tensor(s).unsqueeze(1),
            position_names=positions,
        )


__all__ = ["MIN_NAMES", "NAMES", "OBJECTS", "ORDERS", "PLACES", "TEMPLATES", "IOIPrompts", "IOITask"]
