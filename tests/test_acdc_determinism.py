"""Fast ACDC's result does not depend on how its candidates were batched.

The batch size K follows timings (:class:`~circuitdag.acdc_search.BatchSizer`), so two runs
of the same command batch differently. On the component path a candidate's value is the
same float in any batch (:func:`circuitdag.recompute.removal_chain`), so the scores, the
metric and the circuit are bit for bit the same; and a resumed run redoes the accepted
removals (:func:`circuitdag.acdc_search._replay`), so it continues from the same floats.
"""

import numpy as np
import pytest
import torch
from randmodel import random_data, random_tiny

from circuitdag import acdc_search
from circuitdag.acdc_search import acdc_fast
from circuitdag.graph import Graph, Positions
from circuitdag.models import spec_of
from circuitdag.patching import Patcher

CASES = [("plain", torch.float32), ("plain", torch.float64), ("positions", torch.float32), ("neurons", torch.float32),
         ("positions", torch.bfloat16)]  # bfloat16 position-aware graphs crashed (numpy has no bfloat16)


def patcher(kind: str, dtype: torch.dtype) -> Patcher:
    small = kind == "positions"  # a node per position: a smaller model keeps the graph small
    model = random_tiny(dtype=dtype, n_layers=2 if small else 3, n_heads=2 if small else 3, d_model=16,
                        d_mlp=6 if kind == "neurons" else 32)  # fmt: skip
    P = 4 if small else 5
    positions = Positions(P, sink=(P - 1,)) if kind == "positions" else None
    graph = Graph(spec_of(model, [1]) if kind == "neurons" else spec_of(model), positions)
    return Patcher(model, graph, random_data(batch=6, pos=P, vocab=model.cfg.d_vocab), ablation="resample", metric="kl")


def random_batches(monkeypatch, seed: int) -> None:
    """Replace the timing-driven batch size by a random one in 1..9 (a run on a busy machine)."""
    rng = np.random.default_rng(seed)

    def update(self, k, accepted, seconds, layers):
        self.k = int(rng.integers(1, 10))
        return self.k

    monkeypatch.setattr(acdc_search.BatchSizer, "update", update)


@pytest.mark.parametrize("kind,dtype", CASES, ids=[f"{k}-{str(d)[6:]}" for k, d in CASES])
def test_scores_are_the_same_floats_for_any_batching(monkeypatch, kind, dtype):
    threshold = 0.004
    runs = [acdc_fast(patcher(kind, dtype), threshold, k_init=1, k_max=1)]
    with monkeypatch.context() as m:
        random_batches(m, 0)
        runs.append(acdc_fast(patcher(kind, dtype), threshold, k_init=4))
    runs.append(acdc_fast(patcher(kind, dtype), threshold, k_init=64))
    one = runs[0]
    assert one.stats["fast_path"] == "components" and 0 < one.alive.sum() < len(one.alive)
    assert len({r.stats["batches"] for r in runs}) >= 2  # the runs did batch differently
    for r in runs[1:]:
        np.testing.assert_array_equal(r.alive, one.alive)
        np.testing.assert_array_equal(r.scores, one.scores)
        assert r.m_cur == one.m_cur


@pytest.mark.parametrize("kind,dtype", [CASES[0], *CASES[2:4]], ids=["plain-float32", "positions-float32", "neurons-float32"])
def test_a_resumed_run_is_the_same_floats(tmp_path, monkeypatch, kind, dtype):
    """Stopped after some destinations with one batching, resumed with another: the
    uninterrupted run's scores and metric exactly (float32, where rounding shows first)."""
    threshold = 0.004
    whole = acdc_fast(patcher(kind, dtype), threshold, k_init=1, k_max=1)
    n_dest = len(patcher(kind, dtype).graph.visit_order())
    for stop in (n_dest // 2,):
        ck = tmp_path / f"{stop}.json"
        with monkeypatch.context() as m:
            random_batches(m, stop)
            acdc_fast(patcher(kind, dtype), threshold, k_init=4, checkpoint=ck, checkpoint_every=0.0, max_destinations=stop)
        resumed = acdc_fast(patcher(kind, dtype), threshold, k_init=8, checkpoint=ck, resume=True)
        assert resumed.stats["resume"] == {"edges_redone": resumed.stats["resume"]["edges_redone"], "same_metric": True}
        assert resumed.stats["resume"]["edges_redone"] > 0
        np.testing.assert_array_equal(resumed.alive, whole.alive)
        np.testing.assert_array_equal(resumed.scores, whole.scores)
        assert resumed.m_cur == whole.m_cur
