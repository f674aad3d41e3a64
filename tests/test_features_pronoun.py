"""circuitdag features on the zoo pronoun model (a word-level tokenizer, 113 tokens, context
32): near-root WordNet classes, unknown tokens, the chunk bound, the files and their spacing."""

from __future__ import annotations

import html
import random
import re

import pytest

from circuitdag.errors import ConfigError

NAMES = ["Alice", "Anna", "Brian", "Claire", "Daniel", "David", "Emma", "Frank", "Grace", "Helen", "Jack", "Jane", "John", "Kate", "Mark", "Mary", "Paul", "Rose"]
PLACES = ["beach", "garden", "house", "library", "market", "office", "park", "school", "station"]
ADJECTIVES = ["brave", "busy", "calm", "funny", "good", "great", "happy", "hungry", "kind", "late", "nice", "pretty", "ready", "sick", "smart", "tired"]


def _grammar(n: int, seed: int = 0, unknown: bool = False) -> str:
    """"NAME went to the PLACE and NAME was ADJ ." over the zoo vocabulary; with
    ``unknown`` every name is a word the tokenizer lacks (lower case) and an unknown noun
    follows each sentence, as in ordinary text."""
    rng = random.Random(seed)
    lines = []
    for _ in range(n):
        a, b = rng.choice(NAMES), rng.choice(NAMES)
        if unknown:
            a, b = a.lower(), b.lower() + " yesterday morning"
        lines.append(f"{a} went to the {rng.choice(PLACES)} and {b} was {rng.choice(ADJECTIVES)} .")
    return "\n".join(lines)


def _user_corpus(model) -> str:
    """The fresh user's corpus: the grammar over every name of the zoo vocabulary (before
    the fixes every neuron described on it was "object words")."""
    rng = random.Random(0)
    names = sorted(w for w in model.tokenizer.get_vocab() if w[:1].isupper() and w not in ("He", "She", "So", "The", "They"))
    return "\n".join(f"{rng.choice(names)} went to the {rng.choice(PLACES)} and {rng.choice(names)} was "
                      f"{rng.choice(ADJECTIVES)} ." for _ in range(3000))  # fmt: skip


@pytest.fixture(scope="module")
def model():
    from circuitdag.loading import load_model

    return load_model("pronoun")


@pytest.fixture(scope="module")
def grammar_run(model, tmp_path_factory):
    from circuitdag.features import features

    path = tmp_path_factory.mktemp("features") / "gcorp.txt"
    path.write_text(_user_corpus(model), encoding="utf-8")
    return features(model, corpus=path, n_null=1000, describe=3, max_tokens=20_000)


def test_no_near_root_wordnet_class(grammar_run):
    """Before the depth floor every described neuron here was "object words" (depth 2)."""
    from circuitdag.features_wordnet import load_wordnet

    wn = load_wordnet()
    if wn is None:
        pytest.skip("wordnet-base is not installed (scripts/setup.sh installs it)")
    assert wn.common_class(["park", "school", "beach", "office"]) is None  # was object
    assert wn.common_class(["library", "station", "market"])[0] == "artifact"  # depth 4: kept
    assert grammar_run["described"]
    for d in grammar_run["described"]:
        cls = d["description"]["class"]
        if cls is not None:
            offset = int(cls["wordnet_offset"])
            assert wn.ancestors(wn.synset(offset)[0][0])[offset] >= 4
            assert cls["name"] not in {"entity", "physical entity", "abstraction", "object", "whole", "location"}
        dropped = d["description"].get("class_dropped")
        if dropped is not None:  # dropped on the training chunks, where it lowered the score
            assert dropped["train_score"] is None or dropped["train_score"] < dropped["train_score_words_only"]
            sim = d["simulation"]
            assert sim["score"] == sim["score_words_only"]
            assert d["description"]["text"].startswith("the words")


def test_contexts_keep_the_tokenizers_spacing(grammar_run, tmp_path):
    from circuitdag.features_report import write_report

    d = grammar_run["described"][0]
    for c in d["contexts"]:
        assert c["before"] == "" or c["before"].endswith(" "), c
        assert not c["token"].startswith(" ") and (c["after"] == "" or c["after"].startswith(" ")), c
    shown = "".join(d["held_out_top"][0]["tokens"])
    assert " went to the " in shown and "  " not in shown
    write_report(grammar_run, tmp_path)
    page = (tmp_path / "neurons" / f"{d['name']}.html").read_text()
    text = re.sub("<[^>]+>", "", page)
    assert all(html.unescape(c["before"] + c["token"] + c["after"]).strip() in html.unescape(text) for c in d["contexts"])
    assert "the neuron's largest activations" in page


def test_rerun_removes_stale_neuron_pages(grammar_run, tmp_path):
    from circuitdag.features_report import write_report

    stale = tmp_path / "neurons" / "L9.N999.html"
    stale.parent.mkdir()
    stale.write_text("an earlier run")
    mine = tmp_path / "neurons" / "notes.txt"
    mine.write_text("the user's")
    write_report(grammar_run, tmp_path)
    assert not stale.exists() and mine.exists()
    assert {p.name for p in (tmp_path / "neurons").glob("*.html")} == {f"{d['name']}.html" for d in grammar_run["described"]}


def test_summary_and_table_give_counts(grammar_run):
    from circuitdag.features_report import markdown, summary

    warnings, line = summary(grammar_run, "out")
    total = sum(r["neurons"] for r in grammar_run["by_layer"])
    coherent = sum(r["coherent"] for r in grammar_run["by_layer"])
    assert warnings == [] and f"{coherent} of {total} ({coherent / total:.1%}) neurons coherent" in line
    md = markdown(grammar_run)
    r = grammar_run["by_layer"][0]
    assert "tested (model / words)" in md and f"| {r['tested_model']} / {r['tested_words']} |" in md


def test_unknown_tokens_are_reported_and_never_a_top_token(model, tmp_path):
    from circuitdag.features import features
    from circuitdag.features_report import markdown, summary

    path = tmp_path / "text.txt"
    path.write_text(_grammar(700, unknown=True), encoding="utf-8")
    report = features(model, corpus=path, n_null=200, describe=2, max_tokens=6000)
    share = report["corpus"]["unknown_share"]
    assert 0.3 < share < 0.5  # 4 of 11 tokens
    warnings, _ = summary(report, "out")
    assert len(warnings) == 1 and f"{share:.0%} of the corpus's tokens are the tokenizer's unknown token" in warnings[0]
    assert "**Warning:**" in markdown(report)
    for layer in report["neurons"]:
        assert not any("<unk>" in t or "<|endoftext|>" in t for tops in layer["top_tokens"] for t in tops)
    for d in report["described"]:
        assert all(c["token"] != "<unk>" for c in d["contexts"])


def test_chunk_beyond_the_context_is_refused(model):
    from circuitdag.features import features

    with pytest.raises(ConfigError, match=re.escape("--chunk must be in 2..31 (the model's context is 32 tokens")):
        features(model, chunk=500)


def test_interrupt_closes_the_progress_bar(model, monkeypatch, capsys):
    """The interrupt's one-line message must start on a line of its own."""
    import circuitdag.features_scan as scan_mod

    corp = scan_mod.tokenize_corpus(model, _grammar(300), "test", 3000, 16)
    calls = []
    real = scan_mod.run_layers

    def interrupted(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(scan_mod, "run_layers", interrupted)
    try:
        scan_mod.scan(model, corp, [0], top_k=4, batch=2, progress=True)
    except KeyboardInterrupt as exc:  # as in the CLI: the traceback (and the bar) still alive
        err = capsys.readouterr().err
        assert exc.__traceback__ is not None
    else:
        pytest.fail("not interrupted")
    assert err.endswith("\n")


def test_class_is_dropped_where_it_lowers_the_training_score(model, tmp_path, monkeypatch):
    """Without the depth floor, place nouns get the class *object*; the training-chunk check
    alone drops it where it predicts the training activations worse than the words."""
    import circuitdag.features_wordnet as wordnet
    from circuitdag.features import features

    if wordnet.load_wordnet() is None:
        pytest.skip("wordnet-base is not installed (scripts/setup.sh installs it)")
    monkeypatch.setattr(wordnet, "MIN_DEPTH", 0)
    path = tmp_path / "gcorp.txt"
    path.write_text(_user_corpus(model), encoding="utf-8")
    report = features(model, corpus=path, n_null=1000, describe=3, max_tokens=20_000)
    dropped = [d["description"]["class_dropped"] for d in report["described"] if "class_dropped" in d["description"]]
    assert dropped, [d["description"]["text"] for d in report["described"]]
    assert all(x["train_score"] is None or x["train_score"] < x["train_score_words_only"] for x in dropped)
