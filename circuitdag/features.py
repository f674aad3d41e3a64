"""Automatic identification of feature neurons: ``circuitdag features``.

The principled version of Lo's hackathon project (the seed write-up, "Automated
identification of potential feature neurons"), in four steps, each its own module:

1. :mod:`~circuitdag.features_scan` -- every MLP neuron of the chosen layers: its top-k
   max-activating contexts over a corpus (symmetric token window; the held-out chunks kept
   apart);
2. :mod:`~circuitdag.features_embed` -- the semantic coherence of its top ``top_k``
   distinct tokens (the first ``top_k`` spellings among its ``POOL * top_k`` largest
   activations where it is on, > 0; each token's best context; a neuron whose 20 largest
   activations all fall on three tokens still shows which others it prefers next), in the
   model's own token embeddings and in word vectors trained on the corpus, each
   against a null of random token sets of the same size (z, permutation p,
   Benjamini-Hochberg q). A neuron is *coherent* when q < ``alpha`` in both spaces (in the
   model's alone when the corpus is too small for word vectors): the model's space alone
   would call any neuron that reads the embedding linearly coherent, since the tokens it
   prefers share a direction;
3. :mod:`~circuitdag.features_substitute` -- for the best-ranked coherent neurons of each
   layer (rank: the smaller of the two z-scores), the substitution test, and the tokens
   before the top one;
4. :mod:`~circuitdag.features_describe` -- a template description over that evidence,
   scored by simulation on held-out chunks (Bills et al. 2023).

:func:`features` returns the report (every number, JSON-ready);
:mod:`~circuitdag.features_report` writes report.json, report.md, the figures and one HTML
page per described neuron. See docs/features.md.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from circuitdag.errors import ConfigError

REPORT_FORMAT = "circuitdag.features/1"

#: Top contexts (the best of distinct tokens) each described neuron's substitution test runs on.
SUBSTITUTION_CONTEXTS = 5
#: The scan keeps ``POOL * top_k`` activations per neuron, where its ``top_k`` distinct
#: tokens are looked for.
POOL = 8

#: report["warnings"] says so when more than this share of the corpus is the unknown token.
UNKNOWN_WARN = 0.05

#: What the seed write-up reported (Lo; solu-8l-pile and other models; Neuroscope's top 20).
SEED = {"top_k": 20, "space": "FastText", "coherence": "internal token similarity above a threshold",
        "substitution": "FastText's 5 nearest words, kept when the activation rose",
        "description": "GPT-3 over the top tokens, 7-token symmetric window", "scored": False}  # fmt: skip


def _embedding(model: Any) -> np.ndarray:
    W_E = getattr(model, "W_E", None)
    if W_E is None:
        W_E = model.embed.W_E
    return W_E.detach().float().cpu().numpy()


def features(
    model: Any,
    layers: Sequence[int] | None = None,
    corpus: str | Path | None = None,
    *,
    top_k: int = 20,
    window: int = 7,
    max_tokens: int = 50_000,
    chunk: int | None = None,
    n_null: int = 10_000,
    describe: int = 10,
    alpha: float = 0.05,
    seed: int = 0,
    batch: int = 16,
    progress: bool = False,
) -> dict[str, Any]:
    """Find and describe the feature neurons of ``model``'s MLP ``layers`` (default: all).

    ``corpus``: a UTF-8 text file (None: Debian's fortunes); ``max_tokens`` of it are read,
    in chunks of ``chunk`` tokens (None: 64, or the model's context if shorter); the
    tokenizer's special tokens (unknown, padding, BOS) are never a neuron's top token, and
    ``report["warnings"]`` says when over :data:`UNKNOWN_WARN` of the corpus is the
    unknown token. ``top_k`` contexts per neuron with ``window`` tokens
    each side; ``n_null`` null sets per set size; ``describe``: coherent neurons per layer
    that get the substitution test, a description and a simulation score; ``alpha``: the
    false discovery rate and the substitution test's level. Raises :class:`ConfigError` for
    a bad layer or option, or a corpus too short.
    """
    from circuitdag.features_embed import model_space, word_at, word_space
    from circuitdag.features_scan import scan, tokenize_corpus
    from circuitdag.features_substitute import spelling
    from circuitdag.features_wordnet import WORDNET_DIR, load_wordnet
    from circuitdag.neurons.corpus import read_corpus
    from circuitdag.tasks._lm import tokenizer_of

    t0 = time.perf_counter()
    n_layers = int(model.cfg.n_layers)
    layers = list(range(n_layers)) if not layers else sorted({int(L) for L in layers})
    if any(not 0 <= L < n_layers for L in layers):
        raise ConfigError(f"--layer must be in 0..{n_layers - 1}, got {layers}")
    for name, v, lo in (("--top-k", top_k, 3), ("--window", window, 0), ("--null", n_null, 10), ("--describe", describe, 0)):
        if v < lo:
            raise ConfigError(f"{name} must be at least {lo}, got {v}")
    if not 0 < alpha < 1:
        raise ConfigError(f"--alpha must be between 0 and 1, got {alpha}")
    tok = tokenizer_of(model)

    def decode(ids: Any) -> str:
        return str(tok.decode([int(i) for i in ids]))

    text, source = read_corpus(corpus)
    corp = tokenize_corpus(model, text, source, max_tokens, chunk)
    top = scan(model, corp, layers, POOL * top_k, batch=batch, progress=progress)
    held = scan(model, corp, layers, top_k, held_out=True, batch=batch)
    seconds = {"scan": round(time.perf_counter() - t0, 2)}
    t1 = time.perf_counter()

    space_m = model_space(_embedding(model))
    space_w = word_space(text)
    wordnet = load_wordnet()
    keys: dict[int, str] = {}

    def key(t: int) -> str:
        if t not in keys:
            keys[t] = spelling(decode, t)
        return keys[t]

    special = np.array(sorted(corp.special), dtype=np.int64)
    items_m, items_w, best, index = [], [], [], []
    for L in layers:
        where, values = top.where[L], top.values[L]
        for n in range(where.shape[1]):
            on = where[:, n][values[:, n] > 0]  # the positions where the neuron is on, best first
            on = on[~np.isin(corp.ids[on], special)]  # the model saw <unk>, not the word
            first: dict[str, int] = {}
            for p in on:
                if first.setdefault(key(int(corp.ids[p])), int(p)) == p and len(first) == top_k:
                    break
            best.append(list(first.values()))  # the best context of each of its top distinct tokens
            items_m.append([int(corp.ids[p]) for p in first.values()])
            words = dict.fromkeys(w for w in (word_at(corp, int(p), decode) for p in on) if w)
            items_w.append(list(words)[:top_k])
            index.append((L, n))
    coh_m = _coherence(space_m, items_m, index, layers, n_null, seed)
    coh_w = _coherence(space_w, items_w, index, layers, n_null, seed) if space_w is not None else None
    sig_m = coh_m["q"] < alpha
    sig_w = coh_w["q"] < alpha if coh_w is not None else np.ones(len(index), bool)
    coherent = sig_m & sig_w
    rank_z = np.fmin(coh_m["z"], coh_w["z"]) if coh_w is not None else coh_m["z"].copy()
    rank_z = np.where(coherent, rank_z, -np.inf)
    order = np.lexsort((-np.nan_to_num(coh_m["z"], nan=-1e9), -np.nan_to_num(rank_z, neginf=-1e9)))
    rank = np.empty(len(index), dtype=np.int64)
    rank[order] = np.arange(1, len(index) + 1)
    seconds["coherence"] = round(time.perf_counter() - t1, 2)
    t1 = time.perf_counter()

    described = _describe_top(model, corp, layers, index, coherent, rank, top, held, describe, window, decode,
                              space_m, space_w, wordnet, alpha, seed, progress, best, items_w, top_k)  # fmt: skip
    seconds["describe"] = round(time.perf_counter() - t1, 2)
    by_layer = []
    start = 0
    for L in layers:
        m = top.where[L].shape[1]
        sl = slice(start, start + m)
        start += m
        d = [x for x in described if x["layer"] == L]
        scores = [x["simulation"]["score"] for x in d if x["simulation"]["score"] is not None]
        by_layer.append({
            "layer": L, "neurons": m,
            "tested_model": int((~np.isnan(coh_m["p"][sl])).sum()),
            "tested_words": int((~np.isnan(coh_w["p"][sl])).sum()) if coh_w is not None else 0,
            "coherent_model": int(sig_m[sl].sum()),
            "coherent_words": int((coh_w["q"][sl] < alpha).sum()) if coh_w is not None else None,
            "coherent": int(coherent[sl].sum()), "share_coherent": float(coherent[sl].mean()),
            "described": len(d), "features": sum(1 for x in d if x["substitution"]["feature"]),
            "mean_simulation_score": float(np.mean(scores)) if scores else None,
        })  # fmt: skip
    neurons = []
    start = 0
    for L in layers:
        m = top.where[L].shape[1]
        sl = slice(start, start + m)
        neurons.append({"layer": L, "max": top.values[L][0].tolist(), "mean": top.mean[L].tolist(),
                        "rank": rank[sl].tolist(), "coherent": coherent[sl].tolist(),
                        "model": _columns(coh_m, sl), "words": None if coh_w is None else _columns(coh_w, sl),
                        "top_tokens": [[decode([t]) for t in items_m[i][:5]] for i in range(sl.start, sl.stop)]})  # fmt: skip
        start += m
    cfg = model.cfg
    return {
        "format": REPORT_FORMAT,
        "model": str(getattr(cfg, "model_name", "") or type(model).__name__),
        "n_layers": n_layers, "d_mlp": int(top.where[layers[0]].shape[1]), "layers": layers,
        "corpus": {"source": source, "tokens": len(corp.ids), "unknown_share": round(corp.unknown_share, 6),
                   "chunk": corp.chunk, "chunks": corp.n_chunks,
                   "held_out_chunks": len(corp.chunks(True)), "train_tokens": top.n_positions},
        "settings": {"top_k": top_k, "window": window, "null_sets": n_null, "alpha": alpha, "describe": describe,
                     "seed": seed, "coherent": "q < alpha in both spaces" if coh_w is not None else
                     "q < alpha in the model's space (no word vectors: corpus too small)"},
        "spaces": {"model": {"items": "token ids (one per spelling)", "dims": int(space_m.vectors.shape[1])},
                   "words": None if space_w is None else {"words": len(space_w.index),
                                                          "dims": int(space_w.vectors.shape[1])},
                   "wordnet": str(WORDNET_DIR) if wordnet is not None else None},
        "null": {"model": coh_m["null"], "words": None if coh_w is None else coh_w["null"]},
        "by_layer": by_layer,
        "share_coherent": float(coherent.mean()),
        "described": described,
        "neurons": neurons,
        "seed_reference": SEED,
        "warnings": _warnings(corp, tok),
        "seconds": {**seconds, "total": round(time.perf_counter() - t0, 2)},
    }  # fmt: skip


def _warnings(corp: Any, tok: Any) -> list[str]:
    """One line per problem with the input that the numbers cannot show."""
    out = []
    if corp.unknown_share > UNKNOWN_WARN:
        out.append(f"{corp.unknown_share:.0%} of the corpus's tokens are the tokenizer's unknown token "
                   f"{getattr(tok, 'unk_token', None)!r} (its vocabulary: {len(tok.get_vocab())} tokens): the model saw "
                   "no word there; give a corpus in the model's vocabulary")  # fmt: skip
    return out


def _coherence(space: Any, items: list[Any], index: list[tuple[int, int]], layers: list[int], n_null: int,
               seed: int) -> dict[str, Any]:  # fmt: skip
    """The coherence test per layer (each layer's neurons are its null's pool), with
    Benjamini-Hochberg over every neuron: arrays over ``index`` and the null per layer."""
    from circuitdag.features_embed import MIN_ITEMS, coherence, fdr

    out: dict[str, Any] = {k: np.full(len(index), np.nan) for k in ("value", "z", "p")}
    out["n_items"] = np.zeros(len(index), dtype=np.int64)
    out["null"] = {}
    at = np.array([L for L, _ in index])
    for L in layers:
        sel = np.nonzero(at == L)[0]
        c = coherence(space, [items[i] for i in sel], n_null, seed + L)
        out["value"][sel], out["z"][sel], out["p"][sel], out["n_items"][sel] = c.value, c.z, c.p, c.n_items
        out["null"][str(L)] = {str(k): {"mean": c.null_mean[k], "sd": c.null_sd[k]} for k in sorted(c.null_mean)}
    out["q"] = fdr(out["p"])
    out["min_items"] = MIN_ITEMS
    return out


def _columns(c: dict[str, Any], sl: slice) -> dict[str, list[Any]]:
    def clean(x: np.ndarray) -> list[float | None]:
        return [None if np.isnan(v) else round(float(v), 6) for v in x[sl]]

    return {"n_items": c["n_items"][sl].tolist(), "coherence": clean(c["value"]), "z": clean(c["z"]),
            "p": clean(c["p"]), "q": clean(c["q"])}  # fmt: skip


class _Simulation:
    """The simulation score of a description on some of ``chunks`` (their activations
    ``acts`` (chunk, pos, neuron) and words)."""

    def __init__(self, acts: Any, chunks: list[int], words: dict[int, list[str | None]], space: Any,
                 wordnet: Any) -> None:  # fmt: skip
        self.acts, self.chunks, self.words, self.space, self.wordnet = acts, chunks, words, space, wordnet

    def __call__(self, desc: dict[str, Any], n: int, eval_chunks: list[int]) -> dict[str, Any]:
        from circuitdag.features_describe import score

        truth = np.concatenate([self.acts[self.chunks.index(c), :, n].double().numpy() for c in eval_chunks])
        words = [w for c in eval_chunks for w in self.words[c]]
        return score(desc, words, truth, self.space, self.wordnet)


def _describe_top(model: Any, corp: Any, layers: list[int], index: list[tuple[int, int]], coherent: np.ndarray,
                  rank: np.ndarray, top: Any, held: Any, per_layer: int, window: int, decode: Any, space_m: Any,
                  space_w: Any, wordnet: Any, alpha: float, seed: int, progress: bool, best: list[list[int]],
                  words: list[list[str]], top_k: int) -> list[dict[str, Any]]:  # fmt: skip
    """Steps 3 and 4 for the ``per_layer`` best-ranked coherent neurons of each layer."""
    from tqdm.auto import tqdm

    from circuitdag.features_describe import describe
    from circuitdag.features_embed import word_at
    from circuitdag.features_scan import chunk_activations, context, spaced
    from circuitdag.features_substitute import Substitutes, substitution_test

    train_pos = (corp.chunks(False)[:, None] * corp.chunk + np.arange(corp.chunk)[None]).reshape(-1)
    tok = model.tokenizer

    def encode(text: str) -> list[int]:
        return list(tok.encode(text, add_special_tokens=False))

    subs = Substitutes(space_m, corp.ids[train_pos], decode, seed, space_w, encode)
    rng = np.random.default_rng(seed + 1)
    held_chunks = corp.chunks(True)
    random_chunks = np.sort(rng.choice(held_chunks, min(10, len(held_chunks)), replace=False)).tolist()
    train_chunks = corp.chunks(False)
    random_train = np.sort(rng.choice(train_chunks, min(10, len(train_chunks)), replace=False)).tolist()

    def word(position: int) -> str | None:
        return None if corp.is_special(position) else word_at(corp, position, decode)

    chosen = sorted((i for i in range(len(index)) if coherent[i]), key=lambda i: rank[i])
    picks = {L: [i for i in chosen if index[i][0] == L][:per_layer] for L in layers}
    out = []
    bar = tqdm(total=sum(len(v) for v in picks.values()), desc="substitution + description", unit="neuron",
               disable=not progress)  # fmt: skip
    try:
        for L, ids in picks.items():
            if not ids:
                continue

            def first_chunks(where: np.ndarray) -> list[int]:
                return list(dict.fromkeys((where // corp.chunk).tolist()))[:5]

            top_chunks = {i: first_chunks(held.where[L][:, index[i][1]]) for i in ids}
            top_train = {i: first_chunks(top.where[L][:, index[i][1]]) for i in ids}
            chunks = sorted(set(random_chunks + random_train).union(*top_chunks.values(), *top_train.values()))
            acts = chunk_activations(model, corp, chunks, [L])[L]  # chunk, pos, neuron
            chunk_words = {c: [word(c * corp.chunk + j) for j in range(corp.chunk)] for c in chunks}
            simulated = _Simulation(acts, chunks, chunk_words, space_w, wordnet)

            for i in ids:
                n = index[i][1]
                keep = ~np.isin(corp.ids[top.where[L][:, n]], sorted(corp.special))
                where, values = top.where[L][keep, n][:top_k], top.values[L][keep, n][:top_k]
                contexts = [{**context(corp, int(p), window, decode), "activation": float(v)}
                            for p, v in zip(where, values)]  # fmt: skip
                sub = substitution_test(model, corp, L, n, best[i][:SUBSTITUTION_CONTEXTS], subs, alpha=alpha)
                tokens = [decode([int(corp.ids[p])]) for p in best[i]]
                desc = describe(words[i], tokens, wordnet, sub)
                if desc["class"] is not None:  # kept only if it does not lower the score on training chunks
                    train = simulated(desc, n, sorted(set(top_train[i]) | set(random_train)))
                    with_class, plain = train["score"], train["score_words_only"]
                    if plain is not None and (with_class is None or with_class < plain):
                        dropped = {**desc["class"], "train_score": with_class, "train_score_words_only": plain}
                        desc = {**describe(words[i], tokens, None, sub), "class_dropped": dropped}
                sim = simulated(desc, n, sorted(set(top_chunks[i]) | set(random_chunks)))
                shown = [{"chunk": c, "tokens": spaced(decode, corp.chunk_ids(c).tolist()),
                          "activations": [round(float(a), 4) for a in acts[chunks.index(c), :, n]]}
                         for c in top_chunks[i][:3]]  # fmt: skip
                out.append({"layer": L, "neuron": n, "name": f"L{L}.N{n}", "rank": int(rank[i]),
                            "contexts": contexts, "substitution": sub, "description": desc, "simulation": sim,
                            "held_out_top": shown})  # fmt: skip
                bar.update(1)
    finally:
        bar.close()  # before an interrupt's message, which would otherwise land on the bar's line
    return sorted(out, key=lambda d: d["rank"])
