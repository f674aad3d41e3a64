"""Metrics: how far a patched model is from the full model. Lower is closer.

Every metric has the signature ``metric(logits, ref) -> Tensor[k]`` where ``logits`` are
the patched model's logits at the task's answer positions for ``k`` candidate circuits
at once, shape ``(k, batch, n_ans, vocab)``, and ``ref`` holds the full model's
clean-run values. Metrics that a task wants maximised (logit difference, probability of
the answer) are negated here, so ACDC can always treat "lower" as "more like the full
model". ``valid`` masks answer slots that do not count (e.g. padding).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from jaxtyping import Bool, Float, Int
from torch import Tensor

from circuitdag.errors import MetricError


@dataclass(frozen=True)
class MetricRef:
    """The full model's clean-run outputs the metrics compare against."""

    logits: Float[Tensor, "batch n_ans vocab"]
    correct: Int[Tensor, "batch n_ans"] | None
    wrong: Int[Tensor, "batch n_ans"] | None
    valid: Bool[Tensor, "batch n_ans"] | None

    @property
    def logprobs(self) -> Tensor:
        return self.logits.log_softmax(-1)


Metric = Callable[[Float[Tensor, "k batch n_ans vocab"], MetricRef], Float[Tensor, " k"]]


def _mean(x: Float[Tensor, "k batch n_ans"], ref: MetricRef) -> Float[Tensor, " k"]:
    if ref.valid is None:
        return x.mean(dim=(1, 2))
    w = ref.valid.to(x.dtype)
    return (x * w).sum(dim=(1, 2)) / w.sum()


def _need(ref: MetricRef, field: str, metric: str) -> Tensor:
    t = getattr(ref, field)
    if t is None:
        raise MetricError(f"metric {metric!r} needs the task's {field!r} answer tokens; use --metric kl")
    return t


def kl(logits: Tensor, ref: MetricRef) -> Tensor:
    """KL(full || patched): from the full model's next-token distribution on the clean
    prompt to the patched model's, mean over answer slots."""
    clean = ref.logprobs
    patched = logits.log_softmax(-1)
    per = (clean.exp() * (clean - patched)).sum(-1)
    return _mean(per, ref)


def logit_diff(logits: Tensor, ref: MetricRef) -> Tensor:
    """Negated mean logit difference correct - wrong."""
    c, w = _need(ref, "correct", "logit_diff"), _need(ref, "wrong", "logit_diff")
    k = logits.shape[0]
    lc = logits.gather(-1, c.expand(k, *c.shape).unsqueeze(-1)).squeeze(-1)
    lw = logits.gather(-1, w.expand(k, *w.shape).unsqueeze(-1)).squeeze(-1)
    return -_mean(lc - lw, ref)


def prob(logits: Tensor, ref: MetricRef) -> Tensor:
    """Negated mean probability of the correct answer."""
    c = _need(ref, "correct", "prob")
    p = logits.softmax(-1).gather(-1, c.expand(logits.shape[0], *c.shape).unsqueeze(-1)).squeeze(-1)
    return -_mean(p, ref)


def nll(logits: Tensor, ref: MetricRef) -> Tensor:
    """Mean negative log-probability of the correct answer."""
    c = _need(ref, "correct", "nll")
    lp = logits.log_softmax(-1).gather(-1, c.expand(logits.shape[0], *c.shape).unsqueeze(-1)).squeeze(-1)
    return -_mean(lp, ref)


def l2(logits: Tensor, ref: MetricRef) -> Tensor:
    """Mean Euclidean distance between patched and clean output vectors (tracr)."""
    # vector_norm, not pow-sum-sqrt: its gradient at distance 0 is 0 rather than NaN
    # (attribution differentiates the metric at the clean run, where the distance is 0).
    return _mean(torch.linalg.vector_norm(logits - ref.logits, dim=-1), ref)


METRICS: dict[str, Metric] = {"kl": kl, "logit_diff": logit_diff, "prob": prob, "nll": nll, "l2": l2}


#: What the stored metric values are, per built-in metric: every value in circuit.json and
#: in ``discover``'s summary is this quantity (lower is closer to the full model).
STORED_AS: dict[str, str] = {
    "kl": "KL(full || patched)",
    "logit_diff": "-(logit[correct] - logit[wrong])",
    "prob": "-P(correct)",
    "nll": "-log P(correct)",
    "l2": "||patched - full||",
    "task": "the task's own metric",
}


def get_metric(name_or_fn: str | Metric) -> Metric:
    """The metric called ``name_or_fn`` (or the callable itself). ``"task"`` needs the task,
    so it is resolved by :func:`resolve_metric`."""
    if callable(name_or_fn):
        return name_or_fn
    try:
        return METRICS[name_or_fn]
    except KeyError:
        if name_or_fn == "task":
            raise MetricError("metric 'task' means the task's own metric; resolve it with "
                              "circuitdag.metrics.resolve_metric(task, 'task')") from None  # fmt: skip
        raise MetricError(f"unknown metric {name_or_fn!r}; choose one of {', '.join((*METRICS, 'task'))}") from None


def resolve_metric(task: object, name: str | Metric | None) -> Metric:
    """The metric a run of ``task`` uses: ``name`` (a built-in, or ``"task"`` for the
    task's own :meth:`~circuitdag.tasks.Task.metric`), or the task's default when None."""
    name = name or str(getattr(task, "default_metric", "kl"))
    if name != "task":
        return get_metric(name)
    fn = task.metric() if callable(getattr(task, "metric", None)) else None  # type: ignore[attr-defined]
    if fn is None:
        raise MetricError(f"task {getattr(task, 'name', task)!r} has no metric of its own, so --metric task cannot "
                          f"be used with it; choose one of {', '.join(METRICS)}")  # fmt: skip
    return fn


def check_finite(values: Tensor, what: str) -> None:
    if not torch.isfinite(values).all():
        raise MetricError(
            f"the metric is not finite ({values.flatten()[:4].tolist()}) {what}; check the task's "
            "answer tokens and the model dtype (float16 overflows easily: try --dtype float32)"
        )
