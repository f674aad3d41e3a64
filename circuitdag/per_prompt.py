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

from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
import torch

from circuitdag.errors import ConfigError
from circuitdag.patching import Patcher
from circuitdag.readout import sub_ref


def _final(patcher: Patcher, alive: np.ndarray) -> torch.Tensor:
    """The final residual stream (``batch pos d_model``) of circuit ``alive``: one sparse pass,
    or none when ``patcher`` evaluated this circuit lately (:meth:`Patcher.final_of`)."""
    return patcher.final_of(alive)


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


def removal_finals(patcher: Patcher, alive: np.ndarray, edges: np.ndarray,
                   k: int = 8) -> Iterator[tuple[np.ndarray, torch.Tensor]]:  # fmt: skip
    """For the circuits ``alive - e`` (each ``e`` of ``edges`` in ``alive``), chunks of
    (positions in ``edges``, final residual streams ``k batch pos d_model``): the edges into
    one destination batched ``k`` at a time and run from that destination's layer on, from
    the run of ``alive`` (:meth:`Patcher.rebase <circuitdag.patching.Patcher.rebase>`; exact
    because removing an edge into ``d`` leaves every node before ``d`` as in ``alive``).
    Graphs with neuron nodes (which that path does not run) get one sparse pass each."""
    from circuitdag.graph import NodeKind

    graph, lay = patcher.graph, patcher.layout
    alive = np.asarray(alive, dtype=bool)
    edges = np.asarray(edges, dtype=np.int64)
    if patcher.neurons:
        for i, e in enumerate(edges.tolist()):
            less = alive.copy()
            less[e] = False
            yield np.array([i]), _final(patcher, less).unsqueeze(0)
        return
    patcher.rebase(alive)
    try:
        absent = patcher.absent_matrix(alive)
        dst = graph.edges.dst[edges]
        for d in np.unique(dst).tolist():
            inc = graph.incoming[d]
            cells = np.unique(np.stack([lay.edge_row[inc], lay.edge_view[inc]], 1), axis=0)
            rows, views = torch.as_tensor(cells[:, 0]), torch.as_tensor(cells[:, 1])
            node = graph.nodes[d]
            layer = graph.spec.n_layers if node.kind == NodeKind.LOGITS else node.layer
            mine = np.flatnonzero(dst == d)
            for start in range(0, len(mine), k):
                chunk = mine[start : start + k]
                cands = []
                for i in chunk.tolist():
                    less = alive.copy()
                    less[edges[i]] = False
                    cands.append(patcher.absent_matrix(less)[rows, views])
                with torch.no_grad():
                    final = patcher.layers.final(absent, layer, rows, torch.stack(cands), views)
                patcher.n_forward += 1
                patcher.n_layer_evals += len(chunk) * (lay.n_layers - layer)
                yield chunk, final
    finally:
        patcher.rebase(None)


def removal_metrics(patcher: Patcher, alive: np.ndarray, edges: np.ndarray, k: int = 8, path: str = "auto",
                    done: Callable[[int], Any] | None = None) -> np.ndarray:  # fmt: skip
    """``m_i(alive - e)`` for each edge ``e`` of ``edges`` and each prompt ``i``,
    ``(len(edges), batch)``. ``path``: ``"components"`` recomputes only the circuit's nodes
    that removing ``e`` changes (:func:`removal_metrics_sparse`), ``"layers"`` runs every
    layer from ``e``'s destination on (:func:`removal_finals`); both take the edges into one
    destination ``k`` at a time. ``"auto"`` the first where the model's component kernels
    reproduce it. ``done(n)`` is called after every ``n`` edges (a progress bar's update).
    Both tested equal to :func:`prompt_metrics` of each circuit."""
    if path not in ("auto", "components", "layers"):
        raise ValueError(f"path must be auto, components or layers, got {path!r}")
    if path != "layers" and not patcher.neurons and patcher.kernels() is not None:
        return removal_metrics_sparse(patcher, alive, edges, k, done)
    if path == "components":
        raise ConfigError(f"the component path cannot run here ({patcher.kernel_problem or 'neuron nodes'})")
    out = np.empty((len(edges), patcher.B))
    with torch.no_grad():
        for chunk, final in removal_finals(patcher, alive, edges, k):
            for j, i in enumerate(chunk.tolist()):
                out[i] = patcher.readout.per_prompt(final[j]).double().cpu().numpy()
            if done is not None:
                done(len(chunk))
    return out


class _PromptByPrompt:
    """``patcher`` whose :meth:`final_metric` gives every prompt's metric on its own
    (``k batch``) instead of the dataset's (``k``): what the component fast path
    (:mod:`circuitdag.recompute`) reads its metric with. Everything else is ``patcher``'s."""

    def __init__(self, patcher: Patcher) -> None:
        self._patcher = patcher

    def __getattr__(self, name: str) -> Any:
        return getattr(self._patcher, name)

    def final_metric(self, final: torch.Tensor, positions: torch.Tensor | None = None) -> torch.Tensor:
        read = self._patcher.readout.final_metric
        return torch.stack([read(final[:, i : i + 1], positions, prompts=slice(i, i + 1))
                            for i in range(final.shape[1])], dim=1)  # fmt: skip


def removal_metrics_sparse(patcher: Patcher, alive: np.ndarray, edges: np.ndarray, k: int = 8,
                           done: Callable[[int], Any] | None = None) -> np.ndarray:  # fmt: skip
    """:func:`removal_metrics` on the component fast path (:class:`~circuitdag.recompute.SparseFastPath`,
    :class:`~circuitdag.recompute_positions.PositionalFastPath`): from the run of ``alive``
    (one sparse pass), each ``alive - e`` recomputes ``e``'s destination and the circuit's
    nodes downstream of it that reach the logits, at the positions that can change, and
    nothing else; the edges into one destination go ``k`` at a time as one batch of
    independent candidates (``evaluate(..., nested=False)``). Raises :class:`ConfigError`
    where the kernels do not reproduce the model."""
    from circuitdag.recompute import SparseFastPath
    from circuitdag.recompute_positions import PositionalFastPath

    kernels = patcher.kernels()
    if kernels is None or patcher.neurons:
        raise ConfigError(f"the component path cannot run here ({patcher.kernel_problem or 'neuron nodes'})")
    if k < 1:
        raise ConfigError(f"removal_metrics: k (removals per batch) must be >= 1, got {k}")
    alive = np.asarray(alive, dtype=bool)
    edges = np.asarray(edges, dtype=np.int64)
    if not alive[edges].all():
        raise ConfigError("removal_metrics: every edge must be in the circuit")
    kind = PositionalFastPath if patcher.positional else SparseFastPath
    fast = kind(_PromptByPrompt(patcher), kernels, alive)  # type: ignore[arg-type]
    out = np.empty((len(edges), patcher.B))
    dst = patcher.graph.edges.dst[edges]
    with torch.no_grad():
        for d in np.unique(dst)[::-1].tolist():  # one destination's affected set at a time
            mine = np.flatnonzero(dst == d)
            for start in range(0, len(mine), k):
                chunk = mine[start : start + k]
                out[chunk] = fast.evaluate(d, edges[chunk], alive, nested=False).double().cpu().numpy()
                patcher.n_forward += 1
                if done is not None:
                    done(len(chunk))
    return out


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


__all__ = ["decomposes", "faithfulness", "prompt_metrics", "prompt_scores", "prompt_weights", "removal_finals", "removal_metrics", "removal_metrics_sparse", "resample_mean"]
