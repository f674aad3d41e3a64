"""Held-out prompts (circuitdag.holdout), evaluating a saved edge set on other data, and the
discover / evaluate flags of issue 24 (--holdout, --bootstrap, --verify-top, --tests)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

import circuitdag as cd
from circuitdag.cli import main
from circuitdag.errors import ConfigError
from circuitdag.holdout import evaluate_on, heldout_data, metrics_on, patcher_on, split
from circuitdag.io import load_circuit
from circuitdag.prepare import prepare
from circuitdag.tasks import get_task

sys.path.insert(0, str(Path(__file__).parent / "tasks"))
from test_prompts import pronoun_rows


@pytest.fixture(scope="module")
def pronoun():
    task = get_task("pronoun")
    return task, task.load_model()


def test_split_is_seeded_and_disjoint(pronoun):
    task, model = pronoun
    data = task.data(model)
    a, b = split(data, 0.2, seed=3)
    assert (a.n_prompts, b.n_prompts) == (80, 20)
    rows = lambda d: {tuple(r) for r in d.clean.tolist()}
    assert rows(a) | rows(b) == rows(data) and not rows(a) & rows(b)
    assert split(data, 0.2, seed=3)[1].clean.equal(b.clean) and not split(data, 0.2, seed=4)[1].clean.equal(b.clean)
    for bad in (0, 1, 1.5, True):
        with pytest.raises(ConfigError, match="--holdout"):
            split(data, bad)


def test_pronoun_holds_out_other_names_and_templates_and_keeps_its_prompts(pronoun):
    from circuitdag.models.zoo import model_card
    from circuitdag.tasks.pronoun import HOLDOUT_NAMES, HOLDOUT_TEMPLATES

    task, model = pronoun
    card = model_card("pronoun")["eval"]
    assert not set(HOLDOUT_TEMPLATES) & set(card["templates"])
    assert not {n for v in HOLDOUT_NAMES.values() for n in v} & {n for v in card["names"].values() for n in v}
    data, held = heldout_data(task, model, task.data(model))
    assert held.how == "task" and held.data is not None and held.data.n_prompts == 100
    assert data.clean.equal(task.data(model).clean)  # the default prompts are unchanged
    assert held.data.position_names == data.position_names
    name_pos = data.position_names.index("name")
    assert not {int(t) for t in held.data.clean[:, name_pos]} & {int(t) for t in data.clean[:, name_pos]}


def test_generated_task_holds_out_another_seeds_prompts():
    task = get_task("induction")
    model = task.load_model()
    data = task.data(model, seed=0)
    _, held = heldout_data(task, model, data, seed=0)
    assert held.how == "seed" and held.data is not None and held.data.n_prompts > 0
    assert not {tuple(r) for r in held.data.clean.tolist()} & {tuple(r) for r in data.clean.tolist()}


def test_a_fixed_list_has_no_heldout_unless_asked(tmp_path):
    task = cd.Task.from_prompts(pronoun_rows(20), model="pronoun")
    model = get_task("pronoun").load_model()
    data = task.data(model)
    same, held = heldout_data(task, model, data)
    assert held.data is None and "--holdout" in held.reason and same is data


def test_evaluate_on_another_seed_equals_circuit_metric_there():
    task = get_task("induction")
    model = task.load_model()
    circuit = cd.discover(model, task, "eap-ig", n_prompts=20, edges=5, ig_steps=2)
    circuit.meta["model"] = task.default_model
    got = evaluate_on(circuit, seed=5)
    patcher, _ = prepare(model, task, seed=5, n_prompts=20)
    assert got["metric_circuit"] == pytest.approx(patcher.circuit_metric(circuit.in_circuit), rel=1e-6)
    want = metrics_on(patcher, circuit.in_circuit)
    assert got["task"] == "induction" and got["seed"] == 5 and got["n_prompts"] == 20
    assert got["faithfulness"] == pytest.approx(want["faithfulness"], rel=1e-6)
    assert not patcher.data.clean.equal(prepare(model, task, seed=0, n_prompts=20)[0].data.clean)  # other data


def test_evaluate_prompts_file_equals_circuit_metric_on_it(tmp_path, capsys):
    path = tmp_path / "p.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in pronoun_rows(20, seed=1)))
    out = tmp_path / "run"
    assert main(["discover", "--task", "pronoun", "--algorithm", "eap", "--out", str(out), "--no-svg", "-q"]) == 0
    capsys.readouterr()
    assert main(["evaluate", str(out / "circuit.json"), "--prompts", str(path)]) == 0
    got = json.loads(capsys.readouterr().out)["other_data"]
    circuit = load_circuit(out / "circuit.json")
    model = get_task("pronoun").load_model()
    patcher, _ = prepare(model, cd.Task.from_prompts(path), metric="logit_diff")
    assert got["metric_circuit"] == pytest.approx(patcher.circuit_metric(circuit.in_circuit), rel=1e-6)
    assert got["n_prompts"] == 20 and got["prompts"] == str(path)


def test_discover_holds_out_bootstraps_verifies_and_tests(tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["discover", "--task", "pronoun", "--algorithm", "eap-ig", "--holdout", "0.2", "--bootstrap", "3",
                 "--verify-top", "4", "--tests", "minimality", "sufficiency", "--out", str(out), "--no-svg",
                 "-q"]) == 0  # fmt: skip
    line = capsys.readouterr().out
    doc = json.loads((out / "circuit.json").read_text())
    assert doc["n_prompts"] == 100 and doc["discovery_prompts"] == 80
    h = doc["heldout"]
    assert h["how"] == "split" and h["n_prompts"] == 20 and f"held-out faithfulness {h['faithfulness']:.3f}" in line
    # the held-out numbers are circuit_metric on the 20 held-out prompts
    task = get_task("pronoun")
    model = task.load_model()
    patcher, _ = prepare(model, task)
    _, held = split(patcher.data, 0.2, seed=0)
    circuit = load_circuit(out / "circuit.json")
    assert h["metric_circuit"] == pytest.approx(patcher_on(patcher, held).circuit_metric(circuit.in_circuit), rel=1e-6)
    b = doc["bootstrap"]
    assert b["resamples"] == 3 and len(b["faithfulness"]["heldout"]["values"]) == 3 and "bootstrap x3" in line
    assert set(doc["tests"]) == {"minimality", "sufficiency"} and "minimality p=" in line
    assert doc["verify"]["n_checked"] == 8 and "verify-top 4" in line
    assert all(set(r) >= {"estimate", "exact"} for r in doc["verify"]["edges"].values())
    capsys.readouterr()
    assert main(["evaluate", str(out / "circuit.json"), "--tests", "equivalence", "--verify-top", "2"]) == 0
    ev = json.loads(capsys.readouterr().out)
    assert "p_value" in ev["tests"]["equivalence"] and ev["verify"]["n_checked"] == 4


def test_evaluate_n_prompts_runs_the_tests_on_that_many_own_prompts(tmp_path, capsys):
    """``evaluate --n-prompts N --tests``: the tests on N of the circuit's prompts (a seeded
    subset), not the other-data evaluation; equal to the test on that subset from Python."""
    import numpy as np

    from circuitdag.hypothesis import equivalence

    out = tmp_path / "run"
    assert main(["discover", "--task", "pronoun", "--algorithm", "eap", "--holdout", "0", "--out", str(out),
                 "--no-svg", "-q"]) == 0  # fmt: skip
    capsys.readouterr()
    assert main(["evaluate", str(out / "circuit.json"), "--n-prompts", "30", "--tests", "equivalence"]) == 0
    ev = json.loads(capsys.readouterr().out)
    assert "other_data" not in ev and ev["checks_on"] == {"prompts": 30, "of": 100, "seed": 0}
    got = ev["tests"]["equivalence"]
    assert got["detail"]["prompts"] == 30
    task = get_task("pronoun")
    patcher, _ = prepare(task.load_model(), task)
    sub = patcher.subset(np.sort(np.random.default_rng(0).choice(100, 30, replace=False)))
    want = equivalence(sub, load_circuit(out / "circuit.json").in_circuit).to_dict()
    assert (got["p_value"], got["detail"]["circuit_wins"]) == (want["p_value"], want["detail"]["circuit_wins"])
    assert main(["evaluate", str(out / "circuit.json"), "--n-prompts", "101", "--tests", "equivalence"]) == 2
    assert "--n-prompts 101: the circuit was found on 100 prompts; give at most 100" in capsys.readouterr().err


def test_heldout_drops_a_discovery_prompt_padded_to_another_length():
    """A generated held-out set loses the prompts that are also discovery prompts, also when
    the two sets are padded to different lengths (the check once compared padded rows only
    when the lengths agreed, and kept every prompt otherwise)."""
    import torch

    from circuitdag.holdout import _drop_shared
    from circuitdag.tasks.base import TaskData

    def data(rows, answers):
        n = max(len(r) for r in rows)
        pad = [r + [0] * (n - len(r)) for r in rows]
        t = torch.tensor(pad)
        return TaskData(t, t + 100, torch.tensor([[len(r) - 1] for r in rows]), torch.tensor([[a] for a in answers]))

    disc = data([[5, 6, 7], [5, 6, 8]], [1, 2])
    held = data([[5, 6, 7], [5, 6, 7, 9, 9], [5, 6, 8], [4, 6, 7]], [1, 1, 3, 1])
    kept = _drop_shared(held, disc)  # [5, 6, 7] -> 1 is a discovery prompt; [5, 6, 8] -> 3 has another answer
    assert kept.n_prompts == 3 and kept.clean[:, 0].tolist() == [5, 5, 4] and kept.correct[:, 0].tolist() == [1, 3, 1]


def test_tests_flag_names_match_the_library():
    from circuitdag.cli.discover import TRUST_TESTS
    from circuitdag.hypothesis import TESTS

    assert TRUST_TESTS == TESTS


def test_pronoun_seeds_draw_from_the_pools_and_hold_out_the_rest(pronoun):
    task, model = pronoun
    t0, n0 = task.drawn(0)
    for seed in (1, 5):
        t, n = task.drawn(seed)
        assert len(t) == 5 and all(len(n[g]) == 10 for g in n) and (t, n) != (t0, n0)
        d, h = task.data(model, seed), task.holdout(model, seed)
        name_pos = d.position_names.index("name")
        assert not set(d.clean[:, name_pos].tolist()) & set(h.clean[:, name_pos].tolist())
        assert not {tuple(r[name_pos + 1 :]) for r in d.clean.tolist()} & {tuple(r[name_pos + 1 :]) for r in h.clean.tolist()}
    assert task.data(model, 5).clean.equal(task.data(model, 5).clean)


def test_test_options_are_checked():
    from circuitdag.cli.discover import parse_test_options

    assert parse_test_options(["circuits=20", "q=0.9", "epsilon=0"]) == {"circuits": 20, "q": 0.9, "epsilon": 0.0}
    for bad in ("circuits=0", "q=1", "epsilon=0.5", "nope=1", "circuits", "circuits=2.5"):
        with pytest.raises(ConfigError, match="--test-option"):
            parse_test_options([bad])
