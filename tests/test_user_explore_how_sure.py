"""A fresh user's findings (verify, stop 4): the explorer shows how far to trust the circuit.
Repro: `discover --task pronoun --algorithm eap-ig --verify-top 5 --tests --bootstrap 4` wrote
held-out faithfulness 1.008 [1.005, 1.010], the reruns' stability, verify-top and four tests
into circuit.json, and `explore` showed only "faithfulness 1.007" (the discovery prompts')."""

from __future__ import annotations

import json
from pathlib import Path

from circuitdag.cli import main
from circuitdag.explore import explorer_data, how_sure
from circuitdag.io import load_circuit


def test_the_explorer_summary_carries_held_out_bootstrap_verify_and_tests(tmp_path: Path) -> None:
    out = tmp_path / "p"
    assert main(["discover", "--task", "pronoun", "--algorithm", "eap-ig", "--n-prompts", "20", "--verify-top", "2",
                 "--tests", "equivalence", "--bootstrap", "2", "--no-svg", "-q", "--out", str(out)]) == 0  # fmt: skip
    meta = json.loads((out / "circuit.json").read_text())
    rows = dict(explorer_data(load_circuit(out / "circuit.json"))["how_sure"])
    assert rows["held-out faithfulness"].startswith(f"{meta['heldout']['faithfulness']:.3f} [")
    assert "(20 prompts, task)" in rows["held-out faithfulness"]
    assert rows["bootstrap"].startswith("2 resamples: faithfulness [") and "edge Jaccard" in rows["bootstrap"]
    assert rows["verify-top"].endswith("/4 estimates off by >2x")
    p = meta["tests"]["equivalence"]["p_value"]
    assert rows["tests"] == f"equivalence p={p:.3g} ({'passed' if meta['tests']['equivalence']['passed'] else 'failed'})"
    assert main(["explore", str(out / "circuit.json"), "-o", str(tmp_path / "p.html")]) == 0
    assert "held-out faithfulness" in (tmp_path / "p.html").read_text()


def test_without_checks_it_says_why_there_is_no_held_out_number() -> None:
    assert how_sure({}) == []
    assert how_sure({"heldout": {"how": "none", "reason": "--holdout 0: no prompts held out"}}) == [
        ["held-out faithfulness", "none (--holdout 0: no prompts held out)"]
    ]
