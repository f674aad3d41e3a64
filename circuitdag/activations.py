"""The layer-activations view: for one prompt, each layer's most active MLP neurons and
its attention heads as token-by-unit heatmaps, in one self-contained HTML page drawn by
plotly (hover a cell for its value). The seed write-up's second web app ("visualizing
whole layers' activations to tokens"), and Neel Nanda's advice to the "an" neuron
project: plot a neuron's activation over the text.

For layer L and token position p:

* neuron n: ``blocks.L.mlp.hook_post[p, n]``, the activation the MLP's output matrix reads
  (``act(W_in x + b_in)``; for gated MLPs such as Llama's ``act(W_gate x) * (W_in x)``);
  the ``top`` neurons with the largest ``max_p |activation|`` are shown, largest first;
* head h: ``|| blocks.L.attn.hook_result[p, h] ||``, the L2 norm of what the head writes to
  the residual stream at p (biases excluded), in the residual stream's units.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from circuitdag._options import DEFAULT_TOP  # neurons per layer; --help shows it, so defined there
from circuitdag.errors import CircuitFileError, ConfigError, TaskError


@dataclass(frozen=True)
class LayerActivations:
    """What the page shows. ``tokens``: the prompt's tokens (``pos``); per layer L,
    ``neuron_ids[L]`` (``top``) the neurons shown, ``neurons[L]`` (``pos top``) their
    activations, ``heads[L]`` (``pos n_heads``) the heads' output norms."""

    model: str
    text: str
    tokens: list[str]
    neuron_ids: list[np.ndarray]
    neurons: list[np.ndarray]
    heads: list[np.ndarray]


def layer_activations(
    model: Any, text: str, top: int = DEFAULT_TOP, bos: bool | None = None
) -> LayerActivations:
    """Run ``model`` (a TransformerLens-hooked language model with a tokenizer, as
    :func:`circuitdag.load_model` returns) on ``text`` and collect each layer's ``top``
    neurons (by ``max |activation|`` over the tokens) and every head's output norm.

    ``bos``: start with the tokenizer's BOS token (default: as the model's prompts do,
    :func:`circuitdag.models.bos_decision`). Raises :class:`ConfigError` for an empty text
    or ``top < 1``, :class:`~circuitdag.errors.TaskError` for a model without tokenizer."""
    from circuitdag.tasks._lm import encode, tokenizer_of, wants_bos

    if top < 1:
        raise ConfigError(f"--top must be >= 1, got {top}")
    if getattr(model, "tokenizer", None) is None:
        raise TaskError(f"{getattr(model.cfg, 'model_name', type(model).__name__)} has no tokenizer, so --text "
                        "cannot be tokenized; give a language model (zoo name, smollm2-135m, hub name or directory)")
    tok = tokenizer_of(model)
    ids = encode(tok, text, wants_bos(model, bos))
    if not text.strip() or not ids:
        raise ConfigError('--text is empty; give the prompt to look at, e.g. --text "So John is a friend"')
    cfg = model.cfg
    device = next(model.parameters()).device
    from circuitdag.graph import NodeKind
    from circuitdag.hooks import HookTable
    from circuitdag.models import spec_of

    table = HookTable.of(model, spec_of(model))  # per-head results where the bridge has none (OPT, GPT-J)
    post = [f"blocks.{layer}.mlp.hook_post" for layer in range(cfg.n_layers)]
    result = [table.output(layer, NodeKind.HEAD) for layer in range(cfg.n_layers)]
    wanted = set(post) | set(result)
    with torch.no_grad():
        _, cache = model.run_with_cache(
            torch.tensor([ids], device=device), names_filter=lambda n: n in wanted
        )
    neuron_ids, neurons, heads = [], [], []
    for layer in range(cfg.n_layers):
        if post[layer] in cache:  # attention-only models have no MLP
            act = cache[post[layer]][0].double().cpu().numpy()  # pos d_mlp
            order = np.argsort(-np.abs(act).max(axis=0), kind="stable")[:top]
            neuron_ids.append(order)
            neurons.append(act[:, order])
        else:
            neuron_ids.append(np.zeros(0, dtype=np.int64))
            neurons.append(np.zeros((len(ids), 0)))
        heads.append(table.head_results(layer, cache[result[layer]])[0].detach().double().norm(dim=-1).cpu().numpy())
    name = str(getattr(cfg, "model_name", type(model).__name__))
    return LayerActivations(name, text, [tok.decode([i]) for i in ids], neuron_ids, neurons, heads)


def activations_figure(acts: LayerActivations):  # -> plotly.graph_objects.Figure
    """One row per layer: the top neurons' heatmap (left; red positive, blue negative) and
    the heads' output norms (right; blue); tokens top to bottom, hover for the value. Each
    heatmap has its own colour scale, from 0 to the largest value in it (given in its
    title), so that quiet layers are as readable as the few with outlier activations."""
    from plotly.subplots import make_subplots

    n_layers = len(acts.heads)
    rows = [f"{p}: {t!r}" for p, t in enumerate(acts.tokens)]  # unique labels, in token order
    peak_n = [float(np.abs(a).max()) if a.size else 0.0 for a in acts.neurons]
    peak_h = [float(a.max()) if a.size else 0.0 for a in acts.heads]
    titles = []
    for layer in range(n_layers):
        n_top = acts.neurons[layer].shape[1]
        titles.append(f"layer {layer}: top {n_top} MLP neurons (largest |activation| {peak_n[layer]:.3g})")
        titles.append(f"layer {layer}: heads (largest |output| {peak_h[layer]:.3g})")
    row_px = 40 + 16 * len(rows)
    fig = make_subplots(rows=n_layers, cols=2, column_widths=[0.72, 0.28], subplot_titles=titles,
                        horizontal_spacing=0.08, vertical_spacing=min(60 / (row_px * n_layers), 0.3))  # fmt: skip
    for layer in range(n_layers):
        if acts.neurons[layer].size:  # attention-only models have no neurons
            v = peak_n[layer] or 1.0
            fig.add_heatmap(z=acts.neurons[layer], x=[f"n{i}" for i in acts.neuron_ids[layer]], y=rows,
                            colorscale="RdBu", reversescale=True, zmin=-v, zmax=v, showscale=False,
                            row=layer + 1, col=1,
                            hovertemplate=f"layer {layer}, neuron %{{x}}<br>token %{{y}}<br>activation %{{z:.4g}}"
                            "<extra></extra>")  # fmt: skip
        fig.add_heatmap(z=acts.heads[layer], x=[f"a{layer}.{h}" for h in range(acts.heads[layer].shape[1])],
                        y=rows, colorscale="Blues", zmin=0, zmax=peak_h[layer] or 1.0, showscale=False,
                        row=layer + 1, col=2,
                        hovertemplate="head %{x}<br>token %{y}<br>|output| %{z:.4g}<extra></extra>")  # fmt: skip
    fig.update_yaxes(autorange="reversed", tickfont={"size": 10})
    fig.update_xaxes(tickfont={"size": 9})
    fig.update_annotations(font_size=12)
    fig.update_layout(
        title={"text": f"{acts.model}: activations on {acts.text!r}<br><sup>each heatmap has its own colour "
                       "scale, darkest = the largest value in its title; hover a cell for its value</sup>", "x": 0.01},
        height=110 + row_px * n_layers, width=1200, margin={"t": 90, "b": 40, "l": 10, "r": 10},
    )  # fmt: skip
    return fig


def write_activations(acts: LayerActivations, path: str | Path) -> Path:
    """Write the page (plotly's script inlined, so it works offline) to ``path``."""
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        activations_figure(acts).write_html(path, include_plotlyjs=True, full_html=True)
    except OSError as exc:
        raise CircuitFileError(f"cannot write {path}: {exc.strerror or exc}; choose another -o") from exc
    return path
