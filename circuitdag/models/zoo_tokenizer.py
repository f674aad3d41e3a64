"""The zoo's word-level tokenizers, read with the ``tokenizers`` library alone.

``transformers.AutoTokenizer`` would give the same tokenizer, but importing it costs about a
second of process start-up, more than a whole ACDC search on a zoo model.
:class:`ZooTokenizer` reads the same two files (``tokenizer.json``: the vocabulary,
pre-tokenizer, BOS post-processor and decoder; ``tokenizer_config.json``: the special
tokens) and offers the part of a Hugging Face tokenizer's API that circuitdag's tasks and
analyses use: calling it, ``encode``/``decode``, ``convert_ids_to_tokens`` /
``convert_tokens_to_ids``, the special tokens and their ids, ``get_vocab``.
tests/models/test_zoo_hooked.py checks it against ``AutoTokenizer`` on every zoo model:
every token, the cards' prompts and every task's prompts.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from circuitdag.errors import ModelError

__all__ = ["ZooTokenizer"]

_SPECIALS = ("bos", "eos", "unk", "pad")


class ZooTokenizer:
    """A zoo model's tokenizer (module docstring). ``path``: the model's directory."""

    #: Its BOS token is the one its saved files define (``bos_decision`` need not re-read them).
    bos_from_files = True
    chat_template = None
    padding_side = "right"

    def __init__(self, path: str | Path) -> None:
        from tokenizers import Tokenizer

        path = Path(path)
        try:
            self._tok = Tokenizer.from_file(str(path / "tokenizer.json"))
            config = json.loads((path / "tokenizer_config.json").read_text(encoding="utf-8"))
        except (OSError, ValueError, Exception) as exc:  # tokenizers raises a bare Exception on a bad file
            raise ModelError(f"cannot read the tokenizer in {path}: {exc}") from exc
        self.name_or_path = str(path)
        self.model_max_length = int(config.get("model_max_length", 10**30))
        self._vocab: dict[str, int] = self._tok.get_vocab(with_added_tokens=True)
        for kind in _SPECIALS:
            token = config.get(f"{kind}_token")
            if isinstance(token, dict):  # an AddedToken saved with its options
                token = token.get("content")
            if token is not None and token not in self._vocab:
                raise ModelError(f"{path}: the {kind} token {token!r} is not in the vocabulary")
            setattr(self, f"{kind}_token", token)
            setattr(self, f"{kind}_token_id", None if token is None else self._vocab[token])

    bos_token: str | None
    eos_token: str | None
    unk_token: str | None
    pad_token: str | None
    bos_token_id: int | None
    eos_token_id: int | None
    unk_token_id: int | None
    pad_token_id: int | None

    # ------------------------------------------------------------------ vocabulary
    def get_vocab(self) -> dict[str, int]:
        return dict(self._vocab)

    @property
    def vocab_size(self) -> int:
        return len(self._vocab)

    def __len__(self) -> int:
        return len(self._vocab)

    @property
    def all_special_tokens(self) -> list[str]:
        tokens = [getattr(self, f"{kind}_token") for kind in _SPECIALS]
        return list(dict.fromkeys(t for t in tokens if t is not None))

    @property
    def all_special_ids(self) -> list[int]:
        return [self._vocab[t] for t in self.all_special_tokens]

    def convert_tokens_to_ids(self, tokens: str | Sequence[str]) -> Any:
        """Id of a token (the unknown token's id for a word not in the vocabulary), or a list."""
        if isinstance(tokens, str):
            return self._vocab.get(tokens, self.unk_token_id)
        return [self._vocab.get(t, self.unk_token_id) for t in tokens]

    def convert_ids_to_tokens(self, ids: int | Sequence[int], skip_special_tokens: bool = False) -> Any:
        if isinstance(ids, int):
            return self._tok.id_to_token(ids)
        special = set(self.all_special_ids) if skip_special_tokens else set()
        return [self._tok.id_to_token(int(i)) for i in ids if int(i) not in special]

    # ------------------------------------------------------------------ text
    def encode(self, text: str, add_special_tokens: bool = True) -> list[int]:
        """Token ids of ``text``; ``add_special_tokens`` puts the BOS token in front."""
        return list(self._tok.encode(text, add_special_tokens=add_special_tokens).ids)

    def __call__(self, text: str | Sequence[str], add_special_tokens: bool = True) -> dict[str, Any]:
        """``{"input_ids": ids, "attention_mask": ones}`` of a text, or lists of them for a list."""
        if isinstance(text, str):
            ids = self.encode(text, add_special_tokens)
            return {"input_ids": ids, "attention_mask": [1] * len(ids)}
        enc = [self.encode(t, add_special_tokens) for t in text]
        return {"input_ids": enc, "attention_mask": [[1] * len(ids) for ids in enc]}

    def decode(self, ids: int | Sequence[int], skip_special_tokens: bool = False) -> str:
        if isinstance(ids, int):
            ids = [ids]
        return str(self._tok.decode([int(i) for i in ids], skip_special_tokens=skip_special_tokens))

    def batch_decode(self, sequences: Sequence[Sequence[int]], skip_special_tokens: bool = False) -> list[str]:
        return [self.decode(ids, skip_special_tokens) for ids in sequences]

    def __repr__(self) -> str:
        return f"ZooTokenizer({self.name_or_path!r}, vocab {len(self)})"
