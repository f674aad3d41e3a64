"""A fresh user's findings (verify, stop 4): a permutation or random-circuit test whose
smallest possible p-value is at or above alpha is skipped with the reason, not reported as
a verdict. Repro: `discover --task pronoun --algorithm eap-ig --tests independence sufficiency
--test-option permutations=1 --test-option circuits=1` printed "independence p=0.5" (passed,
though the same circuit fails at 1000 permutations, p=0.000999) and "sufficiency p=0.5
(fails)"; on SmolLM2 `circuits=10` gave "sufficiency p=0.0909 ... (fails)", a test that
could not pass."""

from __future__ import annotations

import numpy as np
import pytest

from circuitdag.errors import ConfigError
from circuitdag.hypothesis import independence, run_tests, sufficiency
from circuitdag.prepare import prepare
from circuitdag.tasks import get_task


@pytest.fixture(scope="module")
def pronoun():
    task = get_task("pronoun")
    patcher, _ = prepare(task.load_model(), task, n_prompts=20)
    return patcher


def test_too_few_permutations_or_circuits_cannot_decide(pronoun) -> None:
    alive = np.zeros(pronoun.graph.n_edges, dtype=bool)
    with pytest.raises(ConfigError, match=r"permutations=19 .*N >= 20"):
        independence(pronoun, alive, permutations=19)
    with pytest.raises(ConfigError, match=r"circuits=10 .*1/11.*N >= 20"):
        sufficiency(pronoun, alive, circuits=10)
    out = run_tests(pronoun, alive, ("independence", "sufficiency"), permutations=1, circuits=1)
    assert set(out) == {"independence", "sufficiency"}
    assert all("cannot decide" in t["skipped"] and "p_value" not in t for t in out.values())
    assert independence(pronoun, alive, permutations=20).detail["p_floor"] < 0.05  # 20 can
