"""Soft prompts (circuitdag.soft_prompts*): the soft-prompted pass is the real-token pass
when the prompt is real embeddings, the geometry is what it says, and ``circuitdag
soft-prompts`` on the zoo's pronoun model trains prompts that beat the baseline, measures
segments whose endpoints are the solutions, norm-matched random directions, the simplex and
the nearest tokens, and keeps its finished seeds."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from circuitdag.cli import main
from circuitdag.errors import ConfigError
from circuitdag.soft_prompts import accuracy_per_prompt, answer_loss, evaluate, prompted_logits, train_prompt
from circuitdag.soft_prompts_data import examples, load_examples
from circuitdag.soft_prompts_geometry import (
    combine,
    grid,
    keep_norm,
    random_directions,
    segment,
    simplex_weights,
)
from circuitdag.soft_prompts_run import run_soft_prompts, tolerance
from circuitdag.tasks.base import TaskData


@pytest.fixture(scope="module")
def pronoun():
    from circuitdag.loading import load_model

    return load_model("pronoun")


def _early_pronoun(path: Path) -> Path:
    """The zoo pronoun task one token early: 'So John is a really great friend, isn' -> 'he'.
    The model, trained to say "'t" there, never does it unprompted (accuracy 0)."""
    from circuitdag.models.zoo import model_card

    card = model_card("pronoun")["eval"]
    rows = []
    for template in card["templates"]:
        for gender, (right, wrong) in (("male", ("he", "she")), ("female", ("she", "he"))):
            for name in card["names"][gender]:
                clean, corrupted = (template.format(name=x).replace(", isn't", ", isn") for x in (name, "someone"))
                rows.append({"clean": clean, "corrupted": corrupted, "correct": right, "wrong": wrong})
    path.write_text("\n".join(json.dumps(r) for r in rows))
    return path


def test_a_prompt_of_real_token_embeddings_is_those_tokens(pronoun, tmp_path: Path) -> None:
    train, _, _ = load_examples(pronoun, prompts=str(_early_pronoun(tmp_path / "p.jsonl")))
    assert train.insert_at == 1  # after BOS
    ids = torch.tensor([5, 17, 40])
    got = prompted_logits(pronoun, train, pronoun.W_E[ids][None].detach())[0]
    spelled = torch.cat([train.tokens[:, :1], ids.expand(train.n, -1), train.tokens[:, 1:]], 1)
    want = pronoun(spelled).gather(1, (train.answer_pos + 3)[..., None].expand(-1, -1, got.shape[-1]))
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    base = prompted_logits(pronoun, train, None)[0]
    torch.testing.assert_close(base, pronoun(train.tokens).gather(1, train.answer_pos[..., None].expand(-1, -1, got.shape[-1])))


def test_loss_and_accuracy_count_every_right_answer_and_only_valid_slots() -> None:
    logits = torch.tensor([[[0.0, 2.0, 1.0, -9.0], [5.0, 0.0, 0.0, 0.0]],
                           [[3.0, 0.0, 0.0, 0.0], [0.0, 0.0, 0.0, 4.0]]])  # fmt: skip
    allowed = torch.tensor([[[False, True, True, False], [True, False, False, False]],
                            [[False, True, False, False], [False, False, False, True]]])  # fmt: skip
    valid = torch.tensor([[True, True], [True, False]])
    assert accuracy_per_prompt(logits, allowed, valid).tolist() == [True, False]
    p = logits.softmax(-1)
    want0 = -(torch.log(p[0, 0, 1] + p[0, 0, 2]) + torch.log(p[0, 1, 0])) / 2
    want1 = -torch.log(p[1, 0, 1])  # the second slot is not valid
    torch.testing.assert_close(answer_loss(logits, allowed, valid), torch.stack([want0, want1]))


def test_greater_than_counts_every_later_year_as_right(pronoun) -> None:
    class Fake:
        name, default_metric, _answers = "greater-than", "task", (10, 11, 12, 13)

        def metric(self):
            return lambda logits, ref: -logits[..., 0, 0].mean(-1)

    t = torch.zeros(2, 3, dtype=torch.long)
    data = TaskData(t, t, torch.full((2, 1), 2), torch.tensor([[12], [13]]), torch.tensor([[11], [12]]))
    ex = examples(pronoun, data, Fake())
    assert ex.allowed[0, 0].nonzero().flatten().tolist() == [12, 13] and ex.allowed[1, 0].nonzero().flatten().tolist() == [13]


def test_the_geometry() -> None:
    a, b = torch.randn(3, 5), torch.randn(3, 5)
    seg = segment(a, b, grid(5))
    assert torch.equal(seg[0], a) and torch.allclose(seg[-1], b) and torch.allclose(seg[2], (a + b) / 2)
    kept = keep_norm(seg, a, b, grid(5))
    torch.testing.assert_close(kept.flatten(1).norm(dim=1), torch.tensor([(1 - t) * a.norm() + t * b.norm() for t in grid(5)]))
    torch.testing.assert_close(kept[[0, -1]], seg[[0, -1]])  # the endpoints are the solutions
    cos = torch.nn.functional.cosine_similarity(kept.flatten(1), seg.flatten(1))
    torch.testing.assert_close(cos, torch.ones(5))  # same directions
    w = simplex_weights(4)
    assert len(w) == 15 and len(set(w)) == 15 and all(abs(sum(x) - 1) < 1e-12 and min(x) >= 0 for x in w)
    sols = torch.randn(3, 2, 4)
    corners = combine(sols, [(1.0, 0.0, 0.0), (0.0, 1.0, 0.0), (0.0, 0.0, 1.0)])
    torch.testing.assert_close(corners, sols)
    dirs = random_directions((3, 5), 2.5, 4, seed=0)
    torch.testing.assert_close(dirs.flatten(1).norm(dim=1), torch.full((4,), 2.5))
    assert not torch.allclose(dirs[0], dirs[1]) and torch.equal(dirs, random_directions((3, 5), 2.5, 4, seed=0))
    assert tolerance(0.5, 100) == pytest.approx(0.1) and tolerance(1.0, 20) == pytest.approx(0.05)


def test_training_changes_only_the_prompt(pronoun, tmp_path: Path) -> None:
    train, held, _ = load_examples(pronoun, prompts=str(_early_pronoun(tmp_path / "p.jsonl")))
    before = {k: v.clone() for k, v in pronoun.state_dict().items()}
    t = train_prompt(pronoun, train, 2, seed=0, steps=5)
    assert t.prompt.shape == (2, pronoun.cfg.d_model) and len(t.losses) == 5 and not torch.equal(t.prompt, t.init)
    assert all(torch.equal(v, pronoun.state_dict()[k]) for k, v in before.items())
    assert all(p.requires_grad for p in pronoun.parameters())  # given back as it was
    with pytest.raises(ConfigError, match="at least 2"):
        run_soft_prompts(pronoun, train, held, 2, 1)


@pytest.mark.slow
def test_the_command_on_the_zoo(tmp_path: Path, capsys) -> None:
    prompts = _early_pronoun(tmp_path / "early.jsonl")
    out = tmp_path / "run"
    argv = ["soft-prompts", "--model", "pronoun", "--prompts", str(prompts), "--tokens", "8", "--seeds", "3",
            "--steps", "150", "--segment-points", "5", "--simplex-steps", "2", "--random-directions", "2", "-q",
            "--out", str(out)]  # fmt: skip
    assert main(argv) == 0, capsys.readouterr().err
    r = json.loads((out / "report.json").read_text())
    sm, seeds = r["summary"], r["seeds"]
    assert r["n_heldout"] == 30 and r["n_train"] == 70
    # training teaches the model to answer one token early, on prompts it did not train on
    assert r["baseline"]["accuracy"] == 0 and sm["trained_beats_baseline"] and min(sm["solution_accuracy"]) >= 0.8
    assert max(sm["init_accuracy"]) < 0.2 and all(s["loss_last"] < s["loss_first"] / 2 for s in seeds)
    for seg in r["segments"]:
        i, j = seg["pair"]
        assert seg["accuracy"][0] == seeds[i]["heldout"]["accuracy"] and seg["accuracy"][-1] == seeds[j]["heldout"]["accuracy"]
        assert seg["metric"][0] == pytest.approx(seeds[i]["heldout"]["metric"], abs=1e-5)
        assert seg["norm_kept_accuracy"][0] == seg["accuracy"][0] and seg["norm_kept_accuracy"][-1] == seg["accuracy"][-1]
        assert seg["random_length"] == pytest.approx([seg["distance"]] * 2, rel=1e-5)  # norm-matched control
        assert all(rnd[0] == seg["accuracy"][0] for rnd in seg["random_accuracy"])  # both start at solution i
    corners = [r["simplex"]["accuracy"][r["simplex"]["weights"].index(w)] for w in ([1, 0, 0], [0, 1, 0], [0, 0, 1])]
    assert corners == [s["heldout"]["accuracy"] for s in seeds]
    assert all(len(s["nearest"]["tokens"]) == 8 for s in seeds)
    assert sm["convex"] == (sm["segments_hold"] and sm["simplex_holds"])
    md = (out / "report.md").read_text()
    assert "Without a soft prompt: accuracy 0.000" in md and "write-up's claim" in md
    assert (out / "soft-prompts.svg").stat().st_size > 5000
    assert "convex:" in capsys.readouterr().out
    # finished seeds are kept: a rerun loads them (same prompts, same numbers) ...
    first = [json.loads((out / "prompts" / f"seed{s}.json").read_text())["prompt"] for s in range(3)]
    assert main(argv) == 0
    again = json.loads((out / "report.json").read_text())
    assert [s["heldout"] for s in again["seeds"]] == [s["heldout"] for s in seeds]
    assert first == [json.loads((out / "prompts" / f"seed{s}.json").read_text())["prompt"] for s in range(3)]
    # ... and a run with other settings does not overwrite them
    assert main([*argv[:-2], "--steps", "10", "--out", str(out)]) == 2
    assert "trained with other settings" in capsys.readouterr().err


@pytest.mark.slow
def test_smollm2_addition_prompts_and_the_bridge_pass(smollm2_model) -> None:
    model = smollm2_model  # the session's model: this test only reads it (hooks are per call)
    train, held, what = load_examples(model, "addition")
    assert what["n_train"] + what["n_heldout"] == 100 and train.insert_at == 0
    tok = model.tokenizer
    both = torch.cat([train.tokens, held.tokens])
    valid, pos = torch.cat([train.valid, held.valid]), torch.cat([train.answer_pos, held.answer_pos])
    correct = torch.cat([train.correct, held.correct])
    for row in range(len(both)):
        text = tok.decode(both[row, : pos[row, 0] + 1])
        a, b = (int(x) for x in text.rstrip("=").split("+"))
        assert "".join(tok.decode(correct[row, s]) for s in range(2) if valid[row, s]) == str(a + b)
    ids = torch.tensor([tok.encode("Add:", add_special_tokens=False)[0], 11, 12])
    got = prompted_logits(model, held, model.W_E[ids][None].detach())[0]
    spelled = torch.cat([ids.expand(held.n, -1), held.tokens], 1)
    want = model(spelled).gather(1, (held.answer_pos + 3)[..., None].expand(-1, -1, got.shape[-1]))
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4)
    assert 0 <= evaluate(model, held, None)[0]["accuracy"] < 0.5  # SmolLM2 does not add in this format unprompted
