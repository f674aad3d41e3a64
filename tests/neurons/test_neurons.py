"""The neuron analysis: exact batched patching, the DLA identity, chunked mutual congruence,
a planted " an" neuron found by every method, and the command on a local GPT-2 directory."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

from circuitdag.cli import main
from circuitdag.models import load_model
from circuitdag.models.bridge import load_bridge
from circuitdag.neurons import cache_runs, logit_lens, mutual_congruence, patch_neurons
from circuitdag.neurons._runs import final_scale, w_out
from circuitdag.neurons.corpus import FORTUNES_DIR, corpus_activation, default_corpus
from circuitdag.neurons.dla import direct_logit_attribution, neuron_dla
from circuitdag.tasks import Task, get_task

torch.set_num_threads(1)

# Prompts over tests/conftest.py's TINY_WORDS: the noun decides " an" / " a".
_ROWS = [
    ("he climbed the apple tree and picked", "he climbed the cat tree and picked", "an", "a"),
    ("she climbed the orange tree and picked", "she climbed the dog tree and picked", "an", "a"),
    ("he climbed the cat tree and picked", "he climbed the egg tree and picked", "a", "an"),
    ("she climbed the dog tree and picked", "she climbed the apple tree and picked", "a", "an"),
]


def _plain_hook_metric(runs, layer: int, neuron: int, ablation: str) -> float:
    """Mean logit difference with one neuron patched by a plain hook in a full forward pass."""
    d = runs.data
    tokens = d.corrupted if ablation == "resample" else d.clean
    value = {"resample": runs.clean["post"][layer][..., neuron], "zero": torch.zeros_like(d.clean, dtype=runs.clean["post"].dtype),
             "mean": runs.clean["post"][layer][..., neuron].mean(0, keepdim=True)}[ablation]  # fmt: skip

    def hook(x, hook):
        x = x.clone()
        x[..., neuron] = value
        return x

    with torch.no_grad():
        logits = runs.model.run_with_hooks(tokens, fwd_hooks=[(f"blocks.{layer}.mlp.hook_post", hook)])
    rows = torch.arange(d.n_prompts).unsqueeze(1)
    at = logits[rows, d.answer_pos]
    return float((at.gather(-1, d.correct.unsqueeze(-1)) - at.gather(-1, d.wrong.unsqueeze(-1))).mean())


@pytest.mark.parametrize("which", ["tiny_gpt2_dir", "tiny_llama_dir"])
@pytest.mark.parametrize("ablation", ["resample", "zero", "mean"])
def test_batched_neuron_patching_equals_one_neuron_at_a_time(which: str, ablation: str, request) -> None:
    model = load_bridge(request.getfixturevalue(which), dtype=torch.float64)
    task = Task.from_prompts(_ROWS)
    runs = cache_runs(model, task.data(model))
    # A small budget forces several neurons per pass and several passes per layer.
    got = patch_neurons(runs, [0, 1], ablation, budget_bytes=2e6)
    for layer in (0, 1):
        for neuron in (0, 5, runs.d_mlp - 1):
            want = runs.effect(torch.tensor(_plain_hook_metric(runs, layer, neuron, ablation), dtype=torch.float64), ablation)
            assert float(got.effect[layer][neuron]) == pytest.approx(float(want), abs=1e-9)
    assert got.effect[0].abs().max() > 0  # the comparison above is not between zeros


@pytest.mark.parametrize("which", ["tiny_gpt2_dir", "tiny_llama_dir"])
def test_dla_sums_to_the_logit_difference(which: str, request) -> None:
    """LayerNorm (GPT-2) and RMSNorm with a gated MLP (Llama): the direct paths of the
    embedding, every attention and MLP output and the unembedding bias add up to the
    model's logit difference; a layer's neurons plus its output bias to its MLP's."""
    model = load_bridge(request.getfixturevalue(which), dtype=torch.float64)
    runs = cache_runs(model, Task.from_prompts(_ROWS).data(model))
    d = runs.data
    rows = torch.arange(d.n_prompts).unsqueeze(1)
    at = lambda x: x[..., rows, d.answer_pos, :]
    parts = [runs.clean["resid_pre"][0]] + list(runs.clean["attn_out"]) + list(runs.clean["mlp_out"])
    total = sum(direct_logit_attribution(runs, at(p)) for p in parts) + runs.bias
    assert torch.allclose(total, runs.ld_clean, atol=1e-9)
    # The scale is the final norm's own (the bridge's ln_final.hook_scale).
    _, cache = model.run_with_cache(d.clean)
    assert torch.allclose(final_scale(model, at(runs.clean["final"])), at(cache["ln_final.hook_scale"]).squeeze(-1))
    dla = neuron_dla(runs)
    W = w_out(model).detach()
    for L in range(runs.spec.n_layers):
        bias = at(runs.clean["mlp_out"][L]) - at(runs.clean["post"][L]) @ W[L]  # b_out (0 for Llama)
        whole = direct_logit_attribution(runs, at(runs.clean["mlp_out"][L])).mean()
        assert float(dla.clean[L].sum() + direct_logit_attribution(runs, bias).mean()) == pytest.approx(float(whole), abs=1e-9)


def test_logit_lens_ends_at_the_models_logit_difference() -> None:
    task = get_task("an-neuron")
    model = task.load_model()
    runs = cache_runs(model, task.data(model))
    lens = logit_lens(runs)
    with torch.no_grad():
        logits = model(runs.data.clean)[:, -1]
    d = runs.data
    want = float((logits.gather(1, d.correct) - logits.gather(1, d.wrong)).mean())
    assert lens.clean[-1] == pytest.approx(want, abs=1e-4)
    assert len(lens.labels) == 1 + 2 * runs.spec.n_layers


@pytest.mark.parametrize("chunk", [1, 3, 7, 100])
def test_chunked_mutual_congruence_equals_the_whole_matrix(chunk: int) -> None:
    g = torch.Generator().manual_seed(0)
    W_out, W_U = torch.randn(23, 8, generator=g, dtype=torch.float64), torch.randn(8, 17, generator=g, dtype=torch.float64)
    W_out[4] = 5 * W_U[:, 9]  # one clear mutual pair
    mc = mutual_congruence(W_out, W_U, chunk=chunk)
    C = W_out @ W_U
    rt, ct = C.topk(2, dim=1), C.topk(2, dim=0)
    pairs = {(n, int(rt.indices[n, 0])) for n in range(23) if int(ct.indices[0, rt.indices[n, 0]]) == n}
    assert {tuple(p) for p in mc.pairs.tolist()} == pairs
    for (n, t), s in zip(mc.pairs.tolist(), mc.scores.tolist()):
        assert s == pytest.approx(float((rt.values[n, 0] - rt.values[n, 1]) * (ct.values[0, t] - ct.values[1, t])))
    assert mc.pairs[0].tolist() == [4, 9] and mc.partner_of_token(9) == 4
    assert mc.scores.diff().le(0).all()


def _plant(src: Path, dst: Path, layer: int, neuron: int) -> None:
    """Copy the zoo ``an`` model and make one neuron an " an" neuron: it reads the
    vowel-vs-consonant direction of its MLP input at the last position and writes
    W_U["an"] - W_U["a"]."""
    from transformers import AutoTokenizer, GPT2LMHeadModel

    shutil.copytree(src, dst)
    hf = GPT2LMHeadModel.from_pretrained(dst).eval()
    tok = AutoTokenizer.from_pretrained(dst)
    task = get_task("an-neuron")
    data = task.data(load_model("an"))
    seen = {}
    h = hf.transformer.h[layer].ln_2.register_forward_hook(lambda m, i, o: seen.__setitem__("x", o[:, -1].detach()))
    with torch.no_grad():
        hf(data.clean)
    h.remove()
    an, a = tok.convert_tokens_to_ids(["an", "a"])
    vowel = data.correct[:, 0] == an
    mu_an, mu_a = seen["x"][vowel].mean(0), seen["x"][~vowel].mean(0)
    u = mu_an - mu_a
    c = 8.0 / u.norm() ** 2  # pre-activation +4 on " an" prompts, -4 on " a" prompts
    mlp = hf.transformer.h[layer].mlp
    wte = hf.transformer.wte.weight
    with torch.no_grad():
        mlp.c_fc.weight[:, neuron] = c * u
        mlp.c_fc.bias[neuron] = -c * u @ (mu_an + mu_a) / 2
        d = wte[an] - wte[a]
        mlp.c_proj.weight[neuron] = 6.0 * d / d.norm()
    hf.save_pretrained(dst)


def test_planted_neuron_ranks_first_everywhere(tmp_path: Path) -> None:
    """The command, through TransformerBridge on a local GPT-2-format directory, finds the
    planted neuron first by patching, by DLA and by mutual congruence."""
    from circuitdag.models.zoo import zoo_path

    model_dir = tmp_path / "planted"
    _plant(zoo_path("an"), model_dir, layer=1, neuron=200)
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("I saw an owl near the apple tree . She found the lemon bowl and took a lemon .\n" * 5)
    out = tmp_path / "out"
    rc = main(["neurons", "--task", "an-neuron", "--model", str(model_dir), "--n-prompts", "10", "--layer", "1",
               "--corpus", str(corpus), "--threads", "1", "-q", "--out", str(out)])  # fmt: skip
    assert rc == 0
    r = json.loads((out / "report.json").read_text())
    assert r["format"] == "circuitdag.neurons/1" and r["patched_layers"] == [1] and r["n_prompts"] == 10
    top = r["top_neuron"]
    assert (top["layer"], top["neuron"]) == (1, 200)
    assert top["dla_rank"] == 1 and r["agreement"]["dla_agrees"]
    assert r["agreement"]["mutual_agrees"] and top["mutual_rank"] == 1 and top["best_token_text"].strip() == "an"
    assert r["agreement"]["all_agree"]
    assert 0 < top["effect"] <= top["layer_effect"] + 0.05
    assert r["corpus"]["n_tokens"] == len(corpus.read_text().split())
    for name in ("report.md", "logit_lens.svg", "patching.svg", "neurons.svg", "corpus.svg"):
        assert (out / name).stat().st_size > 0
    md = (out / "report.md").read_text()
    assert "L1.N200" in md and "50%" in md and "all name the same neuron" in md


def test_default_corpus_is_debian_fortunes() -> None:
    text = default_corpus()
    assert len(text) > 100_000 and " an " in text
    model = load_model("an")
    an = model.tokenizer.convert_tokens_to_ids("an")
    bins = corpus_activation(model, 1, 0, an, text, str(FORTUNES_DIR), max_tokens=300, n_bins=4)
    assert sum(bins.count) == 300 and len(bins.edges) == 5 and bins.unknown_fraction > 0.5


def test_bad_input_is_refused_with_exit_2(tmp_path: Path, capsys) -> None:
    assert main(["neurons", "--task", "an-neuron", "--layer", "7", "-q", "--out", str(tmp_path)]) == 2
    assert "MLP layers 0..1" in capsys.readouterr().err
    assert main(["neurons", "--task", "an-neuron", "--corpus", str(tmp_path / "none.txt"), "-q",
                 "--out", str(tmp_path)]) == 2  # fmt: skip
    assert "cannot read --corpus" in capsys.readouterr().err
    assert main(["neurons", "--task", "an-neuron", "--metric", "kl", "-q", "--out", str(tmp_path)]) == 2
