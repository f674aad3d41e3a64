"""Helpers shared by the language-model tasks: tokenizers, BOS, single tokens, layouts.

A language-model task turns text prompts into token ids with the model's own tokenizer,
so the same task runs on a word-level zoo model and on a BPE model such as SmolLM2.
Three conventions differ between tokenizers and are settled here, once:

* **Leading spaces.** BPE tokenizers (GPT-2, SmolLM2) spell the word " he" as one token
  ``Ġhe``; the zoo's word-level tokenizers have no leading-space tokens (``he``).
  :func:`single_token` tries the leading-space form first, then the bare word.
* **BOS.** Whether a prompt starts with the BOS token is decided once, from the model and
  its tokenizer (:func:`bos_decision`; a task option or ``--prepend-bos`` overrides it,
  :func:`wants_bos`), never by the tokenizer's encode: prompts are encoded with
  ``add_special_tokens=False`` and BOS is prepended explicitly.
* **Layout.** Position-aware circuits need every prompt, clean and corrupted, to have the
  same length and the same role at each position. :func:`check_alignment` refuses
  prompts that do not, showing the first offending prompt and its tokens;
  :func:`name_positions` names the positions of aligned prompts.
"""

from __future__ import annotations

import re
import warnings
from collections import Counter
from collections.abc import Collection, Iterable, Mapping, Sequence
from typing import Any

from circuitdag.errors import TaskError
from circuitdag.models.spec import bos_decision

#: Names of punctuation positions (a position name must be a readable word).
PUNCTUATION_NAMES: dict[str, str] = {",": "comma", ".": "period", "?": "qmark", "!": "bang", ":": "colon"}

_WORD = re.compile(r"^[A-Za-z0-9']+$")
_SPACE_MARKS = ("Ġ", "▁", " ")


def tokenizer_of(model: Any) -> Any:
    """The Hugging Face tokenizer of ``model`` (a TransformerBridge has ``.tokenizer``)."""
    tok = getattr(model, "tokenizer", None)
    if tok is None:
        raise TaskError(
            f"{type(model).__name__} has no tokenizer, so a text task cannot build its prompts; "
            "load a language model with circuitdag.load_model (zoo name, hub name or local directory)"
        )
    return tok


def wants_bos(model: Any, prepend_bos: bool | None = None) -> bool:
    """Whether prompts for ``model`` start with BOS: ``prepend_bos`` (a task option, the
    CLI's ``--prepend-bos yes|no``) when given, else :func:`bos_decision`."""
    if prepend_bos is not None:
        return bool(prepend_bos)
    return bos_decision(model)[0]


#: ``--prepend-bos`` values and the task option each stands for.
PREPEND_BOS = {"auto": None, "yes": True, "no": False}


def with_prepend_bos(task: Any, option: str | bool | None) -> Any:
    """``task`` with its BOS option set (``"auto"``/None: :func:`bos_decision`; ``"yes"``/
    ``"no"``): a copy, so the registry's instance keeps its own. A task that builds its
    token ids without a BOS option (tracr, most plugins) accepts only ``"auto"``."""
    import copy

    from circuitdag.errors import ConfigError

    if isinstance(option, str):
        if option not in PREPEND_BOS:
            raise ConfigError(f"--prepend-bos takes {', '.join(PREPEND_BOS)}, got {option!r}")
        option = PREPEND_BOS[option]
    if option is None and getattr(task, "prepend_bos", None) is None:
        return task
    if not hasattr(task, "prepend_bos"):
        raise ConfigError(f"task {getattr(task, 'name', task)!r} builds its own token ids and has no BOS option; "
                          "leave --prepend-bos at auto")  # fmt: skip
    task = copy.copy(task)
    task.prepend_bos = option
    return task


def bos_record(model: Any, task: Any, first_tokens: Sequence[int] | None = None) -> dict[str, Any]:
    """What a result records about BOS: ``prepend_bos`` (the task's option: ``"auto"``,
    ``"yes"``, ``"no"``; None for a task without one), ``bos`` (whether the prompts start
    with BOS: the task's decision, or for a task without the option whether every prompt's
    first token, ``first_tokens``, is the tokenizer's BOS; None when unknown) and
    ``bos_reason``."""
    if hasattr(task, "prepend_bos"):
        option = getattr(task, "prepend_bos", None)
        if option is None:
            bos, reason = bos_decision(model)
        else:
            bos, reason = bool(option), "the task's prepend_bos option"
        return {"prepend_bos": {None: "auto", True: "yes", False: "no"}[option], "bos": bos, "bos_reason": reason}
    bos_id = getattr(getattr(model, "tokenizer", None), "bos_token_id", None)
    if bos_id is None or first_tokens is None:
        return {"prepend_bos": None, "bos": None, "bos_reason": "the task builds its own token ids"}
    bos = all(int(t) == int(bos_id) for t in first_tokens)
    return {"prepend_bos": None, "bos": bos, "bos_reason": "read off the task's prompts"}


def encode(tokenizer: Any, text: str, bos: bool) -> list[int]:
    """Token ids of ``text``, with the tokenizer's BOS in front iff ``bos``."""
    ids = list(tokenizer.encode(text, add_special_tokens=False))
    if not bos:
        return ids
    if tokenizer.bos_token_id is None:
        raise TaskError(
            "the task wants a BOS token but the model's tokenizer has none; pass prepend_bos=False"
        )
    return [int(tokenizer.bos_token_id), *ids]


def word_tokens(tokenizer: Any, word: str) -> list[int]:
    """The ids ``word`` gets after a space inside a sentence (``" John"``).

    BPE tokenizers merge the space into the word; word-level ones drop it, so both
    conventions come out right.
    """
    return list(tokenizer.encode(" " + word, add_special_tokens=False))


def single_token(tokenizer: Any, word: str) -> int | None:
    """The one token id that spells ``word`` as a next-token answer, or None.

    Tries the leading-space form (``" he"``, what follows a word in running text) first,
    then the bare word (``"he"``); a form counts only if it is exactly one known token.
    """
    unk = getattr(tokenizer, "unk_token_id", None)
    for form in (" " + word, word):
        ids = tokenizer.encode(form, add_special_tokens=False)
        if len(ids) == 1 and ids[0] != unk:
            return int(ids[0])
    return None


def token_strings(tokenizer: Any, ids: Sequence[int]) -> list[str]:
    """Readable token strings (``['<|endoftext|>', 'So', 'ĠJohn', ...]``), for messages."""
    return [str(t) for t in tokenizer.convert_ids_to_tokens([int(i) for i in ids])]


def _bare(token: str) -> str:
    while token[:1] in _SPACE_MARKS and len(token) > 1:
        token = token[1:]
    return token


def name_positions(
    tokens: Sequence[Sequence[int]],
    tokenizer: Any,
    fixed: Mapping[int, str] | None = None,
    bos: bool = False,
) -> tuple[str, ...]:
    """Names for the positions of aligned prompts (all of one length).

    ``fixed`` names chosen positions (``{2: "name"}``); position 0 is ``"bos"`` when the
    prompts start with BOS. Every other position where all prompts hold the same token
    is named by that token (``"So"``, ``"is"``, ``"isn"``, ``"'t"``; punctuation by
    :data:`PUNCTUATION_NAMES`, e.g. ``"comma"``); positions where prompts differ are
    ``w1``, ``w2``, ... in order. A last position that is not a word is ``"end"``.
    Names are unique: a repeated name gets a suffix (``"a_2"``).
    """
    if not tokens:
        raise TaskError("a task produced no prompts")
    n = len(tokens[0])
    fixed = dict(fixed or {})
    names: list[str] = []
    n_var = 0
    for i in range(n):
        if i in fixed:
            names.append(fixed[i])
            continue
        if i == 0 and bos:
            names.append("bos")
            continue
        column = {int(t[i]) for t in tokens}
        name = ""
        if len(column) == 1:
            text = _bare(token_strings(tokenizer, [column.pop()])[0])
            if _WORD.match(text):
                name = text
            elif text in PUNCTUATION_NAMES and i != n - 1:
                name = PUNCTUATION_NAMES[text]
            elif i == n - 1:
                name = "end"
        if not name:
            if i == n - 1:
                name = "end"
            else:
                n_var += 1
                name = f"w{n_var}"
        names.append(name)
    seen: Counter[str] = Counter()
    out = []
    for name in names:
        seen[name] += 1
        out.append(name if seen[name] == 1 else f"{name}_{seen[name]}")
    return tuple(out)


def _show(tokenizer: Any, ids: Sequence[int], text: str | None) -> str:
    shown = f"{text!r} -> " if text is not None else ""
    return shown + str(token_strings(tokenizer, ids))


def check_alignment(
    clean: Sequence[Sequence[int]],
    corrupted: Sequence[Sequence[int]],
    tokenizer: Any,
    position_names: Sequence[str] | None = None,
    *,
    may_differ: Collection[str] | None = None,
    clean_text: Sequence[str] | None = None,
    corrupted_text: Sequence[str] | None = None,
    task: str = "task",
) -> None:
    """Refuse prompts that do not share one token layout (raises :class:`TaskError`).

    The rule (docs/tasks.md, "Positions"): every clean and every corrupted prompt has the
    same number of tokens (``len(position_names)`` when names are given), and a clean
    prompt and its corrupted partner differ only at the positions named in
    ``may_differ`` (``None``: anywhere). The error shows the first offending prompt with
    its tokens, so a word that a tokenizer splits in two is easy to spot.
    """
    if len(clean) != len(corrupted):
        raise TaskError(f"{task}: {len(clean)} clean prompts but {len(corrupted)} corrupted prompts")
    if not clean:
        raise TaskError(f"{task}: no prompts")
    n = len(position_names) if position_names is not None else len(clean[0])
    ref = "the position names" if position_names is not None else "prompt 0"

    def text(kind: str, i: int) -> str | None:
        src = clean_text if kind == "clean" else corrupted_text
        return None if src is None else src[i]

    for kind, batch in (("clean", clean), ("corrupted", corrupted)):
        for i, ids in enumerate(batch):
            if len(ids) != n:
                raise TaskError(
                    f"{task}: {kind} prompt {i} has {len(ids)} tokens but {ref} "
                    f"{'give' if position_names is not None else 'has'} {n}: "
                    f"{_show(tokenizer, ids, text(kind, i))}. All prompts must share one token layout "
                    "(a word the tokenizer splits into several tokens changes it): use words that are "
                    "single tokens for this model"
                )
    if may_differ is None:
        return
    allowed = set(may_differ)
    names = list(position_names) if position_names is not None else [str(p) for p in range(n)]
    for i, (a, b) in enumerate(zip(clean, corrupted)):
        bad = [p for p in range(n) if int(a[p]) != int(b[p]) and names[p] not in allowed]
        if bad:
            raise TaskError(
                f"{task}: prompt {i} and its corrupted version differ at position {bad[0]} "
                f"({names[bad[0]]!r}), where only {sorted(allowed)} may differ: clean "
                f"{_show(tokenizer, a, text('clean', i))}, corrupted {_show(tokenizer, b, text('corrupted', i))}"
            )


def drop_or_refuse(
    task: str, what: str, dropped: Sequence[str], n_total: int, why: str, strict: bool
) -> None:
    """Report ``dropped`` items (names, templates) that a model's tokenizer cannot use.

    Strict tasks refuse with a :class:`TaskError`; others warn (naming every dropped item
    and the count) and go on with the rest. Dropping everything is always an error.
    """
    if not dropped:
        return
    msg = f"{task}: {len(dropped)} of {n_total} {what} {why} for this model: {', '.join(dropped)}"
    if strict or len(dropped) == n_total:
        raise TaskError(msg + ("" if len(dropped) < n_total else "; nothing is left to build prompts from"))
    warnings.warn(msg + "; dropped them (pass strict=True to refuse instead)", UserWarning, stacklevel=3)


def most_common(values: Iterable[int]) -> int:
    """The most common value (ties: the smallest), e.g. of prompt token counts."""
    counts = Counter(values)
    best = max(counts.values())
    return min(n for n, c in counts.items() if c == best)


__all__ = [
    "PREPEND_BOS",
    "bos_decision",
    "bos_record",
    "check_alignment",
    "drop_or_refuse",
    "encode",
    "most_common",
    "name_positions",
    "single_token",
    "token_strings",
    "tokenizer_of",
    "wants_bos",
    "with_prepend_bos",
    "word_tokens",
]
