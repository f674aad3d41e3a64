"""The greater-than task (Hanna et al. 2023, "How does GPT-2 compute greater-than?").

Prompts are ``The {noun} lasted from the year {XX}{YY} to the year {XX}``: a noun from
:data:`NOUNS`, a century XX from 11 to 17 (as in the paper) and a start year YY; the model
should continue with an end year greater than the start. The metric is the paper's
probability difference

    sum over years y > YY of P(y)  -  sum over years y <= YY of P(y)

at the last position. How the next token spells a year depends on the tokenizer, so the
task reads it off the tokenizer and uses one of two schemes:

``"two-digit"`` (GPT-2, the original)
    years are single tokens ``"00"`` ... ``"99"`` after `` 17``: the answers are those 100
    tokens and YY is drawn from 02 to 98, as in the paper.
``"digit"`` (SmolLM2, Llama-2, Qwen, ...: numbers split into single digits)
    the next token is only the tens digit of the end year. The start year is then always
    ``{XX}{t}9`` with tens digit t drawn from 1 to 8 (years 19, 29, ..., 89): with units
    digit 9, an end year is greater than the start exactly when its tens digit is greater
    than t, so the probability difference over the ten digit tokens,
    ``sum_{d > t} P(d) - sum_{d <= t} P(d)``, is exactly the paper's metric for the
    two-token end year (the units digit that follows cannot change the comparison). Any
    other units digit would make the tens digit t ambiguous (1732 -> 173? can end below or
    above), and ending the prompt after the end year's tens digit would test only the
    units digit.

Any other spelling (e.g. Llama-3's three-digit number tokens) is refused with the tokens
shown.

Corruption: the paper's "01-99" counterfactual: the start year's last two digits become
``01`` (``1739`` -> ``1701``), so that every end year the model might give is greater and
the prompt no longer says where the boundary is. Only the YY position(s) differ.

Metric. ``default_metric`` is ``"task"``: :meth:`GreaterThanTask.metric` returns the
negated probability difference (lower is closer to the full model; see
:func:`prob_diff`), the paper's metric. ``correct``/``wrong`` are the answer just above and
at the boundary (digit t+1 and t, or YY+1 and YY), so ``--metric logit_diff`` works too.
The metric needs the ordered answer tokens of the model's tokenizer: :meth:`data` records
them on the task (``prepare`` always builds the data before the metric runs), and the
metric refuses ``wrong`` tokens that are not among them.

Positions. The start year is ``XX YY`` (two-digit scheme) or ``XX1 XX2 YY1 YY2`` (digit
scheme), a token that is only a space (SmolLM2's ``Ġ`` in front of the digits) is
``space``, the end year's century ends at ``end``, where the answer is read. On SmolLM2::

    The noun lasted from the year space XX1 XX2 YY1 YY2 to the_2 year_2 space_2 XX1_2 end
"""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from jaxtyping import Float, Int
from torch import Tensor

from circuitdag.errors import TaskError
from circuitdag.metrics import MetricRef, _mean
from circuitdag.tasks import _lm
from circuitdag.tasks.base import Task, TaskData

#: Event nouns that "last"; the ones that are single tokens for the model are used.
NOUNS: tuple[str, ...] = (
    "war", "expedition", "drought", "siege", "reign", "famine", "journey", "treaty", "trial",
    "project", "voyage", "campaign", "dynasty", "rebellion", "plague", "strike", "occupation",
    "crisis", "conflict", "empire", "revolution", "festival", "study", "program", "marriage",
    "alliance", "partnership", "construction", "investigation", "era", "period", "exile",
    "movement", "tour", "epidemic", "boom", "recession",
)  # fmt: skip
CENTURIES: tuple[int, ...] = tuple(range(11, 18))
TEMPLATE = "The {noun} lasted from the year {XX}{YY} to the year {XX}"
SCHEMES = ("two-digit", "digit")
#: The corrupted start year's last two digits (the paper's "01-99" counterfactual).
CORRUPTED_YY = 1


def prob_diff(
    logits: Float[Tensor, "k batch n_ans vocab"],
    boundary: Int[Tensor, "batch n_ans"],
    answers: Int[Tensor, " n_values"],
) -> Float[Tensor, "k batch n_ans"]:
    """``P(answer > boundary) - P(answer <= boundary)`` per candidate and slot.

    ``answers[v]`` is the token of value ``v`` (the digit ``v``, or the year ``v`` in the
    two-digit scheme); ``boundary`` holds values. Probabilities are over the whole
    vocabulary, so mass on non-answer tokens counts on neither side.
    """
    p = logits.softmax(-1)[..., answers.to(logits.device)]
    values = torch.arange(len(answers), device=logits.device)
    sign = torch.where(values > boundary.to(logits.device).unsqueeze(-1), 1.0, -1.0).to(p.dtype)
    return (p * sign).sum(-1)


@dataclass(frozen=True)
class YearScheme:
    """How the model's tokenizer spells the end year's next token."""

    name: str  # "two-digit" or "digit"
    answers: tuple[int, ...]  # the token of each value (100 years or 10 digits)

    def boundary(self, yy: int) -> int:
        """The value at the boundary for start year ``yy`` (its tens digit when digits)."""
        return yy if self.name == "two-digit" else yy // 10

    def start_years(self) -> tuple[int, ...]:
        return tuple(range(2, 99)) if self.name == "two-digit" else tuple(10 * t + 9 for t in range(1, 9))


class GreaterThanTask(Task):
    """Greater-than on years with the "01" counterfactual (see the module doc)."""

    name = "greater-than"
    description = "greater-than: 'The war lasted from the year 1739 to the year 17' -> 4..9; start year -> 01"
    default_model = "smollm2-135m"
    default_metric = "task"
    # SmolLM2's probability difference is 0.95 on the clean prompts (docs/tasks.md); the
    # metric lies in [-1, 1], and 0.01 keeps the edges that each move about 1% of it.
    default_threshold = 0.01
    default_ablation = "resample"
    n_prompts = 100

    def __init__(
        self,
        *,
        n_prompts: int | None = None,
        strict: bool = False,
        prepend_bos: bool | None = None,
        nouns: Sequence[str] = NOUNS,
        centuries: Sequence[int] = CENTURIES,
    ) -> None:
        bad = [c for c in centuries if not 10 <= int(c) <= 99]
        if bad or not centuries or not nouns:
            raise TaskError(
                f"greater-than: centuries must be two-digit numbers and nouns non-empty, got {bad}"
            )
        self.n_prompts = int(n_prompts if n_prompts is not None else type(self).n_prompts)
        if self.n_prompts < 1:
            raise TaskError(f"greater-than: n_prompts must be at least 1, got {self.n_prompts}")
        self.strict = strict
        self.prepend_bos = prepend_bos
        self.nouns = tuple(nouns)
        self.centuries = tuple(int(c) for c in centuries)
        self._answers: tuple[int, ...] | None = None

    def load_model(self, device: str = "cpu", dtype: torch.dtype = torch.float32) -> Any:
        from circuitdag.models import load_model

        return load_model(self.default_model, device=device, dtype=dtype)

    # ------------------------------------------------------------------ tokenizer
    def _encode(self, tok: Any, bos: bool, noun: str, xx: int, yy: int) -> tuple[list[int], list[int]]:
        """The prompt's tokens and where its segments end: prefix, century, YY, middle, end.

        Cuts are found by encoding growing prefixes of the text, and refused unless the
        tokens of each prefix are the start of the whole prompt's tokens."""
        full = TEMPLATE.format(noun=noun, XX=xx, YY=f"{yy:02d}")
        start = full.index(f" {xx}{yy:02d}")
        ids = _lm.encode(tok, full, bos)
        ends = []
        for cut in (start, start + 3, start + 5, len(full) - 3, len(full)):
            head = _lm.encode(tok, full[:cut], bos)
            if ids[: len(head)] != head:
                raise TaskError(
                    f"{self.name}: this tokenizer spells {full!r} as {_lm.token_strings(tok, ids)} but "
                    f"{full[:cut]!r} as {_lm.token_strings(tok, head)}; the task needs the years to "
                    "split into the century and the last two digits (two-digit year tokens like "
                    "GPT-2's, or one token per digit)"
                )
            ends.append(len(head))
        return ids, ends

    def scheme(self, model: Any) -> YearScheme:
        """How ``model``'s tokenizer spells a year's last two digits (see the module doc)."""
        tok = _lm.tokenizer_of(model)
        bos = _lm.wants_bos(model, self.prepend_bos)

        def yy_tokens(yy: int) -> list[int]:
            ids, ends = self._encode(tok, bos, self.nouns[0], self.centuries[0], yy)
            return ids[ends[1] : ends[2]]

        probe = yy_tokens(39)
        shown = _lm.token_strings(tok, probe)
        if len(probe) == 1:
            years = [yy_tokens(v) for v in range(100)]
            split = [f"{v:02d}" for v, a in enumerate(years) if len(a) != 1]
            if split:
                raise TaskError(f"{self.name}: years {', '.join(split)} are not single tokens for this model")
            return YearScheme("two-digit", tuple(a[0] for a in years))
        if len(probe) == 2 and [s[-1:] for s in shown] == ["3", "9"]:
            return YearScheme("digit", tuple(yy_tokens(10 * d + 9)[0] for d in range(10)))
        raise TaskError(
            f"{self.name}: this tokenizer spells the year's last two digits '39' as {shown}; the task "
            "needs one token for both digits (GPT-2) or one token per digit (SmolLM2)"
        )

    # ------------------------------------------------------------------ data
    def data(self, model: Any, seed: int = 0) -> TaskData:
        tok = _lm.tokenizer_of(model)
        bos = _lm.wants_bos(model, self.prepend_bos)
        nouns = tuple(
            n
            for n in self.nouns
            if len(_lm.word_tokens(tok, n)) == 1 and _lm.single_token(tok, n) is not None
        )
        dropped = [
            f"{n} -> {_lm.token_strings(tok, _lm.word_tokens(tok, n))}" for n in self.nouns if n not in nouns
        ]
        _lm.drop_or_refuse(self.name, "nouns", dropped, len(self.nouns), "are not single tokens", self.strict)
        scheme = self.scheme(model)
        rng = random.Random(seed)
        clean: list[list[int]] = []
        corrupted: list[list[int]] = []
        clean_text: list[str] = []
        corrupted_text: list[str] = []
        bounds: list[int] = []
        for _ in range(self.n_prompts):
            noun, xx, yy = rng.choice(nouns), rng.choice(self.centuries), rng.choice(scheme.start_years())
            clean.append(self._encode(tok, bos, noun, xx, yy)[0])
            corrupted.append(self._encode(tok, bos, noun, xx, CORRUPTED_YY)[0])
            clean_text.append(TEMPLATE.format(noun=noun, XX=xx, YY=f"{yy:02d}"))
            corrupted_text.append(TEMPLATE.format(noun=noun, XX=xx, YY=f"{CORRUPTED_YY:02d}"))
            bounds.append(scheme.boundary(yy))
        texts: dict[str, Any] = {
            "clean_text": clean_text,
            "corrupted_text": corrupted_text,
            "task": self.name,
        }
        _lm.check_alignment(clean, corrupted, tok, **texts)  # one length for all
        fixed = self._fixed_names(tok, bos, nouns[0], scheme)
        positions = _lm.name_positions(clean, tok, fixed=fixed, bos=bos)
        yy_names = {name for name in fixed.values() if name.startswith("YY")}
        _lm.check_alignment(clean, corrupted, tok, positions, may_differ=yy_names, **texts)
        self._answers = scheme.answers
        answers = torch.tensor(scheme.answers)
        b = torch.tensor(bounds).unsqueeze(1)
        return TaskData(
            clean=torch.tensor(clean),
            corrupted=torch.tensor(corrupted),
            answer_pos=torch.full((len(clean), 1), len(clean[0]) - 1),
            correct=answers[b + 1],
            wrong=answers[b],
            position_names=positions,
        )

    def _fixed_names(self, tok: Any, bos: bool, noun: str, scheme: YearScheme) -> dict[int, str]:
        """Names of the noun, the years' tokens and the last position (see the module doc)."""
        ids, ends = self._encode(tok, bos, noun, self.centuries[0], scheme.start_years()[0])
        fixed = {len(_lm.encode(tok, TEMPLATE.split("{noun}")[0].rstrip(), bos)): "noun"}
        # Segments 1, 2, 4 are the century, YY, and the end year's century.
        for seg, label in ((1, "XX"), (2, "YY"), (4, "XX")):
            span = range(ends[seg - 1], ends[seg])
            digits = [p for p in span if any(c.isdigit() for c in _lm.token_strings(tok, [ids[p]])[0])]
            for p in span:
                if p not in digits:
                    fixed[p] = "space"
                else:
                    fixed[p] = label if len(digits) == 1 else f"{label}{digits.index(p) + 1}"
        fixed[len(ids) - 1] = "end"
        return fixed

    # ------------------------------------------------------------------ metric
    def metric(self) -> Callable[[Tensor, MetricRef], Tensor]:
        """The negated probability difference (see :func:`prob_diff`), mean over prompts."""
        return self._neg_prob_diff

    def _neg_prob_diff(
        self, logits: Float[Tensor, "k batch n_ans vocab"], ref: MetricRef
    ) -> Float[Tensor, " k"]:
        if self._answers is None or ref.wrong is None:
            raise TaskError(
                f"{self.name}: the metric needs the task's data first (build it with data(model))"
            )
        answers = torch.tensor(self._answers, device=ref.wrong.device)
        match = ref.wrong.unsqueeze(-1) == answers
        if not bool(match.any(-1).all()):
            raise TaskError(
                f"{self.name}: the 'wrong' tokens are not this task's answer tokens; the metric was built "
                "for another model's data (call data(model) for the model being patched)"
            )
        return -_mean(prob_diff(logits, match.int().argmax(-1), answers), ref)


__all__ = ["CENTURIES", "NOUNS", "SCHEMES", "TEMPLATE", "GreaterThanTask", "YearScheme", "prob_diff"]
