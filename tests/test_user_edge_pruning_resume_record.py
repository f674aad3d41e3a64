"""A fresh user's findings (verify, stop 4): Edge Pruning resumed from the snapshot after
its last step records the same training record as the run never interrupted.

Repro: `discover --task pronoun --algorithm edge-pruning --bootstrap 6 --storage sqlite:///bst.db`,
Ctrl-C during the resamples (the search was done: checkpoint at step 300 of 300), then the
same command with `--resume`: circuit.json's training.final_target was 0.0 (0.909091 in the
uninterrupted run), and since the bootstrap study's name digests the run record, the resumed
command opened a new study and reran every resample instead of continuing."""

from __future__ import annotations

import json

import numpy as np
import torch

from circuitdag.algorithms import edge_pruning as ep


def test_resuming_from_the_last_snapshot_keeps_the_training_record() -> None:
    w = torch.as_tensor(np.random.default_rng(0).uniform(0, 1, 30))
    snaps: list[dict] = []
    kw = {"steps": 20, "seed": 1}
    full, record = ep.train_gates(lambda z, i: (w * (1 - z)).sum(), 30, 0.8, save=snaps.append, every=0.0, **kw)
    assert record["final_target"] > 0
    for k in (10, 20):  # mid-run, and after the last step (nothing left to run)
        state = json.loads(json.dumps(snaps[k - 1]))
        again, rec = ep.train_gates(lambda z, i: (w * (1 - z)).sum(), 30, 0.8, state=state, **kw)
        assert torch.equal(full, again)
        assert rec == record
