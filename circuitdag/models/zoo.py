"""The shipped model zoo: tiny GPT-2-architecture models trained from scratch.

Each model lives in ``circuitdag/models/zoo/<name>/`` in Hugging Face format
(``config.json``, ``model.safetensors``, ``tokenizer.json``, ``tokenizer_config.json``)
plus ``card.json``: architecture, training recipe, evaluation set and the accuracy
measured on it. They load like a user's ``gpt2``::

    from transformer_lens import TransformerBridge
    bridge = TransformerBridge.boot_transformers(str(zoo_path("pronoun")))

but ``circuitdag.load_model("pronoun")`` runs them on the project's own hooked
transformer instead (:func:`load_zoo`): booting a bridge costs about 6 s of imports and
set-up, several times a whole ACDC search on these models. :func:`load_zoo` applies the
weight processing ``load_bridge`` has TransformerLens apply (fold each LayerNorm's scale
and bias into the weights that read it, centre the weights that write to the residual
stream and the unembedding, fold the value biases into the output bias), so the model
computes the same hooks and logits as the bridge (up to float rounding) and a zero- or
mean-ablated head means the same thing; tests/models/test_zoo_hooked.py checks both
against the bridge and the logits against Hugging Face's ``GPT2LMHeadModel``, and every
load checks the logits on a probe prompt against ``probe.json``, written from Hugging
Face's own model when the zoo was built (:func:`write_probe`).

The tokenizers are word level and add the BOS token (``<|endoftext|>``) themselves.
Words carry no leading space: the answer " he" is the token ``"he"``, i.e.
``tokenizer.convert_tokens_to_ids("he")`` (``tokenizer.encode(" he",
add_special_tokens=False)`` gives the same single id). See docs/zoo.md.

:func:`evaluate` recomputes a card's accuracy; the training script and the tests both
use it, so the number on the card and the number a test checks come from one function.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from jaxtyping import Float, Int
from torch import Tensor

from circuitdag.errors import ModelError

if TYPE_CHECKING:  # the hooked transformer is imported when a model loads
    from circuitdag.models.hooked import TinyTransformer

ZOO_DIR = Path(__file__).parent / "zoo"

#: Shipped model names -> their directory.
ZOO: dict[str, Path] = {name: ZOO_DIR / name for name in ("pronoun", "induction", "an", "reversal")}

LogitsFn = Callable[[Int[Tensor, "batch pos"]], Float[Tensor, "batch pos d_vocab"]]


def zoo_path(name: str) -> Path:
    """The directory of the shipped model ``name`` (pass it to ``boot_transformers``)."""
    if name not in ZOO:
        raise ModelError(
            f"no zoo model named {name!r}; the zoo has {sorted(ZOO)}. "
            "Retrain with `python scripts/train_zoo.py --only NAME` if a directory is missing."
        )
    return ZOO[name]


def model_card(name: str) -> dict[str, Any]:
    """The parsed ``card.json`` of zoo model ``name``."""
    with open(zoo_path(name) / "card.json", encoding="utf-8") as f:
        return json.load(f)


def load_hf(name: str, dtype: torch.dtype = torch.float32) -> tuple[Any, Any]:
    """(model, tokenizer) of zoo model ``name`` through plain transformers, in eval mode."""
    from transformers import AutoTokenizer, GPT2LMHeadModel

    path = zoo_path(name)
    model = GPT2LMHeadModel.from_pretrained(str(path), dtype=dtype).eval()
    return model, AutoTokenizer.from_pretrained(str(path))


#: GPT-2 settings the conversion reproduces; a zoo config with another value is refused.
_GPT2_SETTINGS = {"scale_attn_weights": True, "scale_attn_by_inverse_layer_idx": False,
                  "reorder_and_upcast_attn": False, "activation_function": "gelu_new"}  # fmt: skip
#: The probe prompt file: token ids and Hugging Face's logits on them (:func:`write_probe`).
PROBE_FILE = "probe.json"


def load_zoo(name: str, device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32) -> TinyTransformer:
    """Zoo model ``name`` on the project's hooked transformer, with TransformerLens's weight
    processing (see the module docstring) and the zoo's tokenizer
    (:class:`~circuitdag.models.zoo_tokenizer.ZooTokenizer`: Hugging Face's API, without
    importing transformers), in eval mode.

    Hook names and shapes are the bridge's (``blocks.L.attn.hook_result``: batch pos head
    d_model, ...); logits are Hugging Face's minus their mean over the vocabulary (the
    bridge's centred unembedding). Raises :class:`ModelError` for a directory whose config
    is not the GPT-2 setup the zoo uses, or whose logits on ``probe.json``'s prompt differ
    from those Hugging Face computed when the zoo was built."""
    from safetensors.torch import load_file

    from circuitdag.models.hooked import TinyTransformer

    path = zoo_path(name)
    config = json.loads((path / "config.json").read_text())
    wrong = {k: config.get(k) for k, v in _GPT2_SETTINGS.items() if config.get(k, v) != v}
    if config.get("model_type") != "gpt2" or wrong:
        raise ModelError(f"zoo model {name!r}: config.json is not the GPT-2 setup the zoo loader converts "
                         f"({wrong or config.get('model_type')}); load it with circuitdag.models.bridge.load_bridge")  # fmt: skip
    attn_only = bool(model_card(name).get("architecture", {}).get("attn_only"))
    cfg, weights = gpt2_to_hooked(load_file(str(path / "model.safetensors")), config, name, attn_only)
    model = TinyTransformer(cfg)
    model.load_state_dict(weights, strict=False)  # LayerNorm scales stay 1, shifts 0: folded
    model.to(device=device, dtype=dtype).eval()
    model._weights_processed = True  # what circuit.json records (circuitdag.provenance)
    _check_probe(model, path)
    model.tokenizer = _tokenizer(path)
    from circuitdag.models.spec import bos_decision

    bos, _ = bos_decision(model)
    if not bos:
        raise ModelError(f"zoo model {name!r}: its tokenizer has no BOS token; the zoo models are trained with one")
    return model


def _tokenizer(path: Path) -> Any:
    from circuitdag.models.zoo_tokenizer import ZooTokenizer

    return ZooTokenizer(path)


def gpt2_to_hooked(
    state: dict[str, Tensor], config: dict[str, Any], name: str, attn_only: bool = False
) -> tuple[Any, dict[str, Tensor]]:
    """(:class:`~circuitdag.models.hooked.TinyConfig`, state dict) of the hooked transformer
    computing what a Hugging Face GPT-2 ``state`` (``model.safetensors``, ``config``:
    ``config.json``) computes, processed as TransformerLens does by default:

    * LayerNorm folding: ``W' = diag(w) W`` and ``b' = b + b_ln W`` for the weights that read a
      LayerNorm's output (``W_Q``, ``W_K``, ``W_V``, ``W_in``, ``W_U``), then centred over
      ``d_model`` (the LayerNorm centres its input anyway);
    * writing weights centred over ``d_model`` (``W_E``, ``W_pos``, ``W_O``, ``b_O``,
      ``W_out``, ``b_out``), the unembedding over the vocabulary;
    * value biases folded into the output bias: ``b_O += sum_h b_V[h] W_O[h]`` (attention
      weights sum to 1), ``b_V = 0``.

    ``attn_only``: the model's MLPs are all zero (an attention-only zoo model); they are
    left out, and :class:`ModelError` is raised if they are not zero."""
    from circuitdag.models.hooked import TinyConfig

    d, h, n_layers = int(config["n_embd"]), int(config["n_head"]), int(config["n_layer"])
    dh = d // h
    g = {k.removeprefix("transformer."): v.double() for k, v in state.items()}
    out: dict[str, Tensor] = {}

    def fold(W: Tensor, prefix: str, axis: int) -> tuple[Tensor, Tensor]:
        """``W`` reads LayerNorm ``prefix``'s output along ``axis`` (d_model): fold its scale and
        shift into ``W`` and a bias term; centre ``W`` along ``axis``."""
        w, b = g[f"{prefix}.weight"], g[f"{prefix}.bias"]
        shape = [1] * W.dim()
        shape[axis] = d
        folded = W * w.reshape(shape)
        return folded - folded.mean(axis, keepdim=True), (W * b.reshape(shape)).sum(axis)

    def centred(x: Tensor) -> Tensor:
        return x - x.mean(-1, keepdim=True)

    out["W_E"], out["W_pos"] = centred(g["wte.weight"]), centred(g["wpe.weight"])
    for L in range(n_layers):
        p = f"h.{L}"
        qkv_w = g[f"{p}.attn.c_attn.weight"].reshape(d, 3, h, dh).permute(1, 2, 0, 3)  # 3 h d dh
        qkv_b = g[f"{p}.attn.c_attn.bias"].reshape(3, h, dh)
        biases = {}
        for i, x in enumerate("QKV"):
            W, extra = fold(qkv_w[i], f"{p}.ln_1", axis=1)
            out[f"blocks.{L}.attn.W_{x}"] = W
            biases[x] = qkv_b[i] + extra
        W_O = centred(g[f"{p}.attn.c_proj.weight"].reshape(h, dh, d))
        b_O = centred(g[f"{p}.attn.c_proj.bias"]) + torch.einsum("he,hed->d", biases["V"], W_O)
        out[f"blocks.{L}.attn.W_O"], out[f"blocks.{L}.attn.b_O"] = W_O, b_O
        out[f"blocks.{L}.attn.b_Q"], out[f"blocks.{L}.attn.b_K"] = biases["Q"], biases["K"]
        out[f"blocks.{L}.attn.b_V"] = torch.zeros_like(biases["V"])
        mlp = [g[f"{p}.mlp.{k}"] for k in ("c_fc.weight", "c_fc.bias", "c_proj.weight", "c_proj.bias")]
        if attn_only:
            if any(t.abs().max() > 0 for t in mlp):
                raise ModelError(f"zoo model {name!r} is attention-only by its card, but layer {L}'s MLP is not zero")
            continue
        W_in, extra = fold(mlp[0], f"{p}.ln_2", axis=0)
        out[f"blocks.{L}.mlp.W_in"], out[f"blocks.{L}.mlp.b_in"] = W_in, mlp[1] + extra
        out[f"blocks.{L}.mlp.W_out"], out[f"blocks.{L}.mlp.b_out"] = centred(mlp[2]), centred(mlp[3])
    W_U = g["lm_head.weight"].T if "lm_head.weight" in g else g["wte.weight"].T  # tied by default
    W_U, b_U = fold(W_U, "ln_f", axis=0)
    out["W_U"], out["b_U"] = centred(W_U), centred(b_U + g.get("lm_head.bias", torch.zeros_like(b_U)))
    cfg = TinyConfig(
        n_layers=n_layers, d_model=d, n_heads=h, d_head=dh, d_vocab=int(config["vocab_size"]),
        n_ctx=int(config["n_positions"]), d_mlp=0 if attn_only else int(config.get("n_inner") or 4 * d),
        act_fn="gelu_new", normalization="LN", causal=True, eps=float(config["layer_norm_epsilon"]), model_name=name,
    )  # fmt: skip
    return cfg, out


def _check_probe(model: Any, path: Path) -> None:
    """Compare the model's logits on the probe prompt with Hugging Face's (centred the same
    way); a :class:`ModelError` when they differ beyond rounding (float32's at least)."""
    probe_file = path / PROBE_FILE
    if not probe_file.is_file():
        raise ModelError(f"{probe_file} is missing: run `python -m circuitdag.models.zoo` to write it")
    probe = json.loads(probe_file.read_text())
    tokens = torch.tensor(probe["tokens"], device=next(model.parameters()).device)
    want = torch.tensor(probe["logits"], dtype=torch.float64)
    want = want - want.mean(-1, keepdim=True)
    with torch.no_grad():
        got = model(tokens).double().cpu()
    # The weights are float32; so is part of Hugging Face's float64 pass (1e-7 apart).
    dtype = next(model.parameters()).dtype
    tol = max(torch.finfo(dtype).eps, torch.finfo(torch.float32).eps) ** 0.5 * (1 + want.abs().max().item())
    err = (got - want).abs().max().item()
    if not err <= tol:
        raise ModelError(f"zoo model {path.name!r}: the hooked transformer's logits differ from Hugging Face's by "
                         f"{err:.3g} (more than {tol:.3g}); load it with circuitdag.models.bridge.load_bridge")  # fmt: skip


def write_probe(name: str) -> Path:
    """Write ``probe.json`` for zoo model ``name``: a few seeded prompts and the logits Hugging
    Face's ``GPT2LMHeadModel`` (float64) gives them, which :func:`load_zoo` checks at every
    load. Run when the zoo is built: ``python -m circuitdag.models.zoo``."""
    model, _ = load_hf(name, dtype=torch.float64)
    cfg = model.config
    g = torch.Generator().manual_seed(0)
    tokens = torch.randint(0, cfg.vocab_size, (2, min(8, cfg.n_positions)), generator=g)
    tokens[:, 0] = cfg.bos_token_id
    with torch.no_grad():
        logits = model(tokens).logits
    doc = {"tokens": tokens.tolist(), "logits": logits.tolist(),
           "by": "transformers GPT2LMHeadModel, float64 (circuitdag.models.zoo.write_probe)"}  # fmt: skip
    out = zoo_path(name) / PROBE_FILE
    out.write_text(json.dumps(doc))
    return out


def pronoun_prompts(card: dict[str, Any]) -> list[tuple[str, str, str]]:
    """(clean prompt, correct answer token, wrong answer token) for the pronoun eval set.

    Template-major order: all names for template 0 first. The corrupted prompt of each
    is ``template.format(name=card["eval"]["neutral_name"])``.
    """
    ev = card["eval"]
    answers = ev["answers"]
    out = []
    for template in ev["templates"]:
        for gender, other in (("male", "female"), ("female", "male")):
            for name in ev["names"][gender]:
                out.append((template.format(name=name), answers[gender], answers[other]))
    return out


def evaluate(name: str, logits_fn: LogitsFn, tokenizer: Any, card: dict[str, Any] | None = None) -> dict:
    """Measure zoo model ``name`` on its card's evaluation set.

    ``logits_fn`` maps token ids (with BOS, as the tokenizer makes them) to logits; any
    per-position shift of the logits (TransformerBridge's centred unembedding) is fine,
    only softmax probabilities and argmaxes are used. Returns the metrics the card's
    ``"accuracy"`` section holds.
    """
    card = card if card is not None else model_card(name)
    kind = card["eval"]["kind"]
    with torch.no_grad():
        if kind == "binary_choice":
            return _eval_binary_choice(card, logits_fn, tokenizer)
        if kind == "sequence":
            return _eval_sequence(card, logits_fn)
    raise ModelError(f"card of {name!r} has unknown eval kind {kind!r}")


def _eval_binary_choice(card: dict[str, Any], logits_fn: LogitsFn, tokenizer: Any) -> dict:
    """Prompts whose next token should be ``correct`` rather than ``wrong`` (pronoun, an)."""
    ev = card["eval"]
    if "templates" in ev and "names" in ev:
        items = pronoun_prompts(card)
    else:
        items = [(p, c, w) for p, c, w in ev["prompts"]]
    toks = torch.tensor([tokenizer(p)["input_ids"] for p, _, _ in items])
    correct = torch.tensor(tokenizer.convert_tokens_to_ids([c for _, c, _ in items]))
    wrong = torch.tensor(tokenizer.convert_tokens_to_ids([w for _, _, w in items]))
    probs = logits_fn(toks)[:, -1].double().softmax(-1)
    rows = torch.arange(len(items))
    p_c, p_w = probs[rows, correct], probs[rows, wrong]
    out = {
        "n_prompts": len(items),
        "accuracy": float((p_c > p_w).double().mean()),
        "mean_p_correct": float(p_c.mean()),
    }
    if "neutral_name" in ev:
        neutral = [t.format(name=ev["neutral_name"]) for t in ev["templates"]]
        ntoks = torch.tensor([tokenizer(p)["input_ids"] for p in neutral])
        nprobs = logits_fn(ntoks)[:, -1].double().softmax(-1)
        ids = tokenizer.convert_tokens_to_ids(
            [ev["answers"]["neutral"], ev["answers"]["male"], ev["answers"]["female"]]
        )
        out["corrupted_mean_p_neutral"] = float(nprobs[:, ids[0]].mean())
        out["corrupted_mean_p_male"] = float(nprobs[:, ids[1]].mean())
        out["corrupted_mean_p_female"] = float(nprobs[:, ids[2]].mean())
    return out


def _eval_sequence(card: dict[str, Any], logits_fn: LogitsFn) -> dict:
    """Token sequences stored in the card; score argmax predictions on a slice of positions.

    ``scored_positions`` is ``[start, stop]``: the predictions made at positions
    start..stop-1 (of tokens start+1..stop). An optional ``"shifted"`` set holds
    sequences with their own ``[start, stop]`` each, scored as ``shifted_accuracy``.
    """
    ev = card["eval"]
    toks = torch.tensor(ev["sequences"])
    start, stop = ev["scored_positions"]
    pred = logits_fn(toks)[:, start:stop].argmax(-1)
    hit = pred == toks[:, start + 1 : stop + 1]
    out = {
        "n_sequences": int(toks.shape[0]),
        "accuracy": float(hit.double().mean()),
        "sequence_accuracy": float(hit.all(-1).double().mean()),
    }
    if "shifted" in ev:
        stoks = torch.tensor(ev["shifted"]["sequences"])
        spred = logits_fn(stoks).argmax(-1)
        hits = [spred[i, a:b] == stoks[i, a + 1 : b + 1] for i, (a, b) in enumerate(ev["shifted"]["spans"])]
        out["shifted_accuracy"] = float(torch.cat(hits).double().mean())
    return out


if __name__ == "__main__":
    for _name in ZOO:
        print(write_probe(_name))
