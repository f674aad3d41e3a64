"""The induction tasks: data layout, head scores, the derived ground truth, and ACDC
recovering the previous-token -> induction head K-composition edge."""

from __future__ import annotations

import pytest
import torch

from circuitdag.discovery import run_acdc
from circuitdag.evaluate import confusion
from circuitdag.prepare import prepare
from circuitdag.tasks import get_task
from circuitdag.tasks.induction import (
    INDUCTION_MIN,
    PREV_TOKEN_MIN,
    CompiledInductionTask,
    HeadScores,
    InductionTask,
    compiled_induction_model,
    head_scores,
    induction_circuit,
)

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def compiled():
    return compiled_induction_model()


def test_data_layout(compiled) -> None:
    task = CompiledInductionTask()
    d = task.data(compiled)
    k = task.seq_len
    assert d.clean.shape == d.corrupted.shape == (100, 1 + 2 * k)
    assert (d.clean[:, 0] == 0).all() and (d.corrupted[:, 0] == 0).all()
    for x in (d.clean, d.corrupted):  # BOS S S, S of distinct symbols
        assert torch.equal(x[:, 1 : k + 1], x[:, k + 1 :])
        assert all(len(set(row.tolist())) == k for row in x[:, 1 : k + 1])
    assert (d.clean != d.corrupted)[:, 1:].any(1).all()
    assert d.answer_pos[0].tolist() == list(range(k + 1, 2 * k))
    assert torch.equal(d.correct, d.clean[:, k + 2 :])
    assert d.position_names == ("bos", *[f"s{i}" for i in range(k)], *[f"r{i}" for i in range(k)])
    assert torch.equal(task.data(compiled, seed=0).clean, d.clean)
    assert not torch.equal(task.data(compiled, seed=1).clean, d.clean)


def test_compiled_model_does_induction(compiled) -> None:
    d = CompiledInductionTask().data(compiled)
    with torch.no_grad():
        logits = compiled(d.clean)
    pred = logits.gather(1, d.answer_pos.unsqueeze(-1).expand(-1, -1, logits.shape[-1])).argmax(-1)
    assert (pred == d.correct).float().mean() > 0.95  # 98.9% with the distractors on


def test_ground_truth_is_derived_from_attention_scores(compiled) -> None:
    task = CompiledInductionTask()
    scores = head_scores(compiled, task.data(compiled), task.seq_len)
    assert scores.heads("prev_token", 0.5) == [(0, 0)]
    assert scores.heads("induction", 0.5) == [(1, 0)]
    truth = task.ground_truth("resample")
    assert truth == {
        "a0.0->a1.0<k>", "embed->a0.0<v>", "embed->a1.0<q>", "embed->a1.0<v>", "a1.0->logits<resid>",
    }  # fmt: skip
    assert task.ground_truth("zero") == truth | {"embed->a0.0<q>", "embed->a0.0<k>"}
    # The rule pairs every previous-token head with every induction head of a later layer.
    two = HeadScores(torch.tensor([[0.9, 0.8], [0.9, 0.0]]), torch.tensor([[0.0, 0.0], [0.1, 0.7]]))
    k_edges = {e for e in induction_circuit(two) if e.endswith("<k>")}
    assert k_edges == {"a0.0->a1.1<k>", "a0.1->a1.1<k>"}


def test_acdc_finds_the_k_composition_edge(compiled) -> None:
    """At the task's default threshold the circuit has every ground-truth previous-token ->
    induction head K edge (and here, exactly the ground truth)."""
    task = get_task("induction-compiled")
    truth = task.ground_truth()
    k_edges = {e for e in truth if e.endswith("<k>")}
    assert k_edges == {"a0.0->a1.0<k>"}
    patcher, meta = prepare(compiled, task)
    circuit = run_acdc(patcher, task.default_threshold, meta=meta)
    assert k_edges <= circuit.edge_names
    c = confusion(circuit, truth)
    assert (c.fp, c.fn) == (0, 0) and circuit.faithfulness() > 0.9


@pytest.fixture(scope="module")
def zoo():
    return InductionTask().load_model()


def test_zoo_model_has_textbook_induction_heads(zoo) -> None:
    """The trained zoo model solves BOS S S with a previous-token head in layer 0 and
    induction heads in layer 1, found by their attention scores; the task's ground truth
    is derived from those scores and holds every P -> I K-composition edge."""
    task = InductionTask()
    assert task.has_ground_truth
    assert zoo.cfg.attn_only  # MLPs are exactly zero; the graph has none
    d = task.data(zoo)
    assert len(task.symbols(zoo)[0]) == 200  # t0 .. t199
    with torch.no_grad():
        logits = zoo(d.clean)
    pred = logits.gather(1, d.answer_pos.unsqueeze(-1).expand(-1, -1, logits.shape[-1])).argmax(-1)
    assert (pred == d.correct).float().mean() > 0.95
    scores = head_scores(zoo, d, task.seq_len)
    prev = scores.heads("prev_token", PREV_TOKEN_MIN)
    ind = scores.heads("induction", INDUCTION_MIN)
    assert prev and {L for L, _ in prev} == {0}
    assert ind and {L for L, _ in ind} == {1}
    # Clear-cut: every other head is far below the cut-offs (0.09 at most when measured).
    for table, found in ((scores.prev_token, prev), (scores.induction, ind)):
        rest = torch.ones_like(table, dtype=torch.bool)
        for L, h in found:
            assert table[L, h] > 0.9
            rest[L, h] = False
        assert table[rest].max() < 0.2
    truth = task.ground_truth()
    assert truth == induction_circuit(scores)
    assert task.head_scores().heads("prev_token", PREV_TOKEN_MIN) == prev
    k_edges = {e for e in truth if e.endswith("<k>")}
    assert k_edges == {f"a0.{p}->a1.{i}<k>" for _, p in prev for _, i in ind}
    assert task.ground_truth("zero") == truth | {f"embed->a0.{p}<{x}>" for _, p in prev for x in "qk"}


def test_acdc_finds_the_k_composition_edge_in_the_trained_model(zoo) -> None:
    """On the trained model, at the task's default threshold, ACDC keeps every
    ground-truth previous-token -> induction head K edge (and here finds exactly the
    ground truth: measured for data seeds 0-3 at thresholds 0.003-0.1)."""
    task = get_task("induction")
    truth = task.ground_truth()
    k_edges = {e for e in truth if e.endswith("<k>")}
    assert k_edges
    patcher, meta = prepare(zoo, task)
    circuit = run_acdc(patcher, task.default_threshold, meta=meta)
    assert k_edges <= circuit.edge_names
    c = confusion(circuit, truth)
    assert (c.fp, c.fn) == (0, 0) and circuit.faithfulness() > 0.9
