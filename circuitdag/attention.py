"""Attention patterns of a circuit's heads on a few of its task's prompts, stored in
circuit.json (key ``"attention"``) so that the explorer (:mod:`circuitdag.explore`) can
show what a head attends to when it is clicked.

The record (``"format": "circuitdag.attention/1"``) is optional: circuit.json files
written before it existed load as before, and the explorer says the patterns are missing.

``prompts[i]`` are the tokens of clean prompt ``i`` (decoded one by one with the model's
tokenizer, or the token ids as text when the model has none), cut after the prompt's last
answer position; ``heads["a{L}.{H}"][i][q][k]`` is the attention weight of query position
``q`` on key position ``k`` of head ``H`` in layer ``L`` on prompt ``i`` (``hook_pattern``
of the clean run, rounded to 3 decimals). Every head is stored when the model is small
(at most :data:`MAX_VALUES` numbers in all); otherwise only the heads the circuit uses.
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np
import torch

from circuitdag.graph import Graph, NodeKind

log = logging.getLogger("circuitdag")

FORMAT = "circuitdag.attention/1"
#: Clean prompts whose patterns are stored.
N_PROMPTS = 3
#: Most numbers stored for all heads together; above it only the circuit's heads are kept.
MAX_VALUES = 100_000


def _token_text(model: Any, ids: list[int]) -> list[str]:
    tok = getattr(model, "tokenizer", None)
    if tok is None:
        return [str(i) for i in ids]
    return [tok.decode([i]) for i in ids]


def attention_record(model: Any, graph: Graph, clean: torch.Tensor, answer_pos: torch.Tensor,
                     in_circuit: np.ndarray, n_prompts: int = N_PROMPTS) -> dict[str, Any] | None:  # fmt: skip
    """The ``"attention"`` record of a circuit found on ``graph`` with the clean prompts
    ``clean`` (``batch pos`` token ids) and answer positions ``answer_pos``
    (``batch n_ans``), for the first ``n_prompts`` prompts: see the module docstring.

    Runs one forward pass of ``n_prompts`` prompts with ``blocks.L.attn.hook_pattern``
    (``batch head query key``) cached. ``in_circuit`` (one bool per edge of ``graph``)
    picks the heads kept when storing all of them would exceed :data:`MAX_VALUES`. None
    (with a logged warning) when the model has no ``hook_pattern``."""
    spec = graph.spec
    n = min(n_prompts, int(clean.shape[0]))
    tokens = clean[:n]
    ends = [int(answer_pos[i].max()) + 1 for i in range(n)]
    names = [f"blocks.{layer}.attn.hook_pattern" for layer in range(spec.n_layers)]
    with torch.no_grad():
        _, cache = model.run_with_cache(tokens, names_filter=lambda name: name in names)
    missing = [name for name in names if name not in cache]
    if missing:  # a model without TransformerLens's pattern hook: the circuit is still saved
        log.warning("no attention patterns stored: the model has no hook %s", missing[0])
        return None
    every = [(layer, h) for layer in range(spec.n_layers) for h in range(spec.n_heads)]
    size = len(every) * sum(e * e for e in ends)
    if size <= MAX_VALUES:
        heads, which = every, "all"
    else:
        t = graph.edges
        idx = np.flatnonzero(in_circuit)
        used = {graph.nodes[i] for i in np.concatenate([t.src[idx], t.dst[idx]]).tolist()}
        heads = sorted({(nd.layer, nd.head) for nd in used if nd.kind == NodeKind.HEAD})
        which = "circuit"
    patterns: dict[str, list] = {}
    for layer, h in heads:
        pat = cache[names[layer]][:, h].detach().double().cpu().numpy()  # prompt query key
        patterns[f"a{layer}.{h}"] = [np.round(pat[i, : ends[i], : ends[i]], 3).tolist() for i in range(n)]
    return {
        "format": FORMAT,
        "prompts": [_token_text(model, tokens[i, : ends[i]].tolist()) for i in range(n)],
        "heads_stored": which,
        "heads": patterns,
    }
