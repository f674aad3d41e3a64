"""A fresh user's finding (verify, stop 4): `evaluate POS_CIRCUIT --prompts FILE` with a file in
the circuit's token layout but without position names said "the other data gives another
graph than the circuit's (a position-aware circuit needs prompts of the same token layout)",
though the layout was the same and only the automatic names differed. The line now says
which differs and, for names, the field to add; with that field the evaluation runs."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from circuitdag.cli import main
from circuitdag.errors import ConfigError
from circuitdag.holdout import evaluate_on
from circuitdag.io import load_circuit

ROWS = [
    {"clean": "So Michael is a really funny cook, isn't", "corrupted": "So Helen is a really funny cook, isn't",
     "correct": "he", "wrong": "she"},
    {"clean": "So Anna is a pretty brave neighbour, isn't", "corrupted": "So Richard is a pretty brave neighbour, isn't",
     "correct": "she", "wrong": "he"},
]  # fmt: skip


@pytest.fixture(scope="module")
def circuit_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("pos")
    assert main(["discover", "--task", "pronoun", "--positions", "--n-prompts", "10", "--holdout", "0", "--no-svg",
                 "-q", "--out", str(out)]) == 0  # fmt: skip
    return out / "circuit.json"


def test_unnamed_positions_are_named_in_the_error_with_the_field_to_add(circuit_path: Path, tmp_path: Path) -> None:
    circuit = load_circuit(circuit_path)
    names = list(circuit.graph.positions.names)
    plain = tmp_path / "plain.jsonl"
    plain.write_text("".join(json.dumps(r) + "\n" for r in ROWS))
    with pytest.raises(ConfigError) as err:
        evaluate_on(circuit, prompts=plain)
    line = str(err.value)
    assert "\n" not in line and f'"positions": {json.dumps(names)}' in line, line
    named = tmp_path / "named.jsonl"
    named.write_text("".join(json.dumps({**r, "positions": names}) + "\n" for r in ROWS))
    res = evaluate_on(circuit, prompts=named)
    assert res["n_prompts"] == 2 and res["faithfulness"] is not None


def test_another_length_says_so(circuit_path: Path, tmp_path: Path) -> None:
    short = tmp_path / "short.jsonl"
    short.write_text(json.dumps({"clean": "So Michael is a cook, isn't", "corrupted": "So Helen is a cook, isn't",
                                 "correct": "he", "wrong": "she"}) + "\n")  # fmt: skip
    with pytest.raises(ConfigError, match=r"over 11 token positions but the other prompts have 9"):
        evaluate_on(load_circuit(circuit_path), prompts=short)


def test_a_repeated_prompt_is_held_out_with_all_its_copies_or_none() -> None:
    """verify's D11: `--holdout` drew rows, so a copy of a discovery prompt could be
    "held out". Copies are now one draw; without copies the split is the plain draw."""
    import numpy as np

    from circuitdag.holdout import split
    from circuitdag.tasks import get_task

    task = get_task("pronoun")
    data = task.data(task.load_model())
    twice = data.subset([*range(30), *range(10)])  # prompts 0-9 appear twice
    for seed in range(8):
        disc, held = split(twice, 0.3, seed=seed)
        keys = lambda d: {tuple(r) for r in d.clean.tolist()}
        assert not keys(disc) & keys(held) and disc.n_prompts + held.n_prompts == 40
        assert len(keys(held)) == 9  # round(0.3 * 30 distinct)
    plain = data.subset(list(range(30)))
    for seed in range(4):  # no copies: the same prompts as drawing rows directly
        want = np.sort(np.random.default_rng(seed).permutation(30)[:9])
        assert split(plain, 0.3, seed=seed)[1].clean.equal(plain.subset(want.tolist()).clean)
