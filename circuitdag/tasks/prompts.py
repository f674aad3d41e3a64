"""A task made from your own prompts: a file (JSONL, JSON, CSV, TSV) or a Python list.

Each prompt is one row with these fields:

=============  ========  ===============================================================
field          needed    meaning
=============  ========  ===============================================================
``clean``      yes       the prompt whose behaviour the circuit should explain
``corrupted``  yes       its counterfactual: the input that resample ablation patches
                         from (same number of tokens as ``clean``)
``correct``    yes       the answer the model should give next (one token, e.g. ``Mary``)
``wrong``      no        the competing answer (``logit_diff`` needs it in every row)
``positions``  no        a name per token (a JSON list, or space-separated in CSV), the
                         same in every row; without it positions are named
                         automatically when all prompts share one length
=============  ========  ===============================================================

The answer is read at the last token of each prompt. Answers are looked up as
:func:`~circuitdag.tasks._lm.single_token` does (``" Mary"`` first, then ``"Mary"``);
an answer that is not one token is an error naming the row. Prompts of different lengths
are padded on the right, which a causal model never reads before the answer; a
position-aware run (``--positions``) needs one length for every prompt.

``circuitdag discover --prompts FILE --model DIR`` and :meth:`Task.from_prompts
<circuitdag.tasks.base.Task.from_prompts>` build a :class:`PromptTask`; the registry
also knows it as the task ``prompts:FILE``, the name a saved circuit records, so that
``curve``, ``evaluate`` and ``sweep`` find the prompts again.
"""

from __future__ import annotations

import csv
import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from circuitdag.errors import TaskError
from circuitdag.tasks import _lm
from circuitdag.tasks.base import Task, TaskData

#: Field names a prompts row may have.
FIELDS = ("clean", "corrupted", "correct", "wrong", "positions")
REQUIRED = ("clean", "corrupted", "correct")
#: Name prefix of a prompts-file task in the registry (``prompts:path/to/file.jsonl``).
PREFIX = "prompts:"
#: Relative threshold used when none is given (``--relative-threshold``; see docs/thresholds.md).
DEFAULT_RELATIVE_THRESHOLD = 0.01


@dataclass(frozen=True)
class Prompt:
    """One row of a prompts file."""

    clean: str
    corrupted: str
    correct: str
    wrong: str | None = None
    positions: tuple[str, ...] | None = None


def _row(raw: Any, where: str) -> Prompt:
    if isinstance(raw, Prompt):
        return raw
    if isinstance(raw, (tuple, list)):
        if not 3 <= len(raw) <= 4:
            raise TaskError(f"{where}: a prompt tuple is (clean, corrupted, correct[, wrong]), got {len(raw)} items")
        raw = dict(zip(FIELDS, raw))
    if not isinstance(raw, Mapping):
        raise TaskError(f"{where}: a prompt is an object with fields {', '.join(FIELDS)}, got {type(raw).__name__}")
    unknown = sorted(set(raw) - set(FIELDS))
    if unknown:
        raise TaskError(f"{where}: unknown field(s) {', '.join(map(repr, unknown))}; the fields are {', '.join(FIELDS)}")
    vals: dict[str, Any] = {}
    for name in FIELDS:
        v = raw.get(name)
        if v is None or (isinstance(v, str) and v == "" and name not in REQUIRED):
            if name in REQUIRED:
                raise TaskError(f"{where}: missing {name!r}; every prompt needs {', '.join(REQUIRED)}")
            continue
        if name == "positions":
            v = v.split() if isinstance(v, str) else v
            if not isinstance(v, (list, tuple)) or not all(isinstance(x, str) for x in v):
                raise TaskError(f"{where}: 'positions' must be a list of names (or space-separated names)")
            vals[name] = tuple(v)
            continue
        if not isinstance(v, str) or (name in REQUIRED and not v.strip()):
            raise TaskError(f"{where}: {name!r} must be a non-empty string, got {v!r}")
        vals[name] = v
    return Prompt(**vals)


def read_prompts(path: str | Path) -> list[Prompt]:
    """The prompts of a JSONL (one object per line), JSON (a list of objects), CSV or TSV
    (a header row naming the fields) file. Raises :class:`TaskError` naming the line."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8-sig")  # a BOM, as Windows editors write, is not part of the text
    except OSError as exc:
        raise TaskError(f"cannot read prompts file {path}: {exc.strerror or exc}") from None
    except UnicodeDecodeError:
        raise TaskError(f"prompts file {path} is not UTF-8 text; save it as UTF-8 (JSONL, JSON, CSV or TSV)") from None
    suffix = path.suffix.lower()
    rows: list[Prompt] = []
    if suffix in (".csv", ".tsv"):
        reader = csv.DictReader(text.splitlines(), delimiter="\t" if suffix == ".tsv" else ",")
        missing = [f for f in REQUIRED if f not in (reader.fieldnames or [])]
        if missing:
            raise TaskError(f"{path}: the header row must name the columns {', '.join(REQUIRED)} (and optionally "
                            f"wrong, positions); missing {', '.join(missing)}")  # fmt: skip
        for i, raw in enumerate(reader, start=2):
            rows.append(_row(raw, f"{path}, line {i}"))
    elif suffix == ".json":
        try:
            doc = json.loads(text)
        except json.JSONDecodeError as exc:
            raise TaskError(f"{path} is not JSON ({exc.msg}, line {exc.lineno})") from None
        if not isinstance(doc, list):
            raise TaskError(f"{path}: a .json prompts file holds a list of objects; use .jsonl for one per line")
        rows = [_row(raw, f"{path}, prompt {i}") for i, raw in enumerate(doc)]
    elif suffix in (".jsonl", ".ndjson"):
        for i, line in enumerate(text.splitlines(), start=1):
            if not line.strip():
                continue
            try:
                raw = json.loads(line)
            except json.JSONDecodeError as exc:
                raise TaskError(f"{path}, line {i} is not JSON ({exc.msg})") from None
            rows.append(_row(raw, f"{path}, line {i}"))
    else:
        raise TaskError(f"{path}: prompts files end in .jsonl, .json, .csv or .tsv, not {suffix or 'nothing'!r}")
    if not rows:
        raise TaskError(f"{path} holds no prompts")
    return rows


class PromptTask(Task, prompt_task=True):
    """A task from a list of prompts (see the module docstring for the fields).

    ``model``: what :meth:`load_model` loads (a name for :func:`circuitdag.load_model`:
    zoo name, ``smollm2-135m``, a Hugging Face name or local directory); ``metric``:
    default ``logit_diff`` when every prompt has a ``wrong`` answer, else ``kl``;
    ``threshold``: an ACDC threshold in metric units, default none, so that ``discover``
    uses ``relative_threshold`` x the full-vs-corrupted metric gap; ``prepend_bos``:
    whether prompts start with the tokenizer's BOS token (default: as
    :func:`~circuitdag.tasks._lm.wants_bos` decides for the model).
    """

    has_ground_truth = False
    default_ablation = "resample"
    data_uses_seed = False  # the file's prompts, in its order

    def __init__(
        self,
        prompts: Iterable[Prompt | Mapping[str, Any] | Sequence[str]],
        *,
        name: str = "prompts",
        model: str | None = None,
        metric: str | None = None,
        threshold: float | None = None,
        relative_threshold: float | None = DEFAULT_RELATIVE_THRESHOLD,
        prepend_bos: bool | None = None,
        description: str | None = None,
    ) -> None:
        self.prompts = [_row(p, f"prompt {i}") for i, p in enumerate(prompts)]
        if not self.prompts:
            raise TaskError("a prompts task needs at least one prompt")
        self.name = name
        self.description = description or f"{len(self.prompts)} prompts given by the user"
        self.default_model = model or ""
        has_wrong = [p.wrong is not None for p in self.prompts]
        if any(has_wrong) and not all(has_wrong):
            first = has_wrong.index(False)
            raise TaskError(f"{name}: prompt {first} has no 'wrong' answer but others do; give one in every "
                            "row or in none")  # fmt: skip
        self.default_metric = metric or ("logit_diff" if all(has_wrong) else "kl")
        if threshold is not None:
            self.default_threshold = float(threshold)
            self.default_relative_threshold = None
        else:
            self.default_relative_threshold = relative_threshold
        self.prepend_bos = prepend_bos

    @classmethod
    def from_file(cls, path: str | Path, **kwargs: Any) -> PromptTask:
        """The task of a prompts file, named ``prompts:<absolute path>`` (so a saved circuit
        can find the file again)."""
        path = Path(path)
        kwargs.setdefault("name", PREFIX + str(path.resolve()))
        kwargs.setdefault("description", f"prompts from {path}")
        return cls(read_prompts(path), **kwargs)

    def load_model(self, device: str = "cpu", dtype: torch.dtype = torch.float32) -> Any:
        if not self.default_model:
            raise TaskError(f"{self.name} has no model of its own: pass --model NAME_OR_DIR "
                            "(from Python: Task.from_prompts(..., model=...) or cd.acdc(model, task))")  # fmt: skip
        from circuitdag.models import load_model

        return load_model(self.default_model, device=device, dtype=dtype)

    def _answer(self, tok: Any, word: str, i: int, field: str) -> int:
        token = _lm.single_token(tok, word)
        unk = getattr(tok, "unk_token_id", None)
        if token is None and unk is not None and tok.encode(" " + word.strip(), add_special_tokens=False) == [unk]:
            raise TaskError(f"{self.name}: prompt {i}: the {field} answer {word!r} is not in the model's vocabulary "
                            f"(it becomes {tok.unk_token!r}); use a word the tokenizer knows")  # fmt: skip
        if token is None:
            shown = _lm.token_strings(tok, tok.encode(" " + word.strip(), add_special_tokens=False))
            raise TaskError(f"{self.name}: prompt {i}: the {field} answer {word!r} is not a single token for this "
                            f"model ({shown}); the metric reads one next token, so use an answer that is one "
                            "token (often its first word piece)")  # fmt: skip
        return token

    def data(self, model: Any, seed: int = 0) -> TaskData:
        """Token ids of the prompts for ``model``; ``seed`` is unused (the prompts are fixed;
        ``--n-prompts`` picks a seeded subset)."""
        tok = _lm.tokenizer_of(model)
        bos = _lm.wants_bos(model, self.prepend_bos)
        clean, corrupted, correct, wrong = [], [], [], []
        for i, p in enumerate(self.prompts):
            a, b = _lm.encode(tok, p.clean, bos), _lm.encode(tok, p.corrupted, bos)
            if len(a) != len(b):
                raise TaskError(f"{self.name}: prompt {i}: the clean prompt has {len(a)} tokens "
                                f"{_lm.token_strings(tok, a)} but the corrupted one {len(b)} "
                                f"{_lm.token_strings(tok, b)}; patching pairs them position by position, so "
                                "give both the same number of tokens")  # fmt: skip
            unk = getattr(tok, "unk_token_id", None)
            for text, ids in ((p.clean, a), (p.corrupted, b)):
                if unk is not None and unk in ids:
                    raise TaskError(f"{self.name}: prompt {i}: {text!r} has words the model's tokenizer does not "
                                    f"know ({_lm.token_strings(tok, ids)}: {tok.unk_token!r}); reword the prompt "
                                    "or check the model directory's tokenizer files")  # fmt: skip
            if a == b:
                raise TaskError(f"{self.name}: prompt {i}: the clean and corrupted prompts are the same tokens "
                                f"({p.clean!r}, tokens {_lm.token_strings(tok, a)}); the corrupted prompt must "
                                "change what the answer depends on")  # fmt: skip
            clean.append(a)
            corrupted.append(b)
            correct.append(self._answer(tok, p.correct, i, "correct"))
            if p.wrong is not None:
                wrong.append(self._answer(tok, p.wrong, i, "wrong"))
                if wrong[-1] == correct[-1]:
                    raise TaskError(f"{self.name}: prompt {i}: the correct and wrong answers are the same token "
                                    f"({p.correct!r}, {p.wrong!r})")  # fmt: skip
        lengths = [len(t) for t in clean]
        n_pos = max(lengths)
        n_ctx = getattr(getattr(model, "cfg", None), "n_ctx", None)
        if n_ctx is not None and n_pos > n_ctx:
            i = lengths.index(n_pos)
            raise TaskError(f"{self.name}: prompt {i} has {n_pos} tokens, more than the model's context of {n_ctx}")
        names = self._position_names(clean, tok, bos, lengths)
        pad = next((t for t in (tok.pad_token_id, tok.eos_token_id) if t is not None), 0)

        def padded(rows: list[list[int]]) -> torch.Tensor:
            return torch.tensor([r + [int(pad)] * (n_pos - len(r)) for r in rows])

        return TaskData(
            clean=padded(clean),
            corrupted=padded(corrupted),
            answer_pos=torch.tensor(lengths).unsqueeze(1) - 1,
            correct=torch.tensor(correct).unsqueeze(1),
            wrong=torch.tensor(wrong).unsqueeze(1) if wrong else None,
            position_names=names,
        )

    def _position_names(self, clean: list[list[int]], tok: Any, bos: bool, lengths: list[int]) -> tuple[str, ...] | None:
        given = {p.positions for p in self.prompts}
        if given == {None}:
            return _lm.name_positions(clean, tok, bos=bos) if len(set(lengths)) == 1 else None
        if len(given) > 1:
            first = next(i for i, p in enumerate(self.prompts) if p.positions != self.prompts[0].positions)
            raise TaskError(f"{self.name}: prompt {first} names its positions differently from prompt 0; "
                            "position names describe one token layout shared by every prompt")  # fmt: skip
        names = given.pop()
        assert names is not None
        if len(set(lengths)) != 1:
            i = lengths.index(max(lengths))
            raise TaskError(f"{self.name}: position names need one token layout, but prompt 0 has {lengths[0]} "
                            f"tokens and prompt {i} {lengths[i]}")  # fmt: skip
        if bos and len(names) == lengths[0] - 1:
            names = ("bos", *names)
        if len(names) != lengths[0]:
            raise TaskError(f"{self.name}: {len(names)} position names for prompts of {lengths[0]} tokens "
                            f"({_lm.token_strings(tok, clean[0])}); give one name per token")  # fmt: skip
        return names


def is_prompts_name(name: str) -> bool:
    return name.startswith(PREFIX)


__all__ = ["DEFAULT_RELATIVE_THRESHOLD", "FIELDS", "PREFIX", "Prompt", "PromptTask", "is_prompts_name", "read_prompts"]
