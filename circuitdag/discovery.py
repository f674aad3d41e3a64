"""One way to find a circuit with any registered method, and the one run record.

:func:`discover` prepares the run (:func:`circuitdag.prepare.prepare`), resolves the
threshold, runs the method from the registry (:mod:`circuitdag.algorithms`) and returns a
:class:`~circuitdag.circuit.Circuit` whose ``meta`` is the run record every method shares
(:func:`record`): the identity fields of the run, the method and its options, the metric
of the full model, of the circuit and with every edge removed, what a score means, run
statistics and the attention patterns the explorer shows. :func:`run_algorithm` does the
same on a run already prepared (the CLI and sweeps, which reuse one preparation).
:func:`acdc`, :func:`run_acdc` and :func:`attribution_circuit` are shortcuts.
"""

from __future__ import annotations

import json
import time
import warnings
from pathlib import Path
from typing import Any

import numpy as np

from circuitdag.algorithms import Algorithm, Found, RunContext, get_algorithm
from circuitdag.algorithms.attribution import EAP
from circuitdag.attention import attention_record
from circuitdag.attribution import Attribution
from circuitdag.circuit import Circuit
from circuitdag.errors import ConfigError
from circuitdag.patching import Patcher
from circuitdag.prepare import prepare, resolve_threshold
from circuitdag.provenance import RESUME_KEYS


def discover(
    model: Any,
    task: Any,
    algorithm: str | Algorithm = "acdc",
    *,
    metric: str | None = None,
    ablation: str | None = None,
    positions: bool = False,
    seed: int = 0,
    n_prompts: int | None = None,
    neurons: tuple[int, ...] | list[int] = (),
    relative_threshold: float | None = None,
    progress: bool = False,
    checkpoint: str | Path | None = None,
    resume: bool = False,
    checkpoint_every: float = 30.0,
    **options: Any,
) -> Circuit:
    """Find the circuit of ``task`` in ``model`` with ``algorithm`` (any name
    ``circuitdag algorithms`` lists, or an :class:`Algorithm`).

    ``model``: a loaded model (TransformerBridge, the project's own hooked transformer) or
    a name for :func:`circuitdag.load_model` (zoo name, ``smollm2-135m``, Hugging Face name
    or local directory); ``task``: a :class:`~circuitdag.tasks.Task` or a registered task
    name. ``metric``, ``ablation``, ``positions``, ``seed``, ``n_prompts``, ``neurons``:
    the run (:func:`circuitdag.prepare.prepare`); ``relative_threshold``: a fraction of the
    full-vs-corrupted metric gap, for methods with a ``threshold`` option; ``options``: the
    method's own (``threshold=``, ``edges=``, ``ig_steps=``, ...; see
    ``circuitdag algorithms``). ``checkpoint``/``resume``: methods that checkpoint (ACDC).
    Raises :class:`~circuitdag.errors.ConfigError` for an option the method does not take.
    """
    from circuitdag.tasks import Task, get_task

    method = get_algorithm(algorithm)
    method.check({k: v for k, v in options.items() if v is not None})  # before loading anything
    if isinstance(task, str):
        task = get_task(task)
    if not isinstance(task, Task) and not (callable(getattr(task, "data", None)) and hasattr(task, "default_metric")):
        raise ConfigError(f"task must be a circuitdag Task or a registered task name (see `circuitdag tasks`), "
                          f"got a {type(task).__name__}")  # fmt: skip
    name = None
    if isinstance(model, (str, Path)):
        from circuitdag.loading import load_model

        name = str(Path(model).resolve()) if Path(model).is_dir() else str(model)
        model = load_model(str(model))
    patcher, meta = prepare(model, task, metric=metric, ablation=ablation, seed=seed, positions=positions,
                            n_prompts=n_prompts, neurons=neurons)  # fmt: skip
    if name is not None:  # what circuit.json records, and what reloads the model
        meta["model"] = name
    return run_algorithm(patcher, method, meta=meta, task=task, relative_threshold=relative_threshold,
                         progress=progress, checkpoint=checkpoint, resume=resume,
                         checkpoint_every=checkpoint_every, **options)  # fmt: skip


def run_algorithm(
    patcher: Patcher,
    algorithm: str | Algorithm,
    meta: dict[str, Any] | None = None,
    task: Any = None,
    relative_threshold: float | None = None,
    progress: bool = False,
    checkpoint: str | Path | None = None,
    resume: bool = False,
    checkpoint_every: float = 30.0,
    **options: Any,
) -> Circuit:
    """Run ``algorithm`` on a prepared :class:`Patcher` (``meta``: the identity fields
    :func:`~circuitdag.prepare.prepare` returned) and return the circuit with its run
    record. A method whose size knob is a threshold gets, when none is given, the relative
    one, else ``task``'s default (:func:`~circuitdag.prepare.resolve_threshold`)."""
    method = get_algorithm(algorithm)
    meta = dict(meta or {})
    opts = method.check(options)
    if "threshold" in opts:
        wants = relative_threshold is not None or (opts["threshold"] is None and method.size_knob == "threshold")
        if relative_threshold is not None and opts["threshold"] is not None:
            raise ConfigError("give either a threshold (metric units) or a relative threshold, not both")
        if wants and opts["threshold"] is None:
            if task is None and relative_threshold is None:
                raise ConfigError(f"--algorithm {method.name} needs a threshold (threshold= or relative_threshold=)")
            opts["threshold"], recorded = resolve_threshold(patcher, task, None, relative_threshold)
            meta.update(recorded)
    elif relative_threshold is not None:
        raise ConfigError(f"--relative-threshold does not apply to --algorithm {method.name} (it has no threshold)")
    ctx = RunContext(progress=progress, checkpoint=None if checkpoint is None else Path(checkpoint), resume=resume,
                     checkpoint_every=checkpoint_every, identity={k: meta.get(k) for k in RESUME_KEYS})  # fmt: skip
    f0, l0, t0, c0 = patcher.n_forward, patcher.n_layer_evals, time.perf_counter(), time.process_time()
    found = method.run(patcher, ctx, **opts)
    if not isinstance(found, Found):
        raise ConfigError(f"algorithm {method.name!r} returned a {type(found).__name__}; its run must return "
                          "circuitdag.algorithms.Found(scores, in_circuit, record, stats)")  # fmt: skip
    # wall seconds, and the process's CPU seconds (all threads), which a busy machine inflates less
    stats = {**found.stats, "forward_passes": patcher.n_forward - f0, "layer_evaluations": patcher.n_layer_evals - l0,
             "seconds": round(time.perf_counter() - t0, 4), "cpu_seconds": round(time.process_time() - c0, 4)}  # fmt: skip
    t1 = time.perf_counter()
    circuit = record(patcher, method, found, meta, stats)
    circuit.meta["stats"]["record_seconds"] = round(time.perf_counter() - t1, 4)
    return circuit


#: Entries of circuit.json circuitdag writes itself, which a method's ``record`` may not set.
RESERVED = frozenset({"algorithm", "metric_full", "metric_circuit", "metric_corrupted", "score_meaning", "exact",
                      "stats", "attention", *RESUME_KEYS})  # fmt: skip


def record(patcher: Patcher, method: Algorithm, found: Found, meta: dict[str, Any], stats: dict[str, Any]) -> Circuit:
    """The circuit of ``found`` with the run record every method shares (module
    docstring). Checks the method's result: one score and one flag per edge."""
    n = patcher.graph.n_edges
    scores = np.asarray(found.scores, dtype=np.float64)
    alive = np.asarray(found.in_circuit)
    if scores.shape != (n,) or alive.shape != (n,) or alive.dtype != bool:
        raise ConfigError(f"algorithm {method.name!r} returned scores {scores.shape} and a circuit {alive.shape} "
                          f"{alive.dtype}; it must return one float score and one bool per edge ({n})")  # fmt: skip
    if np.isinf(scores).any():
        raise ConfigError(f"algorithm {method.name!r} returned an infinite score (edge "
                          f"{patcher.graph.edge_name(int(np.flatnonzero(np.isinf(scores))[0]))}); "
                          "scores are finite, NaN for an edge not scored")  # fmt: skip
    clash = sorted(set(found.record) & RESERVED)
    if clash:
        raise ConfigError(f"algorithm {method.name!r} records {', '.join(clash)}, which circuitdag writes itself; "
                          "name its own entries otherwise")  # fmt: skip
    try:
        json.dumps(found.record, allow_nan=False)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"algorithm {method.name!r} records something circuit.json cannot hold ({exc}); "
                          "record numbers, strings, lists and dicts") from None  # fmt: skip
    on_path = patcher.graph.prune(alive)
    if (on_path != alive).any():
        warnings.warn(f"algorithm {method.name!r} chose {int((alive & ~on_path).sum())} edges on no path from the "
                      "embeddings to the logits; they are left out of the circuit", UserWarning, stacklevel=2)  # fmt: skip
        alive = on_path
    out = {
        **meta,
        "algorithm": method.name,
        **found.record,
        "metric_full": patcher.circuit_metric(np.ones(n, dtype=bool)),
        "metric_circuit": patcher.circuit_metric(alive),
        "metric_corrupted": patcher.circuit_metric(np.zeros(n, dtype=bool)),
        "score_meaning": method.score_meaning,
        "exact": method.exact,
        "stats": stats,
        "attention": attention_record(patcher.model, patcher.graph, patcher.data.clean, patcher.data.answer_pos,
                                      alive),  # for the explorer (circuitdag.explore)
    }
    return Circuit(patcher.graph, alive, scores, out)


# ---------------------------------------------------------------------- shortcuts
def acdc(
    model: Any,
    task: Any,
    threshold: float | None = None,
    metric: str | None = None,
    ablation: str | None = None,
    positions: bool = False,
    algorithm: str = "acdc",
    seed: int = 0,
    progress: bool = False,
    checkpoint: str | Path | None = None,
    resume: bool = False,
    relative_threshold: float | None = None,
    n_prompts: int | None = None,
) -> Circuit:
    """Find the circuit of ``task`` in ``model`` with ACDC (Conmy et al. 2023): the shortcut
    for ``discover(model, task, "acdc", threshold=...)``. ``threshold`` is in metric units;
    ``relative_threshold`` a fraction of the full-vs-corrupted metric gap
    (:func:`~circuitdag.prepare.resolve_threshold`); unset options take the task's
    defaults. ``algorithm`` may be any registered method."""
    return discover(model, task, algorithm, metric=metric, ablation=ablation, positions=positions, seed=seed,
                    n_prompts=n_prompts, relative_threshold=relative_threshold, progress=progress,
                    checkpoint=checkpoint, resume=resume, threshold=threshold)  # fmt: skip


def run_acdc(
    patcher: Patcher,
    threshold: float,
    algorithm: str = "acdc",
    progress: bool = False,
    checkpoint: str | Path | None = None,
    resume: bool = False,
    k_max: int | None = None,
    meta: dict[str, Any] | None = None,
    checkpoint_every: float = 30.0,
    prefilter: str | tuple[str, int] | None = None,
    ig_steps: int | None = None,
) -> Circuit:
    """ACDC (``acdc`` or ``acdc-reference``) on a prepared :class:`Patcher` at
    ``threshold`` (metric units): :func:`run_algorithm` with ACDC's options
    (:mod:`circuitdag.algorithms.acdc`: ``prefilter``, ``ig_steps``, ``k_max``)."""
    if algorithm not in ("acdc", "acdc-reference"):
        raise ConfigError(f"unknown algorithm {algorithm!r}; choose one of acdc, acdc-reference")
    if isinstance(prefilter, tuple):
        prefilter = f"{prefilter[0]}:{prefilter[1]}"
    opts: dict[str, Any] = {"threshold": threshold, "prefilter": prefilter, "ig_steps": ig_steps}
    if algorithm == "acdc":
        opts["k_max"] = k_max
    return run_algorithm(patcher, algorithm, meta=meta, progress=progress, checkpoint=checkpoint, resume=resume,
                         checkpoint_every=checkpoint_every, **opts)  # fmt: skip


def attribution_circuit(
    patcher: Patcher,
    method: str = "eap-ig",
    steps: int | None = None,
    n_edges: int | None = None,
    threshold: float | None = None,
    batch_size: int | None = None,
    progress: bool = False,
    meta: dict[str, Any] | None = None,
    scores: Attribution | None = None,
) -> Circuit:
    """The EAP or EAP-IG circuit (:mod:`circuitdag.algorithms.attribution`): the top
    ``n_edges`` edges by ``|score|``, or every edge with ``|score| >= threshold``, pruned to
    ``embed -> logits`` paths, with the exact metric values of the run record. ``scores``
    reuses an earlier :func:`~circuitdag.attribution.attribute` (its method wins);
    ``steps`` are EAP-IG's (EAP is one step at the clean input)."""
    if scores is not None:
        chosen = get_algorithm(scores.method)
        assert isinstance(chosen, EAP)
        found = chosen.select(patcher, scores, n_edges, threshold)
        return record(patcher, chosen, found, dict(meta or {}), {**found.stats, "forward_passes": 0,
                                                                  "layer_evaluations": 0})  # fmt: skip
    opts: dict[str, Any] = {"edges": n_edges, "threshold": threshold, "batch_size": batch_size}
    if method == "eap-ig":
        opts["ig_steps"] = steps
    return run_algorithm(patcher, method, meta=meta, progress=progress, **opts)


__all__ = ["acdc", "attribution_circuit", "discover", "record", "run_acdc", "run_algorithm"]
