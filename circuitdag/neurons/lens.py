"""Logit lens (nostalgebraist 2020) of the task's logit difference.

The accumulated residual stream at the answer position after the embedding and after
each attention and MLP sublayer, put through the model's final norm (with its own
normalisation statistics, as the model would if that were the last layer) and projected
on ``W_U[:, correct] - W_U[:, wrong]`` (plus ``b_U[correct] - b_U[wrong]``), averaged over
the prompts. The last point is the model's own logit difference. The seed's first step:
the sublayer where the clean line jumps is where the answer is written.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from circuitdag.neurons._runs import TaskRuns


@dataclass(frozen=True)
class LogitLens:
    """``labels[i]``: ``embed``, then ``attn L`` and ``mlp L`` per layer; ``clean[i]`` and
    ``corrupted[i]``: the mean logit difference (logits) read at that point."""

    labels: tuple[str, ...]
    clean: tuple[float, ...]
    corrupted: tuple[float, ...]

    def to_dict(self) -> dict[str, list]:
        return {"labels": list(self.labels), "clean": list(self.clean), "corrupted": list(self.corrupted)}


def logit_lens(runs: TaskRuns) -> LogitLens:
    """The logit lens of the clean and corrupted runs (see the module docstring)."""
    n = runs.spec.n_layers
    labels = ["embed"]
    for L in range(n):
        labels += [f"attn {L}", f"mlp {L}"]
    out = {}
    for which, run in (("clean", runs.clean), ("corrupted", runs.corrupted)):
        points = [run["resid_pre"][0]]
        for L in range(n):
            points.append(run["resid_mid"][L])
            points.append(run["resid_pre"][L + 1] if L + 1 < n else run["final"])
        with torch.no_grad():
            ld = runs.logit_diff(torch.stack(points))  # point batch n_ans
        out[which] = tuple(float(v) for v in ld.mean((1, 2)))
    return LogitLens(tuple(labels), out["clean"], out["corrupted"])
