"""The task registry: built-in tasks plus plugins from the ``circuitdag.tasks`` entry points.

A plugin distribution declares, in its pyproject.toml::

    [project.entry-points."circuitdag.tasks"]
    my-task = "my_package.tasks:MyTask"

where ``MyTask`` is a :class:`~circuitdag.tasks.base.Task` subclass (or an instance). The
built-in tasks are declared the same way in circuitdag's own pyproject.toml; the table
below is the same list, used when circuitdag runs from a source tree that was never
installed. A plugin that fails to load is skipped with a warning naming its distribution.
"""

from __future__ import annotations

import warnings

from circuitdag._plugins import load_target as _load_target
from circuitdag._plugins import sources
from circuitdag.errors import TaskError
from circuitdag.tasks.base import Task, TaskData, load_data
from circuitdag.tasks.prompts import PromptTask  # also what Task.from_prompts makes

ENTRY_POINT_GROUP = "circuitdag.tasks"

#: Built-in tasks, exactly as declared in pyproject.toml's entry points.
BUILTIN: dict[str, str] = {
    "tracr-reverse": "circuitdag.tasks.tracr:ReverseTask",
    "tracr-proportion": "circuitdag.tasks.tracr:ProportionTask",
    "tracr-sort-unique": "circuitdag.tasks.tracr:SortUniqueTask",
    "tracr-hist": "circuitdag.tasks.tracr:HistTask",
    "tracr-length": "circuitdag.tasks.tracr:LengthTask",
    "tracr-pair-balance": "circuitdag.tasks.tracr:PairBalanceTask",
    "pronoun": "circuitdag.tasks.pronoun:PronounTask",
    "pronoun-opposite": "circuitdag.tasks.pronoun:PronounOppositeTask",
    "induction": "circuitdag.tasks.induction:InductionTask",
    "induction-compiled": "circuitdag.tasks.induction:CompiledInductionTask",
    "an-neuron": "circuitdag.tasks.an_neuron:AnNeuronTask",
    "ioi": "circuitdag.tasks.ioi:IOITask",
    "greater-than": "circuitdag.tasks.greater_than:GreaterThanTask",
    "reversal": "circuitdag.tasks.reversal:ReversalTask",
}

_cache: dict[str, Task] = {}


def _instantiate(name: str, obj: object) -> Task:
    task = obj() if isinstance(obj, type) else obj
    if not isinstance(task, Task):
        raise TaskError(f"entry point {name!r} gives {type(task).__name__}, not a circuitdag Task")
    if not task.name:
        task.name = name
    return task


def _sources() -> dict[str, tuple[str, str]]:
    """name -> (target "module:attr", distribution name)."""
    return sources(ENTRY_POINT_GROUP, BUILTIN)


def task_names() -> list[str]:
    return sorted(_sources())


def get_task(name: str) -> Task:
    """The task registered as ``name``, ``prompts:FILE`` for a prompts file
    (:mod:`circuitdag.tasks.prompts`), or ``tracr:DIR[@N]`` for a compiled RASP program
    (:class:`~circuitdag.tasks.tracr.CompiledTracrTask`); raises TaskError listing the known ones."""
    if name in _cache:
        return _cache[name]
    if name.startswith("prompts:"):  # a prompts file
        return PromptTask.from_file(name.removeprefix("prompts:"))
    if name.startswith("tracr:"):  # a directory written by `circuitdag tracr compile`
        return _load_target("circuitdag.tasks.tracr:CompiledTracrTask.from_spec")(name.removeprefix("tracr:"))  # type: ignore[operator]
    sources = _sources()
    if name not in sources:
        raise TaskError(f"unknown task {name!r}; known tasks: {', '.join(sorted(sources))} (see `circuitdag tasks`)")
    target, dist = sources[name]
    try:
        task = _instantiate(name, _load_target(target))
    except TaskError as exc:
        raise TaskError(f"task {name!r} from distribution {dist!r}: {exc}") from exc
    except Exception as exc:
        raise TaskError(f"task {name!r} from distribution {dist!r} failed to load: {exc}") from exc
    _cache[name] = task
    return task


def all_tasks() -> list[Task]:
    """Every task that loads; broken plugins are skipped with a warning naming them."""
    out = []
    for name in task_names():
        try:
            out.append(get_task(name))
        except TaskError as exc:
            warnings.warn(f"skipping task plugin: {exc}", RuntimeWarning, stacklevel=2)
    return out


def get(name: str) -> Task:
    """Alias of :func:`get_task` (``cd.tasks.get("pronoun")``)."""
    return get_task(name)


__all__ = ["ENTRY_POINT_GROUP", "Task", "TaskData", "all_tasks", "get", "get_task", "load_data", "task_names"]
