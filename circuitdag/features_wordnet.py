"""WordNet noun hypernyms, read from Debian's ``wordnet-base`` database files.

The descriptions of :mod:`circuitdag.features_describe` name the class of a neuron's top
words by their lowest common hypernym in WordNet (Miller 1995; " red", " blue", " green"
-> *chromatic color*), and the simulator reads that class back (a held-out word is in it
when the class is one of its hypernyms). ``scripts/setup.sh`` installs ``wordnet-base``
(``/usr/share/wordnet``: ``index.noun`` and ``data.noun``, format in ``wndb(5)``); without
it descriptions list words only and say so.

Only the noun files are read: the first sense of a word (WordNet lists senses by frequency)
and its ``@``/``@i`` hypernym pointers; a word none of whose noun senses occurs in WordNet's
sense-tagged corpus (``tagsense_cnt`` 0: "as" = arsenic, "at" = astatine) counts as no noun. ``data.noun`` is read by seeking to each synset's
byte offset, which is how the format addresses synsets; nothing is loaded whole.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

WORDNET_DIR = Path("/usr/share/wordnet")

#: A class must lie at least this many hypernym links below WordNet's root *entity* on its
#: longest path. The synsets above are the near-root ones that say nothing about a word:
#: entity (0); abstract entity (1); object, attribute, group, relation, communication (2);
#: whole, location, event, quality (3). From 4 on: artifact, living thing, feeling, act,
#: time period (4), organism, color (5), person, animal, chromatic color (6). Without the
#: floor, on a zoo grammar corpus of names, places and adjectives, every described neuron's
#: class was *object* (the place nouns' lowest common hypernym, depth 2) and a fresh user saw
#: *entity* over adjectives; the class lowered the simulation score (r 0.38 vs 0.50).
MIN_DEPTH = 4


class WordNet:
    """Noun hypernyms from the database in ``path`` (module docstring)."""

    def __init__(self, path: Path = WORDNET_DIR) -> None:
        self.path = path
        self._senses: dict[str, tuple[int, ...]] = {}
        with open(path / "index.noun", encoding="utf-8", errors="replace") as f:
            for line in f:
                if line.startswith(" "):  # the licence header
                    continue
                parts = line.split()
                n_ptr = int(parts[3])
                offsets = parts[6 + n_ptr :]
                if offsets and int(parts[5 + n_ptr]) > 0:  # some sense seen in SemCor: not "as" = arsenic
                    self._senses[parts[0]] = tuple(int(o) for o in offsets)
        self._data = open(path / "data.noun", "rb")  # noqa: SIM115 (closed with the object)
        self.synset = lru_cache(maxsize=None)(self._synset)

    def __del__(self) -> None:
        data = getattr(self, "_data", None)
        if data is not None:
            data.close()

    def _synset(self, offset: int) -> tuple[tuple[str, ...], tuple[int, ...]]:
        """(lemmas, hypernym offsets) of the synset at byte ``offset`` of data.noun."""
        self._data.seek(offset)
        parts = self._data.readline().decode("utf-8", "replace").split()
        n_words = int(parts[3], 16)
        lemmas = tuple(parts[4 + 2 * i] for i in range(n_words))
        i = 4 + 2 * n_words
        n_ptr = int(parts[i])
        hyper = tuple(int(parts[i + 2 + 4 * j]) for j in range(n_ptr) if parts[i + 1 + 4 * j] in ("@", "@i"))
        return lemmas, hyper

    def ancestors(self, word: str, all_senses: bool = False) -> dict[int, int]:
        """The synsets above (and including) ``word``'s first noun sense (every sense with
        ``all_senses``), each with its depth below the root (the longest path); empty when
        ``word`` is no noun."""
        senses = self._senses.get(word.lower().replace(" ", "_"), ())
        chain: dict[int, int] = {}

        def depth(offset: int) -> int:
            if offset not in chain:
                chain[offset] = -1  # guards against a cycle
                ups = self.synset(offset)[1]
                chain[offset] = 1 + max((depth(u) for u in ups), default=-1)
            return chain[offset]

        for start in senses if all_senses else senses[:1]:
            depth(start)
        return chain

    def name(self, offset: int) -> str:
        return self.synset(offset)[0][0].replace("_", " ")

    def common_class(self, words: list[str]) -> tuple[str, int, float] | None:
        """The deepest synset above at least half of the distinct ``words`` (and at least
        two), at least :data:`MIN_DEPTH` below the root: ``(name, offset, share of the words
        under it)``, or None."""
        distinct = list(dict.fromkeys(words))
        found = [a for a in (self.ancestors(w) for w in distinct) if a]
        if len(found) < 2:
            return None
        counts: dict[int, int] = {}
        depth: dict[int, int] = {}
        for a in found:
            for off, d in a.items():
                counts[off] = counts.get(off, 0) + 1
                depth[off] = max(depth.get(off, 0), d)
        need = max(2, (len(distinct) + 1) // 2)
        best = [o for o, c in counts.items() if c >= need and depth[o] >= MIN_DEPTH]
        if not best:
            return None
        top = max(best, key=lambda o: (depth[o], counts[o]))
        return self.name(top), top, counts[top] / len(distinct)

    def is_a(self, word: str, offset: int) -> bool:
        """Whether one of ``word``'s noun senses is the synset at ``offset`` or below it."""
        return offset in self.ancestors(word, all_senses=True)


def load_wordnet(path: Path = WORDNET_DIR) -> WordNet | None:
    """The WordNet in ``path``, or None when it is not installed."""
    if not (path / "index.noun").is_file() or not (path / "data.noun").is_file():
        return None
    return WordNet(path)
