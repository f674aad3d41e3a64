"""Every architecture a researcher brings (issue 25): for each Hugging Face architecture
TransformerBridge boots, a tiny random model (2 layers, d_model 64, 4 heads, grouped-query
or multi-query attention where the architecture has it, every other setting the
transformers default, the word-level tokenizer of conftest) is built here offline, saved
with save_pretrained and loaded as a user's model directory. An architecture circuitdag
patches must pass the hook check and give, in float64, the identical circuit from fast ACDC
and the reference (plain and position-aware), gradients of the masked pass that equal EAP,
a finite EAP-IG and the neuron analysis; one it does not is refused in one line naming the
architecture and the feature in the way.

docs/models.md's architecture table is generated from :data:`ARCHITECTURES`
(:func:`markdown_table`; ``test_docs_table_is_generated`` fails when they differ, and
``CIRCUITDAG_WRITE_DOCS=1`` rewrites it).
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from conftest import _perturb_norms_and_biases, _save_word_tokenizer, tiny_vocab_size

L, D, H, KV, F, P = 2, 64, 4, 2, 128, 32

# Random models do no task: the warnings saying so are expected here (and tested below).
pytestmark = [pytest.mark.filterwarnings("ignore:.*barely does this task"),
              pytest.mark.filterwarnings("ignore:.*does not prefer the correct answer")]  # fmt: skip


@dataclass(frozen=True)
class Arch:
    """One row of the matrix: the transformers config class, its settings beyond the
    shared sizes, and ``refused`` (None: every mode works; else the feature that makes
    circuitdag refuse it, as the one-line error names it)."""

    name: str
    config: str
    kwargs: dict[str, Any] = field(default_factory=dict)
    family: str = ""
    refused: str | None = None
    slow: bool = False  # run the full matrix only with the slow tests (CI time)
    bpe: bool = False  # transformers loads this architecture's tokenizer as byte-level BPE, whatever was saved
    neurons_refused: str | None = None  # the neuron analysis refuses it in one line, saying this
    weight_std: float = 0.15  # 0: transformers' own initialisation

    def build(self, path: Path) -> Path:
        import transformers

        vocab = _save_bpe_tokenizer(path) if self.bpe else tiny_vocab_size()
        torch.manual_seed(0)
        cfg = getattr(transformers, self.config)(**{**self.kwargs, "vocab_size": vocab, "bos_token_id": 0,
                                                    "eos_token_id": 0, "pad_token_id": 0})  # fmt: skip
        model = transformers.AutoModelForCausalLM.from_config(cfg).eval()
        with torch.no_grad():  # transformers' init (std 0.02) gives a metric gap of 1e-3: a model doing nothing
            for p in model.parameters():
                if p.dim() >= 2 and self.weight_std:
                    p.normal_(0.0, self.weight_std)
        _perturb_norms_and_biases(model)
        model.save_pretrained(path)
        if not self.bpe:
            _save_word_tokenizer(path)
        return path


def _save_bpe_tokenizer(path: Path) -> int:
    """A byte-level BPE tokenizer trained on conftest's words, each a token with and without
    a leading space (Qwen2's tokenizer class rebuilds any saved tokenizer as byte-level BPE,
    which turns the word-level one into nonsense); returns its vocabulary size."""
    from conftest import TINY_WORDS
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=1000, special_tokens=["<|endoftext|>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())  # fmt: skip
    tok.train_from_iterator([w for word in TINY_WORDS for w in (word, " " + word)] * 2, trainer)
    PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<|endoftext|>", eos_token="<|endoftext|>",
                            pad_token="<|endoftext|>").save_pretrained(path)  # fmt: skip
    return int(tok.get_vocab_size())


_GQA = {"num_hidden_layers": L, "hidden_size": D, "num_attention_heads": H, "num_key_value_heads": KV,
        "intermediate_size": F, "max_position_embeddings": P}  # fmt: skip
_MHA = {"num_hidden_layers": L, "hidden_size": D, "num_attention_heads": H, "intermediate_size": F,
        "max_position_embeddings": P}  # fmt: skip

#: The matrix (docs/models.md's table is generated from it).
ARCHITECTURES = [
    Arch("gpt2", "GPT2Config", {"n_layer": L, "n_embd": D, "n_head": H, "n_positions": P}, "GPT-2", slow=True),
    Arch("llama", "LlamaConfig", _GQA, "Llama, SmolLM2", slow=True),
    Arch("qwen2", "Qwen2Config", _GQA, "Qwen2", slow=True, bpe=True),
    Arch("qwen3", "Qwen3Config", {**_GQA, "head_dim": 16}, "Qwen3", slow=True),
    Arch("gemma", "GemmaConfig", {**_GQA, "head_dim": 16}, "Gemma", slow=True),
    Arch("mistral", "MistralConfig", _GQA, "Mistral", slow=True),
    Arch("phi3", "Phi3Config", _GQA, "Phi-3", slow=True),
    Arch("stablelm", "StableLmConfig", _GQA, "StableLM", slow=True),
    Arch("olmo", "OlmoConfig", _GQA, "OLMo", slow=True),
    Arch("gpt_neox", "GPTNeoXConfig", _MHA, "GPT-NeoX, Pythia (parallel attention + MLP)"),
    Arch("phi", "PhiConfig", _MHA, "Phi-1, Phi-2 (parallel, one shared norm)", slow=True),
    Arch("falcon", "FalconConfig", {"num_hidden_layers": L, "hidden_size": D, "num_attention_heads": H,
                                    "max_position_embeddings": P}, "Falcon (parallel, multi-query)"),
    Arch("gptj", "GPTJConfig", {"n_layer": L, "n_embd": D, "n_head": H, "n_positions": P, "rotary_dim": 8},
         "GPT-J (parallel; per-head inputs and results emulated)"),
    Arch("opt", "OPTConfig", {**_MHA, "ffn_dim": F, "word_embed_proj_dim": D}, "OPT (per-head inputs and results "
         "emulated)", slow=True),
    Arch("gpt_neo", "GPTNeoConfig", {"num_layers": L, "hidden_size": D, "num_heads": H, "max_position_embeddings": P,
                                     "attention_types": [[["global", "local"], 1]], "window_size": 4},
         "GPT-Neo (per-head inputs and results emulated)", slow=True),
    Arch("gemma2", "Gemma2Config", {**_GQA, "head_dim": 16}, "Gemma 2 (post-sublayer norms, attention and "
         "logit soft-capping)"),
    Arch("gemma3", "Gemma3TextConfig", {**_GQA, "head_dim": 16}, "Gemma 3 (text; post-sublayer norms, per-head "
         "q/k norms)", slow=True),
    Arch("olmo2", "Olmo2Config", _GQA, "OLMo 2 (post-sublayer norms only; query/key norms over all heads, "
         "applied per head)", slow=True),
    Arch("bloom", "BloomConfig", {"n_layer": L, "hidden_size": D, "n_head": H}, "BLOOM (ALiBi; per-head inputs "
         "emulated, its own q_input is after the norm)", slow=True),
]  # fmt: skip

WORKS = [a for a in ARCHITECTURES if a.refused is None]
REFUSED = [a for a in ARCHITECTURES if a.refused is not None]


def _param(arch: Arch) -> Any:
    return pytest.param(arch, id=arch.name, marks=[pytest.mark.slow] if arch.slow else [])


#: Short prompts over the conftest tokenizer's words (the name decides the pronoun): a
#: position-aware graph has an edge per position pair, and the reference tries each.
PROMPTS = [
    {"clean": f"{a} is {adj}", "corrupted": f"{b} is {adj}", "correct": ca, "wrong": cb}
    for (a, ca), (b, cb) in [(("john", "he"), ("mary", "she")), (("anna", "she"), ("tom", "he"))]
    for adj in ("great", "nice", "good")
]  # fmt: skip


#: Fewer and shorter prompts for the comparisons with the reference ACDC, which runs one
#: full pass per edge: a position-aware graph on these has 308 edges where PROMPTS gives
#: 463 (Llama), and the reference's cost follows the edges.
SHORT = [{"clean": f"{a} is", "corrupted": f"{b} is", "correct": ca, "wrong": cb}
         for (a, ca), (b, cb) in [(("john", "he"), ("mary", "she")), (("anna", "she"), ("tom", "he"))]]  # fmt: skip


@pytest.fixture(scope="module")
def model_dirs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Built on first use, one directory per architecture."""
    return {}


def _load(arch: Arch, dirs: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> Any:
    from circuitdag.models import load_model

    if arch.name not in dirs:
        dirs[arch.name] = arch.build(tmp_path_factory.mktemp(arch.name))
    return load_model(str(dirs[arch.name]), dtype=torch.float64)


@pytest.fixture(scope="module")
def loaded() -> dict[str, Any]:
    """Each architecture's model, loaded on first use (see :func:`shared_model`)."""
    return {}


@pytest.fixture
def shared_model(model_dirs, loaded, tmp_path_factory):
    """``shared_model(arch)``: the architecture's model, loaded once per module and shared
    by the tests that only read it (each test loaded its own: 66 loads). After the test,
    the model's parameters, buffers, config, hooks and modes must be what they were: a
    test that changed the model fails here, and the model is loaded again for the next."""
    got: list[tuple[str, Any, tuple[Any, ...]]] = []

    def get(arch: Arch) -> Any:
        if arch.name not in loaded:
            loaded[arch.name] = _load(arch, model_dirs, tmp_path_factory)
        got.append((arch.name, loaded[arch.name], _fingerprint(loaded[arch.name])))
        return loaded[arch.name]

    yield get
    for name, model, before in got:
        if _fingerprint(model) != before:
            loaded.pop(name, None)
            pytest.fail(f"the test changed the shared {name} model (parameters, config, hooks or modes)")


def _fingerprint(model: Any) -> tuple[Any, ...]:
    """What a test could change of a model: its parameters and buffers (their bytes, dtypes
    and requires_grad), its config, the hooks on its modules and their train/eval modes."""
    import hashlib

    digest = hashlib.sha256()
    for name, t in model.state_dict(keep_vars=True).items():
        digest.update(f"{name}:{t.dtype}:{tuple(t.shape)}:{t.requires_grad}".encode())
        digest.update(t.detach().cpu().contiguous().view(torch.uint8).numpy().tobytes())
    hooks = [(len(m._forward_hooks), len(m._forward_pre_hooks), len(m._backward_hooks),
              len(getattr(m, "_backward_pre_hooks", ())), m.training) for m in model.modules()]  # fmt: skip
    return digest.hexdigest(), repr(sorted(vars(model.cfg).items(), key=lambda kv: kv[0])), hooks


def _task(prompts: list[dict[str, str]] = PROMPTS) -> Any:
    from circuitdag.tasks.base import Task

    return Task.from_prompts(prompts)


@pytest.mark.parametrize("arch", [_param(a) for a in WORKS])
def test_fast_acdc_equals_the_reference(arch: Arch, shared_model) -> None:
    """Fast and reference ACDC give the identical circuit, plain and position-aware, with
    scores within 1e-9 of the largest score (float64); the hook check passes within its
    tolerance."""
    import circuitdag as cd
    from circuitdag.models.check import check_hooks

    model = shared_model(arch)
    assert check_hooks(model).margin < 1
    task = _task(SHORT)
    for positions in (False, True):
        fast = cd.discover(model, task, "acdc", metric="kl", positions=positions, relative_threshold=0.02)
        ref = cd.discover(model, task, "acdc-reference", metric="kl", positions=positions, relative_threshold=0.02)
        np.testing.assert_array_equal(fast.in_circuit, ref.in_circuit)
        tested = ~np.isnan(ref.scores)
        np.testing.assert_array_equal(tested, ~np.isnan(fast.scores))
        scale = np.abs(ref.scores[tested]).max()
        np.testing.assert_allclose(fast.scores[tested], ref.scores[tested], rtol=0, atol=1e-9 * scale)
        assert 0 < ref.in_circuit.sum() < ref.in_circuit.size, "the matrix should test a real decision"


@pytest.mark.parametrize("arch", [pytest.param(a, id=a.name, marks=[pytest.mark.slow] if a.name != "gpt_neox" else [])
                                  for a in WORKS if a.name in ("gpt_neox", "falcon", "llama")])  # fmt: skip
def test_neuron_nodes_on_the_component_path(arch: Arch, shared_model) -> None:
    """MLP 1 split into neuron nodes: fast ACDC on the component path equals the reference.
    In a parallel block each neuron reads the block's input (Falcon's through the norm it
    shares with the attention); Llama's kernels compute the softmax in float32, as Hugging
    Face's attention does even in a float64 model (they missed by 1-2e-7 and were refused)."""
    import circuitdag as cd

    model = shared_model(arch)
    fast = cd.discover(model, _task(SHORT), "acdc", metric="kl", neurons=[1], relative_threshold=0.02)
    ref = cd.discover(model, _task(SHORT), "acdc-reference", metric="kl", neurons=[1], relative_threshold=0.02)
    assert fast.meta["stats"]["fast_path"] == "components"
    np.testing.assert_array_equal(fast.in_circuit, ref.in_circuit)
    tested = ~np.isnan(ref.scores)
    np.testing.assert_allclose(fast.scores[tested], ref.scores[tested], rtol=0,
                               atol=1e-9 * np.abs(ref.scores[tested]).max())  # fmt: skip
    parallel = arch.name != "llama"
    assert any(name.startswith("a1.") and "->m1." in name for name in fast.graph.edge_names) != parallel
    assert any(name.startswith("a0.") and "->m1." in name for name in fast.graph.edge_names)


def test_neuron_nodes_after_a_post_sublayer_norm_are_refused_in_one_line(shared_model) -> None:
    """Gemma 2's MLP output is normalised before it reaches the residual, so its neurons do
    not add up to what the residual receives: --neurons is refused naming that."""
    from circuitdag.errors import ModelError
    from circuitdag.prepare import prepare

    model = shared_model(next(a for a in WORKS if a.name == "gemma2"))
    with pytest.raises(ModelError, match="post-sublayer norm follows the MLP") as err:
        prepare(model, _task(), metric="kl", neurons=[1])
    assert "\n" not in str(err.value)


@pytest.mark.parametrize("arch", [_param(a) for a in WORKS])
def test_masked_pass_gradient_is_eap_and_eap_ig_runs(arch: Arch, shared_model) -> None:
    """The differentiable masked pass equals exact patching at 0/1 masks and its gradient at
    the full model is minus EAP's scores; EAP-IG gives a finite score for every edge."""
    import circuitdag as cd
    from circuitdag.attribution import attribute
    from circuitdag.masked import masked_metric
    from circuitdag.prepare import prepare

    model = shared_model(arch)
    patcher, _ = prepare(model, _task(), metric="logit_diff")
    n = patcher.graph.n_edges
    alive = np.random.default_rng(0).random(n) < 0.5
    mask = torch.as_tensor(alive, dtype=torch.float64).requires_grad_(True)
    value = masked_metric(patcher, mask)
    assert abs(value.item() - patcher.circuit_metric(alive)) <= 1e-9 * (1 + abs(value.item()))
    ones = torch.ones(n, dtype=torch.float64, requires_grad=True)
    (grad,) = torch.autograd.grad(masked_metric(patcher, ones), ones)
    eap = attribute(patcher, "eap").scores
    np.testing.assert_allclose(-grad.numpy(), eap, rtol=1e-6, atol=1e-9 * np.abs(eap).max())
    ig = cd.discover(model, _task(), "eap-ig", metric="logit_diff", edges=20)
    assert np.isfinite(ig.scores).all() and 0 < ig.in_circuit.sum() <= 20


@pytest.mark.parametrize("arch", [_param(a) for a in WORKS])
def test_neuron_analysis_runs(arch: Arch, shared_model) -> None:
    """The neuron analysis (logit lens, patching, neurons, DLA, congruence) runs on the model
    and reports finite numbers, or is refused in one line where the model has no hook for a
    site it reads."""
    from circuitdag.errors import ModelError
    from circuitdag.neurons import analyze_neurons

    model = shared_model(arch)
    if arch.neurons_refused is not None:
        with pytest.raises(ModelError, match=arch.neurons_refused) as err:
            analyze_neurons(model, _task(), layers=[1], corpus_tokens=0)
        assert "\n" not in str(err.value)
        return
    result = analyze_neurons(model, _task(), layers=[1], corpus_tokens=0)
    report = result.to_dict()
    assert report and all(np.isfinite(v) for v in _numbers(report))


@pytest.mark.slow
def test_bloom_attention_output_is_patched_in_the_stream(shared_model) -> None:
    """BLOOM's attention adds the residual stream itself (no hook holds its output alone):
    the neuron analysis reads ``attn_out`` as ``attn.hook_out - resid_pre`` and writes a patch
    of it on top of the block's input. Zero-ablating layer 1's attention output that way
    equals a pass whose ``attn.hook_out`` is replaced by the block's input read in the same
    pass."""
    from circuitdag.neurons._runs import cache_runs, run_to_final
    from circuitdag.neurons.activation_patching import patched_metric
    from circuitdag.tasks.base import load_data

    arch = next(a for a in WORKS if a.name == "bloom")
    model = shared_model(arch)
    runs = cache_runs(model, load_data(_task(), model))
    assert runs.attn_out_in_stream
    got = patched_metric(runs, 1, "clean", 1, lambda x: torch.zeros_like(x), *runs.attn_out_hook(1))
    seen: dict[str, torch.Tensor] = {}
    hooks = [("blocks.1.hook_resid_pre", lambda x, hook: seen.update(x=x)),
             ("blocks.1.attn.hook_out", lambda x, hook: seen["x"])]  # fmt: skip
    final = run_to_final(model, runs.clean["resid_pre"][1], 1, hooks)
    want = runs.logit_diff(final.unsqueeze(0)).mean((1, 2))
    assert abs(got.item() - want.item()) <= 1e-9 * (1 + abs(want.item()))
    assert abs(got.item() - runs.metric_clean) > 1e-6  # the patch did something


def _numbers(obj: Any) -> list[float]:
    if isinstance(obj, dict):
        return [x for v in obj.values() for x in _numbers(v)]
    if isinstance(obj, (list, tuple)):
        return [x for v in obj for x in _numbers(v)]
    return [float(obj)] if isinstance(obj, (int, float)) and not isinstance(obj, bool) else []


@pytest.mark.parametrize("arch", [_param(a) for a in REFUSED] or [
    pytest.param(replace(next(a for a in WORKS if a.name == "gpt_neox"), refused="a feature in the way"),
                 id="gpt_neox-as-if-refused")])  # fmt: skip
def test_refused_in_one_line(arch: Arch, model_dirs, tmp_path_factory, monkeypatch) -> None:
    """An architecture in ``models.check.REFUSED`` is refused at load in one line naming it and
    the feature (every architecture of the matrix works: one that works stands in)."""
    from circuitdag.errors import ModelError
    from circuitdag.models import check

    if arch.name not in [a.name for a in REFUSED]:
        monkeypatch.setitem(check.REFUSED, "GPTNeoXForCausalLM", arch.refused)
    with pytest.raises(ModelError) as err:
        _load(arch, model_dirs, tmp_path_factory)
    text = str(err.value)
    assert "\n" not in text and arch.refused in text and "ForCausalLM" in text and "docs/models.md" in text


def test_a_random_model_is_called_one(tmp_path: Path) -> None:
    """A model with tiny random weights does no task: discover and the neuron analysis
    say that its metric gap is negligible (a random StableLM reported faithfulness 49.4 and
    the neuron analysis 274% from a 0.001-logit gap, without a word)."""
    import circuitdag as cd
    from circuitdag.models import load_model
    from circuitdag.neurons import analyze_neurons

    path = Arch("stablelm", "StableLmConfig", _GQA, weight_std=0.002).build(tmp_path / "stablelm")
    model = load_model(str(path), dtype=torch.float64)
    with pytest.warns(UserWarning, match="barely does this task"):
        cd.discover(model, _task(), "eap-ig", metric="kl", edges=5)
    with pytest.warns(UserWarning, match="neurons: the (model barely does this task|full model does not prefer)"):
        analyze_neurons(model, _task(), layers=[1], corpus_tokens=0)


def test_unknown_architecture_is_one_line(tmp_path: Path) -> None:
    """An architecture TransformerBridge does not know (Persimmon) is named in one line
    that points to the list (it was 4,089 characters listing 160 architectures)."""
    from circuitdag.errors import ModelError

    path = Arch("persimmon", "PersimmonConfig", _MHA).build(tmp_path / "persimmon")
    with pytest.raises(ModelError) as err:
        _load(Arch("persimmon", "PersimmonConfig"), {"persimmon": path}, None)  # type: ignore[arg-type]
    text = str(err.value)
    assert "\n" not in text and len(text) < 300 and "PersimmonForCausalLM" in text and "docs/models.md" in text


# ---------------------------------------------------------------------- the docs table
DOCS = Path(__file__).resolve().parents[1] / "docs" / "models.md"
BEGIN, END = "<!-- architectures: generated by tests/test_architectures.py -->", "<!-- end of architectures -->"


def markdown_table() -> str:
    """docs/models.md's table of architectures, from :data:`ARCHITECTURES`."""
    head = "| architecture (transformers config) | family | discover (fast = reference, positions), eap-ig, neurons |"
    rows = [head, "|---|---|---|"]
    for a in ARCHITECTURES:
        status = f"refused in one line: {a.refused}" if a.refused else "works"
        if a.neurons_refused:
            status += f" (the neuron analysis refuses it in one line: {a.neurons_refused})"
        status += " (slow tests)" if a.slow and not a.refused else ""
        rows.append(f"| `{a.config}` | {a.family} | {status} |")
    return "\n".join([BEGIN, *rows, END])


def test_docs_table_is_generated() -> None:
    text = DOCS.read_text()
    table = markdown_table()
    if os.environ.get("CIRCUITDAG_WRITE_DOCS") and BEGIN in text:
        text = re.sub(re.escape(BEGIN) + ".*?" + re.escape(END), lambda m: table, text, flags=re.DOTALL)
        DOCS.write_text(text)
    assert table in text, "run CIRCUITDAG_WRITE_DOCS=1 pytest tests/test_architectures.py -k docs"
