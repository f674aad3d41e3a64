"""The a/an task on the zoo ``an`` model."""

from __future__ import annotations

import torch

from circuitdag.discovery import run_acdc
from circuitdag.prepare import prepare
from circuitdag.tasks import get_task

torch.set_num_threads(1)


def test_an_neuron_data_and_circuit() -> None:
    task = get_task("an-neuron")
    model = task.load_model()
    d = task.data(model)
    tok = model.tokenizer
    assert d.clean.shape == (50, 8)
    assert d.position_names == ("bos", "w1", "w2", "the", "noun", "w3", "and", "end")
    assert ((d.clean != d.corrupted).nonzero()[:, 1] == 4).all()
    an, a = tok.convert_tokens_to_ids(["an", "a"])
    assert tok.convert_ids_to_tokens([int(d.clean[0, 4]), int(d.corrupted[0, 4])]) == ["apple", "lemon"]
    assert (d.correct[0].item(), d.wrong[0].item()) == (an, a)
    assert set(d.correct.flatten().tolist()) == {an, a}
    with torch.no_grad():
        logits = model(d.clean)[:, -1]
    assert (logits.gather(1, d.correct) > logits.gather(1, d.wrong)).all()
    patcher, meta = prepare(model, task)
    circuit = run_acdc(patcher, task.default_threshold, meta=meta)
    assert circuit.n_edges <= 20 and circuit.faithfulness() > 0.9
