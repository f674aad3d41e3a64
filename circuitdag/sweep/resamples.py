"""Bootstrap resamples shared through Optuna's storage (issue 24, item 2).

``discover --bootstrap B --storage URL`` makes each resample of the bootstrap
(:mod:`circuitdag.bootstrap`) one trial of an Optuna study in ``URL`` (SQLite, or
``postgresql://...`` for many machines): the process that found the circuit runs trials,
and so does any ``circuitdag sweep-worker --storage URL --study NAME`` started anywhere
that can load the model. Optuna's storage hands out the trials (no scheduler of our own);
a worker that dies leaves its trial to be failed and rerun (:mod:`~circuitdag.sweep.storage`).

* The study's user attribute :data:`BOOTSTRAP_ATTR` holds what a worker needs: the run
  record of the circuit (what :func:`circuitdag.reload.reload` rebuilds the run from, the
  held-out split included), the method, its options (threshold resolved), ``B`` and the
  seed.
* A trial first claims a **slot** ``k`` in ``0..B-1`` (:func:`claim_slot`: the lowest that
  no finished trial and no running one holds; user attribute ``slot``), then reruns the
  method on resample :func:`resample_index` ``(seed, k)`` of the discovery prompts
  (:func:`circuitdag.bootstrap.rerun_on`) and stores its circuit (edge indices), its scores
  (float64, compressed) and its faithfulness on the resample and on the held-out prompts as
  trial user attributes. A trial that failed (its worker killed, Ctrl-C) frees its slot, and
  the next trial takes it: the resamples of an interrupted and resumed bootstrap are the
  uninterrupted one's (a trial keyed by its trial number got a new resample in its rerun).
  Two workers that claim a slot at the same moment both run it, with the same result; one
  is kept. Trials of studies made before slots existed have their trial number as slot.
* Once the study holds slots ``0..B-1`` finished, every process stops taking trials, and
  ``discover`` reads them back (by slot) from the storage and summarises them as the
  in-process bootstrap does (:func:`circuitdag.bootstrap.summarize`).

A rerun of the same command finds its study again (the name is a digest of the settings
and the circuit, not of ``B``) and only runs the resamples still missing: an interrupted
bootstrap loses at most the resamples that were running, and ``--bootstrap 50`` after
``--bootstrap 20`` runs 30 more. Every resample here reruns
the method, also for EAP/EAP-IG, whose in-process bootstrap uses per-prompt scores.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from circuitdag.bootstrap_journal import BOOTSTRAP_FORMAT, identity, pack, study_spec, unpack
from circuitdag.errors import ConfigError
from circuitdag.sweep.storage import HOST, fail_interrupted_trials, masked, open_storage

if TYPE_CHECKING:
    import optuna

    from circuitdag.algorithms import Algorithm
    from circuitdag.patching import Patcher

log = logging.getLogger("circuitdag")

BOOTSTRAP_ATTR = "circuitdag.bootstrap"
#: The number of resamples the last ``discover`` asked of the study (workers run until it holds them).
RESAMPLES_ATTR = "circuitdag.bootstrap.resamples"


def resample_index(seed: int, trial: int, n: int) -> np.ndarray:
    """The prompts (``n`` indices drawn with replacement) of resample ``trial``: the same in
    every process."""
    return np.random.default_rng([int(seed), int(trial)]).integers(0, n, size=n)


def study_name(spec: dict[str, Any]) -> str:
    """The default study name: ``bootstrap-`` and a digest of the spec's :func:`identity`
    (same command, same study, also when the run's measured values differ in the last bits)."""
    return "bootstrap-" + hashlib.sha256(json.dumps(identity(spec), sort_keys=True).encode()).hexdigest()[:12]


@dataclass
class ResampleRunner:
    """The objective: one rerun of ``method`` on the resample of the slot the trial claims
    (module docstring)."""

    patcher: Patcher
    heldout: Patcher | None
    method: Algorithm
    options: dict[str, Any]
    seed: int

    @classmethod
    def from_spec(cls, spec: dict[str, Any], device: str = "cpu") -> ResampleRunner:
        """Rebuild the run of a study's :data:`BOOTSTRAP_ATTR` (a ``sweep-worker``)."""
        import torch

        from circuitdag.algorithms import get_algorithm
        from circuitdag.holdout import discovery_part, heldout_patcher
        from circuitdag.reload import reload

        run = spec["run"]
        dtype = getattr(torch, str(run.get("dtype") or "float32"))
        loaded = reload(run, device=device, dtype=dtype, source="the bootstrap study", purpose="these resamples")
        assert loaded.patcher is not None
        patcher = discovery_part(loaded.patcher, run)
        held = heldout_patcher(loaded.task, loaded.model, loaded.patcher, run)
        method = get_algorithm(spec["algorithm"])
        return cls(patcher, held, method, method.check(spec["options"]), int(spec["seed"]))

    def __call__(self, trial: optuna.Trial) -> float:
        from circuitdag.bootstrap import rerun_on

        trial.set_user_attr("worker", f"{HOST}:{os.getpid()}")
        idx = resample_index(self.seed, claim_slot(trial), self.patcher.B)
        kept, scores, f_disc, f_held = rerun_on(self.patcher, self.method, self.options, idx, self.heldout)
        finite = lambda v: None if v is None or not np.isfinite(v) else float(v)
        for key, value in {"kept": np.flatnonzero(kept).tolist(), "scores": pack(scores),
                           "faithfulness": finite(f_disc), "heldout_faithfulness": finite(f_held)}.items():  # fmt: skip
            trial.set_user_attr(key, value)
        return float(kept.sum())


def slot_of(trial: optuna.trial.FrozenTrial) -> int:
    """The resample a trial ran: its ``slot`` (its trial number in a study made before slots)."""
    return int(trial.user_attrs.get("slot", trial.number))


def claim_slot(trial: optuna.Trial) -> int:
    """The slot ``trial`` runs (module docstring), recorded as its user attribute ``slot``:
    the lowest of ``0..B-1`` (``B``: the study's :data:`RESAMPLES_ATTR`) that no finished
    and no running trial holds, leaving the lowest ones to the running trials that started
    before this one and have not claimed yet (two workers that start trials at once took
    the same slot); when running trials hold every open one, the lowest open one (run
    twice, same result); when all are finished, the lowest slot above them."""
    from optuna.trial import TrialState

    want = int(trial.study.user_attrs.get(RESAMPLES_ATTR, 0))
    done, running, unclaimed = set(), set(), 0
    for t in trial.study.get_trials(deepcopy=False):
        if t.number == trial.number:
            continue
        if t.state == TrialState.COMPLETE:
            done.add(slot_of(t))
        elif t.state == TrialState.RUNNING and "slot" in t.user_attrs:
            running.add(slot_of(t))
        elif t.state == TrialState.RUNNING and t.number < trial.number:
            unclaimed += 1  # started before this one and about to claim: it takes a lower free slot
    open_ = [k for k in range(want) if k not in done]
    free = [k for k in open_ if k not in running][unclaimed:]
    slot = free[0] if free else open_[0] if open_ else next(k for k in range(want, want + len(done) + 1) if k not in done)
    trial.set_user_attr("slot", slot)
    return slot


def _finished(study: optuna.Study) -> list[optuna.trial.FrozenTrial]:
    """The finished trials, one a slot (the first to finish it), by slot."""
    from optuna.trial import TrialState

    first: dict[int, optuna.trial.FrozenTrial] = {}
    for t in sorted((t for t in study.get_trials(deepcopy=False) if t.state == TrialState.COMPLETE),
                    key=lambda t: t.number):  # fmt: skip
        first.setdefault(slot_of(t), t)
    return [first[k] for k in sorted(first)]


def _held(study: optuna.Study, resamples: int) -> int:
    """How many of the slots ``0..resamples-1`` ``study`` holds finished."""
    return sum(slot_of(t) < resamples for t in _finished(study))


def run_trials(study: optuna.Study, runner: ResampleRunner, resamples: int, progress: bool = False,
               n_trials: int | None = None) -> None:  # fmt: skip
    """Take trials of ``study`` until it holds ``resamples`` finished ones (or after
    ``n_trials`` of them). Raises :class:`ConfigError` after ``resamples`` failed trials
    (with the first one's error) when the study is still short of its resamples and no
    ``n_trials`` was given."""
    from optuna.trial import TrialState
    from tqdm.auto import tqdm

    have = _held(study, resamples)
    bar = tqdm(total=resamples, initial=min(have, resamples), desc="bootstrap (shared)", unit="rerun",
               disable=not progress)  # fmt: skip

    def after(study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
        trials = study.get_trials(deepcopy=False)
        done = _held(study, resamples)
        bar.update(max(0, min(done, resamples) - bar.n))
        failed = [t for t in trials if t.state == TrialState.FAIL and "error" in t.user_attrs]
        if done >= resamples or len(failed) >= resamples:
            study.stop()

    def objective(trial: optuna.Trial) -> float:
        try:
            return runner(trial)
        except Exception as exc:
            trial.set_user_attr("error", f"{type(exc).__name__}: {exc}")
            raise
        except KeyboardInterrupt:  # the CLI says so in one line: no Optuna traceback before it
            import optuna

            optuna.logging.set_verbosity(optuna.logging.ERROR)
            raise

    from circuitdag.bootstrap import frozen_heap

    try:
        if have < resamples and n_trials != 0:
            with frozen_heap():  # each trial's garbage collection skips the model and the libraries
                study.optimize(objective, n_trials=n_trials, catch=(Exception,), callbacks=[after])
    finally:
        bar.close()
    if n_trials is None and _held(study, resamples) < resamples:
        errors = [t.user_attrs["error"] for t in study.get_trials(deepcopy=False) if "error" in t.user_attrs]
        raise ConfigError(f"bootstrap resamples keep failing ({len(errors)} failed trials; the first: "
                          f"{errors[0] if errors else 'no error recorded'})")  # fmt: skip


def open_study(storage: str, name: str, spec: dict[str, Any] | None = None,
               resamples: int | None = None) -> optuna.Study:  # fmt: skip
    """The bootstrap study ``name`` in ``storage``: created with ``spec`` when new; an
    existing one must hold the same spec (:class:`ConfigError` if not). ``resamples``:
    the number of resamples it should now hold (:data:`RESAMPLES_ATTR`)."""
    import optuna

    store = open_storage(storage)
    if spec is None:
        study = optuna.load_study(study_name=name, storage=store, sampler=optuna.samplers.RandomSampler())
    else:
        study = optuna.create_study(storage=store, study_name=name, direction="minimize", load_if_exists=True,
                                    sampler=optuna.samplers.RandomSampler())  # fmt: skip
        old = study.user_attrs.get(BOOTSTRAP_ATTR)
        if old is None:
            study.set_user_attr(BOOTSTRAP_ATTR, spec)
        elif identity(old) != identity(spec):
            raise ConfigError(f"study {name!r} in {masked(storage)} holds another bootstrap (other run, method, "
                              "options or circuit); choose another --study")  # fmt: skip
        if resamples is not None:
            study.set_user_attr(RESAMPLES_ATTR, int(resamples))
    fail_interrupted_trials(study)
    return study


def shared_bootstrap(patcher: Patcher, heldout: Patcher | None, method: Algorithm, options: dict[str, Any],
                     resamples: int, alive: np.ndarray, meta: dict[str, Any], storage: str,
                     name: str | None = None, seed: int = 0, progress: bool = False) -> dict[str, Any]:  # fmt: skip
    """The bootstrap of :func:`circuitdag.bootstrap.bootstrap` with its resamples as trials
    of an Optuna study in ``storage`` (module docstring), which ``sweep-worker`` processes
    share; returns its record with ``storage`` (password masked) and ``study`` added."""
    if isinstance(resamples, bool) or not isinstance(resamples, int) or resamples < 2:
        raise ConfigError(f"--bootstrap needs at least 2 resamples, got {resamples!r}")
    import optuna

    if optuna.logging.get_verbosity() < optuna.logging.WARNING:  # not a line per resample
        optuna.logging.set_verbosity(optuna.logging.WARNING)
    spec = study_spec(meta, method.name, options, seed, alive)
    name = name or study_name(spec)
    study = open_study(storage, name, spec, resamples)
    if progress:
        log.warning("bootstrap resamples are trials of study %r in %s: `circuitdag sweep-worker --storage URL "
                    "--study %s` on other machines shares them", name, masked(storage), name)  # fmt: skip
    run_trials(study, ResampleRunner(patcher, heldout, method, options, seed), resamples, progress)
    return {**collect(study, patcher, heldout, alive, resamples, seed), "storage": masked(storage), "study": name}


def collect(study: optuna.Study, patcher: Patcher, heldout: Patcher | None, alive: np.ndarray, resamples: int,
            seed: int) -> dict[str, Any]:  # fmt: skip
    """The first ``resamples`` finished slots of ``study`` read back and summarised
    (:func:`circuitdag.bootstrap.summarize`); ``trials``: their trial numbers, ``slots``:
    their slots (the resamples they ran)."""
    from circuitdag.bootstrap import summarize

    trials = _finished(study)[:resamples]
    n = patcher.graph.n_edges
    kept = []
    for t in trials:
        c = np.zeros(n, dtype=bool)
        c[np.asarray(t.user_attrs["kept"], dtype=np.int64)] = True
        kept.append(c)
    scores = [unpack(t.user_attrs["scores"]) for t in trials]
    nan = float("nan")
    f_disc = [nan if t.user_attrs["faithfulness"] is None else t.user_attrs["faithfulness"] for t in trials]
    f_held = [t.user_attrs["heldout_faithfulness"] for t in trials] if heldout is not None else None
    out = summarize(patcher, alive, kept, scores, f_disc, f_held, heldout, seed=seed,
                    reruns="method, one trial a resample")  # fmt: skip
    out["trials"] = [t.number for t in trials]
    out["slots"] = [slot_of(t) for t in trials]
    return out


def work_resamples(storage: str, name: str, n_trials: int | None = None, device: str = "cpu",
                   progress: bool = False) -> dict[str, Any]:  # fmt: skip
    """``sweep-worker`` on a bootstrap study: rebuild the run from the study and take
    trials until it holds its ``B`` resamples (or ``n_trials`` of them). Returns counts."""
    from optuna.trial import TrialState

    study = open_study(storage, name)
    spec = study.user_attrs[BOOTSTRAP_ATTR]
    if spec.get("format") != BOOTSTRAP_FORMAT:
        raise ConfigError(f"study {name!r} holds a bootstrap of format {spec.get('format')!r}; this circuitdag "
                          f"reads {BOOTSTRAP_FORMAT}")  # fmt: skip
    want = int(study.user_attrs.get(RESAMPLES_ATTR, 0))
    if _held(study, want) < want and n_trials != 0:
        run_trials(study, ResampleRunner.from_spec(spec, device), want, progress, n_trials)
    trials = study.get_trials(deepcopy=False)
    return {"study": name, "storage": masked(storage), "resamples": want,
            "complete": sum(t.state == TrialState.COMPLETE for t in trials),
            "failed": sum(t.state == TrialState.FAIL for t in trials)}  # fmt: skip


def read_back(storage: str, name: str, device: str = "cpu", resamples: int | None = None) -> dict[str, Any]:
    """The summary of the resamples study ``name`` holds so far (its first ``resamples``
    finished ones; default all), rebuilt from the study alone: the run from its record, the
    circuit from its edge list. For a ``discover`` that was interrupted before the study
    held its ``B`` (at least 2 finished resamples needed)."""
    from circuitdag.holdout import discovery_part, heldout_patcher
    from circuitdag.reload import reload

    study = open_study(storage, name)
    spec = study.user_attrs[BOOTSTRAP_ATTR]
    have = len(_finished(study))
    k = have if resamples is None else min(have, resamples)
    if k < 2:
        raise ConfigError(f"study {name!r} holds {have} finished resamples; a summary needs at least 2")
    import torch

    run = spec["run"]
    loaded = reload(run, device=device, dtype=getattr(torch, str(run.get("dtype") or "float32")),
                    source="the bootstrap study", purpose="this summary")  # fmt: skip
    assert loaded.patcher is not None
    patcher = discovery_part(loaded.patcher, run)
    alive = np.zeros(patcher.graph.n_edges, dtype=bool)
    alive[np.asarray(spec["circuit"], dtype=np.int64)] = True
    held = heldout_patcher(loaded.task, loaded.model, loaded.patcher, run)
    return {**collect(study, patcher, held, alive, k, int(spec["seed"])), "storage": masked(storage), "study": name}


def is_bootstrap(study: optuna.Study) -> bool:
    return BOOTSTRAP_ATTR in study.user_attrs


__all__ = ["BOOTSTRAP_ATTR", "BOOTSTRAP_FORMAT", "RESAMPLES_ATTR", "ResampleRunner", "claim_slot", "collect", "identity",
           "is_bootstrap", "open_study", "pack", "read_back", "resample_index", "run_trials", "shared_bootstrap", "slot_of",
           "study_name", "study_spec", "unpack", "work_resamples"]
