"""The metric of a circuit prompt by prompt, and the dataset metric of any resample of them.

Every built-in metric (:mod:`circuitdag.metrics`) is a weighted mean over answer slots, so
the metric of a circuit on a set of prompts is ``sum_i w_i m_i / sum_i w_i`` with ``m_i``
the metric of prompt ``i`` on its own and ``w_i`` its number of counted answer slots
(``valid``; every slot when the task has no mask). :func:`prompt_metrics` computes ``m_i``
for one circuit with one exact patched pass (the sparse pass of
:meth:`Patcher.circuit_metric <circuitdag.patching.Patcher.circuit_metric>`),
:func:`prompt_weights` the ``w_i``, and :func:`resample_mean` the dataset metric of any
multiset of prompts (a bootstrap resample, a held-out subset) without another pass.
Tested equal to ``circuit_metric`` on every built-in metric. A task's own metric need not
decompose this way; :func:`decomposes` checks it on the full model and the empty circuit.

:func:`prompt_scores` is the same with another metric (the hypothesis tests compare the
circuit and the model on the task's logit difference, where KL, which is 0 for the model
on every prompt, cannot say which of the two did better).
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch

from circuitdag.passes import full_pass
from circuitdag.patching import Patcher
from circuitdag.readout import sub_ref


def _final(patcher: Patcher, alive: np.ndarray) -> torch.Tensor:
    """The final residual stream (``batch pos d_model``) of circuit ``alive``."""
    alive = np.asarray(alive, dtype=bool)
    patcher.n_forward += 1
    patcher.n_layer_evals += patcher.layout.n_layers
    with torch.no_grad():
        if alive.all():
            return patcher.resid_final
        return full_pass(patcher, patcher.absent_matrix(alive), sparse=True, stop=True)


def prompt_metrics(patcher: Patcher, alive: np.ndarray) -> np.ndarray:
    """``m_i``: the run's metric of circuit ``alive`` (one bool per edge) on each prompt on
    its own, float64 of shape ``(batch,)``, lower is closer to the full model."""
    with torch.no_grad():
        return patcher.readout.per_prompt(_final(patcher, alive)).double().cpu().numpy()


def prompt_scores(patcher: Patcher, alive: np.ndarray, metric: Callable) -> np.ndarray:
    """Like :func:`prompt_metrics` with another metric (same signature as the built-ins,
    :mod:`circuitdag.metrics`), read against the same clean reference."""
    with torch.no_grad():
        logits = patcher.readout.unembed_answers(_final(patcher, alive).unsqueeze(0))
        vals = [metric(logits[:, i : i + 1], sub_ref(patcher.ref, slice(i, i + 1))) for i in range(patcher.B)]
        return torch.cat(vals).double().cpu().numpy()


def prompt_weights(patcher: Patcher) -> np.ndarray:
    """``w_i``: the answer slots prompt ``i`` counts in the dataset metric, ``(batch,)``."""
    valid = patcher.ref.valid
    if valid is None:
        return np.full(patcher.B, float(patcher.data.answer_pos.shape[1]))
    return valid.double().sum(dim=1).cpu().numpy()


def resample_mean(values: np.ndarray, weights: np.ndarray, index: np.ndarray | None = None) -> np.ndarray:
    """The dataset metric of the prompts ``index`` (rows of ``index``; repeats allowed) from
    per-prompt ``values``: ``sum w m / sum w`` over each row. ``values`` is ``(batch,)`` or
    ``(k, batch)`` (k circuits); ``index`` ``(batch,)`` or ``(B, n)`` (B resamples; None:
    every prompt once). Returns one value per circuit and resample, ``(k?, B?)``."""
    if index is None:
        index = np.arange(values.shape[-1])
    w = weights[index]
    return (values[..., index] * w).sum(-1) / w.sum(-1)


def faithfulness(m_circuit: np.ndarray, m_full: np.ndarray, m_empty: np.ndarray) -> np.ndarray:
    """``(m_empty - m_circuit) / (m_empty - m_full)`` elementwise (NaN where the gap is 0)."""
    gap = np.asarray(m_empty - m_full, dtype=np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(gap != 0, (m_empty - m_circuit) / np.where(gap != 0, gap, 1.0), np.nan)


def decomposes(patcher: Patcher) -> bool:
    """Whether the run's metric is the weighted mean of its per-prompt values (true for
    every built-in metric): checked on the full model and on the empty circuit."""
    n, w = patcher.graph.n_edges, prompt_weights(patcher)
    for alive in (np.ones(n, dtype=bool), np.zeros(n, dtype=bool)):
        got = float(resample_mean(prompt_metrics(patcher, alive), w))
        want = patcher.circuit_metric(alive)
        if not np.isclose(got, want, rtol=1e-5, atol=1e-7):
            return False
    return True


__all__ = ["decomposes", "faithfulness", "prompt_metrics", "prompt_scores", "prompt_weights", "resample_mean"]
