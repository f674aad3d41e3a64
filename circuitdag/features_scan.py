"""Max-activating contexts of every MLP neuron of chosen layers over a text corpus.

The first step of the feature-neuron search (:func:`circuitdag.features.features`; Lo's
project in the seed write-up, after Neuroscope's max-activating dataset examples). The
corpus (Debian's fortunes by default, :mod:`circuitdag.neurons.corpus`) is tokenized once
and cut into *chunks* of ``chunk`` tokens, each run on its own (with BOS when the model's
prompts start with one); a neuron's activation at a position therefore depends on the
chunk's tokens up to that position and no others. Every fifth chunk (index ``i % 5 == 4``)
is *held out*: the top contexts come from the others, and the descriptions are scored on
the held-out ones (:mod:`circuitdag.features_describe`).

A *neuron* is one entry of ``blocks.L.mlp.hook_post`` (``act(pre)``, or ``act(gate) * up``
in a gated MLP), as in :mod:`circuitdag.neurons`. :func:`scan` keeps, per neuron, the
``top_k`` largest activations and their positions, streaming (the corpus's activations are
never all held: SmolLM2's are 6 KB per token per layer); :func:`run_layers` is the one
forward pass both use, stopped after the last layer asked for.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from jaxtyping import Float
from torch import Tensor

from circuitdag.errors import ConfigError

#: Every ``HOLDOUT_EVERY``-th chunk is held out (the last of each group of five).
HOLDOUT_EVERY = 5
#: Tokens per chunk unless asked (fewer when the model's context is shorter).
DEFAULT_CHUNK = 64


@dataclass(frozen=True)
class Corpus:
    """A tokenized corpus cut into chunks. ``ids``: every token id, in order (int64);
    ``chunk``: tokens per chunk (chunk ``c`` is ``ids[c * chunk:(c + 1) * chunk]``; the last
    partial chunk is dropped); ``bos``: the BOS id put in front of each chunk, or None;
    ``offsets``: each token's (start, end) character span in ``text`` when the tokenizer
    gives them, else None; ``special``: the tokenizer's special ids (unknown, padding, BOS,
    EOS), never a neuron's top token; ``unknown_share``: the share of ``ids`` that are the
    unknown token (a word-level tokenizer on text outside its vocabulary)."""

    text: str
    source: str
    ids: np.ndarray
    chunk: int
    bos: int | None
    offsets: np.ndarray | None
    special: frozenset[int] = frozenset()
    unknown_share: float = 0.0

    def is_special(self, position: int) -> bool:
        return int(self.ids[position]) in self.special

    @property
    def n_chunks(self) -> int:
        return len(self.ids) // self.chunk

    def chunk_ids(self, c: int) -> np.ndarray:
        return self.ids[c * self.chunk : (c + 1) * self.chunk]

    def held_out(self, c: int) -> bool:
        return c % HOLDOUT_EVERY == HOLDOUT_EVERY - 1

    def chunks(self, held_out: bool) -> np.ndarray:
        """The indices of the training (``held_out=False``) or held-out chunks."""
        c = np.arange(self.n_chunks)
        return c[(c % HOLDOUT_EVERY == HOLDOUT_EVERY - 1) == held_out]


def max_chunk(model: Any) -> int:
    """The longest chunk ``model`` runs: its context, less one position for BOS."""
    from circuitdag.tasks._lm import wants_bos

    return int(model.cfg.n_ctx) - int(wants_bos(model))


def tokenize_corpus(model: Any, text: str, source: str, max_tokens: int, chunk: int | None) -> Corpus:
    """The first ``max_tokens`` tokens of ``text`` for ``model``, in chunks of ``chunk``
    tokens (None: :data:`DEFAULT_CHUNK` or the model's context if shorter). Raises
    :class:`ConfigError` for a chunk outside 2..:func:`max_chunk`, or when the corpus has
    fewer than ``2 * HOLDOUT_EVERY`` chunks."""
    from circuitdag.tasks._lm import tokenizer_of, wants_bos

    tok = tokenizer_of(model)
    bos = wants_bos(model)
    longest = max_chunk(model)
    if chunk is None:
        chunk = min(DEFAULT_CHUNK, longest)
    elif not 2 <= chunk <= longest:
        raise ConfigError(f"--chunk must be in 2..{longest} (the model's context is {int(model.cfg.n_ctx)} tokens"
                          f"{', one of them BOS' if bos else ''}), got {chunk}")  # fmt: skip
    head = text[: max_tokens * 20]  # no tokenizer makes more than one token per character
    offsets = None
    try:
        enc = tok(head, add_special_tokens=False, return_offsets_mapping=True)
        offsets = np.asarray(enc["offset_mapping"][:max_tokens], dtype=np.int64)
    except (TypeError, KeyError, NotImplementedError, ValueError):  # a tokenizer without offsets
        enc = tok(head, add_special_tokens=False)
    ids = np.asarray(enc["input_ids"][:max_tokens], dtype=np.int64)
    if len(ids) // chunk < 2 * HOLDOUT_EVERY:
        raise ConfigError(f"the corpus {source} has {len(ids)} tokens for this model, fewer than "
                          f"{2 * HOLDOUT_EVERY} chunks of {chunk}: give a longer --corpus or raise --max-tokens")  # fmt: skip
    special = frozenset(int(i) for i in getattr(tok, "all_special_ids", []) if i is not None)
    unk = getattr(tok, "unk_token_id", None)
    unknown = float(np.mean(ids == int(unk))) if unk is not None and len(ids) else 0.0
    return Corpus(head, source, ids, chunk, int(tok.bos_token_id) if bos else None, offsets, special, unknown)


class _Stop(Exception):
    pass


@torch.no_grad()
def run_layers(model: Any, tokens: Tensor, layers: Sequence[int]) -> dict[int, Float[Tensor, "batch pos d_mlp"]]:
    """The neuron activations (``blocks.L.mlp.hook_post``) of ``layers`` on ``tokens``
    (batch, pos), float32 on the CPU; the pass stops after the last of ``layers``."""
    from circuitdag.hooks import HookTable
    from circuitdag.models import spec_of

    names = HookTable.of(model, spec_of(model)).names
    got: dict[int, Tensor] = {}
    last = max(layers)

    def save(L: int) -> Any:
        def hook(x: Tensor, hook: Any) -> None:
            got[L] = x.detach().float().cpu()
            if L == last:
                raise _Stop

        return hook

    try:
        model.run_with_hooks(tokens, fwd_hooks=[(names.mlp_post.format(L=L), save(L)) for L in layers])
    except _Stop:
        pass
    if len(got) != len(layers):
        raise ConfigError(f"the model fired no {names.mlp_post.format(L=last)} hook: it has no MLP neurons to scan")
    return got


def chunk_tokens(corpus: Corpus, chunks: Sequence[int] | np.ndarray, device: Any) -> Tensor:
    """The token ids of ``chunks`` (chunk, pos), each with the corpus's BOS in front."""
    rows = [corpus.chunk_ids(int(c)) for c in chunks]
    x = torch.as_tensor(np.stack(rows), device=device)
    if corpus.bos is not None:
        x = torch.cat([torch.full((len(rows), 1), corpus.bos, device=device, dtype=x.dtype), x], 1)
    return x


def chunk_activations(model: Any, corpus: Corpus, chunks: Sequence[int] | np.ndarray, layers: Sequence[int],
                      batch: int = 16) -> dict[int, Float[Tensor, "chunk pos d_mlp"]]:  # fmt: skip
    """Every neuron's activation at every (non-BOS) position of ``chunks``, per layer."""
    device = next(model.parameters()).device
    off = int(corpus.bos is not None)
    parts: dict[int, list[Tensor]] = {L: [] for L in layers}
    for i in range(0, len(chunks), batch):
        got = run_layers(model, chunk_tokens(corpus, chunks[i : i + batch], device), layers)
        for L in layers:
            parts[L].append(got[L][:, off:])
    return {L: torch.cat(p) for L, p in parts.items()}


@dataclass
class TopK:
    """Per layer, each neuron's ``k`` largest activations over a set of chunks and where:
    ``values[L]`` (k, d_mlp) descending, ``where[L]`` (k, d_mlp) flat token indices into
    :attr:`Corpus.ids`; ``mean[L]`` (d_mlp,) the mean activation over every position seen."""

    values: dict[int, np.ndarray]
    where: dict[int, np.ndarray]
    mean: dict[int, np.ndarray]
    n_positions: int


def scan(model: Any, corpus: Corpus, layers: Sequence[int], top_k: int, held_out: bool = False,
         batch: int = 16, progress: bool = False) -> TopK:  # fmt: skip
    """Stream the training (or held-out) chunks through the model and keep each neuron's
    ``top_k`` activations (:class:`TopK`). A reference for the streaming merge is
    :func:`chunk_activations` followed by one ``topk`` (tests/test_features.py)."""
    from tqdm.auto import tqdm

    chunks = corpus.chunks(held_out)
    device = next(model.parameters()).device
    off = int(corpus.bos is not None)
    vals: dict[int, Tensor] = {}
    where: dict[int, Tensor] = {}
    total: dict[int, Tensor] = {}
    bar = tqdm(total=len(chunks) * corpus.chunk, desc="max-activating contexts", unit="tok", disable=not progress)
    try:
        for i in range(0, len(chunks), batch):
            _merge(model, corpus, chunks[i : i + batch], layers, top_k, device, off, vals, where, total)
            bar.update(min(batch, len(chunks) - i) * corpus.chunk)
    finally:
        bar.close()  # before an interrupt's message, which would otherwise land on the bar's line
    n = len(chunks) * corpus.chunk
    return TopK({L: v.numpy() for L, v in vals.items()}, {L: w.numpy() for L, w in where.items()},
                {L: (t / n).numpy() for L, t in total.items()}, n)  # fmt: skip


def _merge(model: Any, corpus: Corpus, group: np.ndarray, layers: Sequence[int], top_k: int, device: Any, off: int,
           vals: dict[int, Tensor], where: dict[int, Tensor], total: dict[int, Tensor]) -> None:  # fmt: skip
    """Merge one batch of chunks into the running top-k (in place)."""
    got = run_layers(model, chunk_tokens(corpus, group, device), layers)
    flat = torch.as_tensor((group[:, None] * corpus.chunk + np.arange(corpus.chunk)[None]).reshape(-1))
    for L in layers:
        a = got[L][:, off:].reshape(len(flat), -1)  # position, neuron
        total[L] = total.get(L, 0) + a.double().sum(0)
        if L in vals:
            a = torch.cat([vals[L], a])
            pos = torch.cat([where[L], flat[:, None].expand(-1, a.shape[1])])
        else:
            pos = flat[:, None].expand(-1, a.shape[1])
        v, j = torch.topk(a, min(top_k, len(a)), dim=0)
        vals[L], where[L] = v, torch.gather(pos, 0, j)


def spaced(decode: Any, ids: Sequence[int]) -> list[str]:
    """Each of ``ids``' text as the tokenizer's decoder spaces it in the run of ``ids``
    (its leading space included: " school" after "the" for a word-level or a BPE
    tokenizer alike); joined they give ``decode(ids)``. A token whose decoded prefix is
    not extended (a partial UTF-8 byte) falls back to its own text."""
    out: list[str] = []
    done = ""
    for i in range(len(ids)):
        now = str(decode([int(t) for t in ids[: i + 1]]))
        out.append(now[len(done) :] if now.startswith(done) else str(decode([int(ids[i])])))
        done = now
    return out


def context(corpus: Corpus, position: int, window: int, decode: Any) -> dict[str, Any]:
    """The symmetric window around token ``position``: ``before`` (at most ``window``
    tokens, never before its chunk's start: the model saw nothing earlier), ``token``,
    ``after`` (``window`` tokens, which the causal model did not see), as text spaced as
    the tokenizer decodes the window (:func:`spaced`; the space before the token ends
    ``before``), and ids."""
    start = max(position - window, (position // corpus.chunk) * corpus.chunk)
    ids = corpus.ids
    before, after = ids[start:position].tolist(), ids[position + 1 : position + 1 + window].tolist()
    pieces = spaced(decode, [*before, int(ids[position]), *after])
    hit = pieces[len(before)]
    token = hit.lstrip()
    return {"position": int(position), "chunk": int(position // corpus.chunk), "offset": int(position % corpus.chunk),
            "before": "".join(pieces[: len(before)]) + hit[: len(hit) - len(token)], "token": token,
            "after": "".join(pieces[len(before) + 1 :]), "token_id": int(ids[position])}  # fmt: skip
