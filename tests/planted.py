"""A planted-circuit toy: a random attention-only model whose other heads write nothing.

Heads ``a0.1``, ``a0.2`` and ``a1.2`` have ``W_O = 0``, so every edge into or out of them
changes nothing; every edge among the live nodes (``embed``, ``a0.0``, ``a1.0``,
``a1.1``, ``logits``) carries information. The planted circuit is those edges: its
faithfulness is exactly 1 on any prompts, and each of its edges is needed."""

from __future__ import annotations

import numpy as np
import torch
from randmodel import random_data, random_tiny

from circuitdag.graph import Graph
from circuitdag.models.spec import spec_of
from circuitdag.patching import Patcher
from circuitdag.tasks.base import TaskData

DEAD = ("a0.1", "a0.2", "a1.2")


def planted_model(seed: int = 0):
    model = random_tiny(seed, d_mlp=0)
    with torch.no_grad():
        for name in DEAD:
            L, h = (int(x) for x in name[1:].split("."))
            model.blocks[L].attn.W_O[h] = 0.0
    return model


def planted_data(model, data_seed: int = 0, batch: int = 24) -> TaskData:
    """Random prompts whose answers are what the model does: the correct token its top
    prediction, the wrong one its least likely (so the full model wins on every prompt)."""
    data = random_data(data_seed, batch=batch, vocab=model.cfg.d_vocab)
    with torch.no_grad():
        logits = model(data.clean)[:, -1]
    return TaskData(data.clean, data.corrupted, data.answer_pos, correct=logits.argmax(-1)[:, None],
                    wrong=logits.argmin(-1)[:, None])  # fmt: skip


def planted_patcher(seed: int = 0, data_seed: int = 0, batch: int = 24, **kw) -> Patcher:
    model = planted_model(seed)
    return Patcher(model, Graph(spec_of(model)), planted_data(model, data_seed, batch), **kw)


def planted_circuit(graph: Graph) -> np.ndarray:
    """The edges between live nodes (bool per edge)."""
    names = [n.name for n in graph.nodes]
    live = np.array([n.split("@")[0] not in DEAD for n in names])
    return live[graph.edges.src] & live[graph.edges.dst]
