"""Task plugins for the tracr-compiled programs shipped in ``circuitdag/models/zoo/tracr``.

Each model was compiled once from a RASP program by ``scripts/compile_tracr.py`` (which
needs the ``tracr`` extra); at run time only the safetensors + JSON files are read, so
no JAX is imported here. The JSON carries the program text, the input/output
vocabularies and the ground-truth circuit derived from the compiled weights (see
docs/tracr.md for the rule).

Every prompt starts with the compiler's ``BOS`` token and the metric reads every
non-BOS position. Outputs are not distributions (numerical programs write one number,
categorical ones a one-hot vector), so the default metric is ``l2``.

:data:`SPECS` is the single description of each program's inputs; the compile script
reads it too, so the shipped models and the task data cannot drift apart.
"""

from __future__ import annotations

import functools
import itertools
import json
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from circuitdag.errors import ModelError, TaskError
from circuitdag.models.tracr_dir import (
    DIR_FORMAT,
    INPUTS_FILE,
    MODEL_FILE,
    is_compiled_dir,
    load_compiled,
    split_spec,
)
from circuitdag.tasks.base import Task, TaskData

if TYPE_CHECKING:  # the hooked transformer imports TransformerLens: loaded with a model only
    from circuitdag.models.hooked import TinyTransformer

ZOO_DIR = Path(__file__).resolve().parent.parent / "models" / "zoo" / "tracr"
BOS = "BOS"
PAD = "PAD"

Value = Any


def _reverse(xs: Sequence[Value]) -> list[Value]:
    return list(xs)[::-1]


def _proportion(xs: Sequence[Value]) -> list[Value]:
    return [sum(x == "x" for x in xs[: i + 1]) / (i + 1) for i in range(len(xs))]


def _pair_balance(xs: Sequence[Value]) -> list[Value]:
    return [(xs[: i + 1].count("(") - xs[: i + 1].count(")")) / (i + 1) for i in range(len(xs))]


def _sort_unique(xs: Sequence[Value]) -> list[Value]:
    return sorted(xs)


def _hist(xs: Sequence[Value]) -> list[Value]:
    return [list(xs).count(x) for x in xs]


def _length(xs: Sequence[Value]) -> list[Value]:
    return [len(xs)] * len(xs)


@dataclass(frozen=True)
class TracrSpec:
    """What a compiled program accepts.

    ``inputs`` says which token sequences (BOS excluded) form the task's input space:
    ``"all"``: every sequence of length ``max_seq_len`` over ``vocab``;
    ``"distinct"``: those whose tokens are pairwise distinct (sort_unique needs unique keys);
    ``"padded"``: every sequence of length 1..max_seq_len, right-padded with ``PAD``.
    ``reference`` is the program in plain Python (outputs per non-BOS position).
    """

    name: str
    vocab: tuple[Value, ...]
    max_seq_len: int
    inputs: str
    reference: Callable[[Sequence[Value]], list[Value]]
    numerical: bool = False


SPECS: dict[str, TracrSpec] = {
    s.name: s
    for s in (
        TracrSpec("reverse", (1, 2, 3), 5, "all", _reverse),
        TracrSpec("proportion", ("a", "b", "c", "x"), 5, "all", _proportion, numerical=True),
        TracrSpec("sort_unique", (1, 2, 3, 4, 5, 6, 7), 5, "distinct", _sort_unique),
        TracrSpec("hist", ("a", "b", "c"), 5, "all", _hist),
        TracrSpec("length", ("a", "b", "c"), 5, "padded", _length),
        TracrSpec("pair_balance", ("(", ")", "a"), 5, "all", _pair_balance, numerical=True),
    )
}


def input_space(spec: TracrSpec) -> list[list[Value]]:
    """Every input of the task (BOS excluded, PAD included), in a fixed order."""
    n, vocab = spec.max_seq_len, spec.vocab
    if spec.inputs == "all":
        return [list(t) for t in itertools.product(vocab, repeat=n)]
    if spec.inputs == "distinct":
        return [list(t) for t in itertools.permutations(vocab, n)]
    if spec.inputs == "padded":
        return [
            list(t) + [PAD] * (n - k) for k in range(1, n + 1) for t in itertools.product(vocab, repeat=k)
        ]
    raise TaskError(f"unknown input space {spec.inputs!r} for tracr program {spec.name!r}")


def _unpadded(xs: Sequence[Value]) -> list[Value]:
    return [x for x in xs if x != PAD]


def counterfactual_pairs(
    spec: TracrSpec, seed: int, n_max: int | None = 100
) -> tuple[list[list[Value]], list[list[Value]]]:
    """Clean inputs (a seeded sample of at most ``n_max``, or all when ``None``) and, for
    each, a different random input used as its resample-ablation counterfactual.

    All inputs of fixed-length programs have the same length, so the counterfactual has
    the same length too (Miller et al. 2024). ``length`` is the exception: with a common
    length its output would never change, so its counterfactuals are padded inputs of
    any length.
    """
    return pair_counterfactuals(input_space(spec), seed, n_max)


def pair_counterfactuals(
    space: Sequence[list[Value]], seed: int, n_max: int | None = 100
) -> tuple[list[list[Value]], list[list[Value]]]:
    """Clean inputs (a sample of at most ``n_max`` of ``space`` drawn with ``seed``, or all
    of it, in order, when ``None``) and, for each, a different input of ``space`` drawn at
    random as its resample-ablation counterfactual. ``space`` needs two distinct inputs."""
    space = list(space)
    if len({tuple(xs) for xs in space}) < 2:
        raise TaskError(f"an input space needs two different inputs to pair counterfactuals, got {space!r}")
    rng = random.Random(seed)
    clean = space if n_max is None or n_max >= len(space) else rng.sample(space, n_max)
    corrupted = []
    for xs in clean:
        other = rng.choice(space)
        while other == xs:
            other = rng.choice(space)
        corrupted.append(other)
    return clean, corrupted


class TracrTask(Task):
    """A shipped tracr program; subclasses set ``program``."""

    program: str = ""
    default_model = "tracr"
    default_metric = "l2"
    # Removing one ground-truth edge moves the l2 metric (mean over prompts and answer
    # positions) by >= 0.12 on the default data of every shipped program; removing an
    # inert edge by <= 6e-7. Plain ACDC at 1e-3 recovers the ground truth exactly on every
    # program, for both ablations (checked by scripts/compile_tracr.py; docs/tracr.md).
    default_threshold = 1e-3
    default_ablation = "resample"
    has_ground_truth = True
    n_prompts = 100

    @property
    def spec(self) -> TracrSpec:
        return SPECS[self.program]

    @property
    def path(self) -> Path:
        return ZOO_DIR / self.program

    def meta(self) -> dict[str, Any]:
        """The model's JSON document (config, program text, vocabularies, ground truth)."""
        return _read_meta(self.path)

    def load_model(self, device: str = "cpu", dtype: torch.dtype = torch.float32) -> TinyTransformer:
        from circuitdag.models.hooked import load_tiny

        model, _ = load_tiny(self.path, device=device, dtype=dtype)
        return model

    def own_model_names(self) -> set[str]:
        return super().own_model_names() | {f"tracr-{self.program}"}  # what its model records

    def encode(self, xs: Sequence[Value]) -> list[int]:
        """Token ids of ``[BOS, *xs]``."""
        return _encode(self.meta()["input_vocab"], xs, self.name)

    def expected(self, xs: Sequence[Value]) -> list[Value]:
        """The program's output at every non-BOS position (``None`` at padding)."""
        out = self.spec.reference(_unpadded(xs))
        return out + [None] * (len(xs) - len(out))

    def data(self, model: Any = None, seed: int = 0) -> TaskData:
        _check_own_model(self, model)
        clean, corrupted = counterfactual_pairs(self.spec, seed, self.n_prompts)
        n = self.spec.max_seq_len
        answer_pos = torch.arange(1, n + 1).expand(len(clean), n).clone()
        valid = torch.tensor([[x != PAD for x in xs] for xs in clean])
        correct = None
        if not self.spec.numerical:
            out_ids = {v: i for i, v in enumerate(self.meta()["output"]["vocab"])}
            correct = torch.tensor(
                [[out_ids[y] if y is not None else 0 for y in self.expected(xs)] for xs in clean]
            )
        return TaskData(
            clean=torch.tensor([self.encode(xs) for xs in clean]),
            corrupted=torch.tensor([self.encode(xs) for xs in corrupted]),
            answer_pos=answer_pos,
            correct=correct,
            valid=valid if not bool(valid.all()) else None,
        )

    def ground_truth(self, ablation: str = "zero") -> set[str] | None:
        """The edges that can change the output under ``ablation`` (what ACDC is scored
        against); derived from the compiled weights, see docs/tracr.md."""
        return set(self._ground_truth(ablation)["edges"])

    def inert_edges(self, ablation: str = "zero") -> set[str]:
        """Edges whose weights connect sender and receiver but that can never change the
        output under ``ablation`` (e.g. the query of a head whose pattern is fixed). An
        evaluation may ignore them (``evaluate.confusion(..., ignore=...)``)."""
        return set(self._ground_truth(ablation)["inert"])

    def _ground_truth(self, ablation: str) -> dict[str, Any]:
        if ablation not in ("zero", "resample"):
            raise TaskError(
                f"{self.name} has ground truth for ablations 'zero' and 'resample', not {ablation!r}"
            )
        return self.meta()["ground_truth"][ablation]


def _check_own_model(task: Task, model: Any) -> None:
    """A tracr task's prompts are token ids of its program's vocabulary: they mean nothing
    to another model, so any other model is refused (not silently run)."""
    name = getattr(getattr(model, "cfg", None), "model_name", None)
    if model is not None and name not in task.own_model_names():
        raise TaskError(f"{task.name} runs on its own compiled model; {name or 'this model'} reads other token "
                        f"ids: run {task.name} without --model, and evaluate on it only circuits found on its model")


def _read_meta(path: Path) -> dict[str, Any]:
    file = path.with_suffix(".json")
    if not file.exists():
        raise TaskError(f"the shipped tracr model {file} is missing; reinstall circuitdag")
    return _read_json(file)


class ReverseTask(TracrTask):
    name = "tracr-reverse"
    program = "reverse"
    description = "tracr-compiled reverse of a length-5 sequence over {1,2,3} (ACDC's tracr task)"


class ProportionTask(TracrTask):
    name = "tracr-proportion"
    program = "proportion"
    description = 'tracr-compiled frac_prevs: running fraction of "x" tokens (numerical output)'


class SortUniqueTask(TracrTask):
    name = "tracr-sort-unique"
    program = "sort_unique"
    description = "tracr-compiled sort of 5 distinct tokens from {1..7}"


class HistTask(TracrTask):
    name = "tracr-hist"
    program = "hist"
    description = "tracr-compiled histogram: how often each token occurs in the sequence"


class LengthTask(TracrTask):
    name = "tracr-length"
    program = "length"
    description = "tracr-compiled sequence length; inputs of length 1..5 right-padded with PAD"


class PairBalanceTask(TracrTask):
    name = "tracr-pair-balance"
    program = "pair_balance"
    description = "tracr-compiled pair_balance: running fraction of '(' minus that of ')' (two heads)"


#: The task classes of this module, for the registry.
TASKS: list[type[TracrTask]] = [
    ReverseTask, ProportionTask, SortUniqueTask, HistTask, LengthTask, PairBalanceTask,
]  # fmt: skip


# --------------------------------------------------------------------------- your own programs


class CompiledTracrTask(Task):
    """Any program compiled by ``circuitdag tracr compile`` (docs/tracr.md, "Your own RASP
    program"), read from its directory without JAX: ``--task tracr:DIR`` or ``tracr:DIR@N``.

    The inputs of one run all have one length ``N`` (BOS excluded), one of the lengths the
    directory was compiled for (default: the longest): the patching engine caches one
    clean and one corrupted batch of one shape, and right-padding is not exact for tracr's
    non-causal attention, which the ported model runs without tracr's padding mask. Each
    length has its own ground truth. Counterfactuals have the same length as their clean
    input (Miller et al. 2024). Metric ``l2`` over every non-BOS position.

    Raises :class:`TaskError` when ``path`` is not a compiled directory or ``length`` is
    not one of its lengths.
    """

    default_metric = "l2"
    default_ablation = "resample"
    has_ground_truth = True
    n_prompts = 100

    def __init__(self, path: str | Path, length: int | None = None, name: str | None = None) -> None:
        self.path = Path(path)
        if not is_compiled_dir(self.path):
            raise TaskError(f"{self.path} is not a compiled tracr directory (no {MODEL_FILE}.json with "
                            f'"tracr_dir": "{DIR_FORMAT}"); write one with `circuitdag tracr compile`')  # fmt: skip
        meta = self.meta()
        lengths = [int(n) for n in meta["lengths"]]
        self.length = max(lengths) if length is None else int(length)
        if self.length not in lengths:
            raise TaskError(f"{self.path} was compiled for input lengths {lengths}, not {self.length}; "
                            "recompile with --lengths to add it")  # fmt: skip
        self.name = name or f"tracr:{path}" + ("" if length is None else f"@{length}")
        self.description = f"tracr-compiled {meta['name']} on inputs of length {self.length}"
        self.default_model = f"tracr:{path}"
        self.default_threshold = float(meta["default_threshold"])

    @classmethod
    def from_spec(cls, spec: str) -> CompiledTracrTask:
        """The task of ``DIR`` or ``DIR@N`` (inputs of length N), as ``--task tracr:...`` names it."""
        try:
            path, length = split_spec(spec)
        except ModelError as exc:
            raise TaskError(str(exc)) from None
        return cls(path, length, name=f"tracr:{spec}")

    def meta(self) -> dict[str, Any]:
        """``model.json``: config, program, vocabularies, ground truth, provenance."""
        return _read_json(self.path / f"{MODEL_FILE}.json")

    def inputs(self) -> dict[str, Any]:
        """This length's entry of ``inputs.json``: ``inputs`` (BOS excluded), ``outputs``
        (the program's, by tracr's RASP evaluator), ``n_space`` and ``sampled``."""
        doc = _read_json(self.path / INPUTS_FILE)
        return doc["lengths"][str(self.length)]

    def load_model(self, device: str = "cpu", dtype: torch.dtype = torch.float32) -> TinyTransformer:
        return load_compiled(self.path, device=device, dtype=dtype)

    def encode(self, xs: Sequence[Value]) -> list[int]:
        """Token ids of ``[BOS, *xs]``."""
        return _encode(self.meta()["input_vocab"], xs, self.name)

    def own_model_names(self) -> set[str]:
        return super().own_model_names() | {str(self.meta()["name"])}  # what its model records

    def data(self, model: Any = None, seed: int = 0) -> TaskData:
        _check_own_model(self, model)
        entry = self.inputs()
        clean, corrupted = pair_counterfactuals(entry["inputs"], seed, self.n_prompts)
        n = self.length
        correct = None
        output = self.meta()["output"]
        if output["kind"] == "categorical":
            out_ids = {_key(v): i for i, v in enumerate(output["vocab"])}
            answer = {tuple(map(_key, xs)): ys for xs, ys in zip(entry["inputs"], entry["outputs"])}
            correct = torch.tensor([[out_ids[_key(y)] for y in answer[tuple(map(_key, xs))]] for xs in clean])
        return TaskData(
            clean=torch.tensor([self.encode(xs) for xs in clean]),
            corrupted=torch.tensor([self.encode(xs) for xs in corrupted]),
            answer_pos=torch.arange(1, n + 1).expand(len(clean), n).clone(),
            correct=correct,
        )

    def ground_truth(self, ablation: str = "zero") -> set[str] | None:
        """The edges that can change the output under ``ablation`` on inputs of this
        length (derived from the compiled weights at compile time, docs/tracr.md)."""
        return set(self._ground_truth(ablation)["edges"])

    def inert_edges(self, ablation: str = "zero") -> set[str]:
        """Edges whose weights connect sender and receiver but that never change the output
        under ``ablation`` on inputs of this length."""
        return set(self._ground_truth(ablation)["inert"])

    def _ground_truth(self, ablation: str) -> dict[str, Any]:
        if ablation not in ("zero", "resample"):
            raise TaskError(
                f"{self.name} has ground truth for ablations 'zero' and 'resample', not {ablation!r}"
            )
        return self.meta()["ground_truth"]["by_length"][str(self.length)][ablation]


def _key(v: Value) -> tuple[str, Value]:
    """A dictionary key that keeps 1, 1.0, True and "1" apart (JSON keeps them apart too)."""
    return (type(v).__name__, v)


def _encode(input_vocab: Sequence[Value], xs: Sequence[Value], name: str) -> list[int]:
    ids = {_key(v): i for i, v in enumerate(input_vocab)}
    try:
        return [ids[_key(BOS)]] + [ids[_key(x)] for x in xs]
    except KeyError as e:
        raise TaskError(f"{name}: token {e.args[0][1]!r} is not in the program's vocabulary") from e


def _read_json(file: Path) -> dict[str, Any]:
    """``file`` parsed, cached until it changes (a directory may be recompiled in place)."""
    try:
        return _read_json_at(file, file.stat().st_mtime_ns)
    except OSError as e:
        raise TaskError(f"cannot read {file}: {e.strerror or e}") from e


@functools.lru_cache(maxsize=64)
def _read_json_at(file: Path, mtime_ns: int) -> dict[str, Any]:
    return json.loads(file.read_text())
