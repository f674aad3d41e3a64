"""Points in soft-prompt space at which a soft-prompt experiment measures the task.

Soft prompts are matrices ``(K, d_model)``; distances and norms here are Frobenius (the
prompt flattened to one vector of ``K * d_model`` numbers).

* :func:`segment`: ``(1 - t) P_i + t P_j`` for ``t`` in :func:`grid` (endpoints included,
  so the first and last points are the solutions themselves);
* :func:`simplex_weights` / :func:`combine`: the barycentric grid of step ``1/g`` over the
  triangle of three solutions (its corners are the solutions, its edges the segments);
* :func:`random_directions`: Gaussian directions rescaled to a given norm exactly. The
  control for a segment from ``P_i`` to ``P_j`` walks from ``P_i`` the same distance
  ``|P_j - P_i|`` in a random direction: if accuracy holds there too, the solutions sit in
  a wide basin and the segment is not special; if it collapses there but not along the
  segment, the region between solutions is special (it is the write-up's claim that says
  something);
* :func:`pair_stats`: how far apart two solutions are and how much an interpolant shrinks
  (the midpoint of two near-orthogonal vectors of equal norm has ``~1/sqrt(2)`` of their
  norm, a confound for "the interpolant still works": it is also a smaller prompt).
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence

import torch
from jaxtyping import Float
from torch import Tensor


def grid(n: int) -> list[float]:
    """``n`` evenly spaced values from 0 to 1, both included (``n >= 2``)."""
    return [i / (n - 1) for i in range(n)]


def segment(a: Float[Tensor, "k d"], b: Float[Tensor, "k d"], ts: list[float]) -> Float[Tensor, "n k d"]:
    """The points ``(1 - t) a + t b`` for each ``t`` in ``ts``."""
    t = torch.tensor(ts, dtype=a.dtype, device=a.device)[:, None, None]
    return (1 - t) * a + t * b


def keep_norm(points: Float[Tensor, "n k d"], a: Float[Tensor, "k d"], b: Float[Tensor, "k d"],
              ts: list[float]) -> Float[Tensor, "n k d"]:  # fmt: skip
    """``points`` (the segment from ``a`` to ``b`` at ``ts``) each rescaled to the Frobenius
    norm ``(1 - t) |a| + t |b|``: the same directions without the interpolants' shrinkage."""
    t = torch.tensor(ts, dtype=points.dtype, device=points.device)
    want = (1 - t) * a.norm() + t * b.norm()
    have = points.flatten(1).norm(dim=1).clamp(min=1e-12)
    return points * (want / have)[:, None, None]


def simplex_weights(g: int) -> list[tuple[float, float, float]]:
    """Barycentric weights ``(i, j, l) / g`` with ``i + j + l = g``: ``(g+1)(g+2)/2`` points."""
    return [(i / g, j / g, (g - i - j) / g) for i in range(g, -1, -1) for j in range(g - i, -1, -1)]


def combine(solutions: Float[Tensor, "s k d"], weights: Sequence[Sequence[float]]) -> Float[Tensor, "m k d"]:
    """The convex combinations ``sum_s w_s P_s`` for each weight tuple."""
    w = torch.tensor(weights, dtype=solutions.dtype, device=solutions.device)
    return torch.einsum("ms,skd->mkd", w, solutions)


def random_directions(shape: tuple[int, ...], norm: float, n: int, seed: int) -> Float[Tensor, "n ..."]:
    """``n`` isotropic Gaussian directions of ``shape``, each rescaled to Frobenius norm ``norm``."""
    gen = torch.Generator().manual_seed(int(seed))
    u = torch.randn(n, *shape, generator=gen)
    return u / u.flatten(1).norm(dim=1).view(n, *[1] * len(shape)) * norm


def pairs(n: int) -> list[tuple[int, int]]:
    """Every unordered pair of ``n`` solutions, in order."""
    return list(itertools.combinations(range(n), 2))


def pair_stats(a: Float[Tensor, "k d"], b: Float[Tensor, "k d"]) -> dict[str, float]:
    """Norms, distance, cosine (flattened) and the midpoint's norm over the mean norm."""
    na, nb = float(a.norm()), float(b.norm())
    mid = float(((a + b) / 2).norm())
    cos = float((a.flatten() @ b.flatten()) / (na * nb)) if na and nb else 0.0
    return {"norm_a": na, "norm_b": nb, "distance": float((a - b).norm()), "cosine": cos,
            "midpoint_norm_ratio": mid / ((na + nb) / 2) if na + nb else 0.0}  # fmt: skip
