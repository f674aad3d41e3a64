"""Train the shipped model zoo (circuitdag/models/zoo/<name>/) from scratch.

    python scripts/train_zoo.py                 # every model
    python scripts/train_zoo.py --only pronoun  # one model (repeatable)

Each model is a tiny GPT-2 (transformers' GPT2LMHeadModel) with a word-level tokenizer,
trained on synthetic data from a fixed-seed recipe, and saved in Hugging Face format with
a ``card.json`` holding the recipe, the evaluation set and the accuracy measured on it.
Every run overwrites the directory. Training is deterministic on one machine (fixed
seeds, one thread, deterministic algorithms); a different CPU or torch version may give
slightly different weights, so the card records what was measured on the shipped ones.
After saving, the model is booted through TransformerLens's TransformerBridge and its
logits are checked against the Hugging Face model.
"""

from __future__ import annotations

import argparse
import itertools
import json
import math
import random
import shutil
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers
from transformers import GPT2Config, GPT2LMHeadModel, PreTrainedTokenizerFast

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from circuitdag.models.zoo import ZOO_DIR, evaluate

BOS = "<|endoftext|>"  # also EOS and PAD, as in GPT-2
UNK = "<unk>"
# Whitespace first, then words, clitics ("'t", "'s") and single punctuation marks:
# "isn't," -> "isn", "'t", ","  (GPT-2 splits it " isn", "'t", ",").
WORD_PATTERN = r"'[A-Za-z]+|\w+|[^\w\s]"
IGNORE = -100  # label of padding positions
OPTIMIZER = "AdamW(betas=(0.9, 0.98)), linear warm-up then cosine decay, grad clip 1.0"


# ---------------------------------------------------------------------------- shared


def _pre_tokenizer() -> pre_tokenizers.PreTokenizer:
    return pre_tokenizers.Sequence(
        [pre_tokenizers.WhitespaceSplit(), pre_tokenizers.Split(Regex(WORD_PATTERN), behavior="isolated")]
    )


def make_tokenizer(words: list[str], n_ctx: int) -> PreTrainedTokenizerFast:
    """Word-level tokenizer: id 0 is BOS/EOS/PAD, id 1 UNK, then ``words`` in order.

    It prepends BOS itself (``add_bos_token``), so plain transformers and
    TransformerBridge produce the same ids. Words have no leading-space variant.
    """
    vocab = {BOS: 0, UNK: 1}
    for w in words:
        vocab.setdefault(w, len(vocab))
    tok = Tokenizer(models.WordLevel(vocab, unk_token=UNK))
    tok.pre_tokenizer = _pre_tokenizer()
    tok.decoder = decoders.WordPiece(prefix="##", cleanup=True)  # joins words with spaces
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token=BOS,
        eos_token=BOS,
        pad_token=BOS,
        unk_token=UNK,
        add_bos_token=True,
        model_max_length=n_ctx,
    )


def make_model(vocab_size: int, arch: dict[str, int]) -> GPT2LMHeadModel:
    config = GPT2Config(
        vocab_size=vocab_size,
        n_positions=arch["n_ctx"],
        n_embd=arch["d_model"],
        n_layer=arch["n_layers"],
        n_head=arch["n_heads"],
        n_inner=arch["d_mlp"],
        activation_function="gelu_new",
        resid_pdrop=0.0,
        embd_pdrop=0.0,
        attn_pdrop=0.0,
        bos_token_id=0,
        eos_token_id=0,
        pad_token_id=0,
        tie_word_embeddings=True,
    )
    return GPT2LMHeadModel(config)


def encode_batch(tokenizer: PreTrainedTokenizerFast, texts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-padded ids and labels (padding labelled IGNORE). Causal attention makes
    right padding harmless, so no attention mask is needed."""
    ids = [tokenizer(t)["input_ids"] for t in texts]
    assert all(1 not in i for i in ids), [t for t, i in zip(texts, ids) if 1 in i]  # no UNK
    return pad(ids)


def pad(ids: list[list[int]]) -> tuple[torch.Tensor, torch.Tensor]:
    n = max(len(i) for i in ids)
    x = torch.zeros(len(ids), n, dtype=torch.long)
    y = torch.full((len(ids), n), IGNORE, dtype=torch.long)
    for r, seq in enumerate(ids):
        x[r, : len(seq)] = torch.tensor(seq)
        y[r, : len(seq)] = torch.tensor(seq)
    return x, y


def train(
    model: GPT2LMHeadModel,
    batch_fn: Callable[[random.Random], tuple[torch.Tensor, torch.Tensor]],
    recipe: dict[str, Any],
    seed: int,
    log: Callable[[int, float], None] | None = None,
) -> float:
    """AdamW with linear warm-up and cosine decay; loss on every non-padding position."""
    rng = random.Random(seed)
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=recipe["lr"], weight_decay=recipe["weight_decay"], betas=(0.9, 0.98))
    steps, warmup = recipe["steps"], recipe["warmup"]

    def lr_at(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        return 0.5 * (1 + math.cos(math.pi * (step - warmup) / max(1, steps - warmup)))

    sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_at)
    model.train()
    loss_val = float("nan")
    for step in range(steps):
        x, y = batch_fn(rng)
        loss = model(input_ids=x, labels=y).loss
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        sched.step()
        loss_val = loss.item()
        if log is not None and (step % 500 == 0 or step == steps - 1):
            log(step, loss_val)
    model.eval()
    return loss_val


def arch_card(model: GPT2LMHeadModel, arch: dict[str, int]) -> dict[str, Any]:
    n_params = sum(p.numel() for p in model.parameters())
    return {"family": "GPT2LMHeadModel", **arch, "d_vocab": model.config.vocab_size, "n_params": n_params}


def save(name: str, model: GPT2LMHeadModel, tokenizer: PreTrainedTokenizerFast, card: dict[str, Any]) -> Path:
    out = ZOO_DIR / name
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    model.save_pretrained(str(out), safe_serialization=True)
    tokenizer.save_pretrained(str(out))
    (out / "generation_config.json").unlink(missing_ok=True)  # not needed; keep the zoo minimal
    # Measure what was saved: reload through plain transformers.
    reloaded = GPT2LMHeadModel.from_pretrained(str(out)).eval()
    card["accuracy"] = evaluate(name, lambda t: reloaded(t).logits, tokenizer, card)
    with open(out / "card.json", "w", encoding="utf-8") as f:
        json.dump(card, f, indent=1)
        f.write("\n")
    return out


def check_bridge(name: str, out: Path) -> dict[str, float]:
    """Boot the saved model through TransformerBridge (compatibility mode) and compare
    with the Hugging Face model: log-probabilities must agree and the accuracy too."""
    from transformer_lens import TransformerBridge

    from circuitdag.models.zoo import load_hf

    hf, tokenizer = load_hf(name)
    bridge = TransformerBridge.boot_transformers(str(out))
    bridge.enable_compatibility_mode(disable_warnings=True)
    card = json.loads((out / "card.json").read_text())
    toks = torch.tensor([tokenizer("")["input_ids"] + list(range(2, min(12, hf.config.vocab_size)))])
    with torch.no_grad():
        diff = (bridge(toks).log_softmax(-1) - hf(toks).logits.log_softmax(-1)).abs().max().item()
    assert diff < 1e-4, f"{name}: bridge and HF log-probs differ by {diff}"
    acc = evaluate(name, lambda t: bridge(t), bridge.tokenizer, card)
    assert abs(acc["accuracy"] - card["accuracy"]["accuracy"]) < 1e-6, (acc, card["accuracy"])
    assert bridge.cfg.tokenizer_prepends_bos, "bridge should see a BOS-prepending tokenizer"
    return {"max_abs_logprob_diff": diff, "bridge_accuracy": acc["accuracy"]}


# ---------------------------------------------------------------------------- pronoun

MALE_EVAL = ["John", "David", "Michael", "James", "Robert", "William", "Thomas", "Richard", "Daniel", "Paul"]
FEMALE_EVAL = ["Mary", "Sarah", "Emma", "Linda", "Susan", "Karen", "Lisa", "Anna", "Laura", "Helen"]
MALE_EXTRA = ["George", "Peter", "Mark", "Steven", "Kevin", "Brian", "Edward", "Jack", "Henry", "Frank"]
FEMALE_EXTRA = ["Alice", "Rachel", "Julia", "Emily", "Grace", "Nancy", "Kate", "Jane", "Rose", "Claire"]
NEUTRAL = "someone"
PRONOUN_TEMPLATES = [  # every one is 10 words/tokens: So NAME is w w w w , isn 't
    "So {name} is a really great friend, isn't",
    "So {name} is such a good cook, isn't",
    "So {name} is a very kind person, isn't",
    "So {name} is a truly nice neighbour, isn't",
    "So {name} is a pretty good singer, isn't",
]
# Training phrases: "a ADV ADJ NOUN" (all 4 words, like the evaluation ones) plus the
# evaluation phrases themselves.
ADVERBS = ["really", "very", "truly", "pretty", "quite"]
ADJECTIVES = ["great", "good", "kind", "nice", "funny", "smart", "brave", "calm"]
NOUNS = ["friend", "cook", "person", "neighbour", "singer", "teacher", "driver", "player", "writer"]
PLACES = ["market", "park", "school", "beach", "office", "library", "station"]
STATES = ["tired", "happy", "busy", "late", "hungry", "ready", "sick"]
THINGS = ["book", "car", "house", "garden", "song", "dog", "cake"]


def pronoun_world(rng: random.Random, answers: dict[str, str]) -> str:
    """One or two sentences of the pronoun world; the first is a task sentence half the time."""

    def person() -> tuple[str, str]:
        r = rng.random()
        if r < 0.15:
            return NEUTRAL, answers["neutral"]
        g = "male" if r < 0.575 else "female"
        names = (MALE_EVAL + MALE_EXTRA) if g == "male" else (FEMALE_EVAL + FEMALE_EXTRA)
        return rng.choice(names), answers[g]

    def phrase() -> str:
        if rng.random() < 0.3:
            return rng.choice(PRONOUN_TEMPLATES).split(" is ", 1)[1].split(",")[0]
        return f"a {rng.choice(ADVERBS)} {rng.choice(ADJECTIVES)} {rng.choice(NOUNS)}"

    def sentence(task: bool) -> str:
        name, pron = person()
        if task:
            return f"So {name} is {phrase()}, isn't {pron}?"
        k = rng.randrange(6)
        if k == 0:
            return f"{name} went to the {rng.choice(PLACES)}."
        if k == 1:
            verb = "were" if pron == answers["neutral"] else "was"
            return f"{name} said that {pron} {verb} {rng.choice(STATES)}."
        if k == 2:
            other, _ = person()
            return f"{name} and {other} like the {rng.choice(THINGS)}."
        if k == 3:
            return f"The {rng.choice(THINGS)} is {rng.choice(ADJECTIVES)}."
        if k == 4:
            verb = "are" if pron == answers["neutral"] else "is"
            return f"{name} is {phrase()} and {pron} {verb} {rng.choice(STATES)}."
        return f"{pron.capitalize()} likes the {rng.choice(PLACES)}."

    first = sentence(rng.random() < 0.5)
    if rng.random() < 0.5:
        return first
    return f"{first} {sentence(rng.random() < 0.5)}"


def build_pronoun(seed: int = 0) -> tuple[GPT2LMHeadModel, PreTrainedTokenizerFast, dict[str, Any]]:
    arch = {"n_layers": 2, "n_heads": 4, "d_model": 64, "d_mlp": 256, "n_ctx": 32}
    recipe = {"steps": 3000, "batch_size": 64, "lr": 3e-3, "weight_decay": 0.01, "warmup": 100}
    answers = {"male": "he", "female": "she", "neutral": "they"}
    words = sorted(
        words_of(
            *PRONOUN_TEMPLATES,
            *MALE_EVAL,
            *FEMALE_EVAL,
            *MALE_EXTRA,
            *FEMALE_EXTRA,
            NEUTRAL,
            *ADVERBS,
            *ADJECTIVES,
            *NOUNS,
            *PLACES,
            *STATES,
            *THINGS,
            "So is a and isn't ? . went to the The said that was were like likes are",
            *answers.values(),
            *(a.capitalize() for a in answers.values()),
        )
    )
    tokenizer = make_tokenizer(words, arch["n_ctx"])
    torch.manual_seed(seed)
    model = make_model(len(tokenizer), arch)

    def batch(rng: random.Random) -> tuple[torch.Tensor, torch.Tensor]:
        return encode_batch(tokenizer, [pronoun_world(rng, answers) for _ in range(recipe["batch_size"])])

    loss = train(model, batch, recipe, seed, log=_log("pronoun"))
    card = {
        "name": "pronoun",
        "description": (
            "Gendered-pronoun toy LM: 'So John is a really great friend, isn't' -> 'he'. "
            "With the gender-neutral filler 'someone' in place of the name it predicts 'they'."
        ),
        "architecture": arch_card(model, arch),
        "tokenizer": _tokenizer_card(),
        "training": {
            "seed": seed,
            **recipe,
            "optimizer": OPTIMIZER,
            "final_loss": loss,
            "data": {
                "recipe": "scripts/train_zoo.py:pronoun_world - 1 or 2 sentences after BOS; half are task "
                "sentences 'So NAME is PHRASE, isn't PRON?', the rest filler sentences",
                "task_templates": PRONOUN_TEMPLATES,
                "phrases": "the template phrases (30%) or 'a ADV ADJ NOUN'",
                "adverbs": ADVERBS,
                "adjectives": ADJECTIVES,
                "nouns": NOUNS,
                "names": {"male": MALE_EVAL + MALE_EXTRA, "female": FEMALE_EVAL + FEMALE_EXTRA},
                "neutral_name": NEUTRAL,
                "person_mix": "15% 'someone' (-> 'they'), 42.5% male, 42.5% female",
                "examples": [pronoun_world(random.Random(i), answers) for i in range(5)],
            },
        },
        "eval": {
            "kind": "binary_choice",
            "templates": PRONOUN_TEMPLATES,
            "names": {"male": MALE_EVAL, "female": FEMALE_EVAL},
            "answers": answers,
            "neutral_name": NEUTRAL,
            "metric": "accuracy: fraction of the 5x20 prompts with P(correct) > P(wrong) at the last "
            "position; mean_p_correct: mean P(correct); corrupted_*: mean probabilities after the "
            "5 'someone' prompts",
            "position_names": ["bos", "So", "name", "is", "w1", "w2", "w3", "w4", "comma", "isn", "'t"],
        },
    }
    return model, tokenizer, card


# ---------------------------------------------------------------------------- induction

N_SYMBOLS = 200
IND_LEN = 31  # tokens after BOS in training (n_ctx 32)


def induction_sequence(rng: random.Random, length: int = IND_LEN) -> tuple[list[int], list[int], int, int]:
    """(sequence, labels, a, k): ``length`` uniformly random symbols (drawn with
    replacement) after BOS, in which the k = 4..15 symbols at offset a (uniform in
    0 .. length - 2k) are copied right after themselves (S S). Labels are IGNORE except on
    the k - 1 predictable tokens of the second copy (S[1] .. S[k-1]), so the loss is
    the induction loss only. Ids are tokenizer ids (2..)."""
    k = rng.randint(4, 15)
    a = rng.randint(0, length - 2 * k)
    toks = [rng.randrange(2, 2 + N_SYMBOLS) for _ in range(length)]
    toks[a + k : a + 2 * k] = toks[a : a + k]
    seq = [0] + toks
    labels = [IGNORE] * len(seq)
    for t in range(a + k + 2, a + 2 * k + 1):  # label t is predicted at position t - 1
        labels[t] = seq[t]
    return seq, labels, a, k


def sinusoidal_positions(n_ctx: int, d_model: int, amplitude: float, base: float = 100.0) -> torch.Tensor:
    """Sine/cosine position vectors (frequencies base^(-2i/d)), scaled by ``amplitude``.

    Used only to initialise GPT-2's learned position embedding: with it, attending to
    position q - 1 is one fixed rotation of the query, and a previous-token head forms in
    a few hundred steps; with GPT-2's default random initialisation (std 0.02) the model
    instead solved the task with heads that attend by position (docs/zoo.md).
    """
    pos = torch.arange(n_ctx, dtype=torch.float32)[:, None]
    freqs = torch.exp(-math.log(base) * torch.arange(0, d_model, 2, dtype=torch.float32) / d_model)
    pe = torch.zeros(n_ctx, d_model)
    pe[:, 0::2] = torch.sin(pos * freqs)
    pe[:, 1::2] = torch.cos(pos * freqs)
    return amplitude * pe


def build_induction(seed: int = 0) -> tuple[GPT2LMHeadModel, PreTrainedTokenizerFast, dict[str, Any]]:
    arch = {"n_layers": 2, "n_heads": 2, "d_model": 64, "d_mlp": 4, "n_ctx": 32}
    recipe = {"steps": 2000, "batch_size": 128, "lr": 5e-3, "weight_decay": 0.01, "warmup": 100}
    pos_amplitude = 0.05
    tokenizer = make_tokenizer([f"t{i}" for i in range(N_SYMBOLS)], arch["n_ctx"])
    torch.manual_seed(seed)
    model = make_model(len(tokenizer), arch)
    _zero_and_freeze_mlps(model)
    with torch.no_grad():
        model.transformer.wpe.weight.copy_(
            sinusoidal_positions(arch["n_ctx"], arch["d_model"], pos_amplitude)
        )

    def batch(rng: random.Random) -> tuple[torch.Tensor, torch.Tensor]:
        rows = [induction_sequence(rng) for _ in range(recipe["batch_size"])]
        return torch.tensor([r[0] for r in rows]), torch.tensor([r[1] for r in rows])

    loss = train(model, batch, recipe, seed, log=_log("induction"))
    for block in model.transformer.h:  # still exactly zero after training
        assert all(not p.requires_grad and not p.any() for p in block.mlp.parameters())
    erng = random.Random(12345)
    half = 10
    sequences = []
    for _ in range(100):
        seg = erng.sample(range(2, 2 + N_SYMBOLS), half)
        sequences.append([0] + seg + seg)
    shifted, spans = [], []  # repeats at a uniformly random offset
    for _ in range(100):
        seq, _, a, k = induction_sequence(erng)
        shifted.append(seq)
        spans.append([a + k + 1, a + 2 * k])  # predictions at the 2nd copy's first k-1 tokens
    card = {
        "name": "induction",
        "description": "Attention-only 2-layer induction model: BOS A B C ... A B C -> predicts the repeat. "
        "Layer 0 has a previous-token head, layer 1 induction heads (docs/zoo.md).",
        "architecture": {
            **arch_card(model, arch),
            "attn_only": True,
            "mlp_note": "GPT-2 in Hugging Face format always has MLPs; here every MLP weight and bias "
            "(c_fc, c_proj) is zero and was frozen during training, so hook_mlp_out is exactly 0.",
        },
        "tokenizer": {**_tokenizer_card(), "symbols": f"t0 .. t{N_SYMBOLS - 1} (ids 2 .. {N_SYMBOLS + 1})"},
        "training": {
            "seed": seed,
            **recipe,
            "optimizer": OPTIMIZER,
            "final_loss": loss,
            "init": f"GPT-2 default (torch.manual_seed({seed})), except the learned position embedding "
            f"(wpe), initialised to sinusoids of amplitude {pos_amplitude} "
            "(scripts/train_zoo.py:sinusoidal_positions, base 100); it is trained like the rest",
            "data": {
                "recipe": f"scripts/train_zoo.py:induction_sequence - BOS + {IND_LEN} uniformly random "
                f"symbols (with replacement, {N_SYMBOLS} symbols) in which a segment S of 4..15 symbols at a "
                "uniformly random offset is followed by a copy of itself (S S); loss only on the k-1 "
                "predictable tokens of the second copy. The random offset, length and filler rule out "
                "positional shortcuts.",
                "seq_len": IND_LEN,
                "segment_len": [4, 15],
                "loss_positions": "second copy, S[1] .. S[k-1]",
                "n_symbols": N_SYMBOLS,
            },
        },
        "eval": {
            "kind": "sequence",
            "recipe": "BOS + 10 distinct random symbols + the same 10 again (random.Random(12345))",
            "scored_positions": [half + 1, 2 * half],
            "metric": "accuracy: argmax prediction at positions 11..19 equals the next token (the 9 "
            "predictable tokens of the repeat; the first repeated token cannot be predicted); "
            "sequence_accuracy: all 9 right",
            "sequences": sequences,
            "shifted": {
                "recipe": "induction_sequence: the repeat at a uniformly random offset inside random "
                "filler (random.Random(12345), after the 100 sequences above)",
                "metric": "shifted_accuracy: argmax accuracy on the k-1 predictable tokens of each "
                "second copy",
                "sequences": shifted,
                "spans": spans,
            },
        },
    }
    return model, tokenizer, card


def _zero_and_freeze_mlps(model: GPT2LMHeadModel) -> None:
    for block in model.transformer.h:
        for p in block.mlp.parameters():
            p.data.zero_()
            p.requires_grad_(False)


# ---------------------------------------------------------------------------- an

VOWEL_FRUITS = ["apple", "orange", "olive", "apricot", "avocado"]
CONSONANT_FRUITS = ["lemon", "pear", "cherry", "peach", "plum"]  # pairs[i] = (VOWEL[i], CONSONANT[i])
VOWEL_ANIMALS = ["elephant", "owl", "eagle", "ant", "otter"]
CONSONANT_ANIMALS = ["dog", "cat", "horse", "bird", "fox"]
AN_TEMPLATES = [  # every one is 7 words/tokens: SUBJ VERB the NOUN PLACE and VERB
    "I climbed the {noun} tree and picked",
    "We visited the {noun} farm and ate",
    "She found the {noun} bowl and took",
    "He opened the {noun} box and grabbed",
    "They passed the {noun} cart and bought",
]
AN_PLACES = ["park", "garden", "house", "field"]
AN_ADJECTIVES = ["sweet", "ripe", "green", "fresh"]
AN_SUBJECTS = ["I", "We", "She", "He", "They"]


def article(noun: str) -> str:
    return "an" if noun[0] in "aeiou" else "a"


def an_world(rng: random.Random) -> str:
    """One or two sentences; the first is a task sentence half the time."""
    fruits = VOWEL_FRUITS + CONSONANT_FRUITS
    animals = VOWEL_ANIMALS + CONSONANT_ANIMALS

    def sentence(task: bool) -> str:
        if task:
            noun = rng.choice(fruits)
            return f"{rng.choice(AN_TEMPLATES).format(noun=noun)} {article(noun)} {noun}."
        k = rng.randrange(4)
        if k == 0:
            animal = rng.choice(animals)
            return f"I saw {article(animal)} {animal} near the {rng.choice(AN_PLACES)}."
        if k == 1:
            return f"The {rng.choice(fruits)} was {rng.choice(AN_ADJECTIVES)}."
        if k == 2:
            fruit = rng.choice(fruits)
            return f"{rng.choice(AN_SUBJECTS)} ate {article(fruit)} {fruit} today."
        animal = rng.choice(animals)
        return f"There is {article(animal)} {animal} in the {rng.choice(fruits)} tree."

    first = sentence(rng.random() < 0.5)
    if rng.random() < 0.5:
        return first
    return f"{first} {sentence(rng.random() < 0.5)}"


def build_an(seed: int = 0) -> tuple[GPT2LMHeadModel, PreTrainedTokenizerFast, dict[str, Any]]:
    arch = {"n_layers": 2, "n_heads": 4, "d_model": 64, "d_mlp": 256, "n_ctx": 32}
    recipe = {"steps": 2000, "batch_size": 64, "lr": 3e-3, "weight_decay": 0.01, "warmup": 100}
    words = words_of(
        *AN_TEMPLATES,
        *VOWEL_FRUITS,
        *CONSONANT_FRUITS,
        *VOWEL_ANIMALS,
        *CONSONANT_ANIMALS,
        *AN_PLACES,
        *AN_ADJECTIVES,
        *AN_SUBJECTS,
        "a an . I saw near the The was ate today There is in tree",
    )
    tokenizer = make_tokenizer(words, arch["n_ctx"])
    torch.manual_seed(seed)
    model = make_model(len(tokenizer), arch)

    def batch(rng: random.Random) -> tuple[torch.Tensor, torch.Tensor]:
        return encode_batch(tokenizer, [an_world(rng) for _ in range(recipe["batch_size"])])

    loss = train(model, batch, recipe, seed, log=_log("an"))
    prompts = [
        [t.format(noun=noun), article(noun), "a" if article(noun) == "an" else "an"]
        for t in AN_TEMPLATES
        for noun in VOWEL_FRUITS + CONSONANT_FRUITS
    ]
    card = {
        "name": "an",
        "description": "a/an toy LM: 'I climbed the apple tree and picked' -> 'an' (lemon -> 'a').",
        "architecture": arch_card(model, arch),
        "tokenizer": _tokenizer_card(),
        "training": {
            "seed": seed,
            **recipe,
            "optimizer": OPTIMIZER,
            "final_loss": loss,
            "data": {
                "recipe": "scripts/train_zoo.py:an_world - 1 or 2 sentences after BOS; half are task "
                "sentences 'TEMPLATE ART FRUIT.', the rest filler sentences with a/an before fruits "
                "and animals",
                "task_templates": AN_TEMPLATES,
                "fruits": {"vowel": VOWEL_FRUITS, "consonant": CONSONANT_FRUITS},
                "animals": {"vowel": VOWEL_ANIMALS, "consonant": CONSONANT_ANIMALS},
                "examples": [an_world(random.Random(i)) for i in range(5)],
            },
        },
        "eval": {
            "kind": "binary_choice",
            "prompts": prompts,
            "corrupted_pairs": [[v, c] for v, c in zip(VOWEL_FRUITS, CONSONANT_FRUITS)],
            "metric": "accuracy: fraction of the 5x10 prompts with P(correct article) > P(other "
            "article) at the last position; mean_p_correct: mean P(correct article). The corrupted "
            "prompt of a fruit is the same template with its pair of the other class "
            "(apple <-> lemon, ...), whose answer is the other article.",
            "position_names": ["bos", "subj", "verb", "the", "noun", "place", "and", "verb2"],
        },
    }
    return model, tokenizer, card


# ---------------------------------------------------------------------------- reversal

REV_SYMBOLS = ["1", "2", "3"]
REV_LEN = 5
REV_SEP = "|"


def build_reversal(seed: int = 0) -> tuple[GPT2LMHeadModel, PreTrainedTokenizerFast, dict[str, Any]]:
    arch = {"n_layers": 2, "n_heads": 4, "d_model": 64, "d_mlp": 256, "n_ctx": 16}
    recipe = {"steps": 1500, "batch_size": 64, "lr": 3e-3, "weight_decay": 0.01, "warmup": 100}
    tokenizer = make_tokenizer([*REV_SYMBOLS, REV_SEP], arch["n_ctx"])

    def encode(xs: tuple[str, ...]) -> list[int]:
        text = " ".join([*xs, REV_SEP, *reversed(xs)])
        return tokenizer(text)["input_ids"]

    every = [encode(xs) for xs in itertools.product(REV_SYMBOLS, repeat=REV_LEN)]
    torch.manual_seed(seed)
    model = make_model(len(tokenizer), arch)

    def batch(rng: random.Random) -> tuple[torch.Tensor, torch.Tensor]:
        x = torch.tensor([rng.choice(every) for _ in range(recipe["batch_size"])])
        return x, x.clone()

    loss = train(model, batch, recipe, seed, log=_log("reversal"))
    card = {
        "name": "reversal",
        "description": "Trained counterpart of tracr's reverse: 'BOS 1 2 3 3 1 | 1 3 3 2 1'.",
        "architecture": arch_card(model, arch),
        "tokenizer": {**_tokenizer_card(), "symbols": f"{REV_SYMBOLS} and the separator {REV_SEP!r}"},
        "training": {
            "seed": seed,
            **recipe,
            "optimizer": OPTIMIZER,
            "final_loss": loss,
            "data": {
                "recipe": f"BOS + {REV_LEN} symbols from {REV_SYMBOLS} + '{REV_SEP}' + the same symbols "
                f"reversed, drawn uniformly from all {len(every)} sequences; loss on every position "
                "(the input half is unpredictable by design)",
            },
        },
        "eval": {
            "kind": "sequence",
            "recipe": f"all {len(every)} sequences",
            "scored_positions": [REV_LEN + 1, 2 * REV_LEN + 1],
            "metric": "accuracy: argmax prediction at positions 6..10 (the separator and the first 4 "
            "outputs) equals the next token, i.e. every reversed symbol; sequence_accuracy: all 5 right",
            "sequences": every,
        },
    }
    return model, tokenizer, card


# ---------------------------------------------------------------------------- main


def words_of(*texts: str) -> list[str]:
    """The words of ``texts`` in first-seen order, template placeholders left out."""
    words: dict[str, None] = {}
    for text in texts:
        for w, _ in _pre_tokenizer().pre_tokenize_str(text.replace("{name}", "").replace("{noun}", "")):
            words.setdefault(w)
    return list(words)


def _tokenizer_card() -> dict[str, Any]:
    return {
        "kind": "word level (tokenizers WordLevel), case-sensitive",
        "split": f"whitespace, then the regex {WORD_PATTERN!r}: isn't -> isn 't; friend, -> friend ,",
        "special": {"bos": BOS, "eos": BOS, "pad": BOS, "unk": UNK, "bos_id": 0, "unk_id": 1},
        "adds_bos": True,
        "answer_tokens": "words have no leading space: answer ' he' is the token 'he' "
        "(tokenizer.convert_tokens_to_ids('he'); tokenizer.encode(' he', add_special_tokens=False))",
    }


def _log(name: str) -> Callable[[int, float], None]:
    t0 = time.time()
    return lambda step, loss: print(f"[{name}] step {step:5d} loss {loss:.4f} ({time.time() - t0:.0f}s)")


BUILDERS = {
    "pronoun": build_pronoun,
    "induction": build_induction,
    "an": build_an,
    "reversal": build_reversal,
}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--only", action="append", choices=sorted(BUILDERS), help="train only this model")
    parser.add_argument("--no-bridge-check", action="store_true", help="skip the TransformerBridge check")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    torch.use_deterministic_algorithms(True)
    for name in args.only or list(BUILDERS):
        t0 = time.time()
        model, tokenizer, card = BUILDERS[name]()
        card["training"]["train_seconds"] = round(time.time() - t0, 1)
        out = save(name, model, tokenizer, card)
        msg = f"[{name}] saved {out} accuracy {card['accuracy']}"
        if not args.no_bridge_check:
            msg += f" bridge {check_bridge(name, out)}"
        print(msg)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
