"""Held-out prompts: judging a circuit on data it was not found on (issue 24, item 1).

A circuit is found on *discovery* prompts and its faithfulness is also measured on
*held-out* prompts of the same task, as MIB splits its data. Where they come from
(:func:`heldout_data`), in this order:

1. ``fraction`` given (``--holdout FRACTION``): a seeded split of the discovery prompts,
   that fraction held out (:func:`split`); the circuit is then found on the rest.
   ``--holdout 0``: no held-out prompts at all (and none of their cost).
2. The task's own held-out set (:meth:`Task.holdout <circuitdag.tasks.base.Task.holdout>`):
   ``pronoun`` has 20 other names and 5 other templates; no more of them than discovery
   prompts (:func:`at_most`).
3. A task that generates its prompts from a seed (``ioi``, ``greater-than``, ``induction``,
   tracr): the prompts of seed ``seed + HOLDOUT_SEED``, less any prompt that is also a
   discovery prompt.
4. Otherwise (a fixed list or a prompts file, without ``--holdout``): none; the discovery
   prompts stay the same as before this module existed, for reproducibility.

:func:`evaluate_on` measures a saved circuit exactly on other data (another task, seed or
prompts file): the same edge set, a fresh :class:`~circuitdag.patching.Patcher` on those
prompts, :meth:`~circuitdag.patching.Patcher.circuit_metric` for the circuit, the full
model and the empty circuit.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from circuitdag.circuit import Circuit
from circuitdag.errors import ConfigError, TaskError
from circuitdag.patching import Patcher
from circuitdag.tasks.base import TaskData, load_data

#: Seed offset of a generated task's held-out prompts.
HOLDOUT_SEED = 1_000_003


@dataclass
class Heldout:
    """Where the held-out prompts came from (``how``: ``split``, ``task``, ``seed``), and
    them (``data``: None with ``reason`` when there are none)."""

    how: str
    data: TaskData | None
    reason: str = ""
    fraction: float | None = None


def split(data: TaskData, fraction: float, seed: int = 0) -> tuple[TaskData, TaskData]:
    """(discovery, held-out): ``round(fraction * n)`` prompts drawn with ``seed`` held out,
    each part in the original order. A prompt that repeats (the same clean and corrupted
    tokens and answers) is one draw, with its copies on the same side, so no held-out
    prompt is a copy of a discovery prompt; ``n`` counts distinct prompts. Raises
    :class:`ConfigError` unless both parts get at least one prompt."""
    if isinstance(fraction, bool) or not isinstance(fraction, (int, float)) or not 0 < fraction < 1:
        raise ConfigError(f"--holdout must be a fraction between 0 and 1 (e.g. 0.2), got {fraction!r}")
    group: dict[Any, int] = {}  # each distinct prompt's draw, in order of first appearance
    of = np.array([group.setdefault(key, len(group)) for key in _prompt_keys(data)])
    n = len(group)
    k = round(fraction * n)
    if not 0 < k < n:
        raise ConfigError(f"--holdout {fraction:g} of {n} distinct prompts leaves no prompt on one side; give more "
                          "prompts (--n-prompts) or another fraction")  # fmt: skip
    drawn = np.random.default_rng(seed).permutation(n)[:k]
    held = np.flatnonzero(np.isin(of, drawn))  # every prompt when none repeats: of is 0..n-1
    rest = np.setdiff1d(np.arange(data.n_prompts), held)
    return data.subset(rest.tolist()), data.subset(held.tolist())


def _prompt_keys(data: TaskData) -> list[tuple[tuple[int, ...], ...]]:
    """Each prompt's clean and corrupted tokens up to its last answer position and its
    answers: the same prompt gives the same key whatever the padding after it."""
    last = data.answer_pos.max(dim=1).values.cpu().tolist()
    answers = [data.correct, data.wrong]
    return [(tuple(data.clean[i, : n + 1].tolist()), tuple(data.corrupted[i, : n + 1].tolist()),
             *(tuple(a[i].tolist()) for a in answers if a is not None)) for i, n in enumerate(last)]  # fmt: skip


def _drop_shared(data: TaskData, discovery: TaskData) -> TaskData:
    """``data`` without the prompts (clean, corrupted and answers) that are also discovery
    prompts, padded to any length."""
    seen = set(_prompt_keys(discovery))
    return data.subset([i for i, key in enumerate(_prompt_keys(data)) if key not in seen])


def at_most(data: TaskData, n: int, seed: int = 0) -> TaskData:
    """``data``, or ``n`` of its prompts drawn with ``seed`` (in their order) when it has
    more: a task's own held-out set is no larger than the discovery prompts (``--n-prompts
    20`` would otherwise be judged on all of them, at five times the cost)."""
    if data.n_prompts <= n:
        return data
    return data.subset(np.sort(np.random.default_rng(seed).permutation(data.n_prompts)[:n]).tolist())


def heldout_data(task: Any, model: Any, discovery: TaskData, seed: int = 0, n_prompts: int | None = None,
                 fraction: float | None = None) -> tuple[TaskData, Heldout]:  # fmt: skip
    """(the discovery prompts, the held-out ones) for a run (module docstring for the
    order). ``discovery``: the prompts the run would use without a held-out set."""
    if fraction == 0 and not isinstance(fraction, bool):  # asked for none
        return discovery, Heldout("none", None, "--holdout 0: no prompts held out")
    if fraction is not None:
        disc, held = split(discovery, fraction, seed)
        return disc, Heldout("split", held, fraction=float(fraction))
    own = task.holdout(model, seed) if callable(getattr(task, "holdout", None)) else None
    if own is not None:
        return discovery, Heldout("task", at_most(own, discovery.n_prompts, seed))
    if task.data_uses_seed:
        data = _drop_shared(load_data(task, model, seed=seed + HOLDOUT_SEED, n_prompts=n_prompts), discovery)
        if data.n_prompts:
            return discovery, Heldout("seed", data)
        return discovery, Heldout("seed", None, "every prompt of another seed is also a discovery prompt")
    return discovery, Heldout("none", None, "a fixed list of prompts: pass --holdout FRACTION to hold some out")


def discovery_part(patcher: Patcher, meta: dict[str, Any]) -> Patcher:
    """The patcher of the prompts a circuit was found on, from the patcher of its prepared
    run (what :func:`~circuitdag.reload.reload` rebuilds): the same split again when the
    run held a fraction out (``meta["heldout"]``), else ``patcher`` itself."""
    h = meta.get("heldout") or {}
    if h.get("how") != "split":
        return patcher
    return patcher_on(patcher, split(patcher.data, float(h["fraction"]), int(meta.get("seed") or 0))[0])


def heldout_patcher(task: Any, model: Any, patcher: Patcher, meta: dict[str, Any]) -> Patcher | None:
    """A patcher on the held-out prompts of the run ``meta`` records (``meta["heldout"]``),
    from the patcher of its prepared run (what :func:`~circuitdag.reload.reload`
    rebuilds); None when it had none or they do not fit the graph."""
    h = meta.get("heldout") or {}
    seed = int(meta.get("seed") or 0)
    if h.get("how") == "split":
        data: TaskData | None = split(patcher.data, float(h["fraction"]), seed)[1]
    elif h.get("how") in ("task", "seed"):
        data = heldout_data(task, model, patcher.data, seed=seed, n_prompts=meta.get("n_prompts"))[1].data
    else:
        return None
    if data is None:
        return None
    try:
        return patcher_on(patcher, data)
    except TaskError:
        return None


def patcher_on(patcher: Patcher, data: TaskData) -> Patcher:
    """A :class:`Patcher` of ``patcher``'s model, graph, ablation and metric on other
    prompts. Position-aware graphs need the same token layout; :class:`TaskError` if not."""
    from circuitdag.tasks.validate import validate_task_data

    validate_task_data(data, patcher.model, patcher.ablation.value, "the held-out prompts")
    positions = patcher.graph.positions
    if positions is not None:
        if data.clean.shape[1] > positions.n:  # cut after the answers, as prepare does
            data = data.truncated(positions.n)
        if data.clean.shape[1] != positions.n or tuple(sorted(set(data.answer_pos[0].tolist()))) != tuple(positions.sink):
            raise TaskError("the held-out prompts have another token layout than the discovery prompts, so a "
                            "position-aware circuit cannot be evaluated on them")  # fmt: skip
    return Patcher(patcher.model, patcher.graph, data.to(patcher.device), ablation=patcher.ablation,
                   metric=patcher.metric_fn)  # fmt: skip


def metrics_on(patcher: Patcher, alive: np.ndarray) -> dict[str, Any]:
    """The circuit ``alive``'s exact metric values and faithfulness on ``patcher``'s prompts."""
    n = patcher.graph.n_edges
    full, empty = patcher.circuit_metric(np.ones(n, dtype=bool)), patcher.circuit_metric(np.zeros(n, dtype=bool))
    m = patcher.circuit_metric(alive)
    return {"n_prompts": patcher.B, "metric_full": full, "metric_circuit": m, "metric_corrupted": empty,
            "faithfulness": (empty - m) / (empty - full) if empty != full else None}  # fmt: skip


def evaluate_on(circuit: Circuit, task: str | None = None, prompts: str | Path | None = None,
                seed: int | None = None, n_prompts: int | None = None, device: str = "cpu",
                dtype: torch.dtype = torch.float32) -> dict[str, Any]:  # fmt: skip
    """``circuit``'s edge set measured exactly on other data: the prompts of ``task`` (a
    registered name; default the circuit's) with ``seed``, or a prompts file ``prompts``,
    on the circuit's model with its metric, ablation and positions. Returns
    :func:`metrics_on`'s dict with what the data was."""
    from circuitdag._options import check_n_prompts
    from circuitdag.prepare import prepare
    from circuitdag.reload import reload
    from circuitdag.tasks.base import Task

    m = circuit.meta
    if prompts is not None and task is not None:
        raise ConfigError("give --prompts FILE or --task T, not both")
    if prompts is None:
        with warnings.catch_warnings():  # other prompts than the circuit's are the point here
            warnings.filterwarnings("ignore", message=".*was found on other prompts", category=UserWarning)
            run = reload(circuit, task=task or m.get("task"), seed=seed, device=device, dtype=dtype,
                         source="the circuit", purpose="this evaluation")  # fmt: skip
        patcher = run.patcher
        if n_prompts is not None:
            assert patcher is not None
            check_n_prompts(run.model, n_prompts, device)
            patcher = patcher_on(patcher, load_data(run.task, run.model, seed=run.run["seed"], n_prompts=n_prompts))
        what = {"task": run.task.name, "seed": run.run["seed"]}
    else:
        model = reload(circuit, prompts_only=True, device=device, dtype=dtype).model
        check_n_prompts(model, n_prompts, device)
        the_task = Task.from_prompts(prompts)
        patcher, _ = prepare(model, the_task, metric=m.get("metric"), ablation=m.get("ablation"), seed=seed or 0,
                             positions=bool(m.get("positions")), n_prompts=n_prompts,
                             neurons=m.get("neurons") or ())  # fmt: skip
        what = {"prompts": str(prompts)}
    assert patcher is not None
    if patcher.graph.edge_names != circuit.graph.edge_names:
        raise ConfigError(_graph_mismatch(circuit.graph.positions, patcher.graph.positions))
    return {**what, **metrics_on(patcher, circuit.in_circuit)}


def _graph_mismatch(want: Any, got: Any) -> str:
    """The one-line reason the other data's graph is not the circuit's: for a position-aware
    circuit, which of the token layout's length and its position names differ."""
    if want is None or got is None:
        return "the other data gives another graph than the circuit's (another model or other MLP neurons)"
    if want.n != got.n:
        return (f"the circuit is position-aware over {want.n} token positions but the other prompts have {got.n}; "
                "give prompts of the circuit's token layout")  # fmt: skip
    if want.names != got.names:
        import json

        theirs = f"name their positions {', '.join(got.names)}" if got.names else "do not name their positions"
        if not want.names:
            return (f"the other prompts {theirs} but the circuit's positions are unnamed; drop the rows' "
                    "\"positions\" field")  # fmt: skip
        return (f"the other prompts {theirs} but the circuit's are {', '.join(want.names)}; if the tokens play the "
                f"same roles, give each row \"positions\": {json.dumps(list(want.names))}")  # fmt: skip
    return "the other data gives another graph than the circuit's (the answer positions the unembedding reads differ)"


__all__ = ["HOLDOUT_SEED", "Heldout", "at_most", "discovery_part", "evaluate_on", "heldout_data", "heldout_patcher", "metrics_on", "patcher_on", "split"]
