"""Padding appended after the answer changes nothing: under every ablation, in both the
position-free and the position-aware mode (mean ablation used to average the padding in)."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
import torch

from circuitdag.discovery import run_acdc
from circuitdag.models import load_model
from circuitdag.patching import real_positions
from circuitdag.prepare import prepare
from circuitdag.tasks.pronoun import PronounTask

torch.set_num_threads(1)
N_PAD = 8


class PaddedPronoun(PronounTask):
    """The pronoun prompts with ``N_PAD`` pad tokens appended after the answer position."""

    name = "pronoun-padded"

    def data(self, model, seed=0):
        d = super().data(model, seed)
        pad = torch.full((d.n_prompts, N_PAD), model.tokenizer.pad_token_id)
        names = (*d.position_names, *(f"pad{i}" for i in range(N_PAD)))
        return replace(d, clean=torch.cat([d.clean, pad], 1), corrupted=torch.cat([d.corrupted, pad], 1),
                       position_names=names)  # fmt: skip


@pytest.fixture(scope="module")
def zoo():
    return load_model("pronoun")


@pytest.mark.parametrize("positions", [False, True])
@pytest.mark.parametrize("ablation", ["resample", "zero", "mean"])
def test_padding_after_the_answer_changes_no_metric(zoo, ablation, positions) -> None:
    plain, _ = prepare(zoo, PronounTask(), ablation=ablation, positions=positions)
    padded, _ = prepare(zoo, PaddedPronoun(), ablation=ablation, positions=positions)
    assert padded.graph.edge_names == plain.graph.edge_names
    rng = np.random.default_rng(0)
    n = plain.graph.n_edges
    circuits = [np.ones(n, bool), np.zeros(n, bool), rng.random(n) < 0.5]
    got = [padded.circuit_metric(c) for c in circuits]
    want = [plain.circuit_metric(c) for c in circuits]
    assert got == pytest.approx(want, abs=1e-4)


def test_padding_keeps_the_mean_ablation_circuit(zoo) -> None:
    """The case that failed: 11 edges (metric -14.147) with padding, 12 (-14.106) without."""
    circuits = []
    for task in (PronounTask(), PaddedPronoun()):
        patcher, meta = prepare(zoo, task, ablation="mean")
        circuits.append(run_acdc(patcher, task.default_threshold, meta=meta))
    plain, padded = circuits
    assert plain.n_edges == 12 and plain.meta["metric_circuit"] == pytest.approx(-14.106, abs=1e-3)
    assert padded.edge_names == plain.edge_names
    assert padded.meta["metric_circuit"] == pytest.approx(plain.meta["metric_circuit"], abs=1e-4)


def test_real_positions_end_at_each_prompts_last_answer(zoo) -> None:
    d = PaddedPronoun().data(zoo)
    mask = real_positions(d)
    assert mask.shape == d.clean.shape
    assert mask.sum(1).tolist() == [d.clean.shape[1] - N_PAD] * d.n_prompts
    assert bool(real_positions(d, causal=False).all())
