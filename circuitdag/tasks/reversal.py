"""``reversal``: reverse a length-5 sequence over {1, 2, 3}, on a compiled or a trained model.

One task, two models, the same inputs (the 243 sequences of ``tracr-reverse``, sampled
and paired with resample counterfactuals by :func:`circuitdag.tasks.tracr.counterfactual_pairs`):

``--model compiled``
    The shipped tracr ``reverse`` program (``tracr-reverse``; 4 layers of 1 head, non-causal,
    no LayerNorm). Prompts ``BOS x1 .. x5``; the output at position i (1..5) is
    ``x_{6-i}``, a one-hot vector over {1, 2, 3}, so the default metric is ``l2`` (as for
    every tracr task). The data are exactly ``tracr-reverse``'s, and so is the ground truth.
``--model trained``
    The zoo ``reversal`` model (GPT-2, 2 layers of 4 heads; docs/zoo.md), a causal language
    model: it reads ``BOS x1 .. x5 |`` and emits the reversal after the separator. Prompts
    are teacher forced, ``BOS x1 .. x5 | y1 y2 y3 y4`` with ``y_i = x_{6-i}``, and the
    answer ``y_i`` is read at the position before it (6 + i - 1), so the answer slots line
    up with the compiled model's: slot i answers ``y_i = x_{6-i}`` in both. Default metric
    ``kl``.

Position names (for ``--positions`` and for :mod:`circuitdag.heads`, which describes heads
by the named positions they attend to): ``bos``, ``x1`` .. ``x5`` in both models, then
``sep``, ``y1`` .. ``y4`` in the trained one.

:meth:`ReversalTask.data` builds the layout from the model it is given (a model with a
tokenizer gets the trained layout, the tracr model the compiled one), so a circuit of
either model can be re-evaluated from its ``circuit.json`` alone.
"""

from __future__ import annotations

from typing import Any

import torch

from circuitdag.errors import TaskError
from circuitdag.tasks.base import Task, TaskData
from circuitdag.tasks.tracr import SPECS, ReverseTask, counterfactual_pairs

#: ``--model`` names this task accepts -> the variant they select.
MODEL_NAMES = {"compiled": "compiled", "tracr-reverse": "compiled", "trained": "trained", "reversal": "trained"}
N = SPECS["reverse"].max_seq_len
SYMBOLS = SPECS["reverse"].vocab
SEP = "|"


class ReversalTask(Task):
    """Sequence reversal on the compiled (tracr) or the trained (zoo) model; see the module doc.

    ``ReversalTask("compiled")`` / ``ReversalTask("trained")`` (the registry's ``reversal``
    is the trained one); ``task.for_model(name)`` gives the variant for a ``--model`` name.
    """

    name = "reversal"
    n_prompts = 100

    def __init__(self, model: str = "trained") -> None:
        if model not in ("compiled", "trained"):
            raise TaskError(_bad_model(model))
        self.variant = model
        self.default_model = model
        compiled = model == "compiled"
        self.description = (
            "reverse a length-5 sequence over {1,2,3}: --model compiled (tracr reverse) or trained "
            f"(zoo reversal, answers after the separator); this: {model}"
        )
        self.default_metric = "l2" if compiled else "kl"
        # compiled: the tracr tasks' threshold (docs/tracr.md). trained: measured on the
        # default data, docs/compare.md.
        self.default_threshold = 1e-3 if compiled else 0.01
        self.has_ground_truth = compiled

    def for_model(self, name: str) -> Task:
        if name not in MODEL_NAMES:
            raise TaskError(_bad_model(name))
        return ReversalTask(MODEL_NAMES[name])

    def load_model(self, device: str = "cpu", dtype: torch.dtype = torch.float32) -> Any:
        if self.variant == "compiled":
            return ReverseTask().load_model(device=device, dtype=dtype)
        from circuitdag.models import load_model

        return load_model("reversal", device=device, dtype=dtype)

    def data(self, model: Any = None, seed: int = 0) -> TaskData:
        clean, corrupted = counterfactual_pairs(SPECS["reverse"], seed, self.n_prompts)
        if getattr(model, "tokenizer", None) is None:
            return self._compiled_data(model, clean, corrupted)
        return self._trained_data(model, clean, corrupted)

    def _compiled_data(self, model: Any, clean: list[list[Any]], corrupted: list[list[Any]]) -> TaskData:
        rev = ReverseTask()
        cfg = getattr(model, "cfg", None)
        if cfg is not None and (cfg.d_vocab, cfg.d_vocab_out) != (len(rev.meta()["input_vocab"]), len(SYMBOLS)):
            raise TaskError(f"{self.name}: a model without a tokenizer must be the compiled tracr reverse program "
                            f"(--model compiled), not one with d_vocab={cfg.d_vocab}")  # fmt: skip
        out = {v: i for i, v in enumerate(rev.meta()["output"]["vocab"])}
        return TaskData(
            clean=torch.tensor([rev.encode(xs) for xs in clean]),
            corrupted=torch.tensor([rev.encode(xs) for xs in corrupted]),
            answer_pos=torch.arange(1, N + 1).expand(len(clean), N).clone(),
            correct=torch.tensor([[out[y] for y in xs[::-1]] for xs in clean]),
            wrong=torch.tensor([[out[_other(y)] for y in xs[::-1]] for xs in clean]),
            position_names=("bos", *(f"x{i}" for i in range(1, N + 1))),
        )

    def _trained_data(self, model: Any, clean: list[list[Any]], corrupted: list[list[Any]]) -> TaskData:
        tok = model.tokenizer
        vocab = tok.get_vocab()
        words = [str(s) for s in SYMBOLS] + [SEP]
        if tok.bos_token_id is None or any(w not in vocab for w in words):
            raise TaskError(f"{self.name}: the model's tokenizer lacks BOS or one of {words}; use --model trained "
                            "(the zoo reversal model) or --model compiled")  # fmt: skip
        ids = {w: int(vocab[w]) for w in words}

        def encode(xs: list[Any]) -> list[int]:
            rev = xs[::-1]
            return [int(tok.bos_token_id)] + [ids[str(x)] for x in xs] + [ids[SEP]] + [ids[str(y)] for y in rev[:-1]]

        b = len(clean)
        return TaskData(
            clean=torch.tensor([encode(xs) for xs in clean]),
            corrupted=torch.tensor([encode(xs) for xs in corrupted]),
            answer_pos=torch.arange(N + 1, 2 * N + 1).expand(b, N).clone(),
            correct=torch.tensor([[ids[str(y)] for y in xs[::-1]] for xs in clean]),
            wrong=torch.tensor([[ids[str(_other(y))] for y in xs[::-1]] for xs in clean]),
            position_names=("bos", *(f"x{i}" for i in range(1, N + 1)), "sep", *(f"y{i}" for i in range(1, N))),
        )

    def ground_truth(self, ablation: str = "zero") -> set[str] | None:
        """The compiled model's ground truth (that of ``tracr-reverse``, docs/tracr.md);
        None for the trained model."""
        return ReverseTask().ground_truth(ablation) if self.variant == "compiled" else None

    def inert_edges(self, ablation: str = "zero") -> set[str]:
        return ReverseTask().inert_edges(ablation) if self.variant == "compiled" else set()

    def __repr__(self) -> str:
        return f"<Task {self.name} ({self.variant})>"


def _other(y: Any) -> Any:
    """A wrong answer for ``logit_diff``: the next symbol, cyclically."""
    return SYMBOLS[(SYMBOLS.index(y) + 1) % len(SYMBOLS)]


def _bad_model(name: str) -> str:
    return (f"task reversal runs on --model compiled (the tracr reverse program) or --model trained (the zoo "
            f"reversal model), not {name!r}")  # fmt: skip
