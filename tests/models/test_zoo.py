"""The shipped zoo models load and still score what their cards say."""

from __future__ import annotations

import json

import pytest
import torch

from circuitdag.errors import ModelError
from circuitdag.models.zoo import ZOO, evaluate, load_hf, model_card, pronoun_prompts, zoo_path


def _hf_logits(model):
    def fn(tokens: torch.Tensor) -> torch.Tensor:
        # An explicit mask: BOS and PAD share id 0, and without a mask transformers
        # logs a padding warning for every batch that starts with it.
        return model(input_ids=tokens, attention_mask=torch.ones_like(tokens)).logits

    return fn


@pytest.mark.parametrize("name", sorted(ZOO))
def test_card_accuracy_reproduces(name: str) -> None:
    card = model_card(name)
    model, tokenizer = load_hf(name)
    measured = evaluate(name, _hf_logits(model), tokenizer, card)
    assert measured["accuracy"] == pytest.approx(card["accuracy"]["accuracy"], abs=0.01)
    for key, value in card["accuracy"].items():
        assert measured[key] == pytest.approx(value, abs=0.01), key


@pytest.mark.parametrize("name", sorted(ZOO))
def test_files_are_small_and_safetensors(name: str) -> None:
    files = {p.name: p.stat().st_size for p in zoo_path(name).iterdir()}
    assert {"config.json", "model.safetensors", "tokenizer.json", "card.json"} <= set(files)
    assert not any(f.endswith((".bin", ".pt", ".pkl")) for f in files)
    assert sum(files.values()) < 2_000_000


def test_pronoun_card_is_good_and_aligned() -> None:
    card = model_card("pronoun")
    assert card["accuracy"]["accuracy"] > 0.95
    _, tokenizer = load_hf("pronoun")
    prompts = pronoun_prompts(card)
    assert len(prompts) == 100
    neutral = card["eval"]["neutral_name"]
    layout = card["eval"]["position_names"]
    for template in card["eval"]["templates"]:
        clean = tokenizer(template.format(name="John"))["input_ids"]
        corrupt = tokenizer(template.format(name=neutral))["input_ids"]
        assert len(clean) == len(corrupt) == len(layout)
        assert clean[0] == tokenizer.bos_token_id
        assert [a != b for a, b in zip(clean, corrupt)] == [n == "name" for n in layout]
    for answer in ("he", "she", "they"):
        (token_id,) = tokenizer.encode(" " + answer, add_special_tokens=False)
        assert token_id == tokenizer.convert_tokens_to_ids(answer) != tokenizer.unk_token_id


def test_induction_mlps_are_exactly_zero() -> None:
    card = model_card("induction")
    assert card["architecture"]["attn_only"]
    assert card["accuracy"]["accuracy"] > 0.9
    model, _ = load_hf("induction")
    for block in model.transformer.h:
        assert all(not p.any() for p in block.mlp.parameters())


def test_pronoun_through_transformer_bridge() -> None:
    from transformer_lens import TransformerBridge

    path = zoo_path("pronoun")
    bridge = TransformerBridge.boot_transformers(str(path))
    bridge.enable_compatibility_mode(disable_warnings=True)
    model, tokenizer = load_hf("pronoun")
    tokens = bridge.to_tokens("So Mary is such a good cook, isn't")
    assert tokens[0].tolist() == tokenizer("So Mary is such a good cook, isn't")["input_ids"]
    with torch.no_grad():
        ours = bridge(tokens).log_softmax(-1)
        theirs = _hf_logits(model)(tokens).log_softmax(-1)
    # Compatibility mode centres the unembedding: logits shift per position, log-probs do not.
    torch.testing.assert_close(ours, theirs, atol=1e-4, rtol=0)
    assert bridge.to_single_token("she") == tokenizer.convert_tokens_to_ids("she")
    card = json.loads((path / "card.json").read_text())
    with torch.no_grad():
        measured = evaluate("pronoun", bridge, bridge.tokenizer, card)
    assert measured["accuracy"] == pytest.approx(card["accuracy"]["accuracy"], abs=0.01)


def test_unknown_name_is_a_model_error() -> None:
    with pytest.raises(ModelError, match="pronoun"):
        zoo_path("gpt5")
