"""Soft prompts: K trained input embeddings prepended to every prompt of a task, the model frozen.

Prompt tuning (Lester, Al-Rfou & Constant 2021, "The Power of Scale for Parameter-Efficient
Prompt Tuning") learns a matrix ``P`` of shape ``(K, d_model)`` that takes the place of the
embeddings of K extra input tokens. Here the K tokens go right after BOS when every prompt
starts with it (the attention sink stays first) and at the start otherwise; they are
written into the model's ``hook_embed`` output, the token embeddings before positional
embeddings are added (the zoo's learned positions and SmolLM2's rotary positions then see
K more tokens, as for a real prefix). A real token ``v`` there is exactly ``P[k] = W_E[v]``:
:func:`check_embedding_hook` refuses a model whose ``hook_embed`` is not ``W_E[tokens]``
(e.g. one that scales its embeddings), because the nearest-token test relies on it.

:class:`Examples` holds one task's prompts as this module needs them: token ids
(right-padded), answer positions, and for each answer slot the set of right next tokens
(one token; for greater-than every year above the start year). On it:

* :func:`train_prompt` minimises ``-log P(a right answer)`` (mean over answer slots) with
  Adam from the embeddings of K random vocabulary tokens (``seed``), in minibatches;
* :func:`evaluate` measures any number of prompts ``(P, K, d)`` (or none: the baseline) on
  the examples: **accuracy** (the share of prompts whose top-1 token is right at every
  answer slot), **metric** (the task's own metric, higher is better: e.g. greater-than's
  probability difference, pronoun's logit difference, the probability of the answer) and
  **loss** (the training loss). Every number comes from one plain forward pass per point;
  the reference for the soft-prompted pass is the model run on real tokens
  (``tests/test_soft_prompts.py`` checks that a prompt of real-token embeddings gives the
  logits of the prompt with those tokens spelled out).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from jaxtyping import Bool, Float, Int
from torch import Tensor

from circuitdag.errors import ConfigError
from circuitdag.metrics import Metric, MetricRef

#: Adam learning rate, in units of the embedding matrix's root-mean-square entry.
LR = 0.1
#: Prompts per training step.
BATCH = 16
#: Rows per evaluation forward pass (points x prompts), to bound memory.
EVAL_ROWS = 128


@dataclass(frozen=True)
class Examples:
    """Prompts with their right answers. ``tokens`` (n, pos) right-padded; ``answer_pos``
    (n, n_ans) positions in ``tokens`` whose next token is scored; ``allowed`` (n, n_ans,
    vocab) the right next tokens; ``valid`` (n, n_ans) the slots that count;
    ``correct``/``wrong`` (n, n_ans) the task's answer tokens (``wrong`` may be None);
    ``metric`` the task's metric in :mod:`circuitdag.metrics`' convention (lower is better;
    :func:`evaluate` reports it negated, so higher is better), named ``metric_name``;
    ``insert_at`` where the soft tokens go (1 after BOS, else 0)."""

    tokens: Int[Tensor, "n pos"]
    answer_pos: Int[Tensor, "n n_ans"]
    allowed: Bool[Tensor, "n n_ans vocab"]
    valid: Bool[Tensor, "n n_ans"]
    correct: Int[Tensor, "n n_ans"]
    wrong: Int[Tensor, "n n_ans"] | None
    metric: Metric
    metric_name: str
    insert_at: int

    @property
    def n(self) -> int:
        return int(self.tokens.shape[0])

    def subset(self, idx: Tensor) -> Examples:
        """The examples at ``idx`` (a long tensor of rows)."""
        return Examples(self.tokens[idx], self.answer_pos[idx], self.allowed[idx], self.valid[idx], self.correct[idx],
                        None if self.wrong is None else self.wrong[idx], self.metric, self.metric_name,
                        self.insert_at)  # fmt: skip


def embedding_matrix(model: Any) -> Float[Tensor, "vocab d_model"]:
    """The model's token embedding matrix ``W_E`` (detached)."""
    return model.W_E.detach()


def check_embedding_hook(model: Any) -> None:
    """Raise :class:`ConfigError` unless ``hook_embed`` exists and outputs ``W_E[tokens]``."""
    if "hook_embed" not in getattr(model, "hook_dict", {}):
        raise ConfigError(f"{type(model).__name__} has no hook_embed; soft prompts need a model loaded with "
                          "circuitdag.load_model (a zoo name, a hub name or a local directory)")  # fmt: skip
    seen: list[Tensor] = []
    tokens = torch.tensor([[0, 1, 2]], device=_device(model))
    with torch.no_grad():
        model.run_with_hooks(tokens, fwd_hooks=[("hook_embed", lambda x, hook: seen.append(x.detach()))])
    want = embedding_matrix(model)[tokens]
    if not torch.allclose(seen[0].float(), want.float(), rtol=1e-4, atol=1e-5):
        raise ConfigError("this model's hook_embed is not its embedding matrix's rows (it scales or mixes them), "
                          "so a soft token cannot be compared with real tokens; soft prompts need a model whose "
                          "hook_embed outputs W_E[tokens]")  # fmt: skip


def _device(model: Any) -> torch.device:
    return next(model.parameters()).device


def prompted_logits(model: Any, ex: Examples, prompts: Float[Tensor, "p k d_model"] | None,
                    rows: Tensor | None = None) -> Float[Tensor, "p n n_ans vocab"]:  # fmt: skip
    """Logits at the answer slots of the examples ``rows`` (default all) with each of the
    ``p`` soft prompts in front (``prompts=None``: no soft prompt, shape (1, n, n_ans, vocab)).
    Differentiable in ``prompts``; one forward pass over ``p * n`` rows."""
    tokens = ex.tokens if rows is None else ex.tokens[rows]
    pos = ex.answer_pos if rows is None else ex.answer_pos[rows]
    dev = _device(model)
    tokens, pos = tokens.to(dev), pos.to(dev)
    n = tokens.shape[0]
    if prompts is None:
        logits = model(tokens)
        return logits.gather(1, pos[..., None].expand(-1, -1, logits.shape[-1]))[None]
    p, k = prompts.shape[0], prompts.shape[1]
    at = ex.insert_at
    filler = tokens[:, :1].expand(-1, k)  # replaced in hook_embed
    ext = torch.cat([tokens[:, :at], filler, tokens[:, at:]], 1).repeat(p, 1)
    soft = prompts.to(dev).repeat_interleave(n, 0)

    def put(x: Tensor, hook: Any) -> Tensor:
        return torch.cat([x[:, :at], soft.to(x.dtype), x[:, at + k:]], 1)

    logits = model.run_with_hooks(ext, fwd_hooks=[("hook_embed", put)])
    shifted = torch.where(pos >= at, pos + k, pos).repeat(p, 1)
    out = logits.gather(1, shifted[..., None].expand(-1, -1, logits.shape[-1]))
    return out.reshape(p, n, *out.shape[1:])


def answer_loss(logits: Float[Tensor, "n n_ans vocab"], allowed: Tensor, valid: Tensor) -> Tensor:
    """``-log P(a right answer)`` per prompt, mean over its valid answer slots: shape (n,)."""
    logp = logits.float().log_softmax(-1)
    right = logp.masked_fill(~allowed.to(logp.device), -math.inf).logsumexp(-1)
    v = valid.to(logp.device)
    return -(right * v).sum(-1) / v.sum(-1).clamp(min=1)


def accuracy_per_prompt(logits: Float[Tensor, "n n_ans vocab"], allowed: Tensor, valid: Tensor) -> Tensor:
    """Whether the top-1 token is right at every valid slot of each prompt: bool (n,)."""
    top = logits.argmax(-1, keepdim=True)
    ok = allowed.to(top.device).gather(-1, top)[..., 0]
    return (ok | ~valid.to(top.device)).all(-1)


@torch.no_grad()
def evaluate(model: Any, ex: Examples, prompts: Float[Tensor, "p k d_model"] | None) -> list[dict[str, float]]:
    """Accuracy, metric and loss of each of the ``p`` prompts on ``ex`` (``None``: one
    entry, the model without soft prompt). Chunked to :data:`EVAL_ROWS` rows a pass."""
    if prompts is None:
        logits = torch.cat([prompted_logits(model, ex, None, rows)[0] for rows in _chunks(ex.n, EVAL_ROWS)])
        return [_numbers(ex, logits)]
    out = []
    if ex.n > EVAL_ROWS:  # one soft prompt at a time, in row chunks
        for one in prompts:
            logits = torch.cat([prompted_logits(model, ex, one[None], rows)[0] for rows in _chunks(ex.n, EVAL_ROWS)])
            out.append(_numbers(ex, logits))
        return out
    per = EVAL_ROWS // ex.n
    for start in range(0, prompts.shape[0], per):
        out += [_numbers(ex, lg) for lg in prompted_logits(model, ex, prompts[start:start + per])]
    return out


def _chunks(n: int, size: int) -> list[Tensor]:
    return [torch.arange(s, min(n, s + size)) for s in range(0, n, size)]


def _numbers(ex: Examples, logits: Tensor) -> dict[str, float]:
    dev = logits.device
    ref = MetricRef(logits, ex.correct.to(dev), None if ex.wrong is None else ex.wrong.to(dev), ex.valid.to(dev))
    return {"accuracy": float(accuracy_per_prompt(logits, ex.allowed, ex.valid).float().mean()),
            "metric": -float(ex.metric(logits[None], ref)[0]),
            "loss": float(answer_loss(logits, ex.allowed, ex.valid).mean())}  # fmt: skip


def init_prompt(model: Any, k: int, seed: int) -> Float[Tensor, "k d_model"]:
    """The embeddings of ``k`` vocabulary tokens drawn with ``seed`` (Lester et al.'s
    initialisation from real tokens; different seeds start from different tokens)."""
    w = embedding_matrix(model)
    gen = torch.Generator().manual_seed(int(seed))
    return w[torch.randint(0, w.shape[0], (k,), generator=gen).to(w.device)].float().clone()


@dataclass
class Trained:
    """One trained soft prompt: ``prompt`` (K, d_model), the initialisation it started from,
    the training loss every step and the seconds it took."""

    prompt: Tensor
    init: Tensor
    losses: list[float]
    seconds: float


def train_prompt(model: Any, ex: Examples, k: int, seed: int, steps: int = 100, lr: float = LR,
                 batch: int = BATCH, progress: Callable[[int], None] | None = None) -> Trained:  # fmt: skip
    """Train a ``k``-token soft prompt on ``ex`` from seed ``seed`` (initial tokens and
    minibatch order): ``steps`` Adam steps of ``batch`` prompts, learning rate ``lr`` x the
    root-mean-square entry of ``W_E``. The model's weights are not changed (no gradient is
    taken for them). ``progress(1)`` is called after each step."""
    if k < 1 or steps < 1 or batch < 1:
        raise ConfigError(f"--tokens, --steps and the batch must be at least 1, got {k}, {steps}, {batch}")
    t0 = time.perf_counter()
    init = init_prompt(model, k, seed)
    prompt = init.clone().requires_grad_(True)
    scale = float(embedding_matrix(model).float().pow(2).mean().sqrt())
    opt = torch.optim.Adam([prompt], lr=lr * scale)
    gen = torch.Generator().manual_seed(int(seed) + 1)
    weights = [p for p in model.parameters() if p.requires_grad]
    for p in weights:
        p.requires_grad_(False)
    losses: list[float] = []
    try:
        order = torch.randperm(ex.n, generator=gen)
        cursor = 0
        for _ in range(steps):
            if cursor + min(batch, ex.n) > ex.n:
                order, cursor = torch.randperm(ex.n, generator=gen), 0
            rows = order[cursor:cursor + batch]
            cursor += len(rows)
            logits = prompted_logits(model, ex, prompt[None], rows)[0]
            loss = answer_loss(logits, ex.allowed[rows], ex.valid[rows]).mean()
            opt.zero_grad()
            loss.backward()
            opt.step()
            losses.append(float(loss.detach()))
            if progress is not None:
                progress(1)
    finally:
        for p in weights:
            p.requires_grad_(True)
    return Trained(prompt.detach().clone(), init, losses, round(time.perf_counter() - t0, 2))


def nearest_tokens(model: Any, prompt: Float[Tensor, "k d_model"], cosine: bool = False) -> list[int]:
    """For each soft token, the vocabulary token whose embedding is nearest (Euclidean;
    ``cosine=True``: largest cosine similarity)."""
    w = embedding_matrix(model).float()
    p = prompt.to(w.device).float()
    if cosine:
        sim = torch.nn.functional.normalize(p, dim=-1) @ torch.nn.functional.normalize(w, dim=-1).T
        return [int(i) for i in sim.argmax(-1)]
    return [int(i) for i in torch.cdist(p, w).argmin(-1)]


def token_strings(model: Any, ids: Sequence[int]) -> list[str]:
    """How the tokenizer spells each id (``repr``-safe text; ``#id`` without a tokenizer)."""
    tok = getattr(model, "tokenizer", None)
    if tok is None:
        return [f"#{i}" for i in ids]
    return [str(tok.convert_ids_to_tokens(int(i))) for i in ids]
