"""CCS (circuitdag.ccs): the probe finds a planted truth direction without labels, finds
nothing where there is nothing, the coherence term is the within-fact variance it claims,
and ``circuitdag ccs`` writes its report."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from circuitdag.ccs import (
    _ccs_loss,
    builtin_statements,
    ccs_accuracy,
    ccs_probe,
    normalise,
    random_accuracy,
    read_statements,
    split_facts,
    supervised_probe,
)
from circuitdag.cli import main
from circuitdag.errors import ConfigError


def _contrast(labels: np.ndarray, strength: float, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Features of x+ and x-: a shared random part, plus +v on the completion that is right
    (x+ for a true statement, x- for a false one) and -v on the other."""
    rng = np.random.default_rng(seed)
    n, d = len(labels), 48
    v = rng.standard_normal(d)
    v /= np.linalg.norm(v)
    base = rng.standard_normal((n, d))
    sign = np.where(labels, 1.0, -1.0)[:, None]
    pos = base + strength * sign * v + 0.3 * rng.standard_normal((n, d))
    neg = base - strength * sign * v + 0.3 * rng.standard_normal((n, d))
    return pos, neg


@pytest.mark.parametrize("seed", [0, 1])
def test_ccs_finds_a_planted_truth_direction_without_labels(seed: int) -> None:
    labels = np.random.default_rng(seed).random(200) < 0.5
    pos, neg = _contrast(labels, 2.0, seed)
    tr, te = np.arange(140), np.arange(140, 200)
    (p_tr, p_te), (n_tr, n_te) = normalise(pos[tr], pos[te]), normalise(neg[tr], neg[te])
    w, b, loss = ccs_probe(p_tr, n_tr, tries=3, steps=300, seed=seed)
    assert ccs_accuracy(w, b, p_te, n_te, labels[te]) >= 0.95 and loss < 0.05
    sw, sb = supervised_probe(p_tr - n_tr, labels[tr])
    assert (((p_te - n_te) @ sw + sb > 0) == labels[te]).mean() >= 0.95


def test_ccs_finds_nothing_where_truth_is_not_encoded() -> None:
    labels = np.random.default_rng(3).random(200) < 0.5
    pos, neg = _contrast(np.random.default_rng(4).random(200) < 0.5, 2.0, 3)  # a direction unrelated to the labels
    tr, te = np.arange(140), np.arange(140, 200)
    (p_tr, p_te), (n_tr, n_te) = normalise(pos[tr], pos[te]), normalise(neg[tr], neg[te])
    w, b, _ = ccs_probe(p_tr, n_tr, tries=3, steps=300)
    assert ccs_accuracy(w, b, p_te, n_te, labels[te]) < 0.7
    assert random_accuracy(p_te, n_te, labels[te]) < 0.7


def test_the_coherence_term_is_the_variance_within_facts() -> None:
    zp = torch.tensor([[0.0], [2.0], [1.0], [-1.0]], dtype=torch.float64)
    zn = torch.tensor([[0.5], [0.0], [1.0], [1.0]], dtype=torch.float64)
    groups = torch.tensor([0, 0, 1, 1])
    counts = torch.bincount(groups).double()
    plain = _ccs_loss(zp, zn, None, None, 0.0)
    pred = (torch.sigmoid(zp) + 1 - torch.sigmoid(zn)) / 2
    var = torch.stack([pred[g == groups].var(unbiased=False) for g in (0, 1)])  # each fact's two phrasings
    got = _ccs_loss(zp, zn, groups, counts, 3.0)
    torch.testing.assert_close(got, plain + 3.0 * var.mean().reshape(1), rtol=1e-12, atol=1e-15)


def test_builtin_statements_and_the_split_keep_facts_whole() -> None:
    s = builtin_statements(0)
    assert len(s) == 2 * (81 + 60) and 0.4 < np.mean([x.label for x in s]) < 0.6
    assert builtin_statements(0) == s and builtin_statements(1) != s
    train, test = split_facts(s, 0.3, 0)
    assert not {s[i].fact for i in train} & {s[i].fact for i in test}
    assert not {s[i].topic for i in train} & {s[i].topic for i in test} - {""}  # a country on one side
    entities = lambda idx: {w for i in idx if s[i].topic for w in s[i].text.rstrip(".").split()}
    assert entities(train) & entities(test) <= {"The", "capital", "of", "is", "the", "City", "New", "Buenos"}
    by_fact: dict[str, list] = {}
    for x in s:
        by_fact.setdefault(x.fact, []).append(x)
    assert all(len(v) == 2 and v[0].label == v[1].label and v[0].text != v[1].text for v in by_fact.values())
    sums = [x for x in s if x.fact.startswith("sum:2+3=")]
    assert sums[0].text.split()[-1].rstrip(".") == sums[0].fact.split("=")[1]
    assert sums[0].label == (sums[0].fact == "sum:2+3=5")


@pytest.mark.parametrize(("content", "message"), [
    ('{"statement": "a", "label": "yes"}\n', 'line 1: each line needs "statement"'),
    ("{oops\n", "line 1 is not JSON"),
    ('{"statement": "a", "label": true}\n', "needs true and false statements"),
    ("", "is empty"),
])  # fmt: skip
def test_a_bad_statements_file_is_one_line(tmp_path: Path, content: str, message: str) -> None:
    f = tmp_path / "s.jsonl"
    f.write_text(content)
    with pytest.raises(ConfigError, match=message):
        read_statements(f)


def test_the_command_writes_its_report(tmp_path: Path, capsys) -> None:
    argv = ["ccs", "--model", "pronoun", "--steps", "30", "--tries", "2", "--layer", "1", "-q", "--out", str(tmp_path)]
    assert main(argv) == 0, capsys.readouterr().err
    report = json.loads((tmp_path / "report.json").read_text())
    assert [r["layer"] for r in report["layers"]] == [1] and report["n_train"] + report["n_test"] == 282
    row = report["layers"][0]
    assert all(0.5 <= row[k] <= 1 for k in ("ccs", "ccs_coherence", "random")) and 0 <= row["supervised"] <= 1
    assert "| 1 |" in (tmp_path / "report.md").read_text() and (tmp_path / "accuracy.svg").stat().st_size > 1000
    assert "best layer: ccs" in capsys.readouterr().out
    assert main(["ccs", "--model", "pronoun", "--layer", "7", "--out", str(tmp_path)]) == 2
    assert "--layer must be in 0..1" in capsys.readouterr().err
