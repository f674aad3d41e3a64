"""Threshold sweeps: Optuna studies whose trials are ACDC runs, and their Pareto fronts.

A sweep is a multi-objective Optuna study. Each trial samples an ACDC threshold (on a log
scale; optionally also the metric and the ablation), runs fast ACDC once, saves the
circuit as ``<out>/trials/<number>/circuit.json`` and returns two objectives:

* ``edges`` -- the circuit's size, minimised;
* ``faithfulness`` -- :meth:`Circuit.faithfulness`, the fraction of the metric gap between
  the ablated and the full model that the circuit recovers, maximised.

The study lives in an Optuna RDB storage: by default an embedded SQLite file
``<out>/sweep.db``; a ``postgresql://`` URL makes it a shared study that
``circuitdag sweep-worker`` processes on any number of machines pull trials from. The
sweep's settings (task, model, metric, ablation, search space, output directory) are
stored as study user attributes when the study is created, so a worker needs only the
storage URL and the study name. See docs/sweeps.md.

The package, one concept a module, imports running down this list:

* :mod:`~circuitdag.sweep.settings` -- what a sweep searches (:class:`SweepSettings`);
* :mod:`~circuitdag.sweep.storage` -- Optuna storages, recovery of trials whose worker died;
* :mod:`~circuitdag.sweep.workers` -- the objective, one ACDC run per trial;
* :mod:`~circuitdag.sweep.front` -- the Pareto front and the report's data;
* :mod:`~circuitdag.sweep.figures` -- the figures (matplotlib SVG, plotly);
* :mod:`~circuitdag.sweep.page` -- the interactive ``sweep.html``;
* :mod:`~circuitdag.sweep.report` -- writing the report's files;
* :mod:`~circuitdag.sweep.study` -- :func:`sweep` and :func:`work`.

The ``sweep`` and ``sweep-worker`` commands are :mod:`circuitdag.cli.sweep`.
"""

from __future__ import annotations

from circuitdag._options import DEFAULT_TASK as DEFAULT_TASK
from circuitdag.sweep.figures import pareto_figure as pareto_figure
from circuitdag.sweep.figures import static_svg as static_svg
from circuitdag.sweep.front import PARETO_FORMAT as PARETO_FORMAT
from circuitdag.sweep.front import SweepReport as SweepReport
from circuitdag.sweep.front import pareto_front as pareto_front
from circuitdag.sweep.front import pick_best as pick_best
from circuitdag.sweep.report import write_report as write_report
from circuitdag.sweep.settings import ABLATIONS as ABLATIONS
from circuitdag.sweep.settings import DIRECTIONS as DIRECTIONS
from circuitdag.sweep.settings import DTYPES as DTYPES
from circuitdag.sweep.settings import SEARCHABLE as SEARCHABLE
from circuitdag.sweep.settings import SETTINGS_ATTR as SETTINGS_ATTR
from circuitdag.sweep.settings import SETTINGS_FORMAT as SETTINGS_FORMAT
from circuitdag.sweep.settings import TARGET_ATTR as TARGET_ATTR
from circuitdag.sweep.settings import SweepSettings as SweepSettings
from circuitdag.sweep.settings import default_threshold_range as default_threshold_range
from circuitdag.sweep.settings import make_settings as make_settings
from circuitdag.sweep.storage import GRACE_PERIOD as GRACE_PERIOD
from circuitdag.sweep.storage import HEARTBEAT_INTERVAL as HEARTBEAT_INTERVAL
from circuitdag.sweep.storage import HOST as HOST
from circuitdag.sweep.storage import default_storage as default_storage
from circuitdag.sweep.storage import fail_interrupted_trials as fail_interrupted_trials
from circuitdag.sweep.storage import masked as masked
from circuitdag.sweep.storage import open_storage as open_storage
from circuitdag.sweep.study import sweep as sweep
from circuitdag.sweep.study import work as work
from circuitdag.sweep.workers import TrialRunner as TrialRunner
