"""Semantic coherence of a neuron's top tokens in two embedding spaces, against a null.

Lo's project (the seed write-up) called a neuron *semantically coherent* when the tokens of
its top-20 contexts are similar in FastText's space, filtered by a threshold. Here the
principled version: the statistic is the mean pairwise cosine similarity of the neuron's
*distinct* top items (a neuron that fires on " red" ten times is one item, not ten), and the
null is a permutation one: the items of every neuron of the layer are pooled (each neuron's
distinct items once) and random sets of the same size are drawn from that pool (in
proportion to how many neurons list an item; an item drawn twice is drawn again). The
question is thus "are this neuron's top tokens more alike than the top tokens of the
layer's neurons taken at random?": the null has the same token frequencies and the same
kinds of tokens as the neurons' own lists (a null of random corpus positions would be
dominated by function words, which lie close together in embedding space, and would call
every content-word neuron incoherent). The p-value is ``(1 + #null >= observed) /
(1 + n_null)`` and z the observed value's distance from the null mean in null standard
deviations; over all neurons the p-values get Benjamini-Hochberg's false discovery rate
control (:func:`scipy.stats.false_discovery_control`, in :func:`circuitdag.features.features`).
The smallest p-value is ``1 / (1 + n_null)``, so ``n_null`` must be large next to the number
of neurons over ``alpha`` for a lone coherent neuron to pass (the default 10,000 suits ~500
neurons alone; with thousands, many coherent neurons pass together, as BH allows).

The two spaces:

* **the model's own token embeddings** (``W_E``, rows centred on their mean, then unit
  length): items are token ids;
* **word vectors trained on the corpus** (:func:`word_vectors`): positive pointwise mutual
  information of words within 4 words of each other (context distribution smoothed with
  alpha = 0.75) factored by a truncated SVD, ``U * sqrt(S)`` (Levy, Goldberg & Dagan 2015,
  "Improving distributional similarity with lessons learned from word embeddings": the
  count-based counterpart of word2vec/FastText, trained in seconds with scipy, no extra
  package). Items are lower-cased *words*: the whole word a token sits in (``" beaut"
  "iful"`` -> ``beautiful``, from the tokenizer's character offsets), so this space does
  not inherit the model's tokenization. It shares nothing with the model but the corpus.

A neuron with fewer than 3 distinct items in a space is not tested there (``None``).
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from circuitdag.features_scan import Corpus

#: Words co-occur within this many words of each other (both sides).
WORD_WINDOW = 4
#: A word needs this many occurrences in the corpus to get a vector.
MIN_COUNT = 5
#: Dimensions of the word vectors (fewer for a small vocabulary).
WORD_DIMS = 100
#: Fewest distinct items a coherence test needs.
MIN_ITEMS = 3
_WORD = re.compile(r"[a-z]+(?:'[a-z]+)?")


@dataclass(frozen=True)
class Space:
    """Unit vectors of items. ``vectors`` (item, d); ``index``: item key -> row."""

    name: str
    vectors: np.ndarray
    index: dict[object, int]

    def rows(self, items: Sequence[object]) -> list[int]:
        """The distinct rows of ``items`` present in the space, in first-seen order."""
        return list(dict.fromkeys(self.index[i] for i in items if i in self.index))


def unit_rows(x: np.ndarray, centre: bool = True) -> np.ndarray:
    x = x - x.mean(0, keepdims=True) if centre else x
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


def model_space(W_E: np.ndarray) -> Space:
    """The model's token embeddings (d_vocab, d_model) as a :class:`Space` over token ids."""
    return Space("model", unit_rows(W_E.astype(np.float64)), {i: i for i in range(len(W_E))})


def words_of(text: str) -> list[str]:
    return _WORD.findall(text.lower())


def word_vectors(text: str, dims: int = WORD_DIMS, min_count: int = MIN_COUNT) -> tuple[list[str], np.ndarray] | None:
    """PPMI-SVD word vectors of ``text`` (module docstring): (words, unit vectors (word, d)),
    or None when fewer than 10 words occur ``min_count`` times."""
    from scipy.sparse import coo_matrix
    from scipy.sparse.linalg import svds

    tokens = words_of(text)
    counts = Counter(tokens)
    vocab = [w for w, c in counts.most_common() if c >= min_count]
    if len(vocab) < 10:
        return None
    index = {w: i for i, w in enumerate(vocab)}
    ids = np.array([index.get(w, -1) for w in tokens], dtype=np.int64)
    rows, cols = [], []
    for d in range(1, WORD_WINDOW + 1):
        a, b = ids[:-d], ids[d:]
        ok = (a >= 0) & (b >= 0)
        rows += [a[ok], b[ok]]
        cols += [b[ok], a[ok]]
    r, c = np.concatenate(rows), np.concatenate(cols)
    n = len(vocab)
    C = coo_matrix((np.ones(len(r)), (r, c)), shape=(n, n)).tocsr()
    C.sum_duplicates()
    total = C.sum()
    pw = np.asarray(C.sum(1)).ravel() / total
    ctx = np.asarray(C.sum(0)).ravel() ** 0.75
    pc = ctx / ctx.sum()
    coo = C.tocoo()
    pmi = np.log(coo.data / total / (pw[coo.row] * pc[coo.col]))
    keep = pmi > 0
    P = coo_matrix((pmi[keep], (coo.row[keep], coo.col[keep])), shape=(n, n)).tocsc()
    k = max(2, min(dims, n - 2))
    U, S, _ = svds(P, k=k, random_state=0)
    return vocab, unit_rows(U * np.sqrt(S))


def word_at(corpus: Corpus, position: int, decode: object = None) -> str | None:
    """The lower-cased word token ``position`` sits in (from the character offsets; without
    them the token's own text), or None when it is no word."""
    if corpus.offsets is not None:
        s, e = (int(x) for x in corpus.offsets[position])
        text = corpus.text
        while s < e and not text[s].isalpha():
            s += 1
        if s >= e:
            return None
        while s > 0 and (text[s - 1].isalpha() or (text[s - 1] == "'" and s > 1 and text[s - 2].isalpha())):
            s -= 1
        while e < len(text) and (text[e].isalpha() or (text[e] == "'" and e + 1 < len(text) and text[e + 1].isalpha())):
            e += 1
        found = _WORD.fullmatch(text[s:e].lower())
        return found.group(0) if found else None
    if callable(decode):
        words = words_of(str(decode([int(corpus.ids[position])])))
        return words[0] if len(words) == 1 else None
    return None


def word_space(text: str) -> Space | None:
    """Word vectors trained on ``text`` (the whole corpus file, not only the tokens scanned)
    as a :class:`Space` over words; None when the text is too small for them."""
    trained = word_vectors(text)
    if trained is None:
        return None
    words, vectors = trained
    return Space("words", vectors, {w: i for i, w in enumerate(words)})


def pairwise_mean(vectors: np.ndarray) -> np.ndarray:
    """Mean cosine over distinct pairs of unit ``vectors`` (..., n, d):
    ``(|sum v|^2 - n) / (n (n - 1))``."""
    n = vectors.shape[-2]
    total = vectors.sum(-2)
    return ((total * total).sum(-1) - n) / (n * (n - 1))


def null_sets(pool: np.ndarray, size: int, n_sets: int, rng: np.random.Generator) -> np.ndarray:
    """``n_sets`` random sets of ``size`` distinct rows (n_sets, size) from ``pool`` (rows,
    with repeats: an item is drawn in proportion to its count; within a set an item drawn
    twice is drawn again). Raises ValueError when ``pool`` has fewer than ``size`` items."""
    if len(np.unique(pool)) < size:
        raise ValueError(f"the pool has fewer than {size} distinct items")
    out = pool[rng.integers(0, len(pool), (n_sets, size))]
    for _ in range(1000):
        order = np.sort(out, axis=1)
        dup = np.zeros_like(out, dtype=bool)
        dup[:, 1:] = order[:, 1:] == order[:, :-1]
        if not dup.any():
            return out
        # Redraw the later copy of each repeated item (in sorted order, then mapped back).
        rows, cols = np.nonzero(dup)
        idx = np.argsort(out, axis=1, kind="stable")[rows, cols]
        out[rows, idx] = pool[rng.integers(0, len(pool), len(rows))]
    raise ValueError(f"cannot draw {size} distinct items from the pool")


def null_values(space: Space, pool: np.ndarray, size: int, n_sets: int, rng: np.random.Generator,
                block: int = 1000) -> np.ndarray:  # fmt: skip
    """The coherence statistic of :func:`null_sets` (n_sets,), computed a block at a time."""
    sets = null_sets(pool, size, n_sets, rng)
    return np.concatenate([pairwise_mean(space.vectors[sets[i : i + block]]) for i in range(0, n_sets, block)])


@dataclass(frozen=True)
class Coherence:
    """Per neuron: ``value`` (mean pairwise cosine of its distinct items; NaN when not
    tested), ``n_items``, ``z`` and ``p`` against the null."""

    value: np.ndarray
    n_items: np.ndarray
    z: np.ndarray
    p: np.ndarray
    null_mean: dict[int, float]
    null_sd: dict[int, float]


def coherence(space: Space, items: Sequence[Sequence[object]], n_null: int = 2000, seed: int = 0) -> Coherence:
    """The coherence test of the module docstring for each neuron's ``items`` (its top
    contexts' token ids or words, in rank order; the neurons of one layer: they are the
    pool), with ``n_null`` null sets per set size."""
    rng = np.random.default_rng(seed)
    rows = [space.rows(x) for x in items]
    pool = np.array([r for x in rows if len(x) >= MIN_ITEMS for r in x], dtype=np.int64)
    n = len(rows)
    value, z, p = np.full(n, np.nan), np.full(n, np.nan), np.full(n, np.nan)
    sizes = sorted({len(r) for r in rows if len(r) >= MIN_ITEMS})
    null_mean, null_sd = {}, {}
    for s in sizes:
        try:
            null = null_values(space, pool, s, n_null, rng)
        except ValueError:
            continue
        null_mean[s], null_sd[s] = float(null.mean()), float(null.std())
        null.sort()
        for i, r in enumerate(rows):
            if len(r) != s:
                continue
            v = float(pairwise_mean(space.vectors[r]))
            value[i] = v
            p[i] = (1 + n_null - np.searchsorted(null, v, side="left")) / (1 + n_null)
            z[i] = (v - null_mean[s]) / max(null_sd[s], 1e-12)
    return Coherence(value, np.array([len(r) for r in rows]), z, p, null_mean, null_sd)


def fdr(p: np.ndarray) -> np.ndarray:
    """Benjamini-Hochberg q-values of ``p`` (NaN: not tested, stays NaN)."""
    from scipy.stats import false_discovery_control

    q = np.full(len(p), np.nan)
    tested = ~np.isnan(p)
    if tested.any():
        q[tested] = false_discovery_control(p[tested])
    return q
