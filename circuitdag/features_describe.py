"""A short description of a coherent neuron, and its score by simulation.

Lo's third step asked GPT-3 to describe what a neuron's top tokens share. Here the default
writer is a template over the evidence, so every word of a description is traceable to a
number:

* the *class*: the lowest WordNet hypernym above at least half of the neuron's distinct top
  words (:mod:`circuitdag.features_wordnet`; " red", " blue", " green" -> *chromatic color*);
* the *words*: its most frequent distinct top words (at most :data:`MAX_WORDS`);
* the substitution verdict (:mod:`circuitdag.features_substitute`): a feature or one word,
  with both persistences, and how much the token before carries.

Scoring follows Bills et al. 2023 ("Language models can explain neurons in language
models"): a *simulator* that sees only the description predicts the neuron's activation
at every token of held-out text, and the score is the Pearson correlation of prediction and
truth over the held-out chunks with the neuron's largest activations plus random held-out
chunks ("top-and-random"). Bills et al.'s simulator is a language model; this one reads the
description's words and class with resources independent of the model under study: a
token in a word the description lists predicts 1; a token in a word of the class (WordNet:
the class is one of its hypernyms, any sense) predicts 1; any other word predicts its
largest cosine similarity to a listed word in the corpus-trained word space, clipped at 0;
a non-word predicts 0. ``score_words_only`` is the same without the class, so the class's
contribution is measured, not assumed.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from typing import Any

import numpy as np

from circuitdag.features_embed import Space
from circuitdag.features_wordnet import WordNet

#: Words listed in a description.
MAX_WORDS = 8


def describe(words: Sequence[str | None], tokens: Sequence[str], wordnet: WordNet | None,
             substitution: dict[str, Any] | None) -> dict[str, Any]:  # fmt: skip
    """The description of a neuron from its top contexts' ``words`` (None: no word) and
    token texts (rank order), the WordNet class of its words and its substitution test."""
    counts = Counter(w for w in words if w)
    listed = [w for w, _ in counts.most_common(MAX_WORDS)]
    cls = wordnet.common_class(list(counts)) if wordnet is not None and len(counts) >= 2 else None
    if listed:
        quoted = ", ".join(f'"{w}"' for w in listed)
    else:
        quoted = ", ".join(f'"{t}"' for t in dict.fromkeys(tokens))
    if cls is not None:
        text = f"{cls[0]} words ({cls[2]:.0%} of its top words): {quoted}"
    else:
        text = f"the words {quoted}" if listed else f"the tokens {quoted}"
    if substitution and substitution.get("similar_persistence") is not None:
        sp, rp = substitution["similar_persistence"], substitution["random_persistence"]
        kind = "a feature, not one word" if substitution["feature"] else "one word more than a feature"
        text += f"; similar tokens keep {sp:.0%} of the activation, random ones {rp:.0%} ({kind})"
        before = substitution.get("before") or []
        if before:
            text += f"; swapping the token before keeps {before[0]['persistence']:.0%}"
    return {"text": text, "words": listed,
            "class": None if cls is None else {"name": cls[0], "wordnet_offset": cls[1], "share": cls[2]}}  # fmt: skip


def simulate(description: dict[str, Any], words: Sequence[str | None], space: Space | None,
             wordnet: WordNet | None, use_class: bool = True) -> np.ndarray:  # fmt: skip
    """The simulator's predicted activation (module docstring) for each held-out token,
    given the word it sits in (None: no word)."""
    listed = set(description["words"])
    cls = description.get("class") if use_class else None
    rows = [space.index[w] for w in listed if space is not None and w in space.index]
    cache: dict[str, float] = {}

    def predict(w: str) -> float:
        if w in listed:
            return 1.0
        if cls is not None and wordnet is not None and wordnet.is_a(w, int(cls["wordnet_offset"])):
            return 1.0
        if space is None or not rows or w not in space.index:
            return 0.0
        return max(0.0, float((space.vectors[rows] @ space.vectors[space.index[w]]).max()))

    out = np.zeros(len(words))
    for i, w in enumerate(words):
        if w:
            if w not in cache:
                cache[w] = predict(w)
            out[i] = cache[w]
    return out


def correlation(a: np.ndarray, b: np.ndarray) -> float | None:
    """Pearson's r, or None when either side is constant."""
    if len(a) < 2 or np.std(a) == 0 or np.std(b) == 0:
        return None
    return float(np.corrcoef(a, b)[0, 1])


def score(description: dict[str, Any], words: Sequence[str | None], activations: np.ndarray,
          space: Space | None, wordnet: WordNet | None) -> dict[str, Any]:  # fmt: skip
    """The simulation scores of ``description`` on held-out tokens (their ``words`` and the
    neuron's true ``activations``): ``score`` and ``score_words_only``."""
    full = simulate(description, words, space, wordnet)
    plain = simulate(description, words, space, wordnet, use_class=False)
    return {"score": correlation(full, activations), "score_words_only": correlation(plain, activations),
            "tokens": len(activations)}  # fmt: skip
