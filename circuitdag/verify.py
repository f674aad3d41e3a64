"""Estimates checked against exact patching: ``--verify-top N`` (issue 24, item 4).

An attribution score (EAP, EAP-IG) estimates what removing one edge from the full model
does, ``m(full - e) - m(full)`` (DESIGN.md, attribution). :func:`verify_top` measures that
exactly (one sparse patched pass per edge, :meth:`Patcher.circuit_metric
<circuitdag.patching.Patcher.circuit_metric>`) for two groups of edges:

* the **top** ``N`` edges of the ranking (by ``|score|``, the ranking EAP and EAP-IG select
  circuits with);
* the ``N`` edges **just below the cut**: the highest-ranked edges that are not in the
  circuit, where a wrong estimate would have changed the circuit.

The exact values come from :func:`single_removals` (edges into one destination batched,
each run from its destination's layer on). It reports Spearman's rank correlation of estimate and exact value in each group and over
both, and the edges whose estimate is off by more than a factor of 2 (or has the wrong
sign). Both numbers are kept per edge, the estimate never replaced (DESIGN.md, how sure).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
from scipy import stats
from tqdm.auto import tqdm

from circuitdag.errors import ConfigError
from circuitdag.patching import Patcher

#: An estimate is "off" when it is more than this factor away from the exact value.
FACTOR = 2.0


def off_by(estimate: float, exact: float, factor: float = FACTOR) -> bool:
    """Whether ``estimate`` is more than ``factor`` times away from ``exact`` (either way) or
    of the other sign; two values both 0 agree."""
    if estimate == exact:
        return False
    if estimate * exact <= 0:
        return True
    ratio = abs(estimate / exact)
    return ratio > factor or ratio < 1 / factor


def _spearman(a: np.ndarray, b: np.ndarray) -> float | None:
    if len(a) < 3 or np.ptp(a) == 0 or np.ptp(b) == 0:
        return None
    return float(stats.spearmanr(a, b).statistic)


def single_removals(patcher: Patcher, edges: np.ndarray, progress: bool = False, k: int = 8) -> list[float]:
    """``m(full - e) - m(full)`` for each edge of ``edges``, exactly: the edges into one
    destination run as batches of ``k`` candidates from that destination's layer on
    (:func:`circuitdag.per_prompt.removal_finals`). Tested equal to
    :meth:`~circuitdag.patching.Patcher.circuit_metric`."""
    import torch

    from circuitdag.per_prompt import removal_finals

    full = np.ones(patcher.graph.n_edges, dtype=bool)
    m_full = patcher.circuit_metric(full)
    out = np.full(len(edges), np.nan)
    with tqdm(total=len(edges), desc="verify", unit="edge", disable=not progress) as bar, torch.no_grad():
        for chunk, final in removal_finals(patcher, full, edges, k):
            out[chunk] = patcher.final_metric(final).double().cpu().numpy() - m_full
            bar.update(len(chunk))
    return out.tolist()


def verify_top(patcher: Patcher, scores: np.ndarray, in_circuit: np.ndarray, n: int,
               progress: bool = False) -> dict[str, Any]:  # fmt: skip
    """Exact single-edge effects of the top ``n`` edges and of the ``n`` just below the cut
    (module docstring). ``scores``: one estimate per edge (NaN: unscored, never chosen);
    ``in_circuit``: the circuit. Costs ``2 n`` exact passes. Returns a JSON-ready dict:
    ``edges`` (name -> ``{"estimate", "exact", "group", "off"}``), ``spearman_top``,
    ``spearman_below``, ``spearman`` (both groups), ``off`` (names off by more than 2x) and
    the counts. Raises :class:`ConfigError` for ``n < 1``."""
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ConfigError(f"--verify-top must be a whole number >= 1, got {n!r}")
    scores = np.asarray(scores, dtype=np.float64)
    in_circuit = np.asarray(in_circuit, dtype=bool)
    key = np.where(np.isnan(scores), -np.inf, np.abs(scores))
    order = np.argsort(-key, kind="stable")  # ties in edge-table order
    order = order[np.isfinite(key[order])]
    top = order[:n]
    in_top = set(top.tolist())
    below = [e for e in order if not in_circuit[e] and e not in in_top][:n]
    groups = [("top", int(e)) for e in top] + [("below_cut", int(e)) for e in below]
    exacts = single_removals(patcher, np.asarray([e for _, e in groups], dtype=np.int64), progress)
    rows: dict[str, dict[str, Any]] = {}
    for (group, e), exact in zip(groups, exacts, strict=True):
        est = float(scores[e])
        rows[patcher.graph.edge_names[e]] = {"estimate": est, "exact": exact, "group": group,
                                             "off": off_by(est, exact)}  # fmt: skip

    def corr(group: str | None) -> float | None:
        picked = [r for r in rows.values() if group is None or r["group"] == group]
        return _spearman(np.array([r["estimate"] for r in picked]), np.array([r["exact"] for r in picked]))

    off = [name for name, r in rows.items() if r["off"]]
    out = {"n": n, "factor": FACTOR, "spearman_top": corr("top"), "spearman_below": corr("below_cut"),
           "spearman": corr(None), "off": off, "n_off": len(off), "n_checked": len(rows), "edges": rows}  # fmt: skip
    return {k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in out.items()}


__all__ = ["FACTOR", "off_by", "single_removals", "verify_top"]
