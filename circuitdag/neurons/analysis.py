"""The whole " an" neuron method in one call: :func:`analyze_neurons`.

Steps, each a function of its own module (Miller & Neo 2023, "We found an ' an' neuron",
with the seed's reviewer's corrections: ablations, never negation; DLA; the neuron over
ordinary text):

1. :func:`~circuitdag.neurons.lens.logit_lens` -- where the logit difference appears;
2. :func:`~circuitdag.neurons.activation_patching.patch_activations` -- every (layer,
   position) of ``resid_pre``, ``attn_out``, ``mlp_out``;
3. :func:`~circuitdag.neurons.neuron_patching.patch_neurons` -- every neuron of the chosen
   MLP layers alone, and each layer whole;
4. :func:`~circuitdag.neurons.dla.neuron_dla` -- every neuron's direct logit attribution;
5. :func:`~circuitdag.neurons.congruence.mutual_congruence` -- over all neurons and tokens;
6. :func:`~circuitdag.neurons.corpus.corpus_activation` -- the top neuron over a corpus.

The *target token* is the correct answer of the task's first prompt (" an" for
``an-neuron``; the first of the whole list, also with ``n_prompts``), the token whose
mutual-congruence partner and corpus predictions are reported.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from circuitdag.errors import ConfigError
from circuitdag.neurons._runs import ABLATIONS, TaskRuns, cache_runs, w_out, warn_if_negligible
from circuitdag.neurons.activation_patching import PatchGrid, patch_activations
from circuitdag.neurons.congruence import MutualCongruence, mutual_congruence, token_congruence
from circuitdag.neurons.corpus import CorpusBins, corpus_activation, read_corpus
from circuitdag.neurons.dla import NeuronDLA, neuron_dla
from circuitdag.neurons.lens import LogitLens, logit_lens
from circuitdag.neurons.neuron_patching import (
    NeuronPatching,
    patch_neurons,
    whole_layer_effect,
)
from circuitdag.tasks.base import Task, load_data

log = logging.getLogger("circuitdag")

REPORT_FORMAT = "circuitdag.neurons/1"

#: Patch every layer's neurons when the model has at most this many in all; else the
#: layer that writes the answer (:func:`answer_layer`).
ALL_LAYERS_MAX_NEURONS = 4096

#: The seed's numbers (GPT-2 Large, layer 31, neuron 892, "apple"/"lemon" patching).
SEED = {"model": "gpt2-large", "layer": 31, "neuron": 892, "neuron_fraction": 0.50, "layer_fraction": 0.49}


@dataclass
class NeuronAnalysis:
    """Every number of the analysis (see :meth:`to_dict` for the report's layout)."""

    facts: dict[str, Any]
    lens: LogitLens
    grid: PatchGrid
    mlp_layer_effect: list[float]
    neurons: NeuronPatching
    dla: NeuronDLA
    congruence: MutualCongruence
    d_mlp: int
    target: dict[str, Any]
    top: dict[str, Any]
    agreement: dict[str, Any]
    corpus: CorpusBins | None
    seconds: dict[str, float] = field(default_factory=dict)
    decode: Any = None  # token id -> text

    def to_dict(self) -> dict[str, Any]:
        return {
            "format": REPORT_FORMAT,
            **self.facts,
            "target": self.target,
            "top_neuron": self.top,
            "seed_reference": SEED,
            "agreement": self.agreement,
            "logit_lens": self.lens.to_dict(),
            "activation_patching": self.grid.to_dict(),
            "mlp_layer_effect": self.mlp_layer_effect,
            "neuron_patching": {"top": _rows(self.neurons.top(10)), **self.neurons.to_dict()},
            "dla": {"top": _rows(self.dla.top(10)), "scale_clean": self.dla.scale.flatten().tolist(),
                    **self.dla.to_dict()},
            "mutual_congruence": self.congruence.to_dict(self.d_mlp, self.decode, top=20),
            "corpus": None if self.corpus is None else self.corpus.to_dict(),
            "seconds": self.seconds,
        }


def _rows(rows: list[tuple[int, int, float]]) -> list[dict[str, Any]]:
    return [{"layer": L, "neuron": n, "value": v} for L, n, v in rows]


def parse_layers(text: str | None, n_layers: int) -> list[int] | None:
    """``"31"`` or ``"10,11"`` or ``"all"`` (None: the default choice). Raises ConfigError."""
    if text is None:
        return None
    if text.strip() == "all":
        return list(range(n_layers))
    try:
        layers = sorted({int(x) for x in text.split(",") if x.strip()})
    except ValueError:
        raise ConfigError(f"--layer takes layer numbers separated by commas, or all; got {text!r}") from None
    if any(L < 0 for L in layers):
        raise ConfigError(f"--layer takes layer numbers >= 0, or all; got {text!r}")
    bad = [L for L in layers if not 0 <= L < n_layers]
    if not layers or bad:
        raise ConfigError(f"--layer: the model has MLP layers 0..{n_layers - 1}; got {text!r}")
    return layers


def analyze_neurons(
    model: Any,
    task: Task,
    *,
    layers: list[int] | None = None,
    ablation: str = "resample",
    seed: int = 0,
    n_prompts: int | None = None,
    corpus: str | Path | None = None,
    corpus_tokens: int = 20_000,
    progress: bool = False,
) -> NeuronAnalysis:
    """Run the six steps of the module docstring on ``task``'s prompts for ``model``.

    ``layers``: the MLP layers whose neurons are patched one by one (None: all of them when
    the model has at most :data:`ALL_LAYERS_MAX_NEURONS` neurons, else :func:`answer_layer`).
    ``corpus``: a text file (None: Debian's fortunes, :mod:`circuitdag.neurons.corpus`);
    ``corpus_tokens=0`` skips that step.
    Raises :class:`ConfigError` for an unknown ablation, :class:`TaskError` for a task
    without a logit difference.
    """
    if ablation not in ABLATIONS:
        raise ConfigError(f"unknown ablation {ablation!r}; choose one of {', '.join(ABLATIONS)}")
    seconds: dict[str, float] = {}
    t0 = time.perf_counter()

    def lap(name: str) -> None:
        nonlocal t0
        now = time.perf_counter()
        seconds[name] = round(now - t0, 3)
        t0 = now

    if corpus_tokens > 0 and getattr(model, "tokenizer", None) is None:  # token-id models (tracr): no text
        log.warning("%s has no tokenizer: skipping the corpus step", getattr(model.cfg, "model_name", "the model"))
        corpus_tokens = 0
    corpus_text = read_corpus(corpus) if corpus_tokens > 0 else None
    device = next(model.parameters()).device
    data = load_data(task, model, seed=seed, n_prompts=n_prompts).to(device)
    runs = cache_runs(model, data)
    said = warn_if_negligible(runs)
    n_layers, m = runs.spec.n_layers, runs.d_mlp
    lap("cache")
    lens = logit_lens(runs)
    lap("logit_lens")
    grid = patch_activations(runs, ablation)
    lap("activation_patching")
    whole = _mlp_layer_effects(runs, ablation)
    if layers is None:
        layers = list(range(n_layers)) if n_layers * m <= ALL_LAYERS_MAX_NEURONS else [answer_layer(runs, grid)]
    lap("mlp_layers")
    neurons = patch_neurons(runs, layers, ablation, progress=progress, layer_effect=whole)
    lap("neuron_patching")
    dla = neuron_dla(runs)
    lap("dla")
    W = w_out(model).detach()
    W_U = model.W_U.detach()
    mc = mutual_congruence(W.flatten(0, 1), W_U)
    lap("mutual_congruence")

    tok = getattr(model, "tokenizer", None)

    def decode(t: int) -> str:
        return tok.decode([t]) if tok is not None else str(t)

    # The first prompt of the task's whole list, not of a --n-prompts subset (which may start
    # with a " a" prompt).
    first = task.data(model, seed=seed) if n_prompts is not None else data
    target_id, wrong_id = int(first.correct[0, 0]), int(first.wrong[0, 0])  # type: ignore[index]
    target = {"token": target_id, "text": decode(target_id), "wrong_token": wrong_id, "wrong_text": decode(wrong_id)}
    tL, tn, teff = neurons.top(1)[0]
    flat = tL * m + tn
    dla_rank = int((dla.clean.flatten() > dla.clean[tL, tn]).sum()) + 1
    dla_top = dla.top(1)[0]
    partner = mc.partner_of_token(target_id)
    hi, lo = token_congruence(W[tL, tn], W_U, k=10)
    top = {
        "layer": tL, "neuron": tn, "name": f"L{tL}.N{tn}", "effect": teff,
        "layer_effect": neurons.layer_effect[tL], "dla": float(dla.clean[tL, tn]),
        "dla_corrupted": float(dla.corrupted[tL, tn]), "dla_rank": dla_rank, "of_neurons": n_layers * m,
        "best_token": int(mc.best_token[flat]), "best_token_text": decode(int(mc.best_token[flat])),
        "mutual_rank": mc.rank_of(flat), "n_mutual_pairs": len(mc.pairs),
        "most_congruent": [{"token": t, "text": decode(t), "congruence": c} for t, c in hi],
        "least_congruent": [{"token": t, "text": decode(t), "congruence": c} for t, c in lo],
    }  # fmt: skip
    agreement = {
        "dla_top": {"layer": dla_top[0], "neuron": dla_top[1], "dla": dla_top[2]},
        "dla_agrees": (dla_top[0], dla_top[1]) == (tL, tn),
        "mutual_partner_of_target": None if partner is None else {"layer": partner // m, "neuron": partner % m},
        "mutual_agrees": partner == flat,
    }
    agreement["all_agree"] = agreement["dla_agrees"] and agreement["mutual_agrees"]
    bins = None
    if corpus_text is not None:
        bins = corpus_activation(model, tL, tn, target_id, corpus_text[0], corpus_text[1], max_tokens=corpus_tokens)
    lap("corpus")
    cfg = model.cfg
    facts = {
        "task": task.name, "model": str(getattr(cfg, "model_name", "") or type(model).__name__),
        "ablation": ablation, "seed": seed, "n_prompts": data.n_prompts, "dtype": str(W.dtype).removeprefix("torch."),
        "n_layers": n_layers, "d_mlp": m, "d_model": runs.spec.d_model, "d_vocab": int(W_U.shape[1]),
        "normalization": str(getattr(cfg, "normalization_type", None)),
        "gated_mlp": bool(getattr(cfg, "gated_mlp", False)),
        "patched_layers": list(layers),
        "logit_diff": {"clean": runs.metric_clean, "corrupted": runs.metric_corrupted},
        "example_prompt": _example(tok, data),
        "position_names": list(data.position_names) if data.position_names else None,
        "warnings": said,
    }  # fmt: skip
    return NeuronAnalysis(facts, lens, grid, whole, neurons, dla, mc, m, target, top, agreement, bins, seconds, decode)


def answer_layer(runs: TaskRuns, grid: PatchGrid) -> int:
    """The MLP layer whose output at the answer position carries the largest patching effect:
    the layer that writes the answer, which the seed found with the logit lens (GPT-2 Large's
    layer 31). Patching its neurons is also cheap, since a late layer's passes start late."""
    ap = runs.data.answer_pos[0, 0].item()
    return int(grid.effect["mlp_out"][:, int(ap)].argmax())


def _example(tok: Any, data: Any) -> dict[str, str] | None:
    if tok is None:
        return None
    return {"clean": tok.decode(data.clean[0].tolist()), "corrupted": tok.decode(data.corrupted[0].tolist())}


def _mlp_layer_effects(runs: TaskRuns, ablation: str) -> list[float]:
    """The effect of patching every neuron of each MLP layer at once, per layer."""
    return [whole_layer_effect(runs, L, ablation) for L in range(runs.spec.n_layers)]
