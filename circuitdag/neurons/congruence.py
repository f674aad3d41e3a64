"""Neuron-token congruence and mutual congruence (Miller & Neo 2023, the " an" neuron).

The *congruence* of neuron ``n`` (a row of an MLP's output weights) with token ``t`` is
``W_out[n] . W_U[:, t]``: how much writing the neuron's output direction raises ``t``'s
logit (before the final norm). A (neuron, token) pair is *mutually congruent* when the
token is the neuron's most congruent token and the neuron is the token's most congruent
neuron over all neurons of all layers; its score is the product of the two margins::

    score(n, t) = (C[n, t] - 2nd best C[n, :]) * (C[n, t] - 2nd best C[:, t])

A high score marks a neuron that writes one token and almost nothing else, and a token
written mainly by that neuron.

:func:`mutual_congruence` never holds the ``neurons x vocab`` matrix: it multiplies a
chunk of neurons at a time and keeps a running top-2 per token, so GPT-2-Large's
184,320 neurons x 50,257 tokens (37 GB in float32) run in a few hundred MB
(``benchmarks/mutual_congruence.py`` measures it).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from jaxtyping import Float
from torch import Tensor

from circuitdag.errors import ConfigError


@dataclass(frozen=True)
class MutualCongruence:
    """Per neuron (flat index ``layer * d_mlp + i``): ``best_token``, ``token_margin`` (top-1
    minus top-2 congruence over tokens); per token: ``best_neuron``, ``neuron_margin``.
    ``pairs``: the mutually congruent (neuron, token) pairs, ``k 2`` long, sorted by
    ``scores`` (descending)."""

    best_token: Tensor
    token_margin: Tensor
    best_neuron: Tensor
    neuron_margin: Tensor
    pairs: Tensor
    scores: Tensor

    def rank_of(self, neuron: int) -> int | None:
        """1-based rank of ``neuron``'s pair among the mutual pairs, None if it has none."""
        hit = (self.pairs[:, 0] == neuron).nonzero()
        return None if len(hit) == 0 else int(hit[0, 0]) + 1

    def partner_of_token(self, token: int) -> int | None:
        """The neuron mutually congruent with ``token``, or None."""
        n = int(self.best_neuron[token])
        return n if int(self.best_token[n]) == token else None

    def to_dict(self, d_mlp: int, decode: Any = None, top: int = 20) -> dict[str, Any]:
        rows = []
        for (n, t), s in zip(self.pairs[:top].tolist(), self.scores[:top].tolist()):
            rows.append({"layer": n // d_mlp, "neuron": n % d_mlp, "token": t,
                         "token_text": decode(t) if decode else None, "score": s,
                         "token_margin": float(self.token_margin[n]), "neuron_margin": float(self.neuron_margin[t])})  # fmt: skip
        return {"n_pairs": len(self.pairs), "top": rows}


def mutual_congruence(
    W_out: Float[Tensor, "neuron d_model"], W_U: Float[Tensor, "d_model vocab"], chunk: int = 2048
) -> MutualCongruence:
    """Mutual congruence of every neuron with every token, ``chunk`` neurons at a time.

    Memory beyond the inputs: ``chunk x vocab`` congruences plus ``O(neurons + vocab)``.
    Raises :class:`ConfigError` with fewer than two neurons or tokens (no second best)."""
    n, d = W_out.shape
    if W_U.shape[0] != d:
        raise ConfigError(f"W_out rows have {d} dimensions but W_U has {W_U.shape[0]}")
    v = W_U.shape[1]
    if n < 2 or v < 2:
        raise ConfigError("mutual congruence needs at least two neurons and two tokens")
    if chunk < 1:
        raise ConfigError(f"chunk must be >= 1, got {chunk}")
    device = W_out.device
    best_token = torch.empty(n, dtype=torch.long, device=device)
    token_margin = torch.empty(n, dtype=W_out.dtype, device=device)
    col_val = torch.full((2, v), float("-inf"), dtype=W_out.dtype, device=device)
    col_idx = torch.zeros((2, v), dtype=torch.long, device=device)
    with torch.no_grad():
        for i in range(0, n, chunk):
            C = W_out[i : i + chunk] @ W_U  # chunk vocab
            top = C.topk(2, dim=1)
            best_token[i : i + chunk] = top.indices[:, 0]
            token_margin[i : i + chunk] = top.values[:, 0] - top.values[:, 1]
            k = min(2, C.shape[0])
            ctop = C.topk(k, dim=0)
            vals = torch.cat([col_val, ctop.values])
            idxs = torch.cat([col_idx, ctop.indices + i])
            keep = vals.topk(2, dim=0)
            col_val, col_idx = keep.values, idxs.gather(0, keep.indices)
            del C
    best_neuron = col_idx[0]
    neuron_margin = col_val[0] - col_val[1]
    neurons = torch.arange(n, device=device)
    mutual = best_neuron[best_token] == neurons
    pn = neurons[mutual]
    pt = best_token[mutual]
    scores = token_margin[pn] * neuron_margin[pt]
    order = scores.argsort(descending=True)
    pairs = torch.stack([pn[order], pt[order]], 1)
    return MutualCongruence(best_token, token_margin, best_neuron, neuron_margin, pairs, scores[order])


def token_congruence(
    W_out_row: Float[Tensor, " d_model"], W_U: Float[Tensor, "d_model vocab"], k: int = 10
) -> tuple[list[tuple[int, float]], list[tuple[int, float]]]:
    """The ``k`` most and least congruent tokens of one neuron, as (token, congruence)."""
    c = W_out_row @ W_U
    hi, lo = c.topk(min(k, len(c))), (-c).topk(min(k, len(c)))
    return ([(int(t), float(x)) for x, t in zip(hi.values, hi.indices)],
            [(int(t), float(-x)) for x, t in zip(lo.values, lo.indices)])  # fmt: skip
