"""UGS, uniform gradient sampling, as a registered method (Li & Janson 2024, "Optimal
ablations for interpretability"; the code MIB's circuit track runs for it:
alestolfo/optimalablation, ``edge_pruning_unif_mib.py`` with ``EdgeMaskUnifSampler``).

Every edge gets a parameter ``theta_e``, ``p_e = sigmoid(theta_e)`` its probability of
being present. Each step draws ``samples`` masks, one value per edge per draw, from the
"modified uniform" of the paper: with ``u ~ U(0, 1)`` and the window ``w = p (1 - p)``,

    z = 1 - clamp((u - p) / w + 1/2, 0, 1)

so ``z = 1`` when ``u < p - w/2``, ``z = 0`` when ``u > p + w/2`` and linear in between:
``E[z] = p``. A draw passes the gradient ``dm/dz * p (1 - p)`` to ``theta`` exactly when
``u`` lands in the window, and there ``z`` is uniform on [0, 1]: averaged over such draws
that is ``(m(z_e = 1) - m(z_e = 0)) p (1 - p)``, the derivative of the loss expected under a
Bernoulli(p) mask (the integral of ``dm/dz`` over ``z`` in [0, 1]): the uniform gradient
sampling of the paper, weighted by the chance ``w`` of landing in the window.
Each draw runs the differentiable masked pass (:func:`circuitdag.masked.masked_metric`) on
a chunk of ``batch_size`` prompts; the loss is::

    mean over draws of m(z) + lambda * sum_e sigmoid(theta_e)

minimised with AdamW (betas 0.9, 0.995, gradient norm clipped at 5). The score of an edge
is ``sigmoid(theta)``, its learned probability of being kept (in [0, 1], higher = kept; not
in metric units; curves and ROC AUCs rank by ``|score|``); the circuit is the ``edges``
largest, pruned to ``embed -> logits`` paths, as MIB's ``convert_mask_to_graph.py`` ranks
edges by the learned parameter.

Defaults from that script at MIB's ``reg_lamb = 0.001``: ``lambda`` 1e-3, ``theta``
starting at 1, learning rate 0.05 / 5 = 0.01 (its rate for counterfactual ablation), 12
draws per step on 5 prompts each. It makes one pass over 9,500 IOI prompts (1,900 steps);
the default here is 200 steps. Left out: its node regulariser and the pruning of dangling
edges from each draw (the circuit is pruned once, at the end).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np
import torch
from torch import Tensor
from tqdm.auto import tqdm

from circuitdag.algorithms.attribution import default_attribution_edges
from circuitdag.algorithms.base import Algorithm, Found, Option, RunContext
from circuitdag.algorithms.edge_pruning import top_gates, warn_unless_distance
from circuitdag.errors import MetricError

if TYPE_CHECKING:
    from circuitdag.patching import Patcher

DEFAULT_LAMBDA = 1e-3
DEFAULT_INIT = 1.0
DEFAULT_LR = 0.01
DEFAULT_SAMPLES = 12
DEFAULT_BATCH = 5
DEFAULT_STEPS = 200


def sample_mask(theta: Tensor, u: Tensor) -> Tensor:
    """The modified-uniform mask of ``theta`` for uniform noise ``u`` (``... edge``): value
    ``1 - clamp((u - p) / w + 1/2, 0, 1)``, gradient ``p (1 - p)`` with respect to
    ``theta`` inside the window, 0 outside (module docstring)."""
    p = torch.sigmoid(theta)
    w = (p * (1 - p)).detach()
    p_scaled = w * p - (w - 1) * p.detach()  # the value of p, the gradient of w * p
    return 1 - ((u - p_scaled) / w + 0.5).clamp(0, 1)


def train_ugs(
    objective: Callable[[Tensor, int], Tensor],
    n: int,
    *,
    steps: int = DEFAULT_STEPS,
    samples: int = DEFAULT_SAMPLES,
    lam: float = DEFAULT_LAMBDA,
    lr: float = DEFAULT_LR,
    init: float = DEFAULT_INIT,
    seed: int = 0,
    progress: bool = False,
) -> tuple[Tensor, dict[str, Any]]:
    """Learn ``theta`` (``n``) minimising the mean of ``objective(z, draw)`` over ``samples``
    draws per step plus ``lam * sum sigmoid(theta)``; ``draw`` counts every draw of the run.
    Returns ``theta`` and the training record. Deterministic for a ``seed``."""
    theta = torch.full((n,), init, dtype=torch.float64, requires_grad=True)
    opt = torch.optim.AdamW([theta], lr=lr, betas=(0.9, 0.995), weight_decay=0.0)
    gen = torch.Generator().manual_seed(seed)
    metric = float("nan")
    bar = tqdm(total=steps, desc="UGS", unit="step", disable=not progress)
    try:
        for i in range(steps):
            opt.zero_grad()
            total = 0.0
            for j in range(samples):
                z = sample_mask(theta, torch.rand(n, generator=gen, dtype=torch.float64))
                m = objective(z, i * samples + j) / samples
                if not torch.isfinite(m):
                    raise MetricError(f"the metric became {float(m.detach())} at UGS step {i}; use a metric that is "
                                      "finite for every mask (kl, logit_diff, l2)")  # fmt: skip
                m.backward()
                total += float(m.detach())
            penalty = lam * torch.sigmoid(theta).sum()
            penalty.backward()
            torch.nn.utils.clip_grad_norm_([theta], max_norm=5.0)
            opt.step()
            metric = total
            bar.update(1)
            bar.set_postfix(
                metric=f"{metric:.4g}", expected_edges=f"{float(torch.sigmoid(theta.detach()).sum()):.0f}"
            )
    finally:
        bar.close()
    theta = theta.detach()
    return theta, {
        "final_metric_sampled": metric,
        "expected_edges": round(float(torch.sigmoid(theta).sum()), 3),
    }


class UGS(Algorithm):
    name = "ugs"
    summary = "uniform gradient sampling: a learned Bernoulli mask per edge, MIB's mask-learning baseline"
    source = "Li & Janson 2024, Optimal ablations for interpretability"
    score_meaning = "learned probability sigmoid(theta) that the edge is kept (not in metric units)"
    size_knob = "edges"
    neurons = True
    metric_scores = False  # a mask's probability
    refusals: ClassVar[dict[str, str]] = {
        "threshold": "--algorithm ugs sets its size with --edges N (the top N by the learned parameter)",
        "prefilter": "--prefilter goes with --algorithm acdc",
    }
    options: ClassVar[tuple[Option, ...]] = (
        Option("edges", int, None, "keep the N edges with the largest learned parameter (default 1% of the graph)",
               minimum=1),
        Option("steps", int, DEFAULT_STEPS, "optimisation steps (MIB: one pass over its training prompts)",
               minimum=1, maximum=1_000_000),
        Option("samples", int, DEFAULT_SAMPLES, "mask draws per step (MIB: 12)", minimum=1, maximum=10_000),
        Option("batch_size", int, DEFAULT_BATCH, "prompts per draw (MIB: 5)", minimum=1),
        Option("lam", float, DEFAULT_LAMBDA, "weight of the expected edge count in the loss (MIB: 1e-3)",
               minimum=0),
        Option("lr", float, DEFAULT_LR, "AdamW learning rate (MIB: 0.01)", minimum=1e-9, maximum=100),
        Option("mask_seed", int, 0, "seed of the mask draws (the data seed is discover's --seed)", minimum=0, maximum=2**32 - 1),
    )  # fmt: skip

    def run(self, patcher: Patcher, ctx: RunContext, edges: int | None = None, steps: int = DEFAULT_STEPS,
            samples: int = DEFAULT_SAMPLES, batch_size: int = DEFAULT_BATCH, lam: float = DEFAULT_LAMBDA,
            lr: float = DEFAULT_LR, mask_seed: int = 0) -> Found:  # fmt: skip
        from circuitdag.masked import masked_metric

        warn_unless_distance(patcher, self.name)
        n = patcher.graph.n_edges
        k = default_attribution_edges(n) if edges is None else min(int(edges), n)
        b = min(int(batch_size), patcher.B)
        chunks = [slice(i, min(i + b, patcher.B)) for i in range(0, patcher.B, b)]

        def objective(z: Tensor, draw: int) -> Tensor:
            return masked_metric(patcher, z, prompts=chunks[draw % len(chunks)])

        t0 = time.perf_counter()
        theta, rec = train_ugs(objective, n, steps=steps, samples=samples, lam=lam, lr=lr, seed=mask_seed,
                               progress=ctx.progress)  # fmt: skip
        keep = top_gates(theta.cpu().numpy(), k)
        scores = torch.sigmoid(theta).cpu().numpy().astype(np.float64)
        record = {"edges_requested": k, "edges_selected": int(keep.sum()), "steps": steps, "samples": samples,
                  "batch_size": b, "lam": lam, "lr": lr, "mask_seed": mask_seed, "training": rec}  # fmt: skip
        return Found(scores, patcher.graph.prune(keep), record=record,
                     stats={"training_seconds": round(time.perf_counter() - t0, 4)})  # fmt: skip
