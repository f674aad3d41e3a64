"""How much a circuit depends on its prompts: the bootstrap (issue 24, item 2).

``--bootstrap B`` reruns the method (any registered one, with the run's options and its
resolved threshold) on ``B`` resamples of the discovery prompts, each drawn with
replacement, same size (Efron's nonparametric bootstrap), and reports:

* per edge, its **inclusion frequency** (the fraction of reruns whose circuit holds it)
  and a percentile interval of its **score** over the reruns;
* the **faithfulness** of each rerun's circuit on its own resample (what a rerun would
  report) and on the held-out prompts, with their percentile intervals;
* **stability**: the mean pairwise Jaccard index of the reruns' edge sets and node sets;
* the percentile interval of the *reported* circuit's faithfulness over prompt resamples
  (:func:`ratio_interval`, no rerun needed: per-prompt metrics, :mod:`circuitdag.per_prompt`),
  on the discovery and the held-out prompts. With mean ablation the mean is kept at the
  full dataset's there (a resample's own mean would need a pass per resample).

Each rerun's cached runs are rows of the discovery run's (:meth:`Patcher.subset
<circuitdag.patching.Patcher.subset>`: no forward pass; with mean ablation, whose mean is
the resample's own, one forward pass). The time a rerun takes is about the original run's, so
``B x`` the run's time is what :func:`expected_seconds` says before starting.

**Attribution methods (EAP, EAP-IG) with resample or zero ablation** need no rerun: their
scores are gradients of a metric that is a weighted mean over prompts, and each prompt's
path (the clean run, its corrupted counterpart, the IG interpolation) involves that prompt
only, so the scores on a resample are ``sum_i c_i w_i s_i / sum_i c_i w_i`` with ``s_i``
the scores of prompt ``i`` alone, ``c_i`` how often the resample drew it and ``w_i`` its
answer slots. :func:`prompt_attributions` computes every ``s_i`` once (about one run's
work), and each resample is a weighted sum, the method's own selection, and two exact
passes (its circuit on the discovery and the held-out prompts; the resample's
faithfulness is the weighted mean of per-prompt values). Tested equal to rerunning the
method on the resample (:func:`bootstrap` with ``rerun=True``).
"""

from __future__ import annotations

import itertools
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import numpy as np
from tqdm.auto import tqdm

from circuitdag.algorithms import Algorithm, RunContext
from circuitdag.bootstrap_journal import Journal
from circuitdag.errors import ConfigError
from circuitdag.patching import Patcher
from circuitdag.per_prompt import faithfulness, prompt_metrics, prompt_weights, resample_mean

LEVEL = 0.95


def interval(values: np.ndarray, level: float = LEVEL) -> list[float | None]:
    """The central percentile interval of ``values`` (NaNs left out; None when none)."""
    v = np.asarray(values, dtype=np.float64)
    v = v[np.isfinite(v)]
    if not len(v):
        return [None, None]
    lo, hi = np.percentile(v, [50 * (1 - level), 50 * (1 + level)])
    return [float(lo), float(hi)]


def ratio_interval(m_circuit: np.ndarray, m_full: np.ndarray, m_empty: np.ndarray, weights: np.ndarray,
                   resamples: int = 1000, level: float = LEVEL, seed: int = 0) -> list[float | None]:  # fmt: skip
    """Percentile bootstrap interval of faithfulness ``(E m_empty - E m_circuit) / (E m_empty
    - E m_full)`` from per-prompt values (each ``(n,)``), resampling the prompts."""
    n = len(m_circuit)
    idx = np.random.default_rng(seed).integers(0, n, size=(resamples, n))
    f = faithfulness(resample_mean(m_circuit, weights, idx), resample_mean(m_full, weights, idx),
                     resample_mean(m_empty, weights, idx))  # fmt: skip
    return interval(f, level)


def circuit_interval(patcher: Patcher, alive: np.ndarray, resamples: int = 1000, level: float = LEVEL,
                     seed: int = 0) -> list[float | None]:  # fmt: skip
    """:func:`ratio_interval` of circuit ``alive`` on ``patcher``'s prompts (three passes)."""
    n = patcher.graph.n_edges
    c, full, empty = (prompt_metrics(patcher, a) for a in (alive, np.ones(n, dtype=bool), np.zeros(n, dtype=bool)))
    return ratio_interval(c, full, empty, prompt_weights(patcher), resamples, level, seed)


def jaccard(sets: list[np.ndarray]) -> float | None:
    """Mean pairwise Jaccard index of boolean masks (two empty sets count 1)."""
    vals = []
    for a, b in itertools.combinations(sets, 2):
        union = int((a | b).sum())
        vals.append(int((a & b).sum()) / union if union else 1.0)
    return float(np.mean(vals)) if vals else None


def _nodes(patcher: Patcher, alive: np.ndarray) -> np.ndarray:
    t, out = patcher.graph.edges, np.zeros(len(patcher.graph.nodes), dtype=bool)
    out[t.src[alive]] = True
    out[t.dst[alive]] = True
    return out


def additive(method: Algorithm, patcher: Patcher) -> bool:
    """Whether ``method``'s reruns are weighted sums of per-prompt scores (module
    docstring): EAP and EAP-IG, with resample or zero ablation (a mean ablation's mean
    depends on the resample)."""
    from circuitdag.algorithms.attribution import EAP

    return isinstance(method, EAP) and patcher.ablation.value in ("resample", "zero")


def prompt_attributions(patcher: Patcher, method: Algorithm, options: dict[str, Any],
                        progress: bool = False, journal: Journal | None = None) -> np.ndarray:  # fmt: skip
    """``s_i``: ``method``'s scores (EAP or EAP-IG) on each prompt alone, ``(batch, edge)``.
    ``journal``: take the prompts it holds from it, and keep each new one there."""
    from circuitdag.attribution import attribute

    steps = int(options.get("ig_steps") or 1)
    have = {} if journal is None else journal.prompts
    rows = []
    bar = tqdm(total=patcher.B, initial=len(have), desc=f"{method.name} per prompt", unit="prompt",
               disable=not progress)  # fmt: skip
    with bar:
        for i in range(patcher.B):
            if i in have:
                rows.append(have[i])
                continue
            one = patcher.subset([i])  # rows of the cached runs: no forward pass
            rows.append(np.asarray(attribute(one, method.name, steps, 1).scores, dtype=np.float64))
            if journal is not None:
                journal.add_prompt(i, rows[-1])
            bar.update()
    return np.stack(rows)


def expected_seconds(run_seconds: float, resamples: int, pass_seconds: float, per_prompt: bool) -> float:
    """What the bootstrap should take: ``resamples`` reruns of a run that took
    ``run_seconds`` and three exact passes each (``pass_seconds``); or, with per-prompt
    scores, the scores prompt by prompt (about 3.5x the batched run: measured 536 s vs
    159 s for EAP-IG on SmolLM2 pronoun, 2 loaded cores) and two exact passes a resample."""
    if per_prompt:
        return 3.5 * run_seconds + resamples * 2 * pass_seconds
    return resamples * (run_seconds + 3 * pass_seconds)


def bootstrap(
    patcher: Patcher,
    method: Algorithm,
    options: dict[str, Any],
    resamples: int,
    alive: np.ndarray,
    heldout: Patcher | None = None,
    seed: int = 0,
    level: float = LEVEL,
    progress: bool = False,
    make_patcher: Callable[[Any], Patcher] | None = None,
    rerun: bool | None = None,
    journal: Journal | None = None,
) -> dict[str, Any]:
    """Rerun ``method`` with ``options`` (checked, threshold in metric units) on
    ``resamples`` resamples of ``patcher``'s prompts (module docstring). ``alive``: the
    reported circuit; ``heldout``: a patcher on the held-out prompts (or None).
    ``make_patcher(data)`` builds a resample's patcher (default: same model, graph,
    ablation, metric). Returns the JSON-ready record circuit.json keeps under
    ``"bootstrap"``; raises :class:`ConfigError` for fewer than 2 resamples. ``rerun``:
    rerun the method on every resample even where per-prompt scores would do (None: only
    where they would not, :func:`additive`). ``journal``: keep each finished resample there
    and take those it already holds from it (:mod:`circuitdag.bootstrap_journal`: an
    interrupted bootstrap resumed ends as an uninterrupted one)."""
    if isinstance(resamples, bool) or not isinstance(resamples, int) or resamples < 2:
        raise ConfigError(f"--bootstrap needs at least 2 resamples, got {resamples!r}")
    rng = np.random.default_rng(seed)
    fast = additive(method, patcher) if rerun is None else not rerun
    try:  # the journal keeps what finished, also when Ctrl-C or an error ends the bootstrap
        kept, scores, f_disc, f_held = _resamples(patcher, method, options, resamples, heldout, rng, fast, progress,
                                                  make_patcher, journal)  # fmt: skip
    finally:
        if journal is not None:
            journal.close()
    return summarize(patcher, alive, kept, scores, f_disc, f_held if heldout is not None else None, heldout,
                     seed=seed, level=level, reruns="per-prompt scores" if fast else "method")  # fmt: skip


def _resamples(patcher: Patcher, method: Algorithm, options: dict[str, Any], resamples: int, heldout: Patcher | None,
               rng: np.random.Generator, fast: bool, progress: bool, make_patcher: Callable[[Any], Patcher] | None,
               journal: Journal | None) -> tuple[list[np.ndarray], list[np.ndarray], list[float], list[float | None]]:  # fmt: skip
    """:func:`bootstrap`'s resamples: each one's circuit, scores and faithfulness on the
    resample and on the held-out prompts, read back from ``journal`` or computed (and kept
    there)."""
    graph, n = patcher.graph, patcher.B
    if fast:
        from circuitdag.algorithms.attribution import default_attribution_edges
        from circuitdag.attribution import Attribution

        per = prompt_attributions(patcher, method, options, progress, journal)
        size, cut = options.get("edges"), options.get("threshold")
        if size is None and cut is None:
            size = default_attribution_edges(graph.n_edges)  # what run() would keep
        size = None if size is None else min(int(size), graph.n_edges)
        w = prompt_weights(patcher)
        m_full, m_empty = (prompt_metrics(patcher, np.full(graph.n_edges, v)) for v in (True, False))
    kept, scores, f_disc, f_held = [], [], [], []
    done = {} if journal is None else journal.resamples
    with frozen_heap(), tqdm(total=resamples, initial=sum(k in done for k in range(resamples)), desc="bootstrap", unit="rerun",
              disable=not progress) as bar:  # fmt: skip
        for k in range(resamples):
            idx = rng.integers(0, n, size=n)  # drawn also for a resample read back: resample k is the k-th draw
            if k in done:
                edges, sc, fd, fh = done[k]
                c = np.zeros(graph.n_edges, dtype=bool)
                c[edges] = True
            else:
                if fast:
                    cw = np.bincount(idx, minlength=n) * w
                    att = Attribution(cw @ per / cw.sum(), method.name, int(options.get("ig_steps") or 1), 1, 0.0, 0)
                    found = method.select(patcher, att, size, cut)  # type: ignore[attr-defined]
                    c = np.asarray(found.in_circuit, dtype=bool)
                    fd = float(faithfulness(resample_mean(prompt_metrics(patcher, c), w, idx),
                                            resample_mean(m_full, w, idx), resample_mean(m_empty, w, idx)))  # fmt: skip
                    fh = heldout_faithfulness(heldout, c)
                    sc = np.asarray(found.scores, dtype=np.float64)
                else:
                    c, sc, fd, fh = rerun_on(patcher, method, options, idx, heldout, make_patcher)
                if journal is not None:
                    journal.add_resample(k, c, sc, fd, fh)
                bar.update()
            kept.append(c)
            scores.append(sc)
            f_disc.append(fd)
            f_held.append(fh)
    return kept, scores, f_disc, f_held


def heldout_faithfulness(heldout: Patcher | None, alive: np.ndarray) -> float | None:
    """Faithfulness of circuit ``alive`` on the held-out prompts (None without them)."""
    if heldout is None:
        return None
    n = heldout.graph.n_edges
    full, empty = heldout.circuit_metric(np.ones(n, bool)), heldout.circuit_metric(np.zeros(n, bool))
    return float(faithfulness(np.asarray(heldout.circuit_metric(alive)), np.asarray(full), np.asarray(empty)))


def rerun_on(patcher: Patcher, method: Algorithm, options: dict[str, Any], idx: np.ndarray,
             heldout: Patcher | None = None,
             make: Callable[[Any], Patcher] | None = None) -> tuple[np.ndarray, np.ndarray, float, float | None]:  # fmt: skip
    """One bootstrap rerun: ``method`` with ``options`` on the prompts ``idx`` of
    ``patcher`` (repeats allowed). Returns (its circuit, its scores, its faithfulness on the
    resample, on the held-out prompts or None). ``make(data)`` builds the resample's
    patcher (default: :meth:`Patcher.subset`, the rows of ``patcher``'s cached runs)."""
    n = patcher.graph.n_edges
    p = patcher.subset(idx) if make is None else make(patcher.data.subset(np.asarray(idx).tolist()))
    found = method.run(p, RunContext(), **options)
    c = np.asarray(found.in_circuit, dtype=bool)
    full, empty = p.circuit_metric(np.ones(n, bool)), p.circuit_metric(np.zeros(n, bool))
    f = float(faithfulness(np.asarray(p.circuit_metric(c)), np.asarray(full), np.asarray(empty)))
    out = c, np.asarray(found.scores, dtype=np.float64), f, heldout_faithfulness(heldout, c)
    del p, found
    release_memory()
    return out


@contextmanager
def frozen_heap() -> Iterator[None]:
    """Collect garbage once, then freeze every object alive (the imported libraries, the
    model, the cached runs) until the block ends, so each rerun's collection
    (:func:`release_memory`) visits only what that rerun allocated: a full collection
    with torch and transformers imported takes about 0.24 s. Objects frozen here are still
    freed by reference counting; only cycles among them wait for the end of the block.
    Nothing changes where something else froze the heap already."""
    import gc

    mine = gc.get_freeze_count() == 0
    if mine:
        gc.collect()
        gc.freeze()
    try:
        yield
    finally:
        if mine:
            gc.unfreeze()


def release_memory() -> None:
    """Hand the memory a rerun freed back to the system (garbage collection, then glibc's
    ``malloc_trim``): glibc keeps freed heap pages for reuse, and a process whose reruns
    allocate tensors of other sizes each time can grow rerun after rerun (a SmolLM2
    prefiltered-ACDC bootstrap went from 6.4 to 13 GB over 11 reruns and was killed). A
    no-op where libc has no ``malloc_trim`` (not glibc)."""
    import ctypes
    import ctypes.util
    import gc

    gc.collect()
    try:
        ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


def summarize(patcher: Patcher, alive: np.ndarray, kept: list[np.ndarray], scores: list[np.ndarray],
              f_disc: list[float], f_held: list[float | None] | None, heldout: Patcher | None = None,
              seed: int = 0, level: float = LEVEL, reruns: str = "method") -> dict[str, Any]:  # fmt: skip
    """The record circuit.json keeps under ``"bootstrap"`` (module docstring) from the
    reruns' circuits ``kept``, ``scores`` and faithfulness ``f_disc`` / ``f_held`` (None:
    no held-out prompts); ``alive``: the reported circuit, whose own intervals are taken
    on ``patcher``'s and ``heldout``'s prompts."""
    graph = patcher.graph
    inclusion = np.mean(kept, axis=0)
    S = np.asarray(scores)
    with np.errstate(all="ignore"), warnings.catch_warnings():  # an edge no rerun scored (ACDC): NaN
        warnings.simplefilter("ignore", RuntimeWarning)
        lo, hi = np.nanpercentile(S, [50 * (1 - level), 50 * (1 + level)], axis=0) if np.isfinite(S).any() else (S[0], S[0])
    names = graph.edge_names
    edges = {names[e]: {"inclusion": float(inclusion[e]),
                        "score_ci": [None if not np.isfinite(lo[e]) else float(lo[e]),
                                     None if not np.isfinite(hi[e]) else float(hi[e])]}
             for e in np.flatnonzero((inclusion > 0) | alive)}  # fmt: skip
    out: dict[str, Any] = {
        "resamples": len(kept), "seed": seed, "level": level, "reruns": reruns,
        "faithfulness": {"discovery": {"mean": float(np.nanmean(f_disc)), "ci": interval(np.asarray(f_disc), level),
                                       "values": list(f_disc)}},
        "circuit_faithfulness_ci": {"discovery": circuit_interval(patcher, alive, level=level, seed=seed)},
        "stability": {"edge_jaccard": jaccard(kept), "node_jaccard": jaccard([_nodes(patcher, c) for c in kept]),
                      "edges_mean": float(np.mean([c.sum() for c in kept]))},
        "edges": edges,
    }  # fmt: skip
    if heldout is not None and f_held is not None:
        held = np.asarray([np.nan if v is None else v for v in f_held], dtype=np.float64)
        out["faithfulness"]["heldout"] = {"mean": float(np.nanmean(held)), "ci": interval(held, level),
                                          "values": list(f_held)}  # fmt: skip
        out["circuit_faithfulness_ci"]["heldout"] = circuit_interval(heldout, alive, level=level, seed=seed)
    return out


__all__ = ["LEVEL", "additive", "bootstrap", "circuit_interval", "expected_seconds", "frozen_heap", "heldout_faithfulness",
           "interval", "jaccard", "prompt_attributions", "ratio_interval", "release_memory", "rerun_on", "summarize"]
