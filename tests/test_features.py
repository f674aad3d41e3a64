"""circuitdag features on a small model with a planted colour neuron (no network, seconds)."""

from __future__ import annotations

import json
import random

import numpy as np
import pytest
import torch

from circuitdag.errors import ConfigError
from circuitdag.models.hooked import TinyConfig, TinyTransformer

COLOURS = ["red", "blue", "green", "yellow", "purple", "pink", "brown", "grey"]
ANIMALS = ["cat", "dog", "horse", "cow", "bird", "fish"]
THINGS = ["car", "house", "ball", "book", "box", "cup", "hat", "door"]
NAMES = ["john", "mary", "tom", "anna", "paul"]
VERBS = ["saw", "has", "likes", "found", "painted", "wants"]
FUNCTION = ["the", "a", "and", "with", "is", "."]
PLANT_LAYER, PLANT_NEURON = 1, 7


def _corpus(n: int = 1500, seed: int = 0) -> str:
    """Sentences from a small grammar; colour words take the adjective slot."""
    rng = random.Random(seed)
    c, a, t, nm, v = (lambda xs: rng.choice(xs) for _ in range(5))
    shapes = [
        lambda: f"{c(NAMES)} {v(VERBS)} the {c(COLOURS)} {c(THINGS)} .",
        lambda: f"the {c(ANIMALS)} {v(VERBS)} a {c(COLOURS)} {c(THINGS)} .",
        lambda: f"{c(NAMES)} and {c(NAMES)} {v(VERBS)} the {c(ANIMALS)} .",
        lambda: f"a {c(THINGS)} is {c(COLOURS)} and the {c(THINGS)} is {c(COLOURS)} .",
        lambda: f"the {c(ANIMALS)} with the {c(THINGS)} {v(VERBS)} {c(NAMES)} .",
    ]
    del a, t, nm
    return " ".join(rng.choice(shapes)() for _ in range(n))


def _tokenizer():
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    words = ["<|endoftext|>", "<unk>", *COLOURS, *ANIMALS, *THINGS, *NAMES, *VERBS, *FUNCTION]
    tok = Tokenizer(models.WordLevel(vocab={w: i for i, w in enumerate(words)}, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tok.decoder = decoders.WordPiece(prefix="##")
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<|endoftext|>", eos_token="<|endoftext|>",
                                   pad_token="<|endoftext|>", unk_token="<unk>")  # fmt: skip


def planted_model(seed: int = 0) -> TinyTransformer:
    """A random 2-layer model whose colour tokens share an embedding direction ``u`` that
    neuron :data:`PLANT_NEURON` of MLP :data:`PLANT_LAYER` reads (as a trained model's
    class direction would be): a colour neuron among random ones."""
    tok = _tokenizer()
    vocab = len(tok.get_vocab())
    torch.manual_seed(seed)
    cfg = TinyConfig(n_layers=2, d_model=32, n_heads=2, d_head=8, d_vocab=vocab, n_ctx=40, d_mlp=48,
                     normalization="LN", act_fn="gelu")  # fmt: skip
    model = TinyTransformer(cfg)
    for name, p in model.named_parameters():
        torch.nn.init.normal_(p, std=0.3 if "W_" in name else 0.05)
        if name.endswith(".w"):
            p.data += 1.0
    with torch.no_grad():
        u = torch.randn(cfg.d_model)
        u = (u - u.mean()) / (u - u.mean()).norm()
        ids = [tok.convert_tokens_to_ids(w) for w in COLOURS]
        model.W_E -= torch.outer(model.W_E @ u, u)  # only the colours have a component along u,
        model.W_E[ids] += 6.0 * u  # and all the same one
        for block in model.blocks:
            block.attn.W_O *= 0.1  # quiet attention: the colour direction stays at its own position
            block.mlp.W_in -= torch.outer(u, u @ block.mlp.W_in)  # no other neuron reads it
        mlp = model.blocks[PLANT_LAYER].mlp
        mlp.W_in[:, PLANT_NEURON] = 5.0 * u
        mlp.b_in[PLANT_NEURON] = -15.0
    model.tokenizer = tok
    return model.eval()


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    from circuitdag.features import features

    path = tmp_path_factory.mktemp("features") / "corpus.txt"
    path.write_text(_corpus(), encoding="utf-8")
    model = planted_model()
    return features(model, corpus=path, top_k=20, n_null=10_000, describe=3, max_tokens=20_000, chunk=32), path


def test_planted_colour_neuron_is_ranked_first_and_described_by_its_class(run):
    report, _ = run
    first = report["described"][0]
    assert (first["layer"], first["neuron"], first["rank"]) == (PLANT_LAYER, PLANT_NEURON, 1)
    assert {c["token"] for c in first["contexts"]} <= set(COLOURS)
    layer = next(r for r in report["neurons"] if r["layer"] == PLANT_LAYER)
    assert layer["coherent"][PLANT_NEURON]
    assert layer["model"]["z"][PLANT_NEURON] > 3 and layer["words"]["z"][PLANT_NEURON] > 3
    assert layer["model"]["q"][PLANT_NEURON] < 0.05 and layer["words"]["q"][PLANT_NEURON] < 0.05
    desc = first["description"]
    assert set(desc["words"]) <= set(COLOURS) and len(desc["words"]) >= 5
    if report["spaces"]["wordnet"] is not None:  # scripts/setup.sh installs wordnet-base
        assert desc["class"]["name"] == "chromatic color" and desc["text"].startswith("chromatic color words")
    # The planted neuron reads the shared direction: every colour keeps it on, a random word does not.
    sub = first["substitution"]
    assert sub["feature"] and sub["similar_persistence"] > 0.5 > sub["random_persistence"]
    assert first["simulation"]["score"] > 0.8


def test_coherence_is_rare_among_random_neurons(run):
    report, _ = run
    n = sum(r["neurons"] for r in report["by_layer"])
    assert report["by_layer"][PLANT_LAYER]["coherent"] >= 1
    assert sum(r["coherent"] for r in report["by_layer"]) <= max(3, n // 10)


def test_streaming_topk_matches_all_activations_at_once():
    from circuitdag.features_scan import chunk_activations, scan, tokenize_corpus

    model = planted_model()
    corp = tokenize_corpus(model, _corpus(300), "test", 5000, 16)
    got = scan(model, corp, [0, 1], top_k=6, batch=5)
    chunks = corp.chunks(False)
    acts = chunk_activations(model, corp, chunks, [0, 1], batch=64)
    for L in (0, 1):
        flat = acts[L].reshape(-1, acts[L].shape[-1])
        v, _ = torch.topk(flat, 6, dim=0)
        positions = (chunks[:, None] * corp.chunk + np.arange(corp.chunk)[None]).reshape(-1)
        np.testing.assert_allclose(got.values[L], v.numpy(), rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(got.mean[L], flat.double().mean(0).numpy(), rtol=1e-5, atol=1e-7)
        # Each kept position holds its kept value (ties may order positions differently).
        row = {int(p): i for i, p in enumerate(positions)}
        at = flat.numpy()[[[row[int(p)] for p in col] for col in got.where[L].T], np.arange(flat.shape[1])[:, None]]
        np.testing.assert_allclose(at.T, got.values[L], rtol=1e-5, atol=1e-6)


def test_coherence_null_p_value_is_calibrated():
    """Neurons whose items are random draws from the pool get roughly uniform p-values; a
    neuron whose items share a direction gets a small one."""
    from circuitdag.features_embed import Space, coherence, null_sets, unit_rows

    rng = np.random.default_rng(1)
    space = Space("t", unit_rows(rng.standard_normal((60, 8))), {i: i for i in range(60)})
    neurons = null_sets(rng.integers(0, 60, 3000), 5, 400, np.random.default_rng(7))
    assert all(len(set(row)) == 5 for row in neurons.tolist())
    c = coherence(space, [s.tolist() for s in neurons], n_null=400, seed=3)
    assert abs(float((c.p < 0.05).mean()) - 0.05) < 0.03
    assert 0.35 < float(np.median(c.p)) < 0.65
    aligned = Space("a", space.vectors.copy(), space.index)
    aligned.vectors[:5] = unit_rows(aligned.vectors[:5] + 5 * aligned.vectors[0], centre=False)
    c = coherence(aligned, [[0, 1, 2, 3, 4], *[s.tolist() for s in neurons[:50]]], n_null=400)
    assert c.p[0] < 0.01


def test_wordnet_class_of_colours():
    from circuitdag.features_wordnet import load_wordnet

    wn = load_wordnet()
    if wn is None:
        pytest.skip("wordnet-base is not installed (scripts/setup.sh installs it)")
    name, offset, share = wn.common_class(["red", "blue", "green", "yellow"])
    assert (name, share) == ("chromatic color", 1.0)
    assert wn.is_a("purple", offset) and not wn.is_a("car", offset)
    assert wn.common_class(["the", "of"]) is None


def test_report_files(run, tmp_path):
    from circuitdag.features_report import markdown, write_report

    report, _ = run
    paths = write_report(report, tmp_path)
    names = {p.name for p in paths}
    assert {"report.json", "report.md", "coherence.svg", "index.html"} <= names
    assert json.loads((tmp_path / "report.json").read_text())["described"][0]["rank"] == 1
    md = markdown(report)
    assert f"L{PLANT_LAYER}.N{PLANT_NEURON}" in md
    page = (tmp_path / "neurons" / f"L{PLANT_LAYER}.N{PLANT_NEURON}.html").read_text()
    assert "red" in page and "<style>" in page


def test_bad_options_are_one_line_errors():
    from circuitdag.features import features

    model = planted_model()
    with pytest.raises(ConfigError, match="--layer must be in 0..1"):
        features(model, layers=[5])
    with pytest.raises(ConfigError, match="--top-k"):
        features(model, top_k=1)
