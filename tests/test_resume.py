"""A fast ACDC run killed with SIGKILL mid-way and resumed gives the identical circuit."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from randmodel import random_data, random_tiny

from circuitdag.acdc import acdc_fast
from circuitdag.graph import Graph
from circuitdag.models import spec_of
from circuitdag.patching import Patcher

HERE = Path(__file__).parent
MODEL = {"n_layers": 3, "n_heads": 4, "d_model": 32, "d_head": 8, "d_mlp": 64}
THRESHOLD = 0.01

SCRIPT = f"""
import sys, torch
torch.set_num_threads(1)
sys.path.insert(0, {str(HERE)!r})
from randmodel import random_data, random_tiny
import time
from circuitdag.acdc import acdc_fast
acdc = sys.modules["circuitdag.acdc"]  # the module (circuitdag.acdc is also a function)
from circuitdag.graph import Graph
from circuitdag.models import spec_of
from circuitdag.patching import Patcher
save = acdc.save_checkpoint
def slow_save(*args, **kw):  # the run must outlive the test's first look at the checkpoint
    save(*args, **kw)
    time.sleep(0.1)
acdc.save_checkpoint = slow_save
model = random_tiny(**{MODEL!r})
p = Patcher(model, Graph(spec_of(model)), random_data(batch=40, vocab=model.cfg.d_vocab))
acdc_fast(p, {THRESHOLD}, k_init=1, k_max=1, checkpoint=sys.argv[1], checkpoint_every=0.0)
"""


def patcher():
    model = random_tiny(**MODEL)
    return Patcher(model, Graph(spec_of(model)), random_data(batch=40, vocab=model.cfg.d_vocab))


def test_sigkill_then_resume_is_identical(tmp_path):
    ck = tmp_path / "checkpoint.json"
    proc = subprocess.Popen([sys.executable, "-c", SCRIPT, str(ck)])
    n_dest = None
    try:
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline:
            if ck.exists():
                doc = json.loads(ck.read_text())
                if doc["next_dest"] >= 3:
                    break
            assert proc.poll() is None, "the run ended before it could be killed"
            time.sleep(0.02)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        n_dest = json.loads(ck.read_text())["next_dest"]
    finally:
        if proc.poll() is None:
            proc.kill()
    p = patcher()
    assert 3 <= n_dest < len(p.graph.visit_order()), "killed too late to test resuming"
    resumed = acdc_fast(p, THRESHOLD, checkpoint=ck, resume=True)
    uninterrupted = acdc_fast(patcher(), THRESHOLD)
    np.testing.assert_array_equal(resumed.alive, uninterrupted.alive)
    np.testing.assert_array_equal(np.isnan(resumed.scores), np.isnan(uninterrupted.scores))
    # The resumed run rebuilds its cached run of the circuit in one pass, the uninterrupted
    # one updated it edge by edge: the same value up to float64 rounding.
    assert resumed.m_cur == pytest.approx(uninterrupted.m_cur, rel=1e-12, abs=1e-14)


def test_checkpoint_from_other_settings_is_refused(tmp_path):
    from circuitdag.errors import ConfigError

    ck = tmp_path / "checkpoint.json"
    p = patcher()
    acdc_fast(p, THRESHOLD, checkpoint=ck, checkpoint_every=0.0, max_destinations=2)
    try:
        acdc_fast(p, THRESHOLD * 2, checkpoint=ck, resume=True)
    except ConfigError as exc:
        assert "other settings" in str(exc) and "threshold: 0.01 there, 0.02 now" in str(exc)
    else:
        raise AssertionError("resuming with another threshold must be refused")


def test_prefiltered_run_resumes_from_its_checkpoint(tmp_path):
    """Interrupted mid-way, a prefiltered ACDC run continues from the checkpoint's circuit
    (the fast path rebases on it) to the identical result, without re-scoring."""
    from circuitdag.acdc import run_acdc

    ck = tmp_path / "checkpoint.json"
    p = patcher()
    start = np.random.default_rng(5).random(p.graph.n_edges) < 0.4
    acdc_fast(p, THRESHOLD, checkpoint=ck, checkpoint_every=0.0, max_destinations=4, start=start,
              stats={"prefilter": {"method": "eap-ig", "edges": 1}})  # fmt: skip
    resumed = acdc_fast(patcher(), THRESHOLD, checkpoint=ck, resume=True, start=start)
    uninterrupted = acdc_fast(patcher(), THRESHOLD, start=start)
    np.testing.assert_array_equal(resumed.alive, uninterrupted.alive)
    # The resumed run rebuilds its cached run of the circuit in one pass, the uninterrupted
    # one updated it edge by edge: the same value up to float64 rounding.
    assert resumed.m_cur == pytest.approx(uninterrupted.m_cur, rel=1e-12, abs=1e-14) and resumed.stats["prefilter"]["method"] == "eap-ig"
    # Through run_acdc: the second call finds the checkpoint and skips the attribution.
    ck2 = tmp_path / "run.json"
    first = run_acdc(patcher(), THRESHOLD, prefilter="eap-ig:60", ig_steps=2, checkpoint=ck2, checkpoint_every=0.0)
    again = run_acdc(patcher(), THRESHOLD, prefilter="eap-ig:60", ig_steps=2, checkpoint=ck2, resume=True)
    assert again.same_as(first) and again.meta["prefilter"]["edges"] == 60
