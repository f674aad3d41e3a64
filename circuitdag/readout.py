"""From a pass's final residual stream to the metric (DESIGN.md, patching: metrics).

Every pass of the engine stops at the final residual stream
(:meth:`~circuitdag.hooks.HookTable.run_to_final`); :class:`Readout` unembeds it at the
task's answer positions only and applies the metric against the clean run's reference
(:class:`~circuitdag.metrics.MetricRef`). Metrics that read only a few vocabulary entries
(``logit_diff``: the correct and wrong answers) unembed only those columns, a shortcut
checked once against the model's own unembedding on the clean run. The same readout
serves a batch of ``k`` candidate circuits, a chunk of the prompts (attribution, the
masked pass) and gradients (nothing in it is in-place).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from jaxtyping import Float, Int
from torch import Tensor

from circuitdag.components import plain_module, whole_blocks
from circuitdag.metrics import MetricRef, check_finite, logit_diff


def at_answers(x: Float[Tensor, "k batch pos dim"], answer_pos: Int[Tensor, "batch n_ans"],
               positions: Tensor | None = None) -> Float[Tensor, "k batch n_ans dim"]:  # fmt: skip
    """``x`` (logits or residuals) at the answer positions (``x`` holding only the sorted
    ``positions`` when given)."""
    ap = answer_pos if positions is None else torch.searchsorted(positions, answer_pos)
    rows = torch.arange(ap.shape[0], device=ap.device).unsqueeze(1)
    return x[:, rows, ap]


def sub_ref(ref: MetricRef, prompts: slice | None) -> MetricRef:
    """The reference of the prompts ``prompts`` only (all of them for None)."""
    if prompts is None:
        return ref

    def part(t: Tensor | None) -> Tensor | None:
        return None if t is None else t[prompts]

    return MetricRef(logits=ref.logits[prompts], correct=part(ref.correct), wrong=part(ref.wrong), valid=part(ref.valid))


def tol(ref: Tensor) -> float:
    """Agreement expected of two computations of ``ref``'s value: sqrt(eps) relative."""
    return torch.finfo(ref.dtype).eps ** 0.5 * (1.0 + ref.abs().max().item())


def softcap(model: Any, logits: Tensor) -> Tensor:
    """``cap * tanh(logits / cap)`` for a model that soft-caps its final logits (Gemma 2:
    ``cfg.output_logits_soft_cap``, which the model's forward applies after the unembedding
    and ``model.unembed`` does not); ``logits`` unchanged otherwise."""
    cap = float(getattr(getattr(model, "cfg", None), "output_logits_soft_cap", 0.0) or 0.0)
    return cap * torch.tanh(logits / cap) if cap > 0 else logits


class Readout:
    """The metric of patched runs from their final residual streams (module docstring).

    ``answer_pos``: the task's answer positions (``batch n_ans``); ``ref``: the clean run's
    reference; ``resid_final``: the clean run's final residual stream (``batch pos
    d_model``), against which the answer-column shortcut is checked."""

    def __init__(self, model: Any, metric_fn: Callable, answer_pos: Tensor, ref: MetricRef, resid_final: Tensor) -> None:
        self.model, self.metric_fn, self.answer_pos, self.ref = model, metric_fn, answer_pos, ref
        self._resid_final = resid_final
        self._checked = False
        self._cols: tuple[Any, Tensor, Tensor | None, MetricRef] | None = None

    def answers(self, x: Tensor, positions: Tensor | None = None, prompts: slice | None = None) -> Tensor:
        """``x`` (``k batch pos dim``, the prompts ``prompts``) at their answer positions."""
        return at_answers(x, self.answer_pos if prompts is None else self.answer_pos[prompts], positions)

    def metric_of_answer_logits(self, logits: Float[Tensor, "k batch n_ans vocab"], prompts: slice | None = None) -> Float[Tensor, " k"]:
        vals = self.metric_fn(logits, sub_ref(self.ref, prompts))
        check_finite(vals.detach(), "for a patched forward pass")
        return vals

    def final_metric(self, final: Float[Tensor, "k batch pos d_model"], positions: Tensor | None = None,
                     prompts: slice | None = None) -> Float[Tensor, " k"]:  # fmt: skip
        """The metric of ``k`` patched runs of the prompts ``prompts`` (all for None) from
        their final residual streams (true positions, or only the sorted ``positions``,
        which must hold every answer position)."""
        logits, ref = self._answer_logits(final, positions, prompts)
        vals = self.metric_fn(logits, sub_ref(ref, prompts))
        check_finite(vals.detach(), "for a patched forward pass")
        return vals

    def per_prompt(self, final: Float[Tensor, "batch pos d_model"], prompts: slice | None = None) -> Float[Tensor, " batch"]:
        """The metric of each prompt of one patched run on its own (the metric of prompt
        ``i`` as if the task had that prompt only)."""
        start = 0 if prompts is None else prompts.start or 0
        logits, ref = self._answer_logits(final[None], None, prompts)  # one product for every prompt
        vals = torch.cat([self.metric_fn(logits[:, i : i + 1], sub_ref(ref, slice(start + i, start + i + 1)))
                          for i in range(final.shape[0])])  # fmt: skip
        check_finite(vals.detach(), "for a patched forward pass")
        return vals

    def _answer_logits(self, final: Tensor, positions: Tensor | None, prompts: slice | None) -> tuple[Tensor, MetricRef]:
        """Logits at the answer positions (``k batch n_ans columns``) and the reference they
        are measured against: the answer tokens' columns only where :meth:`_columns` allows,
        else the whole vocabulary."""
        cols = self._columns()
        if cols is None:
            return self.unembed_answers(final, positions, prompts), self.ref
        ln, W_U, b_U, ref = cols
        x = self.answers(final, positions, prompts)  # k batch n_ans d_model
        flat = x.reshape(-1, x.shape[-1])
        logits = (ln(whole_blocks(flat)) @ W_U)[: len(flat)].reshape(*x.shape[:-1], -1)  # whole_blocks: K-free rounding
        if b_U is not None:
            logits = logits + b_U
        return softcap(self.model, logits), ref

    def unembed_answers(self, final: Float[Tensor, "k batch pos d_model"], positions: Tensor | None = None,
                        prompts: slice | None = None) -> Float[Tensor, "k batch n_ans vocab"]:  # fmt: skip
        """Logits at the answer positions only, from the final residual stream."""
        x = self.answers(final, positions, prompts)  # k batch n_ans d_model
        k, b, a, d = x.shape
        rows = whole_blocks(x.reshape(k * b, a, d))  # K-free rounding (components.whole_blocks)
        logits = softcap(self.model, self.model.unembed(self.model.ln_final(rows)))[: k * b]
        return logits.reshape(k, b, a, -1)

    def _columns(self) -> tuple[Any, Tensor, Tensor | None, MetricRef] | None:
        """For ``logit_diff``: the final norm, the unembedding restricted to the answer
        tokens, and the metric's reference with token ids renumbered into those columns;
        None for metrics that need the whole vocabulary, or where the restricted
        unembedding does not reproduce the model's logits on the clean run."""
        if self._checked:
            return self._cols
        self._checked = True
        ref, model = self.ref, self.model
        W_U = getattr(model, "W_U", None)
        if self.metric_fn is not logit_diff or ref.correct is None or ref.wrong is None or not isinstance(W_U, Tensor):
            return None
        try:
            b_U = getattr(model, "b_U", None)
        except AttributeError:
            b_U = None
        with torch.no_grad():  # constants of the readout, also when it is differentiated
            cols = torch.unique(torch.cat([ref.correct.flatten(), ref.wrong.flatten()]))
            sub = (plain_module(model.ln_final), W_U[:, cols].contiguous(),
                   None if not isinstance(b_U, Tensor) else b_U[cols].contiguous(),
                   MetricRef(logits=ref.logits[..., cols], correct=torch.searchsorted(cols, ref.correct),
                             wrong=torch.searchsorted(cols, ref.wrong), valid=ref.valid))  # fmt: skip
            final = self._resid_final.unsqueeze(0)
            x = self.answers(final)
            want = self.unembed_answers(final)[..., cols]
            got = softcap(model, sub[0](x) @ sub[1] + (0 if sub[2] is None else sub[2]))
            if got.shape == want.shape and (got - want).abs().max().item() <= tol(want):
                self._cols = sub
        return self._cols


__all__ = ["Readout", "at_answers", "softcap", "sub_ref", "tol"]
