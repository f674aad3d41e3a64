"""Models the user loaded themselves (circuitdag.models.adopt): a TransformerBridge they
booted, a Hugging Face model object. Each gives the circuit of the same model booted by
circuitdag, score for score."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

import circuitdag as cd
from circuitdag.errors import ModelError
from circuitdag.models.bridge import load_bridge

# A random GPT-2 does no task (its 0.006-logit gap warns since issue 25); only scores are compared here.
pytestmark = pytest.mark.filterwarnings("ignore:.*barely does this task")

CLEAN = "when john and mary went to the store , mary gave a book to"


def _task():
    from circuitdag.tasks.prompts import PromptTask

    rows = [(CLEAN, CLEAN.replace("john", "tom").replace("mary", "anna"), "john", "mary")] * 3
    return PromptTask(rows, metric="logit_diff", threshold=1e-4)


def _scores(model, **kw) -> tuple[np.ndarray, np.ndarray]:
    circuit = cd.discover(model, _task(), "eap", edges=10, **kw)
    return circuit.scores, circuit.in_circuit


@pytest.fixture(scope="module")
def reference(tiny_gpt2_dir: Path) -> tuple[np.ndarray, np.ndarray]:
    """The circuit of the directory booted by circuitdag with the weights as saved."""
    return _scores(load_bridge(tiny_gpt2_dir, process_weights=False))


def test_a_hugging_face_model_object(tiny_gpt2_dir: Path, reference) -> None:
    from transformers import AutoModelForCausalLM

    hf = AutoModelForCausalLM.from_pretrained(tiny_gpt2_dir).eval()  # its tokenizer is found in the directory
    scores, chosen = _scores(hf)
    np.testing.assert_allclose(scores, reference[0], rtol=1e-5, atol=1e-7)
    assert (chosen == reference[1]).all()


def test_a_bridge_booted_without_compatibility_mode(tiny_gpt2_dir: Path, reference) -> None:
    from transformer_lens import TransformerBridge

    bridge = TransformerBridge.boot_transformers(str(tiny_gpt2_dir))
    assert not bridge.compatibility_mode  # no hook aliases: circuitdag switches them on
    scores, chosen = _scores(bridge)
    np.testing.assert_allclose(scores, reference[0], rtol=1e-5, atol=1e-7)
    assert (chosen == reference[1]).all()
    assert cd.adopt(bridge) is bridge  # adopted once; the second time costs nothing


def test_an_in_memory_model_needs_its_tokenizer(tiny_gpt2_dir: Path, reference) -> None:
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    config = AutoConfig.from_pretrained(tiny_gpt2_dir)
    config._name_or_path = ""  # built in memory: nothing says where a tokenizer would be
    hf = AutoModelForCausalLM.from_config(config)
    hf.load_state_dict(AutoModelForCausalLM.from_pretrained(tiny_gpt2_dir).state_dict())
    hf.eval()
    with pytest.raises(ModelError, match=r"carries no tokenizer: pass one, cd.adopt\(model, tokenizer\)"):
        cd.adopt(hf)
    bridge = cd.adopt(hf, AutoTokenizer.from_pretrained(tiny_gpt2_dir))
    scores, chosen = _scores(bridge)
    np.testing.assert_allclose(scores, reference[0], rtol=1e-5, atol=1e-7)
    assert (chosen == reference[1]).all()


def test_what_is_no_model_is_refused_in_one_line() -> None:
    with pytest.raises(ModelError, match="a dict is not a model circuitdag can patch") as info:
        cd.discover({"not": "a model"}, "tracr-reverse", "acdc")
    assert "\n" not in str(info.value)


def test_models_circuitdag_loads_are_not_checked_twice(tiny_gpt2_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import circuitdag.models.bridge as bridge_module

    model = cd.load_model(str(tiny_gpt2_dir))
    monkeypatch.setattr(bridge_module, "check_hooks", lambda m: pytest.fail("checked again"))
    assert cd.adopt(model) is model


def test_wrong_objects_are_one_line(tiny_gpt2_dir: Path) -> None:
    from transformers import AutoConfig, AutoModel

    body = AutoModel.from_pretrained(tiny_gpt2_dir)  # GPT2Model: no LM head
    with pytest.raises(ModelError, match="has no language-model head"):
        cd.adopt(body)
    from transformers import AutoModelForCausalLM

    with pytest.raises(ModelError, match="must be a Hugging Face tokenizer"):
        cd.adopt(AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(tiny_gpt2_dir)), "junk")
    with pytest.raises(ModelError, match="takes a model object; load 'gpt2' by name"):
        cd.adopt("gpt2")
    from circuitdag.errors import ConfigError

    with pytest.raises(ConfigError, match="task must be a circuitdag Task or a registered task name"):
        cd.discover("tracr-reverse", 3)
