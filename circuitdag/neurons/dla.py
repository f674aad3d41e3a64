"""Direct logit attribution (DLA) of each neuron to the task's logit difference.

The direct path of a vector ``v`` written into the residual stream is what it adds to
the logit difference through the final norm and the unembedding alone, with the final
norm's scale held at the run's value::

    DLA(v) = (P v) . (w * (g_c W_U[:, correct] - g_w W_U[:, wrong])) / s

``P`` centres ``v`` for LayerNorm (GPT-2) and is the identity for RMSNorm (Llama,
SmolLM2); ``w`` is the final norm's elementwise scale as the model computes it
(:func:`circuitdag.neurons._runs.final_norm_weight`: Gemma's ``1 + weight``, 1 once it is
folded into ``W_U``); ``s`` is the final norm's scale
(:func:`circuitdag.neurons._runs.final_scale`) of *the same run at the answer position*:
the clean run's for :attr:`NeuronDLA.clean`, the corrupted run's for
:attr:`NeuronDLA.corrupted`. ``g_c = g_w = 1`` unless the model soft-caps its logits
(Gemma 2: ``cap * tanh(logit / cap)``); then DLA is the tangent linearisation of the
capped logit difference at that run's logits, ``g = 1 - tanh(logit / cap)^2`` per answer
(:meth:`~circuitdag.neurons._runs.TaskRuns.cap_slopes`). For neuron ``n`` of layer ``L``,
``v = act_n * W_out[L, n]`` with ``act_n`` its activation at the answer position, so::

    DLA_n = act_n * (W_out[L, n] . P(w * (g_c W_U[:, correct] - g_w W_U[:, wrong]))) / s

(logits, averaged over prompts). Where the MLP's output is normalised before the residual
receives it (Gemma 2/3, OLMo 2: ``norm2(m)`` with ``m`` the MLP's summed neurons), a
neuron's ``v`` is computed through that norm exactly, as what leaves the residual when
the neuron alone is removed: ``v = norm2(m) - norm2(m - act_n W_out[L, n])`` (closed form
from three dot products per neuron, :func:`neuron_dla`); these do not add up to the
layer's output, as a norm is not linear.

The identity that makes it an attribution (no soft-cap): the DLA of the embedding, of
every attention output and every MLP output, plus the final norm's bias and ``b_U``
terms, sums to the model's logit difference; without a post-MLP norm a layer's neurons
plus its output bias sum to the DLA of its ``mlp_out`` (both tested). Attribution by the
direct path only: what a neuron does through later layers is not in it (patching sees
that).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from jaxtyping import Float
from torch import Tensor

from circuitdag.neurons._runs import TaskRuns, final_norm_weight, final_scale, mlp_post_norm, norm_kind, w_out
from circuitdag.postnorm import RMSNorm


@dataclass(frozen=True)
class NeuronDLA:
    """``clean`` / ``corrupted``: ``layer d_mlp`` DLA in logits, averaged over prompts and
    answer slots; ``scale``: the clean run's final norm scale, ``batch n_ans``."""

    clean: Tensor
    corrupted: Tensor
    scale: Tensor

    def top(self, n: int = 10) -> list[tuple[int, int, float]]:
        """The ``n`` neurons with the largest clean-run DLA, as (layer, neuron, logits)."""
        flat = self.clean.flatten()
        idx = flat.argsort(descending=True)[:n].tolist()
        m = self.clean.shape[1]
        return [(i // m, i % m, float(flat[i])) for i in idx]

    def to_dict(self) -> dict[str, Any]:
        return {"clean": self.clean.tolist(), "corrupted": self.corrupted.tolist()}


def readout(runs: TaskRuns, which: str = "clean") -> Float[Tensor, "batch n_ans d_model"]:
    """``P(w * (g_c W_U[:, correct] - g_w W_U[:, wrong]))``: the residual direction the direct
    path of the ``which`` run reads (module docstring), per prompt and answer slot."""
    g = runs.direction
    if runs.cap > 0 and runs.u_wrong is not None:
        g_c, g_w = runs.cap_slopes(which)
        g = g_c[..., None] * (runs.direction + runs.u_wrong) - g_w[..., None] * runs.u_wrong
    w = final_norm_weight(runs.model)
    if w is not None:
        g = g * w.detach().to(g)
    if norm_kind(runs.model) == "LN":
        g = g - g.mean(-1, keepdim=True)
    return g


def answer_scale(runs: TaskRuns, which: str = "clean") -> Float[Tensor, "batch n_ans"]:
    """The final norm's scale at the answer positions of the ``which`` run."""
    ap = runs.data.answer_pos
    rows = torch.arange(ap.shape[0], device=ap.device).unsqueeze(1)
    return final_scale(runs.model, getattr(runs, which)["final"][rows, ap])


def direct_logit_attribution(
    runs: TaskRuns, vectors: Float[Tensor, "*k batch n_ans d_model"], which: str = "clean"
) -> Float[Tensor, "*k batch n_ans"]:
    """DLA of residual-stream vectors (one per prompt and answer slot), with the scale (and
    soft-cap slopes) of the ``which`` run."""
    return (vectors * readout(runs, which)).sum(-1) / answer_scale(runs, which)


def _through_norm(norm: RMSNorm, m: Tensor, act: Tensor, W: Tensor, r: Tensor) -> Tensor:
    """``r . (norm(m) - norm(m - act_n W_n))`` for every neuron ``n`` of one layer, exactly:
    ``m`` (``batch n_ans d_model``) is the MLP's output before the norm, ``act``
    (``batch n_ans d_mlp``), ``W`` (``d_mlp d_model``), ``r`` (``batch n_ans d_model``) the
    direction read. ``norm(x) . r = (x . (weight * r)) / sqrt(mean(x^2) + eps)``, and
    ``m - act_n W_n``'s ``x . q`` and ``|x|^2`` follow from ``m . q``, ``W_n . q``, ``m . W_n``
    and ``|W_n|^2``."""
    q = norm.weight.to(r) * r
    d = m.shape[-1]
    mq, mm = (m * q).sum(-1, keepdim=True), m.pow(2).sum(-1, keepdim=True)
    Wq, mW = torch.einsum("md,bad->bam", W, q), torch.einsum("md,bad->bam", W, m)
    WW = W.pow(2).sum(-1)
    kept = (mq - act * Wq) / ((mm - 2 * act * mW + act.pow(2) * WW) / d + norm.eps).sqrt()
    return mq / (mm / d + norm.eps).sqrt() - kept


def neuron_dla(runs: TaskRuns) -> NeuronDLA:
    """DLA of every neuron of every layer, on the clean and on the corrupted run (module
    docstring; through the MLP's post-norm where the model has one)."""
    ap = runs.data.answer_pos
    rows = torch.arange(ap.shape[0], device=ap.device).unsqueeze(1)
    W = w_out(runs.model).detach().to(runs.direction)
    out = {}
    with torch.no_grad():
        for which in ("clean", "corrupted"):
            r = readout(runs, which) / answer_scale(runs, which)[..., None]  # batch n_ans d_model
            act = getattr(runs, which)["post"][:, rows, ap]  # layer batch n_ans d_mlp
            layers = []
            for L in range(W.shape[0]):
                norm = mlp_post_norm(runs.model, L)
                if norm is None:
                    layers.append(act[L] * torch.einsum("md,bad->bam", W[L], r))
                else:
                    m = getattr(runs, which)["mlp_prenorm"][L][rows, ap]
                    layers.append(_through_norm(norm, m, act[L], W[L], r))
            out[which] = torch.stack(layers).mean((1, 2))
    return NeuronDLA(out["clean"].double().cpu(), out["corrupted"].double().cpu(), answer_scale(runs).cpu())
