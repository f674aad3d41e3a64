"""TransformerBridge loading and the hook contract, on tiny random HF models saved to disk."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM

from circuitdag.errors import ModelError
from circuitdag.graph import ModelSpec
from circuitdag.models import spec_of as model_spec
from circuitdag.models.bridge import check_hooks, load_bridge, resume, skip_blocks_below

PROMPTS = ["john is a really great friend , isn't", "the cat sat on the"]


@pytest.fixture(scope="module")
def gpt2(tiny_gpt2_dir: Path):
    return load_bridge(tiny_gpt2_dir)


@pytest.fixture(scope="module")
def llama(tiny_llama_dir: Path):
    return load_bridge(tiny_llama_dir)


def _hf_logits(path: Path, tokens: torch.Tensor, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    hf = AutoModelForCausalLM.from_pretrained(path, attn_implementation="eager", dtype=dtype).eval()
    with torch.no_grad():
        return hf(tokens).logits


@pytest.mark.parametrize("which", ["tiny_gpt2_dir", "tiny_llama_dir"])
def test_raw_weights_give_hf_logits(which: str, request: pytest.FixtureRequest) -> None:
    path = request.getfixturevalue(which)
    model = load_bridge(path, process_weights=False)
    tokens = model.to_tokens(PROMPTS[0])
    with torch.no_grad():
        logits = model(tokens)
    torch.testing.assert_close(logits, _hf_logits(path, tokens), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("which", ["gpt2", "llama"])
def test_processed_weights_give_hf_distribution(which: str, request: pytest.FixtureRequest) -> None:
    model = request.getfixturevalue(which)
    path = request.getfixturevalue(f"tiny_{which}_dir")
    tokens = model.to_tokens(PROMPTS[0])
    with torch.no_grad():
        logits = model(tokens)
    hf = _hf_logits(path, tokens)
    # centre_unembed shifts every position's logits by a constant: same softmax.
    torch.testing.assert_close(logits.log_softmax(-1), hf.log_softmax(-1), atol=1e-5, rtol=1e-5)


def test_model_spec(gpt2, llama) -> None:
    assert model_spec(gpt2) == ModelSpec(2, 4, 4, 64, False, False)
    spec = model_spec(llama)
    assert spec == ModelSpec(2, 4, 2, 64, False, False)
    assert spec.group == 2
    assert [spec.kv_head(h) for h in range(4)] == [0, 0, 1, 1]
    assert list(spec.query_heads(1)) == [2, 3]


def test_model_spec_of_tiny_transformer() -> None:
    from circuitdag.models.hooked import TinyConfig, TinyTransformer

    model = TinyTransformer(TinyConfig(n_layers=3, d_model=8, n_heads=2, d_head=4, d_vocab=5, n_ctx=4))
    assert model_spec(model) == ModelSpec(3, 2, 2, 8, True, False)


def test_check_hooks_on_tiny_transformer() -> None:
    from circuitdag.models.hooked import TinyConfig, TinyTransformer

    cfg = TinyConfig(
        n_layers=2, d_model=16, n_heads=2, d_head=4, d_vocab=7, n_ctx=8, d_mlp=16, normalization="LN"
    )
    model = TinyTransformer(cfg)
    torch.manual_seed(0)
    with torch.no_grad():
        for p in model.parameters():
            p.normal_()
    report = check_hooks(model)
    # The tiny transformer's only constants are the b_O of each layer.
    b_O = torch.stack([b.attn.b_O for b in model.blocks]).cumsum(0)
    torch.testing.assert_close(report.resid_offset[1:], b_O.detach(), atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("which", ["gpt2", "llama"])
def test_hook_shapes_and_pre_layernorm(which: str, request: pytest.FixtureRequest) -> None:
    model = request.getfixturevalue(which)
    spec = model_spec(model)
    tokens = model.to_tokens(PROMPTS)
    b, p = tokens.shape
    with torch.no_grad():
        _, cache = model.run_with_cache(tokens)
    for L in range(spec.n_layers):
        resid = cache[f"blocks.{L}.hook_resid_pre"]
        assert resid.shape == (b, p, spec.d_model)
        assert torch.equal(cache[f"blocks.{L}.hook_in"], resid)
        assert cache[f"blocks.{L}.hook_q_input"].shape == (b, p, spec.n_heads, spec.d_model)
        for x in "kv":
            inp = cache[f"blocks.{L}.hook_{x}_input"]
            assert inp.shape == (b, p, spec.n_kv_heads, spec.d_model)
            assert torch.equal(inp, resid.unsqueeze(2).expand_as(inp))
        assert cache[f"blocks.{L}.attn.hook_result"].shape == (b, p, spec.n_heads, spec.d_model)
        assert torch.equal(cache[f"blocks.{L}.hook_mlp_in"], cache[f"blocks.{L}.hook_resid_mid"])


def test_residual_decomposition_leaves_only_attention_output_biases(gpt2, llama) -> None:
    n = gpt2.cfg.n_layers
    report = check_hooks(gpt2)
    b_O = torch.stack([gpt2.blocks[L].attn.b_O for L in range(n)]).sum(0)
    assert b_O.abs().max() > 0.1  # the fixture's biases are not zero
    torch.testing.assert_close(report.resid_offset[-1], b_O.detach(), atol=1e-5, rtol=1e-5)
    # Llama has no biases at all: the decomposition is exact.
    assert check_hooks(llama).resid_offset.abs().max() < 1e-5


def test_gqa_kv_head_feeds_its_query_group(llama) -> None:
    spec = model_spec(llama)
    tokens = llama.to_tokens(PROMPTS[0])
    seen: dict[str, torch.Tensor] = {}

    def save(t: torch.Tensor, hook) -> None:
        seen[hook.name] = t.clone()

    def scramble_kv1(t: torch.Tensor, hook) -> torch.Tensor:
        t = t.clone()
        t[:, :, 1] = torch.randn_like(t[:, :, 1])
        return t

    with torch.no_grad():
        llama.run_with_hooks(tokens, fwd_hooks=[("blocks.1.attn.hook_result", save)])
        clean = seen["blocks.1.attn.hook_result"]
        llama.run_with_hooks(
            tokens, fwd_hooks=[("blocks.1.hook_v_input", scramble_kv1), ("blocks.1.attn.hook_result", save)]
        )
    moved = [
        h
        for h in range(spec.n_heads)
        if not torch.equal(seen["blocks.1.attn.hook_result"][:, :, h], clean[:, :, h])
    ]
    assert moved == list(spec.query_heads(1)) == [2, 3]


def test_hooks_context_run_with_hooks_and_start_at_layer(gpt2) -> None:
    tokens = gpt2.to_tokens(PROMPTS)

    def zero_head_1(t: torch.Tensor, hook) -> torch.Tensor:
        t = t.clone()
        t[:, :, 1] = 0
        return t

    with torch.no_grad():
        logits, cache = gpt2.run_with_cache(tokens)
        with gpt2.hooks(fwd_hooks=[("blocks.1.hook_v_input", zero_head_1)]):
            in_context = gpt2(tokens)
        after = gpt2(tokens)
        run = gpt2.run_with_hooks(tokens, fwd_hooks=[("blocks.1.hook_v_input", zero_head_1)])
        resumed = gpt2.run_with_hooks(
            cache["blocks.1.hook_resid_pre"],
            start_at_layer=1,
            fwd_hooks=[("blocks.1.hook_v_input", zero_head_1)],
        )
    assert not torch.allclose(in_context, logits)
    assert torch.equal(after, logits)  # the context removed its hook
    assert torch.equal(run, in_context)
    torch.testing.assert_close(resumed, run)


@pytest.mark.parametrize("which", ["gpt2", "llama"])
def test_resume_skips_lower_blocks(which: str, request: pytest.FixtureRequest) -> None:
    model = request.getfixturevalue(which)
    tokens = model.to_tokens(PROMPTS)
    calls: list[int] = []
    handles = [b.register_forward_hook(lambda *a, i=i: calls.append(i)) for i, b in enumerate(model.blocks)]
    fired: list[str] = []

    def double_v(t: torch.Tensor, hook) -> torch.Tensor:
        fired.append(hook.name)
        return 2 * t

    hooks = [("blocks.0.hook_v_input", double_v), ("blocks.1.hook_v_input", double_v)]
    try:
        with torch.no_grad():
            _, cache = model.run_with_cache(tokens)
            calls.clear()
            resumed = resume(model, cache["blocks.1.hook_resid_pre"], 1, fwd_hooks=hooks[1:])
            assert calls == [1]  # block 0 did no work
            fired.clear()
            resumed_all_hooks = resume(model, cache["blocks.1.hook_resid_pre"], 1, fwd_hooks=hooks)
            assert fired == ["blocks.1.hook_v_input"]  # hooks below the start do not fire
            full = model.run_with_hooks(tokens, fwd_hooks=hooks[1:])
    finally:
        for h in handles:
            h.remove()
    torch.testing.assert_close(resumed, full, atol=1e-5, rtol=1e-5)
    assert torch.equal(resumed_all_hooks, resumed)
    blocks = list(model.blocks)
    with skip_blocks_below(model, 1):
        assert model.blocks[0] is not blocks[0]
    assert list(model.blocks) == blocks  # restored


def test_right_padding_leaves_real_tokens_alone(gpt2) -> None:
    tokens = gpt2.to_tokens(PROMPTS, padding_side="right")
    short = gpt2.to_tokens(PROMPTS[1])
    with torch.no_grad():
        batch = gpt2(tokens)
        alone = gpt2(short)
    torch.testing.assert_close(batch[1, : short.shape[1]], alone[0], atol=1e-5, rtol=1e-5)


def test_to_tokens_prepend_bos(gpt2) -> None:
    with_bos = gpt2.to_tokens("the cat")
    without = gpt2.to_tokens("the cat", prepend_bos=False)
    assert with_bos[0, 0].item() == gpt2.tokenizer.bos_token_id
    assert torch.equal(with_bos[:, 1:], without)


def test_float64(tiny_llama_dir: Path) -> None:
    model = load_bridge(tiny_llama_dir, dtype=torch.float64, process_weights=False)
    tokens = model.to_tokens(PROMPTS[0])
    with torch.no_grad():
        logits = model(tokens)
    assert logits.dtype == torch.float64
    hf = _hf_logits(tiny_llama_dir, tokens, torch.float64)
    torch.testing.assert_close(logits, hf, atol=1e-10, rtol=1e-10)


def test_model_without_split_qkv_is_emulated_and_checked(tiny_gpt2_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A bridge that will not split q/k/v inputs per head (OPT, GPT-J, GPT-Neo) gets them
    from the hook table (circuitdag.emulated), and the check runs the model through them."""
    from transformer_lens import TransformerBridge

    from circuitdag.emulated import Emulator

    monkeypatch.setattr(TransformerBridge, "set_use_split_qkv_input", lambda self, flag: None)
    assert "per-head q/k/v inputs" in check_hooks(load_bridge(tiny_gpt2_dir, check=False)).emulated
    wrong = Emulator.project
    monkeypatch.setattr(Emulator, "project", lambda self, L, kind, x: wrong(self, L, kind, x) * 1.001)
    with pytest.raises(ModelError, match=r"attn.hook_q is not ln1 and the head.s slice of W_Q"):
        load_bridge(tiny_gpt2_dir)


def test_post_layernorm_input_is_refused(gpt2) -> None:
    # Make hook_q_input of layer 1 something other than the residual stream, as a model
    # that took it after LayerNorm would.
    gpt2.add_hook("blocks.1.hook_q_input", lambda t, hook: t * 2.0)
    try:
        with pytest.raises(ModelError, match=r"blocks\.1\.hook_q_input is not blocks\.1\.hook_resid_pre"):
            check_hooks(gpt2)
    finally:
        gpt2.reset_hooks()


def test_ignored_hook_is_refused(gpt2, monkeypatch: pytest.MonkeyPatch) -> None:
    # A bridge that only observes hook_v_input (its return value is dropped) must be refused.
    hook = gpt2.hook_dict["blocks.1.hook_v_input"]

    class ObservedOnly(type(hook)):
        def __call__(self, x, *args, **kwargs):
            super().__call__(x, *args, **kwargs)
            return x

    monkeypatch.setattr(hook, "__class__", ObservedOnly)
    with pytest.raises(ModelError, match=r"blocks\.1\.hook_v_input: a value written"):
        check_hooks(gpt2)


def test_missing_directory(tmp_path: Path) -> None:
    with pytest.raises(ModelError, match="no model directory"):
        load_bridge(tmp_path / "nowhere")
    with pytest.raises(ModelError, match="no config.json.*save_pretrained"):
        load_bridge(str(tmp_path))


def test_directory_without_tokenizer_is_refused(tmp_path: Path, tiny_gpt2_dir: Path) -> None:
    """Weights without tokenizer files used to load with an empty tokenizer and fail later
    with a message about identical prompts."""
    import shutil

    for f in ("config.json", "model.safetensors"):
        shutil.copy(tiny_gpt2_dir / f, tmp_path / f)
    with pytest.raises(ModelError, match="no tokenizer files.*tokenizer.save_pretrained"):
        load_bridge(tmp_path)


def _save_word_model(path: Path, bos: str | None) -> Path:
    """A tiny random GPT-2 over a few words whose saved tokenizer has the BOS token ``bos``
    (None: none, as a tokenizer may be saved; EOS and padding are ``<|endoftext|>``)."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import GPT2Config, GPT2LMHeadModel, PreTrainedTokenizerFast

    words = "<|endoftext|> <unk> when after john mary tom anna and went to the store park , gave a book ball"
    vocab = {w: i for i, w in enumerate(words.split())}
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    specials = {"eos_token": "<|endoftext|>", "pad_token": "<|endoftext|>", "unk_token": "<unk>"}
    if bos is not None:
        specials["bos_token"] = bos
    PreTrainedTokenizerFast(tokenizer_object=tok, **specials).save_pretrained(path)
    torch.manual_seed(0)
    GPT2LMHeadModel(GPT2Config(n_layer=2, n_head=4, n_embd=64, n_positions=32, vocab_size=len(vocab),
                               bos_token_id=0 if bos else None, eos_token_id=0, pad_token_id=0)).save_pretrained(path)  # fmt: skip
    return path


@pytest.mark.parametrize("bos", [None, "<|endoftext|>"])
def test_a_tokenizer_without_bos_gets_none(bos: str | None, tmp_path: Path) -> None:
    """TransformerBridge fills a missing BOS in with the EOS token; prompts start with BOS
    only when the tokenizer as saved has one (docs/tasks.md), and circuit.json says why."""
    from transformers import AutoTokenizer

    from circuitdag.prepare import prepare
    from circuitdag.tasks.prompts import PromptTask

    path = _save_word_model(tmp_path / "model", bos)
    assert AutoTokenizer.from_pretrained(path).bos_token == bos
    model = load_bridge(path)
    eos = model.tokenizer.eos_token_id
    assert model.tokenizer.bos_token_id == eos  # the bridge's stand-in, whatever the files say
    clean = "when john and mary went to the store , mary gave a book to"
    task = PromptTask([(clean, clean.replace("john", "tom").replace("mary", "anna"), "john", "mary")] * 4)
    with pytest.warns(UserWarning, match="barely does this task"):  # a random model
        patcher, meta = prepare(model, task, metric="kl")
    first = patcher.data.clean[:, 0]
    if bos is None:
        assert (meta["bos"], meta["bos_reason"]) == (False, "the tokenizer has no BOS token")
        assert model.cfg.default_prepend_bos is False and (first != eos).all()
        assert model.to_tokens("john went to", prepend_bos=None)[0, 0] != eos
    else:
        assert meta["bos"] is True and "default_prepend_bos is True" in meta["bos_reason"]
        assert (first == model.tokenizer.bos_token_id).all()


def test_parallel_attention_blocks_load(tiny_gpt2_dir: Path, tmp_path: Path) -> None:
    """A GPT-NeoX block computes attention and MLP from the same residual (no
    hook_resid_mid): the MLP's input is the block's input (tests/test_architectures.py
    runs every pass on such models)."""
    import shutil

    from conftest import tiny_vocab_size
    from transformers import GPTNeoXConfig, GPTNeoXForCausalLM

    cfg = GPTNeoXConfig(num_hidden_layers=1, num_attention_heads=2, hidden_size=16, intermediate_size=32,
                        max_position_embeddings=16, vocab_size=tiny_vocab_size(), use_parallel_residual=True,
                        bos_token_id=0, eos_token_id=0, pad_token_id=0)  # fmt: skip
    GPTNeoXForCausalLM(cfg).save_pretrained(tmp_path)
    for f in tiny_gpt2_dir.iterdir():  # the word-level tokenizer
        if f.name.startswith(("tokenizer", "special_tokens")):
            shutil.copy(f, tmp_path)
    assert load_bridge(tmp_path).cfg.parallel_attn_mlp
