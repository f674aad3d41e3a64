"""Direct logit attribution (DLA) of each neuron to the task's logit difference.

The direct path of a vector ``v`` written into the residual stream is what it adds to
the logit difference through the final norm and the unembedding alone, with the final
norm's scale held at the run's value::

    DLA(v) = (P v) . (w * (W_U[:, correct] - W_U[:, wrong])) / s

``P`` centres ``v`` for LayerNorm (GPT-2) and is the identity for RMSNorm (Llama,
SmolLM2); ``w`` is the final norm's elementwise weight (1 once it is folded into ``W_U``,
as :func:`circuitdag.load_model` does); ``s`` is the final norm's scale
(:func:`circuitdag.neurons._runs.final_scale`) of *the same run at the answer position*:
the clean run's for :attr:`NeuronDLA.clean`, the corrupted run's for
:attr:`NeuronDLA.corrupted`. For neuron ``n`` of layer ``L``, ``v = act_n * W_out[L, n]``
with ``act_n`` its activation at the answer position, so::

    DLA_n = act_n * (W_out[L, n] . P(w * (W_U[:, correct] - W_U[:, wrong]))) / s

(logits, averaged over prompts). The identity that makes it an attribution: the DLA of
the embedding, of every attention output and every MLP output, plus the final norm's
bias and ``b_U`` terms, sums to the model's logit difference; a layer's neurons plus its
output bias sum to the DLA of its ``mlp_out`` (both tested). Attribution by the direct
path only: what a neuron does through later layers is not in it (patching sees that).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from jaxtyping import Float
from torch import Tensor

from circuitdag.neurons._runs import TaskRuns, final_norm_weight, final_scale, norm_kind, w_out


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


def readout(runs: TaskRuns) -> Float[Tensor, "batch n_ans d_model"]:
    """``P(w * (W_U[:, correct] - W_U[:, wrong]))``: the residual direction the direct path
    reads (module docstring), per prompt and answer slot."""
    g = runs.direction
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
    """DLA of residual-stream vectors (one per prompt and answer slot), with the scale of
    the ``which`` run."""
    return (vectors * readout(runs)).sum(-1) / answer_scale(runs, which)


def neuron_dla(runs: TaskRuns) -> NeuronDLA:
    """DLA of every neuron of every layer, on the clean and on the corrupted run."""
    ap = runs.data.answer_pos
    rows = torch.arange(ap.shape[0], device=ap.device).unsqueeze(1)
    W = w_out(runs.model).detach()
    with torch.no_grad():
        per_neuron = torch.einsum("lmd,bad->lbam", W.to(runs.direction), readout(runs))  # layer batch n_ans d_mlp
        out = {}
        for which in ("clean", "corrupted"):
            act = getattr(runs, which)["post"][:, rows, ap]  # layer batch n_ans d_mlp
            s = answer_scale(runs, which)
            out[which] = (act * per_neuron / s[None, :, :, None]).mean((1, 2))
    return NeuronDLA(out["clean"].double().cpu(), out["corrupted"].double().cpu(), answer_scale(runs).cpu())
