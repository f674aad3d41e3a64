"""The work of one trial: :class:`TrialRunner`, the Optuna objective every ``sweep`` and
``sweep-worker`` process runs. A trial is one fast ACDC run at the sampled threshold
(and metric and ablation); it saves its circuit and returns ``(edges, faithfulness)``.

A trial can be failed under a running objective: when its process is paused for longer
than the heartbeat's grace period, another process marks it ``FAIL``
(:mod:`~circuitdag.sweep.storage`). The objective then finds it finished, drops the
circuit it cannot record and sets :attr:`TrialRunner.lost`; ``study._optimize`` goes on
with the next trial.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

from circuitdag.errors import CircuitDagError, ConfigError
from circuitdag.sweep.settings import SweepSettings
from circuitdag.sweep.storage import HOST, disk_full, stored_trial

if TYPE_CHECKING:
    import optuna

    from circuitdag.patching import Patcher

log = logging.getLogger("circuitdag")


class TrialRunner:
    """The objective: one fast ACDC run per trial.

    Loads the task and the model once, and builds one :class:`Patcher` per
    (metric, ablation) on first use, reused by every later trial of this process.
    """

    def __init__(self, settings: SweepSettings, device: str = "cpu", study_name: str = "") -> None:
        import torch

        from circuitdag.loading import load_task_model
        from circuitdag.tasks._lm import with_prepend_bos

        self.settings = settings
        self.study_name = study_name
        self.out = Path(settings.out)
        # The task's own models first (reversal's compiled/trained), then load_model.
        task, self.model = load_task_model(settings.task, settings.model, device, getattr(torch, settings.dtype))
        from circuitdag._options import check_n_prompts

        check_n_prompts(self.model, settings.n_prompts, device)  # before any prompt is made
        self.task = with_prepend_bos(task, settings.prepend_bos)
        self._patchers: dict[tuple[str, str], tuple[Patcher, dict[str, Any]]] = {}
        #: The number of the last trial another process failed while this one ran it.
        self.lost: int | None = None
        #: An error that ends the sweep rather than one trial (a full disk): every later
        #: trial would meet it too. ``_optimize`` stops the study and raises it.
        self.fatal: Exception | None = None
        self.check()

    def check(self) -> None:
        """Build the patcher of every (metric, ablation) the study may sample and measure
        its metric gap, so that an option that cannot work (``--positions`` on a task
        without a token layout, a metric the task cannot compute, an ablation that changes
        nothing) is an error before any trial runs -- not a failure of every trial that
        samples it (the sampler learns nothing from failed trials and keeps choosing them)."""

        s = self.settings
        combos = [(m, a) for m in s.metrics for a in s.ablations]
        for metric, ablation in combos:
            try:  # prepare() refuses a metric gap of zero or a non-finite metric (check_metric_gap)
                self.patcher(metric, ablation)
            except CircuitDagError as exc:
                if len(combos) == 1:
                    raise
                raise ConfigError(f"metric {metric!r} with {ablation!r} ablation cannot run on task {s.task!r} "
                                  f"({exc}); leave it out of --metric/--ablation") from exc  # fmt: skip

    def patcher(self, metric: str, ablation: str) -> tuple[Patcher, dict[str, Any]]:
        import inspect

        from circuitdag.prepare import prepare

        key = (metric, ablation)
        if key not in self._patchers:
            kwargs: dict[str, Any] = {}
            if self.settings.positions:
                if "positions" not in inspect.signature(prepare).parameters:
                    raise ConfigError("position-aware mode (--positions) is not available yet; run without it")
                kwargs["positions"] = True
            if self.settings.n_prompts is not None:
                kwargs["n_prompts"] = self.settings.n_prompts
            patcher, meta = prepare(self.model, self.task, metric=metric, ablation=ablation,
                                    seed=self.settings.seed, **kwargs)  # fmt: skip
            meta = {"positions": self.settings.positions, **meta}
            if self.settings.model:
                meta["model"] = self.settings.model
            self._patchers[key] = (patcher, meta)
        return self._patchers[key]

    def __call__(self, trial: optuna.Trial) -> tuple[int, float]:
        import optuna

        from circuitdag import discovery as runner
        from circuitdag.algorithms import get_algorithm

        s = self.settings
        unrecorded: Path | None = None  # a circuit saved but not yet named by the trial
        try:
            trial.set_user_attr("worker", f"{HOST}:{os.getpid()}")
            method = get_algorithm(s.algorithm)
            knob: dict[str, Any] = {}
            own: dict[str, Any] = dict(s.options)  # the method's own options, as given (strings)
            if method.size_knob == "threshold":
                knob["threshold"] = trial.suggest_float("threshold", *s.threshold_range, log=True)
            metric = trial.suggest_categorical("metric", s.metrics) if "metric" in s.search else s.metrics[0]
            ablation = trial.suggest_categorical("ablation", s.ablations) if "ablation" in s.search else s.ablations[0]
            trial.set_user_attr("metric", metric)
            trial.set_user_attr("ablation", ablation)
            patcher, meta = self.patcher(str(metric), str(ablation))
            if method.size_knob == "edges":
                lo, hi = s.edges_range or (1, patcher.graph.n_edges)
                knob["edges"] = trial.suggest_int("edges", lo, min(hi, patcher.graph.n_edges), log=True)
            circuit = runner.run_algorithm(patcher, method, meta={**meta, "sweep": {"study": self.study_name,
                                           "trial": trial.number}}, **own, **knob)  # fmt: skip
            faith = circuit.faithfulness()
            if faith is None or not math.isfinite(faith):
                raise CircuitDagError(
                    f"faithfulness is undefined: metric {metric!r} is the same for the full model and "
                    f"under {ablation!r} ablation; choose another metric or ablation"
                )
            path = self.out / "trials" / str(trial.number) / "circuit.json"
            circuit.save(path)
            unrecorded = path
            m = circuit.meta
            for k, v in {"circuit": str(path), "edges": circuit.n_edges, "faithfulness": faith,
                         "metric_full": m["metric_full"], "metric_circuit": m["metric_circuit"],
                         "metric_corrupted": m["metric_corrupted"],
                         "seconds": m["stats"]["seconds"]}.items():  # fmt: skip
                trial.set_user_attr(k, v)
            unrecorded = None
            # Returning values for a trial failed meanwhile would end study.optimize (Optuna
            # refuses to tell a finished trial): look once more.
            if stored_trial(trial).state.is_finished():
                raise optuna.exceptions.UpdateFinishedTrialError(f"trial {trial.number} is finished")
            return circuit.n_edges, faith
        except KeyboardInterrupt:
            trial.set_user_attr("error", "interrupted (Ctrl-C)")
            raise
        except optuna.exceptions.UpdateFinishedTrialError:
            self._lose(trial, unrecorded)
            raise
        except Exception as exc:
            # Optuna marks the trial FAIL (optimize(catch=...)); keep the reason with it.
            if disk_full(exc) is not None:
                self.fatal = exc
                with contextlib.suppress(Exception):  # (the storage may be on the full disk)
                    trial.set_user_attr("error", f"{type(exc).__name__}: {exc}")
                raise
            trial.set_user_attr("error", f"{type(exc).__name__}: {exc}")
            log.warning("trial %d failed: %s: %s", trial.number, type(exc).__name__, exc)
            raise

    def _lose(self, trial: optuna.Trial, unrecorded: Path | None) -> None:
        """Another process failed ``trial`` while this one ran it (this process was paused
        past the heartbeat's grace period). Optuna lets nobody change a finished trial, so
        its result cannot be recorded: remove the circuit no trial names, say so on one
        line, and set :attr:`lost` for ``_optimize``, which goes on with the next trial."""
        if unrecorded is not None:
            unrecorded.unlink(missing_ok=True)
            with contextlib.suppress(OSError):  # (not empty: something else is in it)
                unrecorded.parent.rmdir()
        self.lost = trial.number
        log.warning("trial %d was marked failed by another worker while this process was paused (longer than "
                    "the heartbeat's grace period); its result is dropped, going on with the next trial",
                    trial.number)  # fmt: skip
