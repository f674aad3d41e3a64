"""Running a sweep: :func:`sweep` creates (or continues) a study and runs trials in this
process; :func:`work` joins an existing study from any machine (``sweep-worker``). Both
end by writing the report (:func:`circuitdag.sweep.report.write_report`).
"""

from __future__ import annotations

from dataclasses import asdict, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from circuitdag.errors import ConfigError
from circuitdag.sweep.front import SweepReport, pareto_front
from circuitdag.sweep.report import write_report
from circuitdag.sweep.settings import DIRECTIONS, SETTINGS_ATTR, TARGET_ATTR, SweepSettings, describe
from circuitdag.sweep.storage import (
    default_storage,
    fail_interrupted_trials,
    finished_trials,
    full_disk_stops,
    load_settings,
    masked,
    open_storage,
    sqlite_file,
)
from circuitdag.sweep.workers import TrialRunner

if TYPE_CHECKING:
    import optuna


def sweep(
    settings: SweepSettings,
    n_trials: int,
    storage: str | None = None,
    study_name: str | None = None,
    device: str = "cpu",
    sampler_seed: int | None = None,
    progress: bool = False,
    target_faithfulness: float | None = None,
) -> SweepReport:
    """Create (or continue) the study and run ``n_trials`` more trials in this process.

    Trials run by ``sweep-worker`` processes on the same study count towards the
    ``n_trials`` too: this process stops once the study holds as many finished trials as
    it had at the start plus ``n_trials``. Writes the report (see :func:`write_report`).
    """
    import optuna

    if n_trials < 0:
        raise ConfigError(f"--trials must be >= 0, got {n_trials}")
    out = Path(settings.out)
    url = storage or default_storage(out)
    name = study_name or settings.task
    runner = None
    db = sqlite_file(url)
    if n_trials and db is not None and not db.exists():
        # A new SQLite study holds no settings to compare: load the model and check the task
        # first, so that a refused task or option leaves no half-made sweep behind.
        runner = TrialRunner(settings, device=device, study_name=name)
    with full_disk_stops(url, out):
        _prepare_out(out)
        store = open_storage(url)
        existing = _existing(store, name)
        if existing is not None:
            old = load_settings(existing)
            if n_trials == 0:  # only rewriting the report: the study's own settings, whatever the flags say
                settings = replace(old, out=settings.out)
            elif not old.same_search(settings):
                raise ConfigError(
                    f"study {name!r} in {masked(url)} was started with other settings "
                    f"({describe(old)}); rerun with those, or choose a new --study (or --out)"
                )
        # Load the model and build the first patcher before touching the study, so bad options
        # fail fast; --trials 0 (create the study, rewrite the report) needs no model.
        if n_trials and runner is None:
            runner = TrialRunner(settings, device=device, study_name=name)
        study = optuna.create_study(storage=store, study_name=name, directions=list(DIRECTIONS),
                                    sampler=_sampler(sampler_seed, existing), load_if_exists=True)  # fmt: skip
        study.set_user_attr(SETTINGS_ATTR, settings.to_dict())
        fail_interrupted_trials(study)
        target = finished_trials(study) + n_trials
        if n_trials:  # (--trials 0 only rewrites the report: it leaves helping workers' goal alone)
            study.set_user_attr(TARGET_ATTR, target)
        try:
            _optimize(study, runner, n_trials, target, progress)
        except KeyboardInterrupt:  # Optuna has marked the running trial FAIL
            write_report(study, out, url)
            raise
        return write_report(study, out, url, target_faithfulness=target_faithfulness)


def work(
    storage: str,
    study_name: str | None = None,
    n_trials: int | None = None,
    out: str | Path | None = None,
    device: str = "cpu",
    sampler_seed: int | None = None,
    progress: bool = False,
) -> SweepReport | dict[str, Any]:
    """Join a study started by :func:`sweep` and run trials for it: ``n_trials`` of them,
    or (``None``) until the study holds the number of finished trials its last ``sweep``
    asked for. ``out`` replaces the sweep's output directory (for a worker on a machine
    that does not share the sweep's file system). A study of bootstrap resamples
    (``discover --bootstrap --storage``) gets its resamples run instead, and the counts
    returned (:func:`circuitdag.sweep.resamples.work_resamples`)."""
    import optuna

    if n_trials is not None and n_trials < 0:
        raise ConfigError(f"--trials must be >= 0, got {n_trials}")
    with full_disk_stops(storage, out if out is not None else "the sweep's output directory"):
        store = open_storage(storage)
        names = [s.study_name for s in optuna.get_all_study_summaries(store, include_best_trial=False)]
        if study_name is None:
            if len(names) != 1:
                raise ConfigError(f"{masked(storage)} holds {len(names)} studies ({', '.join(names) or 'none'}); "
                                  "name one with --study")  # fmt: skip
            study_name = names[0]
        if study_name not in names:
            raise ConfigError(
                f"no study {study_name!r} in {masked(storage)} (it has: {', '.join(names) or 'none'}); start it "
                f"first: a sweep with `circuitdag sweep --storage URL --study {study_name} --trials 0 ...`, "
                f"bootstrap resamples with `circuitdag discover --bootstrap B --storage URL --study {study_name} ...`"
            )
        probe = optuna.load_study(study_name=study_name, storage=store)
        from circuitdag.sweep.resamples import is_bootstrap, work_resamples

        if is_bootstrap(probe):  # a discover --bootstrap --storage study: its resamples, not a sweep
            return work_resamples(storage, study_name, n_trials, device, progress)
        settings = load_settings(probe)
        if out is not None:
            settings = SweepSettings(**{**asdict(settings), "out": str(Path(out).resolve())})
        _prepare_out(Path(settings.out))
        fail_interrupted_trials(probe)
        target = int(probe.user_attrs.get(TARGET_ATTR, 0))
        todo = max(0, target - finished_trials(probe)) if n_trials is None else n_trials
        runner = TrialRunner(settings, device=device, study_name=study_name) if todo else None
        study = optuna.load_study(study_name=study_name, storage=store, sampler=_sampler(sampler_seed, probe))
        try:
            if n_trials is None:  # help until the study holds what the sweep asked for
                _optimize(study, runner, None, target, progress, total=todo)
            else:
                _optimize(study, runner, n_trials, None, progress)
        except KeyboardInterrupt:
            write_report(study, Path(settings.out), storage)
            raise
        return write_report(study, Path(settings.out), storage)


def _existing(store: optuna.storages.BaseStorage, name: str) -> optuna.Study | None:
    import optuna

    try:
        return optuna.load_study(study_name=name, storage=store)
    except KeyError:
        return None


def _prepare_out(out: Path) -> None:
    try:
        (out / "trials").mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ConfigError(f"output directory {out} is not writable ({exc.strerror or exc}); choose another --out")



def _optimize(study: optuna.Study, runner: TrialRunner | None, n_trials: int | None, target: int | None,
              progress: bool, total: int | None = None) -> None:  # fmt: skip
    """``study.optimize`` with failures caught (the trial is FAIL, the sweep goes on), a
    stop once the study holds ``target`` finished trials, and a tqdm bar that shows
    the size of the current front. A trial that meets a full disk stops the study
    (``runner.fatal``: every later trial would meet it too).

    A trial that another process failed while this one was paused ends ``study.optimize``
    (Optuna raises "Cannot tell a FAIL trial."): the runner has said so and set
    ``runner.lost``, and optimisation resumes with the trials still to run."""
    from optuna.trial import TrialState
    from tqdm.auto import tqdm

    if n_trials == 0 or runner is None:
        return
    bar = tqdm(total=n_trials if n_trials is not None else total, desc="sweep", unit="trial", disable=not progress)
    done = 0

    def after_trial(study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
        nonlocal done
        done += 1
        trials = study.get_trials(deepcopy=False)
        complete = [t for t in trials if t.state == TrialState.COMPLETE]
        front = pareto_front([(t.values[0], t.values[1]) for t in complete])
        failed = sum(t.state == TrialState.FAIL for t in trials)
        bar.set_postfix(front=len({(complete[i].values[0], complete[i].values[1]) for i in front}), failed=failed,
                        refresh=False)  # fmt: skip
        bar.update(1)
        if runner.fatal is not None or (target is not None and finished_trials(study, trials) >= target):
            study.stop()

    try:
        while n_trials is None or done < n_trials:
            runner.lost = None
            try:
                study.optimize(runner, n_trials=None if n_trials is None else n_trials - done, catch=(Exception,),
                               callbacks=[after_trial])  # fmt: skip
            except Exception:
                if runner.lost is None:
                    raise
            else:
                if runner.fatal is not None:
                    raise runner.fatal
                return
            done += 1  # the lost trial (after_trial is not called for it)
            bar.update(1)
            if target is not None and finished_trials(study) >= target:
                return
    finally:
        bar.close()


def _sampler(seed: int | None, study: optuna.Study | None = None) -> optuna.samplers.BaseSampler:
    """Multi-objective TPE. A seeded sampler is offset by the number of trials already in
    the study, so a continued sweep does not replay the random start of the first run."""
    import optuna

    if seed is not None and study is not None:
        seed += len(study.get_trials(deepcopy=False))
    return optuna.samplers.TPESampler(seed=seed)
