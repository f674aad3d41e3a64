"""Information flow routes (circuitdag/algorithms/information_flow.py) against its
definition written out here from the model's own hooks (run_with_cache), edge by edge:
the L1 proximity of each sender to its destination's input, normalised over the senders,
averaged over the real positions and the prompts; and the method through ``circuitdag
discover`` and ``cd.discover``."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from randmodel import random_data, random_tiny

import circuitdag as cd
from circuitdag.algorithms.information_flow import information_flow_scores
from circuitdag.cli import main
from circuitdag.errors import ConfigError
from circuitdag.graph import Graph, Positions
from circuitdag.models import spec_of
from circuitdag.patching import Patcher


def sender(cache, name: str) -> torch.Tensor:
    if name == "embed":
        return cache["blocks.0.hook_resid_pre"]
    if name.startswith("a"):
        L, H = (int(x) for x in name[1:].split("."))
        return cache[f"blocks.{L}.attn.hook_result"][:, :, H]
    return cache[f"blocks.{int(name[1:])}.hook_mlp_out"]


def receiver_input(cache, dst: str, n_layers: int) -> torch.Tensor:
    if dst == "logits":
        return cache[f"blocks.{n_layers - 1}.hook_resid_post"]
    if dst.startswith("m"):
        return cache[f"blocks.{int(dst[1:])}.hook_mlp_in"]
    return cache[f"blocks.{int(dst[1:].split('.')[0])}.hook_resid_pre"]


@pytest.mark.parametrize("model_kw", [{}, {"normalization": None, "causal": False}, {"d_mlp": 0}])
def test_equals_the_definition_edge_by_edge(model_kw) -> None:
    model = random_tiny(**model_kw)
    data = random_data(vocab=model.cfg.d_vocab)
    data.answer_pos[:6] = 3  # half the prompts end early: positions after 3 do not count there (causal)
    p = Patcher(model, Graph(spec_of(model)), data, metric="kl")
    got = information_flow_scores(p, batch_size=5)

    _, cache = model.run_with_cache(data.clean)
    names = p.graph.edge_names
    into: dict[str, list[str]] = {}
    for name in names:
        src, rest = name.split("->")
        into.setdefault(rest, []).append(src)
    P = data.clean.shape[1]
    real = torch.ones(data.clean.shape, dtype=torch.bool)
    if model.cfg.causal:
        real = torch.arange(P)[None, :] <= data.answer_pos.max(1).values[:, None]
    for i, name in enumerate(names):
        src, rest = name.split("->")
        x = receiver_input(cache, rest.split("<")[0], model.cfg.n_layers)
        prox = {s: (x.abs().sum(-1) - (x - sender(cache, s)).abs().sum(-1)).clamp(min=0) for s in into[rest]}
        total = sum(prox.values())
        share = torch.where(total > 0, prox[src] / total, 0.0)  # batch pos; no sender close: 0
        want = np.mean([float(share[b][real[b]].mean()) for b in range(share.shape[0])])
        assert got[i] == pytest.approx(want, rel=1e-9, abs=1e-12), name
    sums = [sum(got[p.graph.edge_index[f"{s}->{rest}"]] for s in srcs) for rest, srcs in into.items()]
    assert max(sums) <= 1 + 1e-9 and np.median(sums) == pytest.approx(1.0, rel=1e-9)  # shares of one input


def test_refusals_and_discover(tmp_path, capsys) -> None:
    model = random_tiny()
    data = random_data(vocab=model.cfg.d_vocab)
    with pytest.raises(ConfigError, match="plain graphs only"):
        information_flow_scores(Patcher(model, Graph(spec_of(model), Positions(6, None, (5,))), data))
    out = tmp_path / "ifr"
    argv = ["discover", "--task", "tracr-reverse", "--algorithm", "information-flow-routes", "--edges", "5",
            "--out", str(out), "-q", "--no-svg", "--threads", "1"]  # fmt: skip
    assert main(argv) == 0
    doc = json.loads((out / "circuit.json").read_text())
    assert doc["algorithm"] == "information-flow-routes" and doc["counterfactual"] is False
    scores = np.array([e["score"] for e in doc["edges"]])
    assert ((scores >= 0) & (scores <= 1)).all()
    task = cd.tasks.get("tracr-reverse")
    again = cd.discover(task.load_model(dtype=torch.float32), task, "information-flow-routes", edges=5)
    np.testing.assert_allclose(again.scores, scores, rtol=1e-6, atol=1e-9)
    capsys.readouterr()
