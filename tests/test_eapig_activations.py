"""EAP-IG-activations (circuitdag/algorithms/eapig_activations.py) against its definition:
with one step every pass is the clean run with one sender group frozen, so edges into
``logits`` get exactly EAP's score; in a one-layer attention-only model the edges into the
heads get half of EAP's (their gradient is 0 in the pass that freezes the heads); a pass
with a group at alpha is the masked pass with that group's edges at z = alpha; and the
method runs through ``circuitdag discover`` and ``cd.discover``."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from randmodel import random_data, random_tiny

import circuitdag as cd
from circuitdag.algorithms.eapig_activations import attribute_activations, sender_groups
from circuitdag.attribution import attribute
from circuitdag.cli import main
from circuitdag.errors import ConfigError
from circuitdag.graph import Graph, Positions
from circuitdag.masked import masked_metric
from circuitdag.models import spec_of
from circuitdag.patching import Patcher


def patcher(metric="logit_diff", positions=False, **model_kw) -> Patcher:
    model = random_tiny(**model_kw)
    data = random_data(vocab=model.cfg.d_vocab)
    graph = Graph(spec_of(model), Positions(6, None, (5,)) if positions else None)
    return Patcher(model, graph, data, metric=metric)


@pytest.mark.parametrize("model_kw", [{}, {"normalization": None, "causal": False}], ids=["ln", "noncausal"])
def test_one_step_equals_eap_into_logits(model_kw) -> None:
    p = patcher(**model_kw)
    act = attribute_activations(p, steps=1).scores
    eap = attribute(p, "eap").scores
    into_logits = np.array([name.split("->")[1].startswith("logits") for name in p.graph.edge_names])
    np.testing.assert_allclose(act[into_logits], eap[into_logits], rtol=1e-9, atol=1e-12)
    assert np.abs(eap[into_logits]).max() > 1e-3
    # Elsewhere a frozen group downstream of the edge cuts gradient paths: not EAP.
    assert not np.allclose(act[~into_logits], eap[~into_logits], rtol=1e-3)
    assert [g for g, _ in sender_groups(p)] == ["embed", "a0", "m0", "a1", "m1"]


def test_one_layer_attention_only_halves_eap_into_the_heads() -> None:
    """Groups embed and a0: freezing embed changes nothing (no gradient path runs through
    it), freezing a0 zeroes every gradient at the heads' inputs."""
    p = patcher(n_layers=1, d_mlp=0)
    act = attribute_activations(p, steps=1).scores
    eap = attribute(p, "eap").scores
    into_heads = np.array([name.split("->")[1].startswith("a0") for name in p.graph.edge_names])
    np.testing.assert_allclose(act[into_heads], eap[into_heads] / 2, rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(act[~into_heads], eap[~into_heads], rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("steps", [1, 3])
def test_embed_to_logits_is_the_masked_pass_with_the_group_at_alpha(steps) -> None:
    """A pass with group g at alpha is the masked pass (circuitdag.masked) with every edge
    out of g at z = alpha: each receiver reads alpha S_clean[g] + (1 - alpha) S_ablated[g].
    For embed -> logits the score term of that pass is minus d m / d z there, since embed
    is clean in every pass and logits is downstream of every group."""
    p = patcher()
    e = p.graph.edge_index["embed->logits<resid>"]
    slots = p.layout.edge_slot
    want = []
    for _, g in sender_groups(p):
        for k in range(1, steps + 1):
            z = torch.ones(p.graph.n_edges, dtype=torch.float64)
            z[torch.as_tensor((slots >= g.start) & (slots < g.stop))] = k / steps
            z.requires_grad_(True)
            (grad,) = torch.autograd.grad(masked_metric(p, z), z)
            want.append(-float(grad[e]))
    got = attribute_activations(p, steps=steps).scores[e]
    assert got == pytest.approx(np.mean(want), rel=1e-9) and abs(got) > 1e-3


def test_refusals_and_discover(tmp_path, capsys) -> None:
    with pytest.raises(ConfigError, match="plain graphs only"):
        attribute_activations(patcher(positions=True))
    out = tmp_path / "act"
    argv = ["discover", "--task", "tracr-reverse", "--algorithm", "eap-ig-activations", "--edges", "5",
            "--ig-steps", "2", "--out", str(out), "-q", "--no-svg", "--threads", "1"]  # fmt: skip
    assert main(argv) == 0
    doc = json.loads((out / "circuit.json").read_text())
    assert doc["algorithm"] == "eap-ig-activations" and doc["ig_steps"] == 2 and doc["edges_requested"] == 5
    task = cd.tasks.get("tracr-reverse")
    again = cd.discover(task.load_model(dtype=torch.float32), task, "eap-ig-activations", edges=5, ig_steps=2)
    np.testing.assert_allclose(again.scores, [e["score"] for e in doc["edges"]], rtol=1e-4, atol=1e-7)
    capsys.readouterr()
