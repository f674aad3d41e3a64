"""The training and held-out prompts of a soft-prompt experiment (``circuitdag soft-prompts``).

Three sources, all ending as a pair of :class:`~circuitdag.soft_prompts.Examples`:

* ``addition`` (built in here): ``"{a}+{b}="`` for operands ``a, b`` in ``0..9`` (or
  ``0..operands-1``); the
  answer is the sum spelled the way the model's tokenizer spells it after ``=`` (SmolLM2:
  one token per digit, so ``9+9=`` has two answer slots, ``1`` then ``8``, the second read
  after the first is given). A prompt is right when every slot's top-1 token is right.
  The held-out prompts are a seeded ``holdout`` share of the pairs
  (:func:`circuitdag.holdout.split`); the metric is the probability of the answer token,
  mean over slots.
* a registered task (``greater-than``, ``pronoun``, ...): its prompts for ``seed``, and its
  held-out prompts as :func:`circuitdag.holdout.heldout_data` finds them (the task's own
  held-out set, or another seed's prompts less the shared ones; ``holdout`` splits the
  prompts instead when given). The metric is the task's default (greater-than's probability
  difference, pronoun's logit difference); a task whose default compares with the full
  model (``kl``, ``l2``) is scored by the probability of its ``correct`` token instead,
  since a soft prompt is meant to change what the model does. For greater-than every end
  year above the start year is right (the task's answer tokens above the boundary).
* a prompts file (``--prompts FILE``, docs/own-prompts.md): the same, its held-out prompts
  a ``holdout`` share of its rows (default 0.3).
"""

from __future__ import annotations

from typing import Any

import torch

from circuitdag.errors import ConfigError
from circuitdag.metrics import resolve_metric
from circuitdag.soft_prompts import Examples
from circuitdag.tasks.base import TaskData

ADDITION = "addition"
#: Held-out share of the addition pairs and of a prompts file's rows.
HOLDOUT = 0.3
#: Metrics that compare with the full model rather than with the task's answer.
_RELATIVE = ("kl", "l2")


def addition_data(model: Any, operands: range = range(10)) -> TaskData:
    """``a+b=`` prompts for every pair of ``operands``, answer slots as the module doc says.
    Raises :class:`ConfigError` when the tokenizer merges the answer into the ``=``."""
    from circuitdag.tasks._lm import encode, tokenizer_of, wants_bos

    tok, bos = tokenizer_of(model), wants_bos(model)
    rows: list[tuple[list[int], list[int]]] = []
    for a in operands:
        for b in operands:
            head = encode(tok, f"{a}+{b}=", bos)
            full = encode(tok, f"{a}+{b}={a + b}", bos)
            if full[: len(head)] != head or len(full) == len(head):
                raise ConfigError(f"the addition task needs '{a}+{b}=' to be the start of '{a}+{b}={a + b}' in "
                                  "this model's tokens; use --task or --prompts instead")  # fmt: skip
            rows.append((head, full[len(head):]))
    n_ans = max(len(ans) for _, ans in rows)
    length = max(len(h) for h, _ in rows) + n_ans - 1
    pad = int(tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id or 0)
    clean, pos, correct, valid = [], [], [], []
    for head, ans in rows:
        ids = head + ans[:-1]
        clean.append(ids + [pad] * (length - len(ids)))
        slots = [len(head) - 1 + j for j in range(len(ans))]
        pos.append(slots + [slots[-1]] * (n_ans - len(ans)))
        correct.append(ans + [ans[-1]] * (n_ans - len(ans)))
        valid.append([True] * len(ans) + [False] * (n_ans - len(ans)))
    t = torch.tensor(clean)
    return TaskData(t, t.clone(), torch.tensor(pos), torch.tensor(correct), None, None, torch.tensor(valid))


def examples(model: Any, data: TaskData, task: Any | None) -> Examples:
    """:class:`Examples` of ``data`` (``task``: the task that made it, for its metric and,
    for greater-than, its answer set; None for the built-in addition)."""
    if data.correct is None:
        raise ConfigError(f"task {getattr(task, 'name', task)!r} gives no answer tokens (correct), so there is "
                          "nothing to prompt-tune for; use a task with answers or a prompts file")  # fmt: skip
    vocab = int(model.W_E.shape[0])
    allowed = torch.zeros(*data.correct.shape, vocab, dtype=torch.bool)
    allowed.scatter_(-1, data.correct.cpu()[..., None], True)
    answers = getattr(task, "_answers", None)
    if answers is not None and data.wrong is not None and getattr(task, "name", "") == "greater-than":
        ans = torch.tensor(answers)  # the token of each value; right: the values above the boundary
        boundary = (data.wrong.cpu()[..., None] == ans).int().argmax(-1)
        above = torch.arange(len(ans)) > boundary[..., None]
        allowed = torch.zeros_like(allowed)
        allowed.scatter_(-1, ans.expand(*above.shape), above)
    name = "prob" if task is None else str(getattr(task, "default_metric", "kl"))
    if name in _RELATIVE:
        name = "prob"
    bos_id = getattr(getattr(model, "tokenizer", None), "bos_token_id", None)
    at = int(bos_id is not None and bool((data.clean[:, 0] == int(bos_id)).all()))
    valid = data.valid if data.valid is not None else torch.ones_like(data.correct, dtype=torch.bool)
    label = {"task": f"{getattr(task, 'name', 'task')}'s own metric", "prob": "P(answer)",
             "logit_diff": "logit(correct) - logit(wrong)", "nll": "log P(answer)"}.get(name, name)  # fmt: skip
    return Examples(data.clean.cpu(), data.answer_pos.cpu(), allowed, valid.cpu(), data.correct.cpu(),
                    None if data.wrong is None else data.wrong.cpu(), resolve_metric(task, name), label, at)  # fmt: skip


def load_examples(model: Any, task: str | None = None, prompts: str | None = None, seed: int = 0,
                  holdout: float | None = None, n_prompts: int | None = None,
                  operands: int = 10) -> tuple[Examples, Examples, dict[str, Any]]:  # fmt: skip
    """(training examples, held-out examples, what they are) for ``task`` (``addition``
    or a registered name; None: addition) or the prompts file ``prompts``. ``holdout``: the
    held-out share (a split of the prompts); default as the module doc says. ``operands``:
    addition's operands are ``0..operands-1``. Raises :class:`ConfigError` (one line) when
    both ``task`` and ``prompts`` are given, when a side has no prompt, or when the model's
    tokenizer cannot spell the task (:func:`check_spelled`)."""
    from circuitdag.holdout import heldout_data, split
    from circuitdag.tasks import get_task
    from circuitdag.tasks.base import Task, load_data

    if task is not None and prompts is not None:
        raise ConfigError(f"give either --task ({task}) or --prompts ({prompts}), not both")
    task = task or ADDITION
    the_task: Any
    if prompts is not None:
        the_task = Task.from_prompts(prompts)
        what = {"task": the_task.name, "prompts": str(prompts)}
    elif task == ADDITION:
        the_task = None
        what = {"task": ADDITION, "operands": operands}
    else:
        the_task = get_task(task)
        what = {"task": the_task.name}
    # The whole set is checked before it is split: a split of prompts that are all one
    # prompt (or that the tokenizer cannot spell) would otherwise be refused for its sides.
    data = addition_data(model, range(operands)) if the_task is None else load_data(the_task, model, seed=seed,
                                                                                  n_prompts=n_prompts)  # fmt: skip
    check_spelled(model, examples(model, data, the_task), f"{what['task']}'s prompts")
    if the_task is None:
        train, held = split(data, holdout or HOLDOUT, seed)
        how = "split"
    else:
        if prompts is not None and holdout is None:
            holdout = HOLDOUT
        train, h = heldout_data(the_task, model, data, seed=seed, n_prompts=n_prompts, fraction=holdout)
        if h.data is None:
            raise ConfigError(f"{what['task']} has no held-out prompts ({h.reason}); pass --holdout FRACTION")
        held, how = h.data, h.how
    if train.n_prompts < 1 or held.n_prompts < 1:
        raise ConfigError("the training or the held-out prompts are empty; give more prompts or another --holdout")
    what.update({"heldout": how, "n_train": train.n_prompts, "n_heldout": held.n_prompts, "seed": seed})
    both = examples(model, train, the_task), examples(model, held, the_task)
    for ex, side in zip(both, ("training", "held-out"), strict=True):
        check_spelled(model, ex, f"{what['task']}'s {side} prompts")
    return both[0], both[1], what


def check_spelled(model: Any, ex: Examples, what: str) -> None:
    """Refuse (:class:`ConfigError`, one line) examples this model's tokenizer cannot spell:
    a prompt or answer token that is the unknown token, prompts that are all the same tokens
    or that tokenize alike but want different answers, or every answer the same token (a
    prompt that always says it would "solve" the task). ``what`` names them in the message.
    A row's tokens are checked up to its last valid answer slot, BOS excluded; the unknown
    token only where the tokenizer has one of its own (not BOS, EOS or padding)."""
    tok = getattr(model, "tokenizer", None)
    unk = getattr(tok, "unk_token_id", None)
    fix = "use another --model or --task"
    last = torch.where(ex.valid, ex.answer_pos, 0).amax(1)
    rows = [tuple(int(t) for t in ex.tokens[r, ex.insert_at:int(last[r]) + 1]) for r in range(ex.n)]
    answers = [tuple(int(a) for a, v in zip(ex.correct[r], ex.valid[r], strict=True) if v) for r in range(ex.n)]
    specials = {getattr(tok, f"{x}_token_id", None) for x in ("bos", "eos", "pad")}
    if unk is not None and unk not in specials:  # byte-level BPE (GPT-2, SmolLM2) names a special token as unk
        bad = sum(int(unk) in row or int(unk) in ans for row, ans in zip(rows, answers, strict=True))
        if bad:
            name = getattr(tok, "unk_token", None) or f"id {unk}"
            raise ConfigError(f"{bad} of {ex.n} {what} or their answers tokenize to the unknown token {name!r} "
                              f"with this model's tokenizer, which cannot spell them; {fix}")  # fmt: skip
    if ex.n < 2:
        return
    # the prompt of a row is its tokens up to its first answer slot; the rest are given answer tokens
    first = [tuple(int(t) for t in ex.tokens[r, ex.insert_at:int(ex.answer_pos[r, 0]) + 1]) for r in range(ex.n)]
    if len(set(first)) == 1:
        raise ConfigError(f"all {ex.n} {what} are the same tokens with this model's tokenizer; {fix}")
    if len(set(answers)) == 1 and bool(ex.allowed.sum(-1).eq(1).all()):
        raise ConfigError(f"every one of the {ex.n} {what} has the same answer tokens {answers[0]}: a prompt that "
                          f"always says them would solve the task; {fix}")  # fmt: skip
    seen: dict[tuple[int, ...], tuple[int, ...]] = {}
    for row, ans in zip(first, answers, strict=True):
        if seen.setdefault(row, ans) != ans:
            raise ConfigError(f"two {what} tokenize to the same tokens but want different answers with this "
                              f"model's tokenizer; {fix}")  # fmt: skip
