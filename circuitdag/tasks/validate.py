"""The one check between a task (built-in or plugin) and the engine.

:func:`validate_task_data` runs on every task's data before the engine caches a run
(:func:`circuitdag.prepare.prepare`, which ``discover``, ``sweep``, ``roc``, ``curve`` and the
Python API all go through). It refuses, with a one-line :class:`TaskError` naming the
prompt, the position and the value, data the model cannot run or that makes the result
meaningless:

* token ids the model cannot embed (outside ``0..d_vocab-1``);
* answer tokens it cannot unembed (outside ``0..d_vocab_out-1``), in the slots that count;
* answer positions outside the prompt, or inside the padding at its end;
* answer slots all marked invalid (no metric can be read);
* corrupted prompts identical to the clean ones under resample ablation (nothing to
  patch: every circuit would be empty).

:func:`check_metric_gap` runs once the engine has the model's metric: it refuses a full
model whose metric equals the corrupted run's (faithfulness undefined) and warns, with
both numbers, when they barely differ: the model hardly does the task, so any circuit
explains little, and faithfulness or a neuron's share of the gap is a ratio of two
near-zero numbers (a random StableLM's 0.001-logit gap gave faithfulness 49.4). "Barely"
is relative (:data:`WEAK_GAP` of the larger metric) and, for metrics with a natural unit,
absolute in that unit (:data:`WEAK_GAP_FLOOR`): a logit difference or log-probability
that moves by under 0.1 (the odds of the answer change by under 11%), a probability that
moves by under 0.01. It returns the warnings' messages, which ``circuit.json`` and the
neuron report record and the CLI prints as ``circuitdag: warning: ...`` lines. Corrupted prompts equal to their clean prompt for some prompts only get
a warning too.
"""

from __future__ import annotations

import math
import warnings
from typing import Any

import numpy as np
import torch
from torch import Tensor

from circuitdag.errors import TaskError
from circuitdag.tasks.base import TaskData

__all__ = ["WEAK_GAP", "WEAK_GAP_FLOOR", "check_metric_gap", "validate_task_data"]

#: ``|metric(corrupted) - metric(full)|`` at or below this fraction of the larger of the
#: two, or below the metric's floor (:data:`WEAK_GAP_FLOOR`, else :data:`WEAK_GAP_ABS`),
#: counts as "barely differs" (a warning).
WEAK_GAP = 0.05
WEAK_GAP_ABS = 1e-3
#: The smallest gap that means the model does the task, in the metric's own unit:
#: logits for ``logit_diff`` and nats for ``nll`` (0.1: the odds of the answer change by
#: a factor under e^0.1 = 1.105; models that do a task move it by several logits, e.g. the
#: zoo pronoun model 13.3), probability for ``prob``. Metrics without a natural unit (KL
#: against the model's own output, l2, a task's own metric) have :data:`WEAK_GAP_ABS`.
WEAK_GAP_FLOOR = {"logit_diff": 0.1, "nll": 0.1, "prob": 0.01}


def _first(mask: Tensor) -> tuple[int, ...]:
    return tuple(int(i) for i in mask.nonzero()[0])


def _token(tokenizer: Any, token_id: int) -> str:
    try:
        return str(tokenizer.convert_ids_to_tokens([token_id])[0])
    except Exception:  # noqa: BLE001 -- only for the message
        return str(token_id)


def validate_task_data(data: TaskData, model: Any, ablation: str = "resample", task: str = "task") -> None:
    """Refuse task data the model cannot run or that makes the result meaningless (see
    the module doc); raises :class:`TaskError`. ``task`` names the task in messages."""
    cfg = getattr(model, "cfg", None)
    d_vocab = int(getattr(cfg, "d_vocab", 0) or 0)
    d_vocab_out = int(getattr(cfg, "d_vocab_out", 0) or 0)
    if d_vocab_out <= 0:
        d_vocab_out = d_vocab
    B, P = data.clean.shape
    if B == 0 or P == 0:
        raise TaskError(f"{task}: the task gave no prompts ({B} prompts of {P} tokens)")

    if d_vocab > 0:
        for kind, tokens in (("clean", data.clean), ("corrupted", data.corrupted)):
            bad = (tokens < 0) | (tokens >= d_vocab)
            if bool(bad.any()):
                i, p = _first(bad)
                raise TaskError(
                    f"{task}: {kind} prompt {i} has token id {int(tokens[i, p])} at position {p}, but the model "
                    f"embeds ids 0..{d_vocab - 1} only; build the prompts with this model's tokenizer"
                )

    valid = data.valid if data.valid is not None else torch.ones_like(data.answer_pos, dtype=torch.bool)
    if not bool(valid.any()):
        raise TaskError(
            f"{task}: every answer slot is marked invalid (valid is False for all {valid.numel()} slots), so no "
            "metric can be read; mark the slots that hold answers valid"
        )

    ap = data.answer_pos
    bad = ((ap < 0) | (ap >= P)) & valid
    if bool(bad.any()):
        i, j = _first(bad)
        raise TaskError(
            f"{task}: prompt {i} reads answer {j} at position {int(ap[i, j])}, outside its {P} tokens "
            f"(positions 0..{P - 1}); answer positions index the prompt's tokens"
        )

    for name in ("correct", "wrong"):
        answers = getattr(data, name)
        if answers is None or d_vocab_out <= 0:
            continue
        bad = ((answers < 0) | (answers >= d_vocab_out)) & valid
        if bool(bad.any()):
            i, j = _first(bad)
            raise TaskError(
                f"{task}: the {name} answer of prompt {i} (slot {j}, position {int(ap[i, j])}) is token id "
                f"{int(answers[i, j])}, but the model's logits cover ids 0..{d_vocab_out - 1} only"
            )

    tokenizer = getattr(model, "tokenizer", None)
    pad = getattr(tokenizer, "pad_token_id", None) if tokenizer is not None else None
    if pad is not None:
        _check_not_padding(data.clean, ap, valid, int(pad), tokenizer, task)

    same = (data.clean == data.corrupted).all(dim=1)
    if ablation == "resample" and bool(same.all()):
        raise TaskError(
            f"{task}: the corrupted prompts are identical to the clean ones (all {B}), so resample ablation "
            "changes nothing and every circuit would be empty; give corrupted prompts that differ, or use "
            "--ablation zero or mean"
        )
    if ablation == "resample" and bool(same.any()):
        warnings.warn(
            f"{task}: {int(same.sum())} of {B} corrupted prompts are identical to their clean prompt (the first "
            f"is prompt {int(same.nonzero()[0, 0])}); they add nothing to the metric gap, and the circuit will "
            "explain less of the behaviour than the number of prompts suggests",
            UserWarning,
            stacklevel=3,
        )


def _check_not_padding(clean: Tensor, ap: Tensor, valid: Tensor, pad: int, tokenizer: Any, task: str) -> None:
    """Refuse an answer read inside the run of pad tokens that ends a prompt."""
    P = clean.shape[1]
    is_pad = (clean == pad).cpu().numpy()
    # Start of the trailing run of pad tokens in each prompt (P when it does not end in one).
    trailing = np.cumprod(is_pad[:, ::-1], axis=1)[:, ::-1]
    start = P - trailing.sum(axis=1)
    bad = (ap.cpu().numpy() >= start[:, None]) & valid.cpu().numpy()
    if bad.any():
        i, j = (int(x) for x in np.argwhere(bad)[0])
        raise TaskError(
            f"{task}: prompt {i} reads answer {j} at position {int(ap[i, j])}, which is padding (token "
            f"{_token(tokenizer, pad)!r} from position {int(start[i])} on); read each answer at its prompt's "
            "last real token"
        )


def check_metric_gap(m_full: float, m_corrupted: float, metric: str, ablation: str, task: str = "task") -> list[str]:
    """Refuse a full model whose metric equals the corrupted run's (:class:`TaskError`), warn
    (``UserWarning``) when the full model does not prefer the correct answer
    (``logit_diff``) and, independently, when the two barely differ (:data:`WEAK_GAP`,
    :data:`WEAK_GAP_FLOOR`); both numbers are in each message. Returns the messages warned."""
    both = f"metric {metric}: full model {m_full:.6g}, {ablation}-ablated {m_corrupted:.6g}"
    gap = abs(m_corrupted - m_full)
    if not (math.isfinite(m_full) and math.isfinite(m_corrupted)):
        raise TaskError(f"{task}: the metric is not finite ({both}); check the task's answer tokens")
    if gap == 0:
        raise TaskError(
            f"{task}: the full model and the {ablation}-ablated model have the same metric ({both}), so every "
            "edge is removable and faithfulness is undefined; choose another metric, ablation or corruption"
        )
    said: list[str] = []
    if metric == "logit_diff" and m_full >= 0:  # stored negated: the full model favours the wrong answer
        said.append(
            f"{task}: the full model does not prefer the correct answer on average ({both}; logit_diff is "
            "stored negated, so a model that does the task has a negative value); a circuit of it explains "
            "nothing about the task. Check the model (is it trained?), the answers and --prepend-bos"
        )
    floor = WEAK_GAP_FLOOR.get(metric, WEAK_GAP_ABS)
    if gap <= WEAK_GAP * max(abs(m_full), abs(m_corrupted)) or gap < floor:
        unit = {"logit_diff": " logits", "nll": " nats"}.get(metric, "")
        said.append(
            f"{task}: the model barely does this task ({both}, a gap of {gap:.3g}{unit}"
            + (f", under {floor:g}{unit}" if gap < floor else "")
            + "); faithfulness and effects as fractions of this gap are not meaningful. Check the model "
            "(is it trained?), its prompts (--prepend-bos) and the corruption"
        )
    for message in said:
        warnings.warn(message, UserWarning, stacklevel=3)
    return said
