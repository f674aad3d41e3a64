"""The task plugin interface.

A task says what behaviour a circuit should explain: clean prompts, corrupted prompts
(the counterfactual used by resample ablation), where the answer is read and what it
is. Third parties subclass :class:`Task` and register it under the entry-point group
``circuitdag.tasks`` (see docs/tasks.md); the built-ins are registered the same way.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import torch
from jaxtyping import Bool, Int
from torch import Tensor

from circuitdag.errors import TaskError


@dataclass(frozen=True)
class TaskData:
    """One dataset of a task, as token ids.

    ``answer_pos[i, j]`` is the j-th position of prompt i whose next-token prediction the
    metric reads (one per prompt for language tasks; every output position for tracr).
    ``correct``/``wrong`` are the answer tokens at those positions (``wrong`` is needed by
    ``logit_diff`` only). ``position_names`` names each token position when all prompts
    share one layout (required by position-aware mode).
    """

    clean: Int[Tensor, "batch pos"]
    corrupted: Int[Tensor, "batch pos"]
    answer_pos: Int[Tensor, "batch n_ans"]
    correct: Int[Tensor, "batch n_ans"] | None = None
    wrong: Int[Tensor, "batch n_ans"] | None = None
    position_names: tuple[str, ...] | None = None
    valid: Bool[Tensor, "batch n_ans"] | None = None

    def __post_init__(self) -> None:
        if self.clean.shape != self.corrupted.shape:
            raise TaskError(
                f"clean prompts have shape {tuple(self.clean.shape)} but corrupted prompts "
                f"{tuple(self.corrupted.shape)}; pad or pair them so the shapes are equal"
            )
        if self.answer_pos.ndim != 2 or self.answer_pos.shape[0] != self.clean.shape[0]:
            raise TaskError(
                f"answer_pos must be (batch, n_ans) with batch={self.clean.shape[0]}, "
                f"got {tuple(self.answer_pos.shape)}"
            )
        for name in ("correct", "wrong", "valid"):
            t = getattr(self, name)
            if t is not None and t.shape != self.answer_pos.shape:
                raise TaskError(f"{name} must have the shape of answer_pos {tuple(self.answer_pos.shape)}")
        if self.position_names is not None and len(self.position_names) != self.clean.shape[1]:
            raise TaskError(
                f"position_names has {len(self.position_names)} names for {self.clean.shape[1]} positions"
            )

    def to(self, device: str | torch.device) -> TaskData:
        def mv(t: Tensor | None) -> Tensor | None:
            return None if t is None else t.to(device)

        return TaskData(
            mv(self.clean), mv(self.corrupted), mv(self.answer_pos), mv(self.correct),  # type: ignore[arg-type]
            mv(self.wrong), self.position_names, mv(self.valid),
        )  # fmt: skip

    def shared_answer_positions(self) -> tuple[int, ...]:
        """The sorted answer positions, which every prompt must share (position-aware mode);
        a :class:`TaskError` names the first prompt that differs."""
        ap = self.answer_pos
        if not bool((ap == ap[:1]).all()):
            bad = int((ap != ap[:1]).any(dim=1).nonzero()[0, 0])
            raise TaskError(
                "position-aware mode needs every prompt to read its answer at the same positions; "
                f"prompt 0 answers at {ap[0].tolist()} but prompt {bad} at {ap[bad].tolist()}. "
                "Give the prompts one token layout, or run without --positions"
            )
        return tuple(sorted(set(ap[0].tolist())))

    def truncated(self, n_pos: int) -> TaskData:
        """The first ``n_pos`` positions of every prompt (answers must lie within them)."""
        if int(self.answer_pos.max()) >= n_pos:
            raise TaskError(f"cannot cut prompts to {n_pos} positions: an answer is read at {int(self.answer_pos.max())}")
        names = None if self.position_names is None else tuple(self.position_names[:n_pos])
        return TaskData(self.clean[:, :n_pos], self.corrupted[:, :n_pos], self.answer_pos, self.correct,
                        self.wrong, names, self.valid)  # fmt: skip

    @property
    def n_prompts(self) -> int:
        return int(self.clean.shape[0])

    def subset(self, index: Sequence[int] | Tensor) -> TaskData:
        """The prompts at ``index`` (rows of every tensor), in that order."""
        idx = torch.as_tensor(index, dtype=torch.long)

        def take(t: Tensor | None) -> Tensor | None:
            return None if t is None else t[idx.to(t.device)]

        return TaskData(take(self.clean), take(self.corrupted), take(self.answer_pos), take(self.correct),  # type: ignore[arg-type]
                        take(self.wrong), self.position_names, take(self.valid))  # fmt: skip


class Task:
    """Base class of task plugins. Subclasses set the class attributes and implement
    :meth:`load_model` and :meth:`data`; the rest is optional."""

    name: str = ""
    description: str = ""
    default_model: str = ""
    default_metric: str = "kl"
    default_threshold: float = 0.01
    default_ablation: str = "resample"
    #: When set (and no threshold is given), ACDC's threshold is this fraction of the
    #: full-vs-corrupted metric gap, ``|m_corrupted - m_full|`` (docs/thresholds.md).
    default_relative_threshold: float | None = None
    #: True when :meth:`ground_truth` returns an edge set.
    has_ground_truth: bool = False
    #: The class :meth:`from_prompts` makes (``PromptTask``, which declares itself with
    #: ``class PromptTask(Task, prompt_task=True)``).
    _prompt_task: ClassVar[Any] = None

    def __init_subclass__(cls, prompt_task: bool = False, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if prompt_task:
            Task._prompt_task = cls

    @property
    def data_uses_seed(self) -> bool:
        """Whether :meth:`data` depends on ``seed``. False for a fixed list of prompts
        (pronoun, an-neuron, a prompts file): the seed then only draws the subset that
        ``n_prompts`` asks for (:func:`load_data`), and the CLI says so when ``--seed`` is
        given without ``--n-prompts``. A subclass may set it as a class attribute."""
        return True

    def holdout(self, model: Any, seed: int = 0) -> TaskData | None:
        """Held-out prompts for judging a circuit found on :meth:`data`, disjoint from them
        by construction (other names, templates or values), or None when the task has none
        of its own (:mod:`circuitdag.holdout` then draws them another way)."""
        return None

    def load_model(self, device: str = "cpu", dtype: torch.dtype = torch.float32) -> Any:
        """The task's default model."""
        raise NotImplementedError

    def data(self, model: Any, seed: int = 0) -> TaskData:
        """Clean/corrupted token batches for ``model`` (its tokenizer decides the ids)."""
        raise NotImplementedError

    def for_model(self, name: str) -> Task | None:
        """This task set up for ``--model name`` when ``name`` is one of the task's own
        models (its :meth:`load_model` then loads that model, and its defaults fit it), or
        None when ``name`` is for :func:`circuitdag.load_model` (a zoo, hub or directory
        name). A task that runs only on its own models raises :class:`TaskError` for any
        other name (``reversal``: ``compiled`` or ``trained``)."""
        return None

    def own_model_names(self) -> set[str]:
        """The names a circuit records (``model`` in circuit.json) when it was found on this
        task's own model: the one its ground truth describes."""
        return {n for n in (self.name, self.default_model) if n}

    def ground_truth(self, ablation: str = "zero") -> set[str] | None:
        """Edge names (``a0.1->a1.0<k>``) that the true circuit has, or None if unknown."""
        return None

    def metric(self) -> Callable[..., Tensor] | None:
        """A task-specific metric (see :mod:`circuitdag.metrics` for the signature)."""
        return None

    @classmethod
    def from_prompts(cls, prompts: str | Path | Iterable[Any], **kwargs: Any) -> Task:
        """A task from your own prompts, without writing a class.

        ``prompts`` is a file (``.jsonl``, ``.json``, ``.csv``, ``.tsv``) or a list of rows,
        each a dict with ``clean``, ``corrupted``, ``correct`` and optionally ``wrong`` and
        ``positions``, or a tuple ``(clean, corrupted, correct[, wrong])``. Keyword
        arguments go to :class:`~circuitdag.tasks.prompts.PromptTask` (``model``,
        ``metric``, ``threshold``, ``relative_threshold``, ``prepend_bos``, ``name``)::

            task = cd.Task.from_prompts("prompts.jsonl")
            circuit = cd.acdc("path/to/hf-model", task)
        """
        # The prompts task (circuitdag.tasks.prompts) builds on this module, so it is found
        # through the subclass that declared itself with ``class ...(Task, prompt_task=True)``;
        # the tasks package imports it before anyone can reach this class.
        PromptTask = Task._prompt_task
        if isinstance(prompts, (str, Path)):
            return PromptTask.from_file(prompts, **kwargs)
        return PromptTask(prompts, **kwargs)

    def __repr__(self) -> str:
        return f"<Task {self.name}>"


def load_data(task: Task, model: Any, seed: int = 0, n_prompts: int | None = None) -> TaskData:
    """``task.data(model, seed)`` with ``n_prompts`` prompts (None: the task's own number).

    A task that generates its prompts (a class attribute ``n_prompts``: IOI, greater-than,
    induction, tracr) generates exactly that many; a task with a fixed list (pronoun, a/an,
    a prompts file) gives a subset drawn with ``seed``, kept in the list's order, and
    refuses more prompts than it has."""
    if n_prompts is None:
        return task.data(model, seed=seed)
    if isinstance(n_prompts, bool) or not isinstance(n_prompts, int) or n_prompts < 1:
        raise TaskError(f"the number of prompts must be an integer >= 1, got {n_prompts!r}")
    if isinstance(getattr(type(task), "n_prompts", None), int):
        before = task.__dict__.get("n_prompts")
        task.n_prompts = n_prompts  # type: ignore[attr-defined]
        try:
            data = task.data(model, seed=seed)
        finally:
            if before is None:
                del task.n_prompts  # type: ignore[attr-defined]
            else:
                task.n_prompts = before  # type: ignore[attr-defined]
    else:
        data = task.data(model, seed=seed)
    if data.n_prompts == n_prompts:
        return data
    if data.n_prompts < n_prompts:
        raise TaskError(f"task {task.name!r} has {data.n_prompts} prompts for this model; "
                        f"--n-prompts {n_prompts} asks for more")  # fmt: skip
    g = torch.Generator().manual_seed(seed)
    keep = torch.randperm(data.n_prompts, generator=g)[:n_prompts].sort().values
    return data.subset(keep)
