"""Activation patching (Meng et al. 2022; the seed's second step) of every (layer, position).

For each site -- ``resid_pre`` (the residual stream entering block L), ``attn_out`` and
``mlp_out`` (what block L's attention and MLP add to it) -- and each token position, one
forward pass in which only that site at that position is patched:

* ``resample`` (the default, the seed's method): the corrupted prompts run with the site's
  value from the clean prompts; the effect is the normalised logit difference,
  ``(m - m_corrupted) / (m_clean - m_corrupted)``: 0 = corrupted, 1 = clean;
* ``zero`` / ``mean``: the clean prompts run with the site set to zero / its mean over the
  clean prompts at that position; the effect is ``1 - normalised``: the fraction of the
  logit difference lost.

``m`` is the logit difference correct - wrong at the answer position, averaged over the
prompts before normalising. Positions are batched: a layer's site costs one forward pass
(from block L on) of ``positions x prompts`` sequences, split to fit in memory. A position
where the patched value equals the value already there (before the first token that
differs between clean and corrupted prompts, for ``resample``) is not run: its effect is 0.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from circuitdag.neurons._runs import TaskRuns, chunk_size, run_to_final

#: Sites of :func:`patch_activations`, in the order of the report.
PATCH_SITES = ("resid_pre", "attn_out", "mlp_out")


@dataclass(frozen=True)
class PatchGrid:
    """``effect[site]``: ``layer pos`` fractions of the logit difference (module docstring)."""

    ablation: str
    effect: dict[str, Tensor]

    def to_dict(self) -> dict[str, Any]:
        return {"ablation": self.ablation, **{s: e.tolist() for s, e in self.effect.items()}}


def patched_metric(
    runs: TaskRuns,
    layer: int,
    base: str,
    k: int,
    write: Callable[[Tensor], Tensor],
    hook: str | None = None,
    in_stream: bool = False,
) -> Tensor:
    """Mean logit difference of ``k`` patched copies of the prompt batch, resumed at block
    ``layer`` of the ``base`` run ("clean" or "corrupted").

    ``write`` receives the activation of ``hook`` (the residual entering the block when
    ``hook`` is None) viewed as ``k batch pos dim`` and returns it patched. Returns ``k``
    values. ``in_stream``: ``hook`` holds the block's input plus the activation (BLOOM's
    attention output, :meth:`TaskRuns.attn_out_hook`): ``write`` sees the activation alone."""
    b, p = runs.data.clean.shape
    start = getattr(runs, base)["resid_pre"][layer]
    if hook is None:
        x = write(start.unsqueeze(0).expand(k, *start.shape).clone())
        final = run_to_final(runs.model, x.reshape(k * b, p, -1), layer)
    else:

        offset = start if in_stream else 0.0  # the block's input: the same in every copy

        def fn(t: Tensor, hook: Any) -> Tensor:
            return (write(t.reshape(k, b, *t.shape[1:]) - offset) + offset).reshape(t.shape)

        x = start.repeat(k, 1, 1)
        final = run_to_final(runs.model, x, layer, [(hook, fn)])
    return runs.logit_diff(final.reshape(k, b, p, -1)).mean((1, 2))


def patch_activations(runs: TaskRuns, ablation: str = "resample", budget_bytes: float = 2e9) -> PatchGrid:
    """The effect of patching each site at each (layer, position); see the module docstring."""
    n, (_b, p) = runs.spec.n_layers, runs.data.clean.shape
    per_pass = chunk_size(runs, budget_bytes)
    out: dict[str, Tensor] = {}
    for site in PATCH_SITES:
        src, base = runs.source_and_base(site, ablation)
        cur = getattr(runs, base)[site]
        effect = torch.zeros(n, p, dtype=torch.float64)
        for L in range(n):
            todo = [q for q in range(p) if not torch.equal(src[L][:, q], cur[L][:, q])]
            for i in range(0, len(todo), per_pass):
                pos = torch.tensor(todo[i : i + per_pass], device=src.device)
                k = len(pos)

                def write(x: Tensor, v: Tensor = src[L], pos: Tensor = pos, k: int = k) -> Tensor:
                    x[torch.arange(k, device=x.device), :, pos] = v[:, pos].transpose(0, 1)
                    return x

                hook, in_stream = (None, False) if site == "resid_pre" else (
                    runs.attn_out_hook(L) if site == "attn_out" else (f"blocks.{L}.hook_{site}", False))  # fmt: skip
                m = patched_metric(runs, L, base, k, write, hook, in_stream)
                effect[L, pos.cpu()] = runs.effect(m, ablation).double().cpu()
        out[site] = effect
    return PatchGrid(ablation, out)
