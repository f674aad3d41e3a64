"""Preparing a run: the graph, the cached clean and corrupted runs, and the threshold.

:func:`prepare` turns a model and a task into a :class:`~circuitdag.patching.Patcher` (the
graph, position-aware or not, with the clean and corrupted runs cached) and the identity
fields every saved result records; :func:`resolve_threshold` turns an absolute or relative
threshold into metric units. Every algorithm (:mod:`circuitdag.algorithms`) runs on what
:func:`prepare` returns.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from typing import Any

import numpy as np

from circuitdag.errors import ConfigError, TaskError
from circuitdag.graph import Graph, ModelSpec, Positions
from circuitdag.patching import Ablation, Patcher
from circuitdag.tasks.base import TaskData

log = logging.getLogger("circuitdag")


def check_threshold(threshold: float, flag: str = "threshold") -> float:
    """``threshold`` as a float, or :class:`ConfigError`: it must be a finite number >= 0
    (an infinite threshold removes every edge, so it is refused like NaN)."""
    if isinstance(threshold, bool) or not isinstance(threshold, (int, float)) or not 0 <= threshold < math.inf:
        raise ConfigError(f"{flag} must be a finite number >= 0, got {threshold!r}")
    return float(threshold)


def metric_gap(patcher: Patcher) -> float:
    """``m_corrupted - m_full``: the metric with every edge removed (every sender's output
    taken from the corrupted run, or zero / mean) minus the full model's. The scale of the
    task's metric on this model, which a relative threshold is a fraction of."""
    n = patcher.graph.n_edges
    return patcher.circuit_metric(np.zeros(n, dtype=bool)) - patcher.circuit_metric(np.ones(n, dtype=bool))


def resolve_threshold(
    patcher: Patcher, task: Any, threshold: float | None = None, relative: float | None = None
) -> tuple[float, dict[str, Any]]:
    """The threshold in metric units, and what to record about it.

    ``threshold`` is used as given; ``relative`` means ``relative * |m_corrupted - m_full|``
    (:func:`metric_gap`), the same fraction of the metric's scale on any model; with
    neither, the task's ``default_relative_threshold`` if it has one, else its
    ``default_threshold``. Raises ConfigError for both, or a relative threshold on a
    task whose full and corrupted metric are equal."""
    if threshold is not None and relative is not None:
        raise ConfigError("give either a threshold (metric units) or a relative threshold, not both")
    if threshold is None and relative is None:
        relative = getattr(task, "default_relative_threshold", None)
        if relative is None:
            return check_threshold(task.default_threshold), {}
    if relative is None:
        return check_threshold(threshold), {}  # type: ignore[arg-type]
    if isinstance(relative, bool) or not isinstance(relative, (int, float)) or not 0 <= relative < math.inf:
        raise ConfigError(f"the relative threshold must be a finite number >= 0, got {relative!r}")
    gap = metric_gap(patcher)
    if not math.isfinite(gap) or gap == 0:
        raise ConfigError(f"a relative threshold needs a metric gap, but the full model and the fully corrupted "
                          f"one score the same ({gap:.3g}); give --threshold in metric units, or corrupted "
                          "prompts that change the answer")  # fmt: skip
    threshold = float(relative) * abs(gap)
    if not math.isfinite(threshold):
        raise ConfigError(f"--relative-threshold {relative:g} x the metric gap {gap:.4g} is not a finite threshold "
                          "(it would remove every edge); give a smaller fraction")  # fmt: skip
    if relative > 1:
        raise ConfigError(f"--relative-threshold {relative:g} is more than the whole full-vs-corrupted metric gap, so "
                          "every edge would be removed; give a fraction between 0 and 1 (e.g. 0.01)")  # fmt: skip
    return threshold, {"relative_threshold": float(relative), "metric_gap": gap}


def position_layout(data: TaskData, spec: ModelSpec) -> tuple[TaskData, Positions]:
    """The token layout of a position-aware run: the data (cut after the last answer
    position in a causal model, since later tokens cannot change the answers) and the
    graph's :class:`Positions`. Refuses data whose answers are not at the same positions
    in every prompt."""
    sink = data.shared_answer_positions()
    if spec.causal and sink[-1] + 1 < data.clean.shape[1]:
        data = data.truncated(sink[-1] + 1)
    try:
        return data, Positions(data.clean.shape[1], data.position_names, sink)
    except ValueError as exc:
        raise TaskError(f"the task's position names cannot name graph nodes: {exc}") from None


def prepare(model: Any, task: Any, metric: str | None = None, ablation: str | None = None,
            seed: int = 0, positions: bool = False,
            n_prompts: int | None = None, neurons: Sequence[int] = ()) -> tuple[Patcher, dict[str, Any]]:  # fmt: skip
    """Build the graph and the cached runs for ``task`` on ``model``; returns the
    :class:`Patcher` and the identity fields every saved result records. With
    ``positions`` the graph is position-aware (docs/positions.md); ``n_prompts`` sets the
    number of prompts (:func:`circuitdag.tasks.load_data`); ``neurons`` lists MLP layers
    split into one node per neuron (docs/neurons.md)."""
    from circuitdag._version import __version__
    from circuitdag.metrics import STORED_AS, resolve_metric
    from circuitdag.models import spec_of
    from circuitdag.models.adopt import adopt
    from circuitdag.provenance import run_record
    from circuitdag.tasks.base import load_data
    from circuitdag.tasks.validate import check_metric_gap, validate_task_data

    model = adopt(model)  # a bridge the user booted, a Hugging Face model object (checked once)
    metric = metric or task.default_metric
    ablation = ablation or task.default_ablation
    metric_fn = resolve_metric(task, metric)
    data = load_data(task, model, seed=seed, n_prompts=n_prompts)
    validate_task_data(data, model, Ablation.parse(ablation).value, task.name)  # the task/engine boundary
    spec = spec_of(model, neurons)
    layout = None
    if positions and neurons:
        raise ConfigError("--neurons and --positions cannot be combined yet; split MLPs into neurons "
                          "in a circuit without positions")
    if positions:
        data, layout = position_layout(data, spec)
    patcher = Patcher(model, Graph(spec, layout), data, ablation=ablation, metric=metric_fn)
    n = patcher.graph.n_edges
    said = check_metric_gap(patcher.circuit_metric(np.ones(n, dtype=bool)), patcher.circuit_metric(np.zeros(n, dtype=bool)),
                            metric, patcher.ablation.value, task.name)  # fmt: skip
    meta = {
        "task": task.name,
        "model": getattr(getattr(model, "cfg", None), "model_name", type(model).__name__),
        "metric": metric,
        "metric_stored_as": STORED_AS.get(metric, "the task's metric") + " (lower is closer to the full model)",
        "ablation": patcher.ablation.value,
        "seed": seed,
        "n_prompts": data.n_prompts,
        "positions": bool(positions),
        **({"neurons": sorted(int(L) for L in neurons)} if neurons else {}),
        "version": __version__,
        **run_record(model, task, data),
        **({"warnings": said} if said else {}),  # the model barely does the task (circuit.json says so)
    }
    log.info("%s: prompts %s BOS (%s)", task.name, {True: "start with", False: "do not start with",
             None: "may or may not start with"}[meta["bos"]], meta["bos_reason"])  # fmt: skip
    return patcher, meta
