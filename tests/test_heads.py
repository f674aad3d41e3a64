"""Head embeddings: a model and a copy with its heads permuted are matched back."""

import numpy as np
import pytest
import torch
from randmodel import random_data, random_tiny

from circuitdag.errors import TaskError
from circuitdag.heads import embed, match, nearest, profile, project, to_json

PERM = {0: [2, 0, 1], 1: [1, 2, 0]}  # layer -> new head order: head h of the copy is head PERM[L][h]


def permuted_copy(model):
    copy = random_tiny(seed=1)  # same shapes; weights overwritten below
    copy.load_state_dict(model.state_dict())
    with torch.no_grad():
        for L, perm in PERM.items():
            attn = copy.blocks[L].attn
            for name in ("W_Q", "W_K", "W_V", "W_O", "b_Q", "b_K", "b_V"):
                getattr(attn, name).copy_(getattr(model.blocks[L].attn, name)[perm])
    return copy


def test_permuted_heads_are_matched_back_to_the_permutation():
    model = random_tiny(seed=0)
    copy = permuted_copy(model)
    data = random_data(seed=0, batch=24)
    with torch.no_grad():  # same function
        assert torch.allclose(model(data.clean), copy(data.clean), atol=1e-10)
    emb = embed([profile(model, data, "original"), profile(copy, data, "permuted")])
    m = match(emb, "original", "permuted")
    expected = {f"a{L}.{perm[h]}": f"a{L}.{h}" for L, perm in PERM.items() for h in range(3)}
    heads = {a: b for a, b, _ in m.pairs if a.startswith("a")}
    assert heads == expected
    assert {a: b for a, b, _ in m.pairs if a.startswith("m")} == {"m0": "m0", "m1": "m1"}
    assert max(d for _, _, d in m.pairs) < 1e-8
    assert not m.unmatched_a and not m.unmatched_b
    # distinct heads: the match is not a tie broken by luck
    orig = emb.rows("original", "head")
    d = emb.distances(orig, orig)
    assert d[~np.eye(len(orig), dtype=bool)].min() > 1e-3
    assert nearest(emb, 1)[("original", "a0.2")]["permuted"][0][0] == "a0.0"


def test_an_unpermuted_copy_matches_itself_and_the_json_holds_every_component():
    model = random_tiny(seed=0)
    data = random_data(seed=0)
    emb = embed([profile(model, data, "a"), profile(model, data, "b")])
    assert all(a == b for a, b, _ in match(emb, "a", "b").pairs)
    doc = to_json(emb)
    assert len(doc["components"]) == 2 * (6 + 2)
    assert project(emb)[0].shape == (16, 2)


def test_models_with_different_numbers_of_answer_slots_are_refused():
    model = random_tiny(seed=0)
    one = random_data(seed=0)
    two = type(one)(one.clean, one.corrupted, torch.stack([one.answer_pos[:, 0] - 1, one.answer_pos[:, 0]], 1))
    with pytest.raises(TaskError, match="different numbers of slots"):
        embed([profile(model, one, "a"), profile(model, two, "b")])
