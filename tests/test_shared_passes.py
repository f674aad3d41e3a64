"""One evaluation of each circuit per prompt set (issue 26, the trust path): the run record,
the held-out check and the trust checks ask a :class:`Patcher` for the same circuits, and
:meth:`Patcher.final_of` runs each one's exact pass once."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from randmodel import random_data, random_tiny

from circuitdag.errors import ConfigError
from circuitdag.graph import Graph
from circuitdag.holdout import at_most, heldout_data
from circuitdag.models import spec_of
from circuitdag.patching import FINALS_KEPT, Patcher
from circuitdag.per_prompt import prompt_metrics, prompt_weights, resample_mean


@pytest.fixture(scope="module")
def patcher():
    model = random_tiny()
    return Patcher(model, Graph(spec_of(model)), random_data(), metric="kl")


def _circuits(p: Patcher, k: int) -> list[np.ndarray]:
    rng = np.random.default_rng(7)
    return [rng.random(p.graph.n_edges) < 0.5 for _ in range(k)]


def test_a_circuit_asked_again_costs_no_pass_and_gives_the_same_values(patcher):
    p = patcher
    fresh = Patcher(p.model, p.graph, p.data, metric=p.metric_fn)
    alive = _circuits(p, 1)[0]
    f0 = p.n_forward
    m = p.circuit_metric(alive)
    assert p.n_forward - f0 == 1 and p.pass_seconds is not None and p.pass_seconds > 0
    per = prompt_metrics(p, alive)  # the per-prompt metrics of the same pass
    again = p.circuit_metric(alive.copy())
    assert p.n_forward - f0 == 1
    assert again == m and m == pytest.approx(fresh.reference_metric(alive), rel=1e-9)
    assert float(resample_mean(per, prompt_weights(p))) == pytest.approx(m, rel=1e-9)
    assert torch.equal(p.final_of(alive), p.final_of(alive.copy()))


def test_only_the_last_circuits_are_kept_but_the_full_and_empty_ones_always(patcher):
    p = patcher
    n = p.graph.n_edges
    p.circuit_metric(np.zeros(n, dtype=bool))
    p.circuit_metric(np.ones(n, dtype=bool))
    circuits = _circuits(p, FINALS_KEPT + 1)
    values = [p.circuit_metric(c) for c in circuits]  # the first is dropped by the last
    f0 = p.n_forward
    assert [p.circuit_metric(c) for c in circuits[1:]] == values[1:] and p.n_forward == f0
    p.circuit_metric(np.zeros(n, dtype=bool))
    p.circuit_metric(np.ones(n, dtype=bool))
    assert p.n_forward == f0  # never dropped, and the full model needs no pass at all
    assert p.circuit_metric(circuits[0]) == pytest.approx(values[0], rel=1e-12) and p.n_forward == f0 + 1
    with pytest.raises(ConfigError, match="one bool per edge"):
        p.final_of(np.ones(n + 1, dtype=bool))


def test_a_task_heldout_set_is_no_larger_than_the_discovery_prompts():
    data = random_data(batch=12)
    assert at_most(data, 12) is data and at_most(data, 20) is data
    few = at_most(data, 5, seed=3)
    picked = np.sort(np.random.default_rng(3).permutation(12)[:5])  # distinct prompts, in their order
    assert few.n_prompts == 5 and few.clean.equal(data.clean[picked]) and few.correct.equal(data.correct[picked])


def test_holdout_zero_holds_out_nothing():
    from circuitdag.tasks import get_task

    task = get_task("pronoun")
    model = task.load_model()
    data = task.data(model)
    same, held = heldout_data(task, model, data, fraction=0)
    assert same is data and held.data is None and "--holdout 0" in held.reason


@pytest.mark.parametrize("ablation", ["resample", "zero", "mean"])
@pytest.mark.parametrize("neurons", [(), (1,)])
def test_the_empty_circuit_from_the_cached_runs_equals_its_pass(ablation, neurons):
    from circuitdag.passes import full_pass

    model = random_tiny(seed=2)
    p = Patcher(model, Graph(spec_of(model, neurons)), random_data(seed=2), ablation=ablation, metric="kl")
    n = p.graph.n_edges
    f0 = p.n_forward
    got = p.final_of(np.zeros(n, dtype=bool))
    assert p.n_forward == f0  # no pass
    want = full_pass(p, p.absent_matrix(np.zeros(n, dtype=bool)), sparse=True, stop=True)
    torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-10)
    assert p.circuit_metric(np.zeros(n, dtype=bool)) == pytest.approx(
        p.reference_metric(np.zeros(n, dtype=bool)), rel=1e-9, abs=1e-12
    )


def test_the_empty_circuit_runs_its_pass_where_the_residual_stream_is_not_the_senders_sum(monkeypatch):
    model = random_tiny(seed=2)
    p = Patcher(model, Graph(spec_of(model)), random_data(seed=2), metric="kl")
    n, f0 = p.graph.n_edges, p.n_forward
    bumped = p.resid_final + torch.randn_like(p.resid_final)  # something no sender wrote, varying by token
    monkeypatch.setattr(p.runs.clean, "resid_final", bumped)
    assert p._empty_final() is None
    p.final_of(np.zeros(n, dtype=bool))
    assert p.n_forward == f0 + 1


@pytest.mark.parametrize("ablation,positions", [("resample", False), ("zero", False), ("resample", True)])
def test_a_subset_of_the_cached_runs_equals_caching_the_subset(ablation, positions):
    from circuitdag.graph import Positions

    model = random_tiny(seed=4)
    data = random_data(seed=4)
    P = data.clean.shape[1]
    graph = Graph(spec_of(model), Positions(P, None, tuple(sorted(set(data.answer_pos[0].tolist())))) if positions else None)
    if positions:
        data.answer_pos[:] = data.answer_pos[0]
    p = Patcher(model, graph, data, ablation=ablation, metric="kl")
    idx = [3, 0, 3, 7, 1]  # repeats, another order
    f0 = p.n_forward
    sub = p.subset(idx)
    assert sub.n_forward == 0 and p.n_forward == f0 and sub.B == 5
    fresh = Patcher(model, graph, data.subset(idx), ablation=ablation, metric="kl")
    rng = np.random.default_rng(0)
    for alive in [rng.random(graph.n_edges) < 0.5 for _ in range(3)] + [np.zeros(graph.n_edges, dtype=bool)]:
        assert sub.circuit_metric(alive) == pytest.approx(fresh.circuit_metric(alive), rel=1e-10, abs=1e-12)
    torch.testing.assert_close(sub.ref.logits, fresh.ref.logits)


def test_a_mean_ablation_subset_takes_the_subsets_own_mean():
    model = random_tiny(seed=4)
    p = Patcher(model, Graph(spec_of(model)), random_data(seed=4), ablation="mean", metric="kl")
    sub = p.subset([0, 1, 2])
    assert sub.n_forward == 1  # cached afresh (one pass: mean ablation needs no corrupted run)
    fresh = Patcher(model, p.graph, p.data.subset([0, 1, 2]), ablation="mean", metric="kl")
    torch.testing.assert_close(sub.S_corr, fresh.S_corr)
