"""Rebuild the run a circuit was found on, from its record: the one way ``curve``,
``compare``, ``evaluate`` and ``heads`` get the model, the prompts and the cached runs
back.

A circuit.json records its task, model, BOS decision (``prepend_bos``), seed, number of
prompts, metric, ablation, positions and neuron layers (:func:`circuitdag.prepare.prepare`'s
identity fields). :func:`reload` loads the same model (the task's own model for a zoo or
tracr task, else :func:`circuitdag.load_model`, a local directory included), rebuilds the
same prompts and prepares the same graph; it warns when the prompts' fingerprint
(``data_sha256``) differs from the circuit's (another seed, task version or tokenizer),
and refuses a graph whose edges are not the circuit's.
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch

from circuitdag.circuit import Circuit
from circuitdag.errors import CircuitFileError, ConfigError
from circuitdag.patching import Patcher


@dataclass
class Reloaded:
    """The rebuilt run: the task (with the circuit's BOS option), the model, the prepared
    :class:`Patcher` and its identity fields (``run``, as :func:`~circuitdag.prepare.prepare`
    returns them)."""

    task: Any
    model: Any
    patcher: Patcher | None
    run: dict[str, Any]
    data: Any = None  # the prompts (TaskData), also without a patcher


def reload(
    circuit: Circuit | Mapping[str, Any],
    task: str | None = None,
    model: str | None = None,
    metric: str | None = None,
    ablation: str | None = None,
    seed: int | None = None,
    device: str = "cpu",
    dtype: torch.dtype = torch.float32,
    source: str = "the circuit",
    prompts_only: bool = False,
    purpose: str = "this run",
) -> Reloaded:
    """The run ``circuit`` (a :class:`Circuit`, or its ``meta``) was found on. ``task``,
    ``model``, ``metric``, ``ablation``, ``seed`` override the record (another task or
    model: the circuit's BOS option and prompt count are not carried over). Raises
    :class:`ConfigError` when the record names no task and none is given, and
    :class:`CircuitFileError` when ``circuit``'s edges are not the rebuilt graph's;
    ``source`` names the file in messages and ``purpose`` what the run is for (``"this
    curve"``). ``prompts_only``: load the model and the
    prompts (``data``) without preparing the graph and the cached runs (``patcher`` None)."""
    from circuitdag.loading import load_model
    from circuitdag.prepare import prepare
    from circuitdag.tasks import get_task
    from circuitdag.tasks._lm import with_prepend_bos

    meta = circuit.meta if isinstance(circuit, Circuit) else dict(circuit)
    task_name = task or meta.get("task")
    if not task_name:
        raise ConfigError(f"{source} does not name its task; pass --task (and --model if not the task's default)")
    same_task = task_name == meta.get("task")
    bos = (meta.get("prepend_bos") if same_task else None) or "auto"
    the_task = with_prepend_bos(get_task(task_name), bos)
    model_name = model or meta.get("model")
    own = the_task.for_model(str(model_name)) if model_name else None  # the task's own models (reversal)
    if own is not None:
        the_task = with_prepend_bos(own, bos)
        the_model = the_task.load_model(device=device, dtype=dtype)
    elif not model_name or model_name in (the_task.default_model, the_task.name):
        the_model = the_task.load_model(device=device, dtype=dtype)
    else:
        the_model = load_model(str(model_name), device=device, dtype=dtype)
    the_seed = int(meta.get("seed") or 0) if seed is None else seed
    if prompts_only:
        from circuitdag.tasks.base import load_data

        data = load_data(the_task, the_model, seed=the_seed, n_prompts=meta.get("n_prompts") if same_task else None)
        return Reloaded(the_task, the_model, None, {}, data)
    patcher, run = prepare(the_model, the_task, metric=metric or meta.get("metric"),
                           ablation=ablation or meta.get("ablation"),
                           seed=the_seed,
                           positions=bool(meta.get("positions", False)),
                           n_prompts=meta.get("n_prompts") if same_task else None,
                           neurons=meta.get("neurons") or ())  # fmt: skip
    if same_task and meta.get("data_sha256") and run["data_sha256"] != meta["data_sha256"]:
        warnings.warn(f"{source} was found on other prompts than {purpose} runs on (data fingerprint {meta['data_sha256']} "
                      f"there, {run['data_sha256']} here: another --seed, task version or tokenizer)",
                      UserWarning, stacklevel=3)  # fmt: skip
    if isinstance(circuit, Circuit) and circuit.graph.edge_names != patcher.graph.edge_names:
        raise CircuitFileError(
            f"{source} was made on a graph of {circuit.graph.n_edges} edges, model {run['model']!r} has "
            f"{patcher.graph.n_edges} (or other names); pass the --model it was made with"
        )
    return Reloaded(the_task, the_model, patcher, run, patcher.data)


__all__ = ["Reloaded", "reload"]
