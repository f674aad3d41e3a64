"""Contrast-Consistent Search (CCS) with and without a coherence term, against a
supervised and a random probe, on each layer's residual stream.

CCS (Burns, Ye, Klein & Steinhardt 2023, "Discovering Latent Knowledge in Language Models
Without Supervision") looks for a direction in a model's activations that tells true
statements from false ones without labels. Each statement ``s`` becomes a contrast pair,
``x+ = s + " Is this true? Yes"`` and ``x- = s + " Is this true? No"``; the residual
stream at the last token of each, per layer, is normalised per set (mean removed, each
dimension divided by its standard deviation, over the training statements), and a probe
``p(x) = sigmoid(w . x + b)`` is trained on

    L_CCS = mean (p(x+) - (1 - p(x-)))^2  +  mean min(p(x+), p(x-))^2

(consistency + confidence), from several random starts, keeping the lowest loss. A
statement's prediction is ``(p(x+) + 1 - p(x-)) / 2 > 1/2``; since CCS cannot know which
side is "true", accuracy is ``max(acc, 1 - acc)`` on the held-out statements, as Burns et
al. report it.

The hackathon write-up (seed: "extending the CCS approach with a reward internal coherence
confidence regulariser") gives no formula. The principled version used here: the same
fact stated in two phrasings (``2 + 3 = 5.`` / ``2 plus 3 is 5.``) must get the same
prediction, so the coherence term adds ``lambda * mean over facts of the variance of the
predictions of its phrasings`` (``lambda`` = :data:`COHERENCE_WEIGHT`). It uses no labels,
only which statements say the same thing; docs/ccs.md says what differs from the write-up.

The two baselines: a supervised logistic probe (labels used; L2-regularised, LBFGS) is the
ceiling of what a linear probe can read; a random direction (the mean of
``max(acc, 1 - acc)`` over :data:`N_RANDOM` directions) is the floor.

Held-out statements are disjoint *facts* from the training ones (both phrasings of a fact
are on the same side). :func:`builtin_statements` makes arithmetic and capital-city facts;
any JSONL file of ``{"statement", "label"[, "fact"]}`` rows works too (:func:`read_statements`).
"""

from __future__ import annotations

import json
import math
import random
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from circuitdag.errors import ConfigError

#: Weight of the coherence term (chosen once on the zoo's synthetic check, not tuned on SmolLM2).
COHERENCE_WEIGHT = 1.0
#: Random starts per CCS probe (Burns et al. use 10).
N_TRIES = 10
#: Random directions averaged for the random probe.
N_RANDOM = 20
SUFFIXES = (" Is this true? Yes", " Is this true? No")

#: (country, capital, another city of that country): a false statement names the other
#: city, so every entity of a country's two facts is on one side of the held-out split.
CAPITALS = (
    ("France", "Paris", "Lyon"), ("Germany", "Berlin", "Munich"), ("Italy", "Rome", "Milan"),
    ("Spain", "Madrid", "Barcelona"), ("Japan", "Tokyo", "Osaka"), ("China", "Beijing", "Shanghai"),
    ("Russia", "Moscow", "Kazan"), ("Egypt", "Cairo", "Alexandria"), ("Greece", "Athens", "Patras"),
    ("Portugal", "Lisbon", "Porto"), ("Austria", "Vienna", "Graz"), ("Poland", "Warsaw", "Krakow"),
    ("Ireland", "Dublin", "Cork"), ("Norway", "Oslo", "Bergen"), ("Sweden", "Stockholm", "Gothenburg"),
    ("Finland", "Helsinki", "Tampere"), ("Denmark", "Copenhagen", "Aarhus"), ("Hungary", "Budapest", "Debrecen"),
    ("Canada", "Ottawa", "Toronto"), ("Mexico", "Mexico City", "Guadalajara"), ("Peru", "Lima", "Cusco"),
    ("Kenya", "Nairobi", "Mombasa"), ("Turkey", "Ankara", "Istanbul"), ("India", "New Delhi", "Mumbai"),
    ("Thailand", "Bangkok", "Phuket"), ("Cuba", "Havana", "Varadero"), ("Chile", "Santiago", "Valparaiso"),
    ("Argentina", "Buenos Aires", "Cordoba"), ("Belgium", "Brussels", "Antwerp"),
    ("Netherlands", "Amsterdam", "Rotterdam"),
)  # fmt: skip


@dataclass(frozen=True)
class Statement:
    """One statement: its text, whether it is true, the fact it states (phrasings of one
    fact share ``fact``) and its topic (facts sharing entities, kept on one side of the
    held-out split; default: the fact)."""

    text: str
    label: bool
    fact: str
    topic: str = ""

    @property
    def split_key(self) -> str:
        return self.topic or self.fact


def builtin_statements(seed: int = 0) -> list[Statement]:
    """Arithmetic facts (``a + b = c`` for a, b in 1..9, true or off by 1 or 2; about half
    true, drawn with ``seed``) and capital-city facts (for each country its capital, true,
    and another of its cities, false; one topic per country), each in two phrasings."""
    rng = random.Random(seed)
    out: list[Statement] = []
    for a in range(1, 10):
        for b in range(1, 10):
            true = rng.random() < 0.5
            c = a + b if true else a + b + rng.choice((-2, -1, 1, 2))
            fact = f"sum:{a}+{b}={c}"
            out += [Statement(f"{a} + {b} = {c}.", true, fact), Statement(f"{a} plus {b} is {c}.", true, fact)]
    for country, capital, other in CAPITALS:
        for city, true in ((capital, True), (other, False)):
            fact, topic = f"capital:{country}={city}", f"country:{country}"
            out += [Statement(f"The capital of {country} is {city}.", true, fact, topic),
                    Statement(f"{city} is the capital of {country}.", true, fact, topic)]  # fmt: skip
    return out


def read_statements(path: str | Path) -> list[Statement]:
    """Statements from a JSONL file: one ``{"statement": str, "label": bool}`` per line,
    optionally ``"fact"`` (phrasings of one fact share it; default: the line's own) and
    ``"topic"`` (facts kept on one side of the held-out split; default: the fact).
    Raises :class:`ConfigError` naming the line for a bad row."""
    from circuitdag.files import read_text_lines

    out = []
    for i, line in read_text_lines(path, "a JSONL file of statements", error=ConfigError):
        try:
            row = json.loads(line)
        except json.JSONDecodeError as exc:
            raise ConfigError(f"{path} line {i} is not JSON ({exc.msg})") from None
        if not isinstance(row, dict) or not isinstance(row.get("statement"), str) or not isinstance(row.get("label"), bool):
            raise ConfigError(f'{path} line {i}: each line needs "statement" (text) and "label" (true or false)')
        out.append(Statement(row["statement"], row["label"], str(row.get("fact", f"line:{i}")),
                             str(row.get("topic", ""))))  # fmt: skip
    if len({s.label for s in out}) < 2:
        raise ConfigError(f"{path}: CCS needs true and false statements; the file has {len(out)} of one kind")
    return out


def split_facts(statements: Sequence[Statement], holdout: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Indices of the training and held-out statements: a seeded split of the *topics*
    (facts that share entities stay together; a probe that memorised "France" learns
    nothing it can use on the held-out side)."""
    topics = sorted({s.split_key for s in statements})
    random.Random(seed).shuffle(topics)
    n_test = max(1, round(holdout * len(topics)))
    test = set(topics[:n_test])
    idx = np.arange(len(statements))
    is_test = np.array([s.split_key in test for s in statements])
    return idx[~is_test], idx[is_test]


@torch.no_grad()
def hidden_states(model: Any, texts: Sequence[str], batch: int = 16) -> np.ndarray:
    """The residual stream after every block at the last token of each text:
    float64 array (text, layer, d_model)."""
    from circuitdag.tasks._lm import encode, tokenizer_of, wants_bos

    tok, bos = tokenizer_of(model), wants_bos(model)
    ids = [encode(tok, t, bos) for t in texts]
    n_layers = int(model.cfg.n_layers)
    names = [f"blocks.{L}.hook_resid_post" for L in range(n_layers)]
    out = np.zeros((len(texts), n_layers, int(model.cfg.d_model)))
    order = sorted(range(len(ids)), key=lambda i: len(ids[i]))  # equal lengths batch without padding
    start = 0
    while start < len(order):
        length = len(ids[order[start]])
        group = [i for i in order[start:start + batch] if len(ids[i]) == length]
        tokens = torch.tensor([ids[i] for i in group], device=next(model.parameters()).device)
        _, cache = model.run_with_cache(tokens, names_filter=lambda n: n in names)
        stacked = torch.stack([cache[n][:, -1] for n in names], dim=1)
        out[group] = stacked.double().cpu().numpy()
        start += len(group)
    return out


def normalise(train: np.ndarray, test: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Remove the training mean and divide by the training standard deviation (per dim)."""
    mu, sd = train.mean(0), train.std(0) + 1e-8
    return (train - mu) / sd, (test - mu) / sd


def ccs_probe(pos: np.ndarray, neg: np.ndarray, facts: Sequence[str] | None = None, coherence: float = 0.0,
              tries: int = N_TRIES, steps: int = 1000, seed: int = 0) -> tuple[np.ndarray, float, float]:  # fmt: skip
    """Train a CCS probe on normalised contrast features ``pos``/``neg`` (statement, d).
    ``coherence`` > 0 adds the coherence term over ``facts`` (one id per statement).
    Returns ``(w, b, loss)`` of the best of ``tries`` random starts, trained together
    (full batch, Adam, lr 1e-2, ``steps`` steps)."""
    xp, xn = torch.tensor(pos), torch.tensor(neg)
    groups = counts = None
    if coherence and facts is not None:
        ids = {f: i for i, f in enumerate(dict.fromkeys(facts))}
        groups = torch.tensor([ids[f] for f in facts])
        counts = torch.bincount(groups).double()
    gen = torch.Generator().manual_seed(seed)
    w = (torch.randn(tries, xp.shape[1], generator=gen, dtype=torch.float64) / math.sqrt(xp.shape[1])).requires_grad_()
    b = torch.zeros(tries, dtype=torch.float64, requires_grad=True)
    opt = torch.optim.Adam([w, b], lr=1e-2)
    for _ in range(steps):
        opt.zero_grad()
        _ccs_loss(xp @ w.T + b, xn @ w.T + b, groups, counts, coherence).sum().backward()  # tries are independent
        opt.step()
    with torch.no_grad():
        losses = _ccs_loss(xp @ w.T + b, xn @ w.T + b, groups, counts, coherence)
    best = int(torch.argmin(losses))
    return w[best].detach().numpy().copy(), float(b[best].detach()), float(losses[best])


def _ccs_loss(zp: torch.Tensor, zn: torch.Tensor, groups: torch.Tensor | None, counts: torch.Tensor | None,
              coherence: float) -> torch.Tensor:  # fmt: skip
    """One loss per probe: ``zp``/``zn`` are the logits (statement, probe)."""
    pp, pn = torch.sigmoid(zp), torch.sigmoid(zn)
    loss = ((pp - (1 - pn)) ** 2).mean(0) + (torch.minimum(pp, pn) ** 2).mean(0)
    if groups is not None and counts is not None and coherence:
        pred = (pp + 1 - pn) / 2
        mean = torch.zeros(len(counts), pred.shape[1], dtype=pred.dtype).index_add(0, groups, pred) / counts[:, None]
        loss = loss + coherence * ((pred - mean[groups]) ** 2).mean(0)
    return loss


def ccs_accuracy(w: np.ndarray, b: float, pos: np.ndarray, neg: np.ndarray, labels: np.ndarray) -> float:
    """``max(acc, 1 - acc)`` of the probe's predictions ``(p+ + 1 - p-) / 2 > 1/2``."""
    pred = (_sigmoid(pos @ w + b) + 1 - _sigmoid(neg @ w + b)) / 2 > 0.5
    acc = float((pred == labels).mean())
    return max(acc, 1 - acc)


def _sigmoid(z: np.ndarray) -> np.ndarray:
    return 1 / (1 + np.exp(-z))


def supervised_probe(x: np.ndarray, labels: np.ndarray, l2: float = 1e-2) -> tuple[np.ndarray, float]:
    """Logistic regression on features ``x`` (statement, d) with labels (LBFGS, L2 ``l2``)."""
    xt, y = torch.tensor(x), torch.tensor(labels, dtype=torch.float64)
    w = torch.zeros(x.shape[1], dtype=torch.float64, requires_grad=True)
    b = torch.zeros((), dtype=torch.float64, requires_grad=True)
    opt = torch.optim.LBFGS([w, b], max_iter=200, line_search_fn="strong_wolfe")

    def closure() -> torch.Tensor:
        opt.zero_grad()
        loss = torch.nn.functional.binary_cross_entropy_with_logits(xt @ w + b, y) + l2 * (w @ w)
        loss.backward()
        return loss

    opt.step(closure)
    return w.detach().numpy(), float(b.detach())


def random_accuracy(pos: np.ndarray, neg: np.ndarray, labels: np.ndarray, n: int = N_RANDOM, seed: int = 0) -> float:
    """Mean ``max(acc, 1 - acc)`` of ``n`` random directions used as CCS probes."""
    rng = np.random.default_rng(seed)
    directions = rng.standard_normal((n, pos.shape[1]))
    return float(np.mean([ccs_accuracy(w, 0.0, pos, neg, labels) for w in directions]))
