"""A neuron's activation over running text, binned, against the model's top prediction.

The seed's reviewer asked for the neuron's activation over ordinary text, not only over
the task's prompts. :func:`corpus_activation` runs the model over a text corpus in
windows of ``window`` tokens, records neuron ``n`` of layer ``L`` (``blocks.L.mlp.hook_post``)
at every position, bins the activations into ``n_bins`` equal-width bins, and gives per
bin how often the model's top next-token prediction is the target token (" an") and how
often the next token actually is.

The default corpus is the English text of Debian's ``fortunes`` package (fortune-mod's
data files: literature quotations, wisdom, humour, definitions; public domain or freely
redistributable, about 2.5 MB), installed by ``scripts/setup.sh`` with apt and read from
``/usr/share/games/fortunes``: real English prose that every Debian/Ubuntu machine can
install offline from its package mirror, with " a" and " an" in ordinary use. ``--corpus
FILE`` reads any UTF-8 text file instead. A word-level zoo model knows few of the
corpus's words; the result records the fraction of tokens that were unknown.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from circuitdag.components import plain_module
from circuitdag.errors import ConfigError
from circuitdag.neurons._runs import b_u, run_to_final
from circuitdag.tasks._lm import tokenizer_of, wants_bos

FORTUNES_DIR = Path("/usr/share/games/fortunes")
#: Files of the ``fortunes`` package read, in this order (prose; no ASCII art or code).
FORTUNE_FILES = (
    "literature", "wisdom", "people", "humorists", "education", "law", "politics", "science",
    "work", "love", "food", "miscellaneous", "men-women", "kids", "pets", "platitudes",
)  # fmt: skip


def default_corpus(fortunes_dir: Path = FORTUNES_DIR) -> str:
    """The text of the ``fortunes`` files in :data:`FORTUNE_FILES` (entries joined by blank
    lines). Raises :class:`ConfigError` when the package is not installed."""
    files = [fortunes_dir / f for f in FORTUNE_FILES if (fortunes_dir / f).is_file()]
    if not files:
        raise ConfigError(f"the default corpus is Debian's fortunes package, not found in {fortunes_dir}; "
                          "install it (apt-get install fortunes, as scripts/setup.sh does) or pass "
                          "--corpus FILE with a text file of your own")  # fmt: skip
    entries = []
    for f in files:
        text = f.read_text(encoding="utf-8", errors="replace")
        entries += [e.strip() for e in text.split("\n%\n") if e.strip()]
    return "\n\n".join(entries)


def read_corpus(path: str | Path | None = None) -> tuple[str, str]:
    """(text, where it came from): ``path`` as UTF-8, or :func:`default_corpus`."""
    if path is None:
        return default_corpus(), f"Debian fortunes ({FORTUNES_DIR}: {', '.join(FORTUNE_FILES)})"
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"cannot read --corpus {p}: {exc}; give a UTF-8 text file") from exc
    if not text.strip():
        raise ConfigError(f"--corpus {p} is empty")
    return text, str(p)


@dataclass(frozen=True)
class CorpusBins:
    """``edges``: ``n_bins + 1`` activation bin edges; per bin: ``count`` positions,
    ``top_is_target`` (fraction whose top prediction is the target token),
    ``next_is_target`` (fraction whose next token is it)."""

    source: str
    target_token: int
    n_tokens: int
    unknown_fraction: float
    edges: list[float]
    count: list[int]
    top_is_target: list[float | None]
    next_is_target: list[float | None]
    max_activation_context: str

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


def corpus_activation(
    model: Any,
    layer: int,
    neuron: int,
    target_token: int,
    text: str,
    source: str = "text",
    window: int = 64,
    max_tokens: int = 20_000,
    n_bins: int = 10,
    batch: int = 16,
) -> CorpusBins:
    """Bin neuron ``neuron`` of layer ``layer`` over ``text`` (see the module docstring).

    The first ``max_tokens`` tokens are cut into windows of ``window`` tokens (fewer when the
    model's context is shorter), each starting with BOS when the model's prompts do
    (:func:`circuitdag.models.bos_decision`); the BOS position is not counted. The last
    position of each window has no next token in it and counts for ``top_is_target`` only.
    """
    tok = tokenizer_of(model)
    # Tokenize only what can be used: no tokenizer makes more than one token per character.
    ids = tok(text[: max_tokens * 20], add_special_tokens=False)["input_ids"][:max_tokens]
    if len(ids) < 2:
        raise ConfigError(f"the corpus {source} has fewer than 2 tokens for this model's tokenizer")
    bos = wants_bos(model)
    n_ctx = int(model.cfg.n_ctx)
    w = max(2, min(window, n_ctx - int(bos)))
    unk = getattr(tok, "unk_token_id", None)
    unknown = sum(1 for t in ids if t == unk) / len(ids) if unk is not None else 0.0
    windows = [ids[i : i + w] for i in range(0, len(ids) - 1, w)]
    windows = [x for x in windows if len(x) >= 2]
    ln, W_U, bU = plain_module(model.ln_final), model.W_U.detach(), b_u(model)
    acts, tops, nexts = [], [], []
    device = W_U.device
    for i in range(0, len(windows), batch):
        group = windows[i : i + batch]
        width = max(len(x) for x in group)
        pad = [x + [x[-1]] * (width - len(x)) for x in group]  # right padding: causal, masked below
        tokens = torch.tensor([([tok.bos_token_id] if bos else []) + x for x in pad], device=device)
        got: dict[str, Tensor] = {}

        def save(x: Tensor, hook: Any, got: dict[str, Tensor] = got) -> None:
            got["post"] = x[..., neuron].detach()

        final = run_to_final(model, tokens, 0, [(f"blocks.{layer}.mlp.hook_post", save)])
        with torch.no_grad():
            logits = ln(final) @ W_U
            if bU is not None:
                logits = logits + bU.detach()
        top = logits.argmax(-1)
        off = int(bos)
        for j, x in enumerate(group):
            n = len(x)
            acts.append(got["post"][j, off : off + n].double().cpu())
            tops.append((top[j, off : off + n] == target_token).cpu())
            nxt = torch.tensor(x[1:], dtype=torch.long) == target_token
            nexts.append(torch.cat([nxt.double(), torch.tensor([float("nan")], dtype=torch.float64)]))
    a, t, nx = torch.cat(acts), torch.cat(tops).double(), torch.cat(nexts)
    lo, hi = float(a.min()), float(a.max())
    if hi <= lo:
        hi = lo + 1.0
    edges = torch.linspace(lo, hi, n_bins + 1, dtype=torch.float64)
    which = torch.bucketize(a, edges[1:-1], right=True)
    count, top_is, next_is = [], [], []
    for b in range(n_bins):
        sel = which == b
        c = int(sel.sum())
        count.append(c)
        top_is.append(float(t[sel].mean()) if c else None)
        nsel = sel & ~torch.isnan(nx)
        next_is.append(float(nx[nsel].mean()) if int(nsel.sum()) else None)
    best = int(a.argmax())
    flat = [y for x in windows for y in x]
    context = tok.decode(flat[max(0, best - 12) : best + 1]) + " ⟶ " + tok.decode(flat[best + 1 : best + 2])
    return CorpusBins(source, target_token, len(ids), unknown, edges.tolist(), count, top_is, next_is, context)
