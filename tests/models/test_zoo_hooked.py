"""The zoo models on the project's hooked transformer (circuitdag.models.zoo.load_zoo) compute
what the TransformerBridge computes on the same directory: the same processed weights, the
same value at every hook, the same logits (Hugging Face's, centred), the same circuits."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys

import pytest
import torch

from circuitdag.discovery import run_acdc
from circuitdag.errors import ModelError
from circuitdag.models import load_model
from circuitdag.models import zoo as zoo_module
from circuitdag.models.bridge import check_hooks, load_bridge
from circuitdag.models.hooked import TinyTransformer
from circuitdag.models.zoo import ZOO, load_hf, load_zoo, model_card, zoo_path
from circuitdag.prepare import prepare
from circuitdag.tasks import get_task

# The bridge processes its weights in float32 and the conversion in float64: both round the
# same sums, so they agree to float32 rounding of values of size ~1-20.
TOL = 2e-5


@pytest.fixture(scope="module")
def bridges() -> dict[str, object]:
    """Each zoo model booted through TransformerBridge in float64, as load_model did before."""
    out = {}
    for name in sorted(ZOO):
        bridge = load_bridge(str(zoo_path(name)), dtype=torch.float64, check=False)
        if model_card(name).get("architecture", {}).get("attn_only"):
            bridge.cfg.attn_only = True
        bridge.cfg.model_name = name
        out[name] = bridge
    return out


@pytest.mark.parametrize("name", sorted(ZOO))
def test_weights_hooks_and_logits_equal_the_bridge(name: str, bridges) -> None:
    ours, bridge = load_zoo(name, dtype=torch.float64), bridges[name]
    assert isinstance(ours, TinyTransformer)
    names = ["W_Q", "W_K", "W_V", "W_O", "b_Q", "b_K", "b_V", "b_O"]
    for L in range(ours.cfg.n_layers):
        for w in names:
            torch.testing.assert_close(getattr(ours.blocks[L].attn, w), getattr(bridge.blocks[L].attn, w),
                                       atol=TOL, rtol=TOL, msg=f"blocks.{L}.attn.{w}")  # fmt: skip
        if not ours.cfg.attn_only:
            for w in ("W_in", "b_in", "W_out", "b_out"):
                torch.testing.assert_close(getattr(ours.blocks[L].mlp, w), getattr(bridge.blocks[L].mlp, w),
                                           atol=TOL, rtol=TOL, msg=f"blocks.{L}.mlp.{w}")  # fmt: skip
    for w in ("W_E", "W_pos", "W_U", "b_U"):
        torch.testing.assert_close(getattr(ours, w), getattr(bridge, w), atol=TOL, rtol=TOL, msg=w)
    g = torch.Generator().manual_seed(1)
    tokens = torch.randint(0, ours.cfg.d_vocab, (3, min(10, ours.cfg.n_ctx)), generator=g)
    tokens[:, 0] = ours.tokenizer.bos_token_id
    with torch.no_grad():
        logits, cache = ours.run_with_cache(tokens)
        want_logits, want = bridge.run_with_cache(tokens)
    torch.testing.assert_close(logits, want_logits, atol=TOL, rtol=TOL)
    shared = [k for k in cache if k in want]
    assert len(shared) >= 20 * ours.cfg.n_layers // 2  # every block hook of ours is one of the bridge's
    for k in shared:
        torch.testing.assert_close(cache[k], want[k], atol=TOL, rtol=TOL, msg=k)
    report = check_hooks(ours)  # the bridge's hook contract holds
    assert report.max_error < 1e-9
    assert ours.cfg.default_prepend_bos and ours.cfg.model_name == name
    assert ours.cfg.attn_only == bool(getattr(bridge.cfg, "attn_only", False))


@pytest.mark.parametrize("name", sorted(ZOO))
def test_logits_are_hugging_faces_centred(name: str) -> None:
    ours = load_zoo(name, dtype=torch.float64)
    hf, tokenizer = load_hf(name, dtype=torch.float64)
    assert ours.tokenizer.get_vocab() == tokenizer.get_vocab()
    tokens = torch.tensor([tokenizer("the a an he she it")["input_ids"]])
    with torch.no_grad():
        want = hf(input_ids=tokens, attention_mask=torch.ones_like(tokens)).logits
        got = ours(tokens)
    torch.testing.assert_close(got, want - want.mean(-1, keepdim=True), atol=TOL, rtol=TOL)


@pytest.mark.parametrize(("task_name", "zoo_name", "ablation", "positions"), [
    ("pronoun", "pronoun", "resample", True), ("pronoun", "pronoun", "zero", False),
    ("an-neuron", "an", "mean", False), ("reversal", "reversal", None, False),
    ("induction", "induction", None, False),
])  # fmt: skip
def test_same_circuit_as_the_bridge(task_name: str, zoo_name: str, ablation: str | None, positions: bool,
                                    bridges) -> None:  # fmt: skip
    task = get_task(task_name)
    circuits = []
    for model in (load_model(zoo_name, dtype=torch.float64), bridges[zoo_name]):
        patcher, meta = prepare(model, task, ablation=ablation, positions=positions)
        circuit = run_acdc(patcher, task.default_threshold, meta=meta)
        circuits.append((circuit.edge_names, circuit.meta["metric_circuit"], meta["process_weights"]))
    (ours, ours_metric, ours_processed), (theirs, theirs_metric, theirs_processed) = circuits
    assert ours == theirs and ours
    assert ours_metric == pytest.approx(theirs_metric, abs=1e-5)
    assert ours_processed is theirs_processed is True


def test_a_wrong_conversion_is_refused_at_load(tmp_path, monkeypatch) -> None:
    """The probe logits Hugging Face computed at build time catch a model that differs."""
    copy = tmp_path / "pronoun"
    shutil.copytree(zoo_path("pronoun"), copy)
    probe = json.loads((copy / zoo_module.PROBE_FILE).read_text())
    probe["logits"][0][3][5] += 0.5
    (copy / zoo_module.PROBE_FILE).write_text(json.dumps(probe))
    monkeypatch.setitem(ZOO, "pronoun", copy)
    with pytest.raises(ModelError, match=r"logits differ from Hugging Face.s by 0\.4\d"):
        load_zoo("pronoun")
    config = json.loads((copy / "config.json").read_text())
    (copy / "config.json").write_text(json.dumps({**config, "activation_function": "relu"}))
    with pytest.raises(ModelError, match="not the GPT-2 setup"):
        load_zoo("pronoun")


def test_discover_on_a_zoo_model_imports_neither_transformer_lens_nor_transformers(tmp_path, monkeypatch) -> None:
    """What keeps `circuitdag discover --task pronoun` within a few times `import torch`
    (nor Numba: a 4,180-edge graph uses the numpy kernels)."""
    monkeypatch.delenv("CIRCUITDAG_KERNELS", raising=False)
    code = ("import sys; from circuitdag.cli import main; "
            f"main(['discover', '--task', 'pronoun', '--positions', '-q', '--no-svg', '--out', {str(tmp_path)!r}]); "
            "print([m for m in ('transformer_lens', 'transformers', 'numba') if m in sys.modules])")  # fmt: skip
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip().splitlines()[-1] == "[]"
    assert json.loads((tmp_path / "circuit.json").read_text())["process_weights"] is True


@pytest.mark.parametrize("name", sorted(ZOO))
def test_tokenizer_equals_hugging_faces(name: str) -> None:
    """ZooTokenizer (tokenizers alone) answers as transformers' AutoTokenizer does."""
    from transformers import AutoTokenizer

    ours, theirs = load_zoo(name).tokenizer, AutoTokenizer.from_pretrained(str(zoo_path(name)))
    vocab = theirs.get_vocab()
    assert ours.get_vocab() == vocab and len(ours) == len(theirs)
    for kind in ("bos", "eos", "unk", "pad"):
        assert getattr(ours, f"{kind}_token") == getattr(theirs, f"{kind}_token"), kind
        assert getattr(ours, f"{kind}_token_id") == getattr(theirs, f"{kind}_token_id"), kind
    assert sorted(ours.all_special_ids) == sorted(theirs.all_special_ids)
    words = sorted(vocab, key=vocab.get)
    card = model_card(name)["eval"]
    texts = [" ".join(words[i : i + 7]) for i in range(0, len(words), 7)] + ["So Mary is, isn't it?", "zzz qq"]
    texts += [t.format(name="John") for t in card.get("templates", [])]
    texts += [p for p, _, _ in card.get("prompts", [])]
    for text in texts:
        for special in (True, False):
            assert ours.encode(text, add_special_tokens=special) == theirs.encode(text, add_special_tokens=special)
        assert ours(text)["input_ids"] == theirs(text)["input_ids"]
        ids = theirs(text)["input_ids"]
        assert ours.convert_ids_to_tokens(ids) == theirs.convert_ids_to_tokens(ids)
        for skip in (True, False):
            assert ours.decode(ids, skip_special_tokens=skip) == theirs.decode(ids, skip_special_tokens=skip)
    assert ours.convert_tokens_to_ids(words + ["not-a-word"]) == theirs.convert_tokens_to_ids(words + ["not-a-word"])
    assert [ours.decode([i]) for i in range(len(words))] == [theirs.decode([i]) for i in range(len(words))]


@pytest.mark.parametrize("task_name", ["pronoun", "pronoun-opposite", "an-neuron", "induction", "reversal"])
def test_task_prompts_are_those_of_hugging_faces_tokenizer(task_name: str, monkeypatch) -> None:
    from transformers import AutoTokenizer

    task = get_task(task_name)
    model = task.load_model()
    ours = task.data(model, seed=0)
    monkeypatch.setattr(model, "tokenizer", AutoTokenizer.from_pretrained(model.tokenizer.name_or_path))
    theirs = task.data(model, seed=0)
    for field in ("clean", "corrupted", "answer_pos"):
        assert torch.equal(getattr(ours, field), getattr(theirs, field)), field
    assert ours.position_names == theirs.position_names
