"""The fused masked pass refuses a model with post-sublayer norms (Gemma 2): it would sum a
layer's heads linearly where the model normalises their sum (issue 25); masked_metric runs
the reference pass for such a model instead."""

from __future__ import annotations

import pytest
import torch
from test_architectures import ARCHITECTURES, PROMPTS

from circuitdag.masked import absent_weights, masked_metric
from circuitdag.masked_fused import fused_pass
from circuitdag.models import load_model
from circuitdag.prepare import prepare
from circuitdag.tasks.base import Task

pytestmark = [pytest.mark.filterwarnings("ignore:.*barely does this task"),
              pytest.mark.filterwarnings("ignore:.*does not prefer the correct answer")]  # fmt: skip


def test_fused_pass_refuses_post_sublayer_norms(tmp_path) -> None:
    arch = next(a for a in ARCHITECTURES if a.name == "gemma2")
    model = load_model(str(arch.build(tmp_path / "gemma2")), dtype=torch.float64)
    p, _ = prepare(model, Task.from_prompts(PROMPTS), metric="logit_diff")
    ones = torch.ones(p.graph.n_edges, dtype=torch.float64)
    with pytest.raises(ValueError, match="post-sublayer norms") as err:
        fused_pass(p, absent_weights(p, ones))
    assert "\n" not in str(err.value)
    full = p.circuit_metric(ones.numpy().astype(bool))
    assert float(masked_metric(p, ones)) == pytest.approx(full, rel=1e-9, abs=1e-12)  # the reference runs
