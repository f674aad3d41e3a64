"""Single-neuron activation patching (the seed's "an" neuron: Miller & Neo 2023).

Each neuron of the chosen MLP layers is patched alone, at every position, and the
effect is measured exactly as for :mod:`circuitdag.neurons.activation_patching`
(``resample``: the clean activation written into the corrupted run, effect = normalised
logit difference recovered; ``zero`` / ``mean``: the neuron ablated in the clean run,
effect = fraction of the logit difference lost). A neuron is one entry of
``blocks.L.mlp.hook_post`` (:mod:`circuitdag.neurons._runs`).

Batched and exact: one forward pass (from block L on, from the cached residual stream)
runs ``k`` copies of the prompt batch, copy ``i`` with only its own neuron(s) replaced in
``hook_post``, so a layer costs ``d_mlp / k`` passes; the result equals patching each
neuron with a plain hook in a forward pass of its own (tested). The whole layer's effect
is the same with every neuron of the layer patched at once (the MLP's output bias, which
belongs to no neuron, is left alone).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from contextlib import nullcontext
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from circuitdag.errors import ConfigError
from circuitdag.neurons._runs import TaskRuns, chunk_size
from circuitdag.neurons.activation_patching import patched_metric


@dataclass(frozen=True)
class NeuronPatching:
    """``effect[L]``: ``d_mlp`` effects of the neurons of layer L; ``layer_effect[L]``: the
    effect of patching all of them at once."""

    ablation: str
    effect: dict[int, Tensor]
    layer_effect: dict[int, float]

    def top(self, n: int = 10) -> list[tuple[int, int, float]]:
        """The ``n`` neurons with the largest effect, as (layer, neuron, effect)."""
        rows = [(L, i, float(v)) for L, e in self.effect.items() for i, v in enumerate(e.tolist())]
        return sorted(rows, key=lambda r: -r[2])[:n]

    def to_dict(self) -> dict[str, Any]:
        return {
            "ablation": self.ablation,
            "layers": sorted(self.effect),
            "layer_effect": {str(L): v for L, v in self.layer_effect.items()},
            "effect": {str(L): e.tolist() for L, e in self.effect.items()},
        }


def patch_neuron_sets(runs: TaskRuns, layer: int, sets: Tensor, ablation: str = "resample") -> Tensor:
    """Mean logit difference with the neurons of each row of ``sets`` (``k d_mlp`` bool)
    patched together, one batch of ``k`` copies; ``k`` values."""
    src, base = runs.source_and_base("post", ablation)
    value = src[layer]

    def write(x: Tensor) -> Tensor:
        return torch.where(sets[:, None, None, :], value.unsqueeze(0), x)

    return patched_metric(runs, layer, base, int(sets.shape[0]), write, f"blocks.{layer}.mlp.hook_post")


def patch_neurons(
    runs: TaskRuns,
    layers: Iterable[int],
    ablation: str = "resample",
    budget_bytes: float = 2e9,
    progress: bool = False,
    layer_effect: Sequence[float] | None = None,
) -> NeuronPatching:
    """Patch every neuron of ``layers`` alone, and each layer whole; see the module docstring.
    ``layer_effect``: each layer's whole-layer effect when already known (it is not patched again).

    Raises :class:`ConfigError` for a layer the model does not have."""
    layers = list(layers)
    bad = [L for L in layers if not 0 <= L < runs.spec.n_layers]
    if bad:
        raise ConfigError(f"the model has MLP layers 0..{runs.spec.n_layers - 1}; got layer {bad[0]}")
    src, base = runs.source_and_base("post", ablation)
    cur = getattr(runs, base)["post"]
    m = runs.d_mlp
    per_pass = chunk_size(runs, budget_bytes)
    device = src.device
    effect: dict[int, Tensor] = {}
    whole: dict[int, float] = {}
    bar = _bar(sum(m for _ in layers), progress)
    with bar as pb:
        for L in layers:
            moved = (src[L] != cur[L]).flatten(0, 1).any(0)  # neurons whose patch changes anything
            todo = moved.nonzero().flatten()
            metric = torch.full((m,), runs.metric_corrupted if base == "corrupted" else runs.metric_clean,
                                dtype=torch.float64)  # fmt: skip
            for idx in _chunks(todo, per_pass):
                sets = torch.zeros(len(idx), m, dtype=torch.bool, device=device)
                sets[torch.arange(len(idx), device=device), idx] = True
                metric[idx.cpu()] = patch_neuron_sets(runs, L, sets, ablation).double().cpu()
                if pb is not None:
                    pb.update(len(idx))
            if pb is not None:
                pb.update(m - len(todo))
            effect[L] = runs.effect(metric, ablation)
            whole[L] = whole_layer_effect(runs, L, ablation) if layer_effect is None else float(layer_effect[L])
    return NeuronPatching(ablation, effect, whole)


def whole_layer_effect(runs: TaskRuns, layer: int, ablation: str) -> float:
    """The effect of patching every neuron of MLP ``layer`` at once."""
    on = torch.ones(1, runs.d_mlp, dtype=torch.bool, device=runs.data.clean.device)
    return float(runs.effect(patch_neuron_sets(runs, layer, on, ablation).double(), ablation)[0])


def _chunks(idx: Tensor, size: int) -> Iterator[Tensor]:
    for i in range(0, len(idx), size):
        yield idx[i : i + size]


def _bar(total: int, progress: bool) -> Any:
    if not progress:
        return nullcontext(None)
    from tqdm import tqdm

    return tqdm(total=total, desc="neuron patching", unit="neuron")
