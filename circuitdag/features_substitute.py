"""The substitution test: does a neuron respond to a feature, or to one word?

Lo's second step (the seed write-up) put FastText's five nearest words in place of a top
token and kept those that raised the activation. The test here, per neuron, over its top
contexts (each the chunk's tokens up to the top position, exactly as the scan ran it):

* the top token is replaced by each of its ``m`` *similar* tokens and by ``m`` random tokens
  drawn from the corpus (never a spelling variant of the same word: ``" Red"`` is no test of
  ``" red"``). When the token is a whole word with corpus word vectors
  (:mod:`circuitdag.features_embed`), the similar tokens are its nearest *words* there,
  spelled as the token is (leading space, capital) and kept when that spelling is one
  token: similarity judged outside the model. Otherwise (a piece of a word, punctuation)
  they are its nearest tokens in the model's embedding space among the tokens the corpus
  uses; on SmolLM2 those are mostly spelling neighbours (" ten" -> "te", "ted", "ty"), which
  is why the word vectors come first. ``similar_space`` says which space each context used;
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

    def __init__(self, space: Space, corpus_ids: np.ndarray, decode: Callable[[list[int]], str], seed: int = 0,
                 words: Space | None = None, encode: Callable[[str], list[int]] | None = None) -> None:  # fmt: skip
        self.space, self.decode, self.words, self.encode = space, decode, words, encode
        self.vocab = [str(w) for w in sorted(words.index, key=words.index.__getitem__)] if words is not None else []
        self.pool = corpus_ids
        self.allowed = np.unique(corpus_ids)
        self.keys = {int(t): spelling(decode, int(t)) for t in self.allowed}
        self.rng = np.random.default_rng(seed)

    def similar(self, token: int, m: int) -> tuple[list[int], str]:
        """``m`` similar tokens and the space they came from (``"words"`` or ``"model"``)."""
        key = self.keys.get(token, spelling(self.decode, token))
        by_words = self._similar_words(token, key, m)
        if len(by_words) == m:
            return by_words, "words"
        sims = self.space.vectors[self.allowed] @ self.space.vectors[token]
        out = []
        for j in np.argsort(-sims):
            t = int(self.allowed[j])
            if self.keys[t] != key and self.keys[t]:
                out.append(t)
                if len(out) == m:
                    break
        return out, "model"

    def _similar_words(self, token: int, key: str, m: int) -> list[int]:
        text = self.decode([token])
        core = text.strip()
        if self.words is None or self.encode is None or not core.isalpha() or key not in self.words.index:
            return []
        sims = self.words.vectors @ self.words.vectors[self.words.index[key]]
        out: list[int] = []
        for j in np.argsort(-sims)[1:200]:
            word = self.vocab[j]
            form = text.replace(core, word.capitalize() if core[0].isupper() else word)
            ids = self.encode(form)
            if len(ids) == 1 and spelling(self.decode, ids[0]) != key:
                out.append(int(ids[0]))
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
    spaces: list[str] = []
    used = 0
    for p in positions:
        c, o = int(p) // corpus.chunk, int(p) % corpus.chunk
        base = chunk_tokens(corpus, [c], device)[:, : o + 1 + int(corpus.bos is not None)]
        last = base.shape[1] - 1
        token = int(base[0, last])
        (similar, space), random = subs.similar(token, swaps), subs.random(token, swaps)
        spaces.append(space)
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
            examples.append({"token": subs.decode([token]), "activation": orig, "similar_space": space,
                             "similar": [{"token": subs.decode([t]), "activation": float(a)}
                                         for t, a in zip(similar, acts[1 : 1 + len(similar)], strict=True)],
                             "random": [{"token": subs.decode([t]), "activation": float(a)}
                                        for t, a in zip(random, acts[1 + len(similar) : 1 + len(similar) + len(random)],
                                                        strict=True)]})  # fmt: skip
    if not sim_ratio or not rand_ratio:
        return {"contexts": 0, "feature": False, "p_similar_above_random": None, "similar_persistence": None,
                "random_persistence": None, "before": [], "examples": examples, "similar_space": spaces}  # fmt: skip
    p_value = float(mannwhitneyu(sim_ratio, rand_ratio, alternative="greater").pvalue)
    return {
        "contexts": used, "similar_space": spaces,
        "similar_persistence": float(np.mean(sim_ratio)), "random_persistence": float(np.mean(rand_ratio)),
        "p_similar_above_random": p_value, "feature": p_value < alpha,
        "before": [{"offset": d, "persistence": float(np.mean(v)), "swaps": len(v)}
                   for d, v in before_ratio.items() if v],
        "examples": examples,
    }  # fmt: skip
