"""A fresh user's findings (verify, stop 4): Ctrl-C during `discover --bootstrap B --storage URL`
ends with the CLI's one line, not an Optuna traceback before it.

Repro: `discover --task pronoun --algorithm edge-pruning --bootstrap 6 --storage sqlite:///bst.db`,
SIGINT during resample 5: Optuna logged "Trial 5 failed with parameters: {} because of the
following error: KeyboardInterrupt()" and a 15-frame traceback, then
"circuitdag: interrupted; rerun with --resume ...". (`sweep` already logs Optuna at ERROR.)"""

from __future__ import annotations

import logging

import optuna
import pytest

from circuitdag.sweep.resamples import run_trials


def test_an_interrupted_resample_logs_no_optuna_traceback(caplog: pytest.LogCaptureFixture) -> None:
    before = optuna.logging.get_verbosity()
    optuna.logging.set_verbosity(optuna.logging.WARNING)  # as shared_bootstrap sets it
    optuna.logging.enable_propagation()
    try:
        study = optuna.create_study()

        def interrupted(trial: optuna.Trial) -> float:
            raise KeyboardInterrupt

        with caplog.at_level(logging.WARNING), pytest.raises(KeyboardInterrupt):
            run_trials(study, interrupted, 2)  # type: ignore[arg-type]
        assert not [r for r in caplog.records if r.exc_info or "KeyboardInterrupt" in r.getMessage()]
        assert study.trials[0].state == optuna.trial.TrialState.FAIL  # Optuna still marks it failed
    finally:
        optuna.logging.disable_propagation()
        optuna.logging.set_verbosity(before)
