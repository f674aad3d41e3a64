"""Small random models and datasets for engine tests (no network, no files)."""

from __future__ import annotations

import torch

from circuitdag.models.hooked import TinyConfig, TinyTransformer
from circuitdag.tasks.base import Task, TaskData


def random_tiny(seed: int = 0, dtype=torch.float64, **overrides) -> TinyTransformer:
    kw = {"n_layers": 2, "d_model": 16, "n_heads": 3, "d_head": 4, "d_vocab": 12, "n_ctx": 8, "d_mlp": 32,
          "normalization": "LN", "act_fn": "gelu"}
    kw.update(overrides)
    torch.manual_seed(seed)
    model = TinyTransformer(TinyConfig(**kw))
    for name, p in model.named_parameters():
        torch.nn.init.normal_(p, std=0.6 if "W_" in name else 0.1)
        if name.endswith(".w"):
            p.data += 1.0
    return model.to(dtype).eval()


def random_data(seed: int = 0, batch: int = 12, pos: int = 6, vocab: int = 12) -> TaskData:
    g = torch.Generator().manual_seed(seed)
    clean = torch.randint(0, vocab, (batch, pos), generator=g)
    corrupted = torch.randint(0, vocab, (batch, pos), generator=g)
    return TaskData(
        clean, corrupted,
        answer_pos=torch.full((batch, 1), pos - 1),
        correct=torch.randint(0, vocab, (batch, 1), generator=g),
        wrong=torch.randint(0, vocab, (batch, 1), generator=g),
    )  # fmt: skip


def shared_prefix(data: TaskData, first: int) -> TaskData:
    """``data`` with every corrupted prompt equal to its clean prompt before ``first``."""
    corrupted = data.corrupted.clone()
    corrupted[:, :first] = data.clean[:, :first]
    return TaskData(data.clean, corrupted, answer_pos=data.answer_pos, correct=data.correct, wrong=data.wrong)


class RandomTask(Task):
    name = "random-test"
    description = "random tokens on a random model (tests only)"
    default_metric = "kl"

    def __init__(self, **model_kw) -> None:
        self.model_kw = model_kw

    def load_model(self, device="cpu", dtype=torch.float64):
        return random_tiny(dtype=dtype, **self.model_kw).to(device)

    def data(self, model, seed=0):
        return random_data(seed, vocab=model.cfg.d_vocab)


def nested_candidates(p, dest: int, alive, edges):
    """The fast path's inputs for removing ``edges`` (into ``dest``) one after another on
    top of ``alive``, and the reference metric of each nested circuit:
    ``(absent, start_layer, rows, cand_absent, views, reference_metrics)``."""
    import numpy as np

    from circuitdag.graph import NodeKind

    graph, lay = p.graph, p.layout
    inc = graph.incoming[dest]
    cells = np.unique(np.stack([lay.edge_row[inc], lay.edge_view[inc]], 1), axis=0)
    rows, views = torch.as_tensor(cells[:, 0]), torch.as_tensor(cells[:, 1])
    cands, refs = [], []
    cur = alive.copy()
    for e in edges:
        cur[e] = False
        cands.append(p.absent_matrix(cur)[rows, views])
        refs.append(p.reference_metric(cur))
    node = graph.nodes[dest]
    layer = graph.spec.n_layers if node.kind == NodeKind.LOGITS else node.layer
    return p.absent_matrix(alive), layer, rows, torch.stack(cands), views, refs
