"""The substitution test: does a neuron respond to a feature, or to one word?

Lo's second step (the seed write-up) put FastText's five nearest words in place of a top
token and kept those that raised the activation. The test here, per neuron, over its top
contexts (each the chunk's tokens up to the top position, exactly as the scan ran it):

* the top token is replaced by each of its ``m`` nearest tokens in the model's embedding
  space (:mod:`circuitdag.features_embed`; among the tokens the corpus uses, never a
  spelling variant of the same word: ``" Red"`` is no test of ``" red"``), and by ``m``
  random tokens drawn from the corpus (the same exclusion);
* *persistence* is the activation after the swap divided by the original one, averaged
  over contexts and swaps;
* a one-sided Mann-Whitney U test asks whether similar swaps persist more than random ones
  (:func:`scipy.stats.mannwhitneyu`); the neuron is called a *feature* when p < ``alpha``
  (a word neuron loses its activation under both; a context neuron keeps it under both);
* and, as the seed's reviewer asked, each of the ``n_before`` tokens before the top token
  is replaced by ``r`` random tokens in turn: the persistence per offset says how much of
  the activation the preceding context carries.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch

from circuitdag.features_embed import Space
from circuitdag.features_scan import Corpus, chunk_tokens, run_layers

SWAPS = 5
BEFORE = 5
BEFORE_SWAPS = 3


def spelling(decode: Callable[[list[int]], str], token: int) -> str:
    """A token's word, for telling spelling variants apart: stripped, lower-cased."""
    return decode([token]).strip().lower()


class Substitutes:
    """Similar and random replacement tokens (module docstring). ``space``: the model's
    token space; ``corpus_ids``: the training tokens (random draws and the allowed set)."""

    def __init__(self, space: Space, corpus_ids: np.ndarray, decode: Callable[[list[int]], str], seed: int = 0):
        self.space, self.decode = space, decode
        self.pool = corpus_ids
        self.allowed = np.unique(corpus_ids)
        self.keys = {int(t): spelling(decode, int(t)) for t in self.allowed}
        self.rng = np.random.default_rng(seed)

    def similar(self, token: int, m: int) -> list[int]:
        key = self.keys.get(token, spelling(self.decode, token))
        sims = self.space.vectors[self.allowed] @ self.space.vectors[token]
        out = []
        for j in np.argsort(-sims):
            t = int(self.allowed[j])
            if self.keys[t] != key and self.keys[t]:
                out.append(t)
                if len(out) == m:
                    break
        return out

    def random(self, token: int, m: int) -> list[int]:
        key = self.keys.get(token, spelling(self.decode, token))
        out: list[int] = []
        while len(out) < m:
            t = int(self.pool[self.rng.integers(len(self.pool))])
            if self.keys[t] != key:
                out.append(t)
        return out


def substitution_test(model: Any, corpus: Corpus, layer: int, neuron: int, positions: Sequence[int],
                      subs: Substitutes, swaps: int = SWAPS, before: int = BEFORE,
                      before_swaps: int = BEFORE_SWAPS, alpha: float = 0.05) -> dict[str, Any]:  # fmt: skip
    """The test of the module docstring on the top contexts at ``positions`` (flat corpus
    indices) of ``neuron`` in ``layer``. Returns every number (JSON-ready)."""
    from scipy.stats import mannwhitneyu

    device = next(model.parameters()).device
    sim_ratio: list[float] = []
    rand_ratio: list[float] = []
    before_ratio: dict[int, list[float]] = {d: [] for d in range(1, before + 1)}
    examples: list[dict[str, Any]] = []
    used = 0
    for p in positions:
        c, o = int(p) // corpus.chunk, int(p) % corpus.chunk
        base = chunk_tokens(corpus, [c], device)[:, : o + 1 + int(corpus.bos is not None)]
        last = base.shape[1] - 1
        token = int(base[0, last])
        similar, random = subs.similar(token, swaps), subs.random(token, swaps)
        rows, kinds = [base[0]], ["orig"]
        for t in similar + random:
            x = base[0].clone()
            x[last] = t
            rows.append(x)
        kinds += ["similar"] * len(similar) + ["random"] * len(random)
        first = int(corpus.bos is not None)
        for d in range(1, before + 1):
            if last - d < first:
                break
            for t in subs.random(int(base[0, last - d]), before_swaps):
                x = base[0].clone()
                x[last - d] = t
                rows.append(x)
                kinds.append(f"before{d}")
        acts = run_layers(model, torch.stack(rows), [layer])[layer][:, last, neuron].double().numpy()
        orig = float(acts[0])
        if orig <= 0:
            continue  # a ratio means nothing without a positive activation to keep
        used += 1
        ratios = acts / orig
        for k, r in zip(kinds, ratios, strict=True):
            if k == "similar":
                sim_ratio.append(float(r))
            elif k == "random":
                rand_ratio.append(float(r))
            elif k.startswith("before"):
                before_ratio[int(k[6:])].append(float(r))
        if len(examples) < 3:
            examples.append({"token": subs.decode([token]), "activation": orig,
                             "similar": [{"token": subs.decode([t]), "activation": float(a)}
                                         for t, a in zip(similar, acts[1 : 1 + len(similar)], strict=True)],
                             "random": [{"token": subs.decode([t]), "activation": float(a)}
                                        for t, a in zip(random, acts[1 + len(similar) : 1 + len(similar) + len(random)],
                                                        strict=True)]})  # fmt: skip
    if not sim_ratio or not rand_ratio:
        return {"contexts": 0, "feature": False, "p_similar_above_random": None, "similar_persistence": None,
                "random_persistence": None, "before": [], "examples": examples}  # fmt: skip
    p_value = float(mannwhitneyu(sim_ratio, rand_ratio, alternative="greater").pvalue)
    return {
        "contexts": used,
        "similar_persistence": float(np.mean(sim_ratio)), "random_persistence": float(np.mean(rand_ratio)),
        "p_similar_above_random": p_value, "feature": p_value < alpha,
        "before": [{"offset": d, "persistence": float(np.mean(v)), "swaps": len(v)}
                   for d, v in before_ratio.items() if v],
        "examples": examples,
    }  # fmt: skip
