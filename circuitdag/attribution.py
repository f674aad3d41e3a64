"""Gradient attribution of every edge at once: EAP and EAP-IG.

An attribution score estimates, for every edge ``e`` of the graph at once, what ACDC
measures one edge at a time: the metric change when ``e`` alone is removed from the full
model, ``score(e) ~ m(G - {e}) - m(G)``. Same sign and units as ACDC's scores (the metric
is "lower is closer to the full model", maximised metrics stored negated), so a positive
score means "removing this edge hurts" and one ranking serves both.

* **EAP** (Syed, Rager & Conmy 2023, "Attribution Patching Outperforms Automated Circuit
  Discovery"): removing ``SRC->DST<in>`` changes DST's input by
  ``S_corr[SRC] - S_clean[SRC]`` (DESIGN.md, patching); to first order the metric changes by
  that difference dotted with the gradient of the metric with respect to DST's input in
  the clean run::

      score(SRC->DST<in>) = sum over prompts, positions of (S_corr[SRC] - S_clean[SRC]) . dm/d(DST input)

  The caches of the :class:`~circuitdag.patching.Patcher` are the two forward passes;
  one more forward and one backward pass give every edge's score.
* **EAP-IG**, "inputs" variant (Hanna, Pezzelle & Belinkov 2024, "Have Faith in
  Faithfulness"): the gradient is averaged over ``steps`` points where the ``embed`` node's
  output moves from its ablated value to its clean value, ``x_k = x_corr + (k / steps)
  (x_clean - x_corr)`` for ``k = 0 .. steps-1`` (the left Riemann sum of the EAP-IG
  code); the sender difference stays ``S_corr - S_clean``. With resample ablation ``x_corr``
  is the corrupted prompts' embedding, so the path runs from the corrupted run to the
  clean one; with zero / mean ablation it is the zero / mean embedding.

Post-sublayer norms (Gemma 2/3, OLMo 2; :mod:`circuitdag.postnorm`): a head of layer ``L`` reaches
each input through the norm of its layer's attention sum ``A_L``, so its difference is
``J_L (S_corr - S_clean)`` with ``J_L`` the norm's Jacobian at ``A_L`` of the same pass (at
each EAP-IG step its own); at the clean run that is minus the masked pass's gradient, as
for every other model.

Position-aware graphs (docs/positions.md) get a score for every (component, position)
edge, including the K and V edges of each (query, key) pair ``SRC@p -> a@q<k>``: the
prompts run as ``P`` views exactly as in the patched forward pass, so the gradient at view
``q``'s key input at position ``p`` is the gradient with respect to the key at ``p`` as
query ``q`` sees it. The views multiply the cost by ``P``.

Prompts are processed in chunks (``batch_size``); the metric of a chunk is weighted by its
share of the answer slots, so the scores are the same for every chunk size. Metrics must be
means over prompts (every built-in metric is).

:func:`attribute` returns the scores; the registered methods ``eap`` and ``eap-ig``
(:mod:`circuitdag.algorithms.attribution`) turn them into a circuit (the top edges by
``|score|``, pruned to ``embed -> logits`` paths), as ``circuitdag discover --algorithm
eap|eap-ig`` does.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor
from tqdm.auto import tqdm

from circuitdag import metrics
from circuitdag.errors import ConfigError, MetricError
from circuitdag.graph import Input, NodeKind
from circuitdag.hooks import Hook
from circuitdag.passes import frozen
from circuitdag.patching import Patcher

log = logging.getLogger("circuitdag")

#: Attribution methods, by the names the CLI uses.
METHODS = ("eap", "eap-ig")
#: Default number of EAP-IG steps (the EAP-IG paper and MIB use 5).
DEFAULT_IG_STEPS = 5


@dataclass(frozen=True)
class Attribution:
    """Edge scores of one attribution run.

    ``scores[e]`` (float64, one per edge of ``patcher.graph``, in edge-table order) is the
    estimated metric change when edge ``e`` alone is removed (units of the metric)."""

    scores: np.ndarray
    method: str
    steps: int
    batch_size: int
    seconds: float
    passes: int  # forward + backward passes run (one per chunk and step)


def _check(method: str, steps: int) -> None:
    if method not in METHODS:
        raise ConfigError(f"unknown attribution method {method!r}; choose one of {', '.join(METHODS)}")
    if not isinstance(steps, int) or steps < 1:
        raise ConfigError(f"--ig-steps must be an integer >= 1, got {steps!r}")


def default_batch_size(patcher: Patcher, budget_bytes: int = 3 << 30) -> int:
    """Prompts per chunk so that one forward + backward pass stays within about
    ``budget_bytes`` of activations (a rough estimate of what autograd keeps per token, plus
    the destination inputs' gradients summed over the IG steps)."""
    spec, item = patcher.graph.spec, torch.finfo(patcher.dtype).bits // 8
    per_token = spec.n_layers * spec.d_model * (5 * spec.n_heads + 6 * spec.n_kv_heads + 25) * item
    per_prompt = max(1, patcher.V * patcher.P * per_token)
    return int(max(1, min(patcher.B, budget_bytes // per_prompt)))


def attribute(
    patcher: Patcher,
    method: str = "eap-ig",
    steps: int = DEFAULT_IG_STEPS,
    batch_size: int | None = None,
    progress: bool = False,
) -> Attribution:
    """Score every edge of ``patcher.graph`` with EAP or EAP-IG (see the module docstring).

    ``steps`` is used by EAP-IG only (EAP is one step at the clean input). Returns an
    :class:`Attribution`; raises :class:`~circuitdag.errors.ConfigError` for an unknown
    method or ``steps < 1`` and :class:`~circuitdag.errors.MetricError` if the metric is
    not finite."""
    _check(method, steps)
    steps = 1 if method == "eap" else steps
    if patcher.neurons:
        raise ConfigError(f"{method} does not score neuron nodes yet (--neurons); use acdc, which is exact on them")
    if method == "eap" and patcher.metric_fn in (metrics.kl, metrics.l2):
        log.warning(
            "EAP with a metric that compares with the full model (kl, l2) scores every edge about 0: "
            "its gradient vanishes at the clean run. Use eap-ig, or a metric such as logit_diff"
        )
    b = default_batch_size(patcher) if batch_size is None else int(batch_size)
    if b < 1:
        raise ConfigError(f"batch size must be >= 1, got {batch_size}")
    lay = patcher.layout
    dense = torch.zeros(lay.shape, dtype=torch.float64, device=patcher.device)
    alphas = [1.0] if method == "eap" else [k / steps for k in range(steps)]
    chunks = [slice(i, min(i + b, patcher.B)) for i in range(0, patcher.B, b)]
    valid = patcher.data.valid
    n_valid = float(valid.sum()) if valid is not None else float(patcher.data.answer_pos.numel())
    t0 = time.perf_counter()
    bar = tqdm(total=len(chunks) * len(alphas), desc=method.upper(), unit="pass", disable=not progress)
    try:
        with frozen(patcher.model):  # gradients for the activations only
            for c in chunks:
                w = (float(valid[c].sum()) if valid is not None else float(patcher.data.answer_pos[c].numel())) / n_valid
                _accumulate(patcher, dense, c, alphas, w, lambda: bar.update(1))
    finally:
        bar.close()
    dense /= len(alphas)
    scores = dense[lay.edge_row, lay.edge_view, lay.edge_pos, lay.edge_slot].cpu().numpy()
    if not np.isfinite(scores).all():
        raise MetricError(
            f"{method} gave {int((~np.isfinite(scores)).sum())} non-finite edge scores: the metric's gradient "
            "is not finite; use a metric that is differentiable at the clean run (kl, logit_diff, l2)"
        )
    return Attribution(scores, method, steps, b, time.perf_counter() - t0, len(chunks) * len(alphas))


def _accumulate(
    patcher: Patcher, dense: Tensor, c: slice, alphas: list[float], weight: float, step_done: Callable[[], None]
) -> None:
    """One forward + backward pass over the prompts ``c`` per ``alpha`` in ``alphas``, with
    the embedding at ``x_corr + alpha (x_clean - x_corr)``; adds ``weight x`` the sum of their
    scores into ``dense`` (``absent``-shaped: row, view, pos, slot).

    A score is linear in the gradient (``delta . g``), so the gradients at each destination
    input are summed over the steps first and multiplied by the sender differences once per
    chunk: the sender differences are laid out once, and the score matmuls run once, not
    once per step (issue 26; the same scores up to float rounding, tests/test_attribution.py)."""
    lay, n, views = patcher.layout, patcher.layout.n_layers, patcher.views.of(c)
    V, P, positional, diag = views.V, views.P, views.positional, views.diag
    S_clean, S_corr = patcher.S_clean[c], patcher.S_corr[c]
    b = S_clean.shape[0]
    # Sender differences S_corr - S_clean (the change of an input when an edge is removed),
    # laid out once per chunk as the left operand of the score matmuls: per position
    # ``pos slot (b d)`` with positions, else ``slot (b pos d)``.
    delta = S_corr - S_clean  # b pos slot d

    def laid_out(delta: Tensor) -> Tensor:
        if positional:
            return delta.permute(1, 2, 0, 3).reshape(P, lay.n_slots, -1)
        return delta.permute(2, 0, 1, 3).reshape(lay.n_slots, -1)

    post = patcher.table.post
    Dm = laid_out(delta)
    if post is None:
        del delta

    pending: dict[int, list[tuple[slice, int, Tensor]]] = {}
    groups = {L: 3 + int(lay.has_mlp) for L in range(n)} | {n: 1}  # input groups per layer

    def collect(L: int, kind: Input) -> Callable[[Tensor], None]:
        sl, k = lay.rows(L, kind), lay.readable_slots(L, kind)

        def fn(g: Tensor) -> None:
            # score[row, view, pos, slot] = sum over prompts and d_model of delta . gradient,
            # as matmuls in the model's dtype, accumulated in float64.
            g = g if g.dim() == 4 else g.unsqueeze(2)  # (b views) pos rows d
            r = g.shape[2]
            if lay.crosses_positions(kind):  # every (query view, key position) pair
                gv = g.reshape(b, V, P, r, -1).permute(2, 0, 4, 3, 1).reshape(P, -1, r * V)
                got = torch.bmm(Dm[:, :k], gv).reshape(P, k, r, V)  # pos slot rows view
                dense[sl, :, :, :k] += got.permute(2, 3, 0, 1)
            elif positional:  # the row reads its own position: the diagonal
                gd = views.diagonal(g)[0].permute(1, 0, 3, 2).reshape(P, -1, r)  # pos (b d) rows
                got = torch.bmm(Dm[:, :k], gd)  # pos slot rows
                dense[sl, diag, diag, :k] += got.permute(2, 0, 1)
            else:  # buffered: one matmul per layer reads the senders once
                waiting = pending.setdefault(L, [])
                waiting.append((sl, k, g.permute(0, 1, 3, 2).reshape(-1, r)))  # (b pos d) rows
                if len(waiting) == groups[L]:
                    flush(L)

        return fn

    def flush(L: int) -> None:
        waiting = pending.pop(L)
        kmax = max(w[1] for w in waiting)
        got = Dm[:kmax] @ torch.cat([w[2] for w in waiting], dim=1)  # slot rows
        at = 0
        for rows, kk, gm in waiting:
            dense[rows, 0, 0, :kk] += got[:kk, at : at + gm.shape[1]].T
            at += gm.shape[1]

    # The gradient at each destination input, summed over the steps (in input order).
    grads: dict[tuple[int, Input], Tensor] = {}

    def add(key: tuple[int, Input]) -> Callable[[Tensor], None]:
        def fn(g: Tensor) -> None:
            grads[key] = g if key not in grads else grads[key] + g

        return fn

    def watched(x: Tensor, L: int, kind: Input) -> Tensor:
        # With views, every view reads the true residual (position p from view p), so the
        # gradient at view q's input is the gradient as query q sees it.
        x = views.spread(views.diagonal(x)[0]) if positional else x.clone()
        x.register_hook(add((L, kind)))
        return x

    def watch(L: int, kind: Input) -> Hook | None:
        return None if kind == Input.RESID else (lambda x, hook: watched(x, L, kind))

    # Post-sublayer norms (circuitdag.postnorm): a head's change reaches every input through
    # the Jacobian of its layer's norm at that layer's attention sum in this pass, so the
    # sender differences of those heads are J @ delta, different at every IG step.
    sums: dict[int, Tensor] = {}

    def keep_sum(L: int, kind: NodeKind) -> Hook | None:
        def fn(x: Tensor, hook: object) -> None:
            assert post is not None
            sums[L] = post.attn_sum(L, views.diagonal(x.detach())[0])  # b pos d
        return fn if post is not None and kind == NodeKind.HEAD else None

    def normed(delta: Tensor) -> Tensor:
        assert post is not None
        out = delta.clone()
        for L, A in sums.items():
            heads = slice(lay.head_slot(L, 0), lay.head_slot(L, 0) + lay.n_heads)
            v = delta[:, :, heads]
            out[:, :, heads] = post.jvp(L, A.unsqueeze(2).expand_as(v).contiguous(), v)
        return out

    order = [(L, kind) for L in range(n + 1) for kind in Input]

    def score_all() -> None:
        for key in sorted(grads, key=order.index):
            collect(*key)(grads.pop(key))
        for L in list(pending):  # groups that got no gradient have score 0
            flush(L)

    hooks = patcher.table.hooks(inputs=watch, outputs=keep_sum)
    x_corr, x_clean = S_corr[:, :, 0], S_clean[:, :, 0]
    for alpha in alphas:
        with torch.enable_grad():
            x0 = (x_corr + alpha * (x_clean - x_corr)).detach().requires_grad_(True)
            final = patcher.table.run_to_final(patcher.model, views.spread(x0), hooks,
                                               lambda x: views.diagonal(watched(x, n, Input.RESID))[0], start_layer=0)  # fmt: skip
            metric = patcher.readout.final_metric(final.unsqueeze(0), prompts=c)[0]
            torch.autograd.grad(metric * weight, x0)
        if post is not None:  # this step's Jacobians: score it now
            Dm = laid_out(normed(delta))
            score_all()
        step_done()
    score_all()


# ---------------------------------------------------------------------- circuits
def top_edges(scores: np.ndarray, n_edges: int | None = None, threshold: float | None = None) -> np.ndarray:
    """Boolean mask of the edges kept by ``|score|``: the ``n_edges`` largest (ties broken by
    edge-table order), or those with ``|score| >= threshold``. NaN scores are never kept."""
    if (n_edges is None) == (threshold is None):
        raise ConfigError("give exactly one of --edges N and --threshold X for an attribution circuit")
    mag = np.abs(np.asarray(scores, dtype=np.float64))
    mag[np.isnan(mag)] = -1.0  # never kept
    keep = np.zeros(mag.shape[0], dtype=bool)
    if threshold is not None:
        if not 0 <= threshold < float("inf"):  # NaN and inf too: an infinite threshold keeps nothing
            raise ConfigError(f"threshold must be a finite number >= 0, got {threshold}")
        keep = mag >= threshold
    else:
        assert n_edges is not None
        if n_edges < 0:
            raise ConfigError(f"--edges must be >= 0, got {n_edges}")
        order = np.argsort(-mag, kind="stable")[: min(n_edges, mag.shape[0])]
        keep[order] = True
    return keep & (mag >= 0)


__all__ = ["DEFAULT_IG_STEPS", "METHODS", "Attribution", "attribute", "top_edges"]
