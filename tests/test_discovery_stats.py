"""The run record's timing: the search's wall and CPU seconds (stats.seconds,
stats.cpu_seconds), which benchmarks/trust_path.py compares with the whole command."""

import time

from randmodel import random_data, random_tiny

from circuitdag.discovery import run_algorithm
from circuitdag.graph import Graph
from circuitdag.models import spec_of
from circuitdag.patching import Patcher


def test_the_search_records_its_wall_and_cpu_seconds():
    model = random_tiny()
    p = Patcher(model, Graph(spec_of(model)), random_data(vocab=model.cfg.d_vocab), metric="kl")
    c0 = time.process_time()
    st = run_algorithm(p, "eap-ig", edges=5, ig_steps=2).meta["stats"]
    spent = time.process_time() - c0
    assert 0 < st["cpu_seconds"] <= spent and 0 < st["seconds"]
    assert st["record_seconds"] >= 0
