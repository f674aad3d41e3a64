"""Direct logit attribution on a tiny random Gemma 2: the final norm as the model computes it
(``1 + weight``), the final-logit soft-cap and the MLP's post-norm, against a direct
computation from the model's own modules (issue 25: every neuron's DLA was 0.0)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from conftest import _perturb_norms_and_biases, _save_word_tokenizer, tiny_vocab_size

from circuitdag.components import plain_module
from circuitdag.models import load_model
from circuitdag.neurons import cache_runs
from circuitdag.neurons._runs import final_norm_weight
from circuitdag.neurons.dla import neuron_dla
from circuitdag.tasks import Task

torch.set_num_threads(1)

# A random model does no task: the warning saying so is expected here.
pytestmark = [pytest.mark.filterwarnings("ignore:.*barely does this task"),
              pytest.mark.filterwarnings("ignore:.*does not prefer the correct answer")]  # fmt: skip

CAP = 2.0  # small, so that the soft-cap bends the random model's logits (Gemma 2 ships 30)

PROMPTS = [
    {"clean": f"{a} is {adj}", "corrupted": f"{b} is {adj}", "correct": ca, "wrong": cb}
    for (a, ca), (b, cb) in [(("john", "he"), ("mary", "she")), (("anna", "she"), ("tom", "he"))]
    for adj in ("great", "nice", "good")
]  # fmt: skip


@pytest.fixture(scope="module")
def gemma2(tmp_path_factory: pytest.TempPathFactory) -> object:
    import transformers

    path: Path = tmp_path_factory.mktemp("gemma2")
    torch.manual_seed(0)
    cfg = transformers.Gemma2Config(num_hidden_layers=2, hidden_size=64, num_attention_heads=4, num_key_value_heads=2,
                                    intermediate_size=128, max_position_embeddings=32, head_dim=16,
                                    final_logit_softcapping=CAP, vocab_size=tiny_vocab_size(), bos_token_id=0,
                                    eos_token_id=0, pad_token_id=0)  # fmt: skip
    model = transformers.AutoModelForCausalLM.from_config(cfg).eval()
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() >= 2:
                p.normal_(0.0, 0.15)
    _perturb_norms_and_biases(model)  # Gemma's norm weights: not the zeros of a fresh init
    model.save_pretrained(path)
    _save_word_tokenizer(path)
    return load_model(str(path), dtype=torch.float64)


def test_final_norm_weight_is_gemmas_one_plus_weight(gemma2) -> None:
    raw = plain_module(gemma2.ln_final).weight.detach()
    got = final_norm_weight(gemma2)
    assert got is not None
    assert torch.allclose(got, 1 + raw, atol=1e-6) and not torch.allclose(got, raw, atol=0.5)


def test_dla_is_the_direct_effect_of_removing_the_neuron(gemma2) -> None:
    """Each neuron's DLA equals, per prompt: remove the neuron from its MLP's output before
    the model's post-MLP norm (the model's own module), carry the change in the norm's output
    to the final residual stream, and read the logit difference with the final norm's scale
    held at the run's value; the soft-capped difference is taken to first order (a central
    finite difference of the soft-cap, step 1e-4)."""
    model = gemma2
    task = Task.from_prompts(PROMPTS)
    runs = cache_runs(model, task.data(model))
    assert model.cfg.output_logits_soft_cap == CAP
    with torch.no_grad():  # the analysis's logit difference is the model's own, soft-capped
        out = model(runs.data.clean)[torch.arange(runs.data.n_prompts).unsqueeze(1), runs.data.answer_pos]
    own = out.gather(-1, runs.data.correct.unsqueeze(-1))[..., 0] - out.gather(-1, runs.data.wrong.unsqueeze(-1))[..., 0]
    assert torch.allclose(runs.ld_clean, own, rtol=1e-6, atol=1e-6)
    dla = neuron_dla(runs)
    d = runs.data
    rows = torch.arange(d.n_prompts).unsqueeze(1)
    _, cache = model.run_with_cache(d.clean)
    n = model.cfg.n_layers
    ln = plain_module(model.ln_final)
    x_f = cache[f"blocks.{n - 1}.hook_resid_post"][rows, d.answer_pos]  # batch n_ans d_model
    eps = float(ln.eps)
    s_f = (x_f.pow(2).mean(-1, keepdim=True) + eps).sqrt()
    W_U = model.W_U.detach()

    def frozen(x: torch.Tensor) -> torch.Tensor:
        """The final norm's output with its scale frozen at the clean run's, by the model's
        module: ``ln(x) * rms(x) / s_f = x * (1 + w) / s_f``."""
        return ln(x) * (x.pow(2).mean(-1, keepdim=True) + eps).sqrt() / s_f

    def capped_ld(logits: torch.Tensor) -> torch.Tensor:
        logits = CAP * torch.tanh(logits / CAP)
        return logits.gather(-1, d.correct.unsqueeze(-1))[..., 0] - logits.gather(-1, d.wrong.unsqueeze(-1))[..., 0]

    logits = frozen(x_f) @ W_U  # before the cap

    checked = 0
    with torch.no_grad():
        for L in range(n):
            post_norm = plain_module(model.blocks[L].ln2_post)
            m = cache[f"blocks.{L}.ln2_post.hook_in"][rows, d.answer_pos]
            act = cache[f"blocks.{L}.mlp.hook_post"][rows, d.answer_pos]
            W = model.blocks[L].mlp.W_out.detach()
            for neuron in (0, 7, runs.d_mlp - 1):
                v = post_norm(m) - post_norm(m - act[..., neuron, None] * W[neuron])
                h = 1e-4
                dl = frozen(v) @ W_U  # what v adds to each logit: linear once the scale is frozen
                want = ((capped_ld(logits + h * dl) - capped_ld(logits - h * dl)) / (2 * h)).mean()
                got = dla.clean[L, neuron]
                assert float(got) == pytest.approx(float(want), rel=1e-4, abs=1e-7)
                checked += 1
    assert checked == 6 and dla.clean.abs().min() > 0 and dla.clean.abs().max() > 1e-3  # not the zeros of issue 25
