"""The shipped model zoo: tiny GPT-2-architecture models trained from scratch.

Each model lives in ``circuitdag/models/zoo/<name>/`` in Hugging Face format
(``config.json``, ``model.safetensors``, ``tokenizer.json``, ``tokenizer_config.json``)
plus ``card.json``: architecture, training recipe, evaluation set and the accuracy
measured on it. They load exactly like a user's ``gpt2``::

    from transformer_lens import TransformerBridge
    bridge = TransformerBridge.boot_transformers(str(zoo_path("pronoun")))

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
from typing import Any

import torch
from jaxtyping import Float, Int
from torch import Tensor

from circuitdag.errors import ModelError

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
