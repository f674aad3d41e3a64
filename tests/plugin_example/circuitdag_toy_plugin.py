"""toy-copy: an example circuitdag task plugin that brings its own model.

Prompts are random sequences of 6 tokens over a vocabulary of 8; the answer at the last
position is the first token. The model is a one-layer attention-only
:class:`~circuitdag.models.hooked.TinyTransformer` written by hand: its residual stream
holds a one-hot token block, a one-hot position block and an output block; head ``a0.0``
attends from every position to position 0 and copies the token there into the output
block, which the unembedding reads. Head ``a0.1`` does nothing.
"""

from __future__ import annotations

import math

import torch

from circuitdag.models.hooked import TinyConfig, TinyTransformer
from circuitdag.tasks import Task, TaskData

VOCAB, N_CTX = 8, 6


def build_model(dtype: torch.dtype = torch.float32) -> TinyTransformer:
    V, C = VOCAB, N_CTX
    TOK, POS, OUT = 0, V, V + C
    d_model, d_head = 2 * V + C, V
    cfg = TinyConfig(n_layers=1, d_model=d_model, n_heads=2, d_head=d_head, d_vocab=V, n_ctx=C)
    model = TinyTransformer(cfg)
    a = math.sqrt(20 * math.sqrt(d_head))  # attention score 20 on position 0
    attn = model.blocks[0].attn
    with torch.no_grad():
        model.W_E[:, TOK : TOK + V] = torch.eye(V)
        model.W_pos[:, POS : POS + C] = torch.eye(C)
        attn.W_Q[0, POS : POS + C, 0] = a  # every position asks for ...
        attn.W_K[0, POS, 0] = a  # ... position 0
        attn.W_V[0, TOK : TOK + V, :V] = torch.eye(V)
        attn.W_O[0, :V, OUT : OUT + V] = torch.eye(V)
        model.W_U[OUT : OUT + V] = 10 * torch.eye(V)
    return model.to(dtype).eval()


class ToyCopyTask(Task):
    name = "toy-copy"
    description = "example plugin: predict the first token at the last position (own hand-written model)"
    default_model = "toy-copy (built by the plugin)"
    default_metric = "kl"
    default_threshold = 0.01
    has_ground_truth = True

    def load_model(self, device: str = "cpu", dtype: torch.dtype = torch.float32) -> TinyTransformer:
        return build_model(dtype).to(device)

    def data(self, model: object, seed: int = 0) -> TaskData:
        g = torch.Generator().manual_seed(seed)
        clean = torch.randint(0, VOCAB, (50, N_CTX), generator=g)
        corrupted = torch.randint(0, VOCAB, (50, N_CTX), generator=g)
        return TaskData(
            clean=clean,
            corrupted=corrupted,
            answer_pos=torch.full((50, 1), N_CTX - 1),
            correct=clean[:, :1].clone(),
            position_names=("first", "x1", "x2", "x3", "x4", "last"),
        )

    def ground_truth(self, ablation: str = "resample") -> set[str]:
        return {"embed->a0.0<v>", "a0.0->logits<resid>"}
