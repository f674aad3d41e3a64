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

from circuitdag.acdc_search import acdc_fast
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
from circuitdag.acdc_search import acdc_fast
import circuitdag.checkpoint as acdc  # where save_checkpoint lives
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
    # The killed run took one edge per batch, the others choose K from timings: the resumed
    # run redoes the accepted removals, so scores and metric are the same floats.
    np.testing.assert_array_equal(resumed.alive, uninterrupted.alive)
    np.testing.assert_array_equal(resumed.scores, uninterrupted.scores)
    assert resumed.m_cur == uninterrupted.m_cur
    assert resumed.stats["resume"]["same_metric"] and resumed.stats["resume"]["edges_redone"] > 0


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
    from circuitdag.discovery import run_acdc

    ck = tmp_path / "checkpoint.json"
    p = patcher()
    start = np.random.default_rng(5).random(p.graph.n_edges) < 0.4
    acdc_fast(p, THRESHOLD, checkpoint=ck, checkpoint_every=0.0, max_destinations=4, start=start,
              stats={"prefilter": {"method": "eap-ig", "edges": 1}})  # fmt: skip
    resumed = acdc_fast(patcher(), THRESHOLD, checkpoint=ck, resume=True, start=start)
    uninterrupted = acdc_fast(patcher(), THRESHOLD, start=start)
    np.testing.assert_array_equal(resumed.alive, uninterrupted.alive)
    np.testing.assert_array_equal(resumed.scores, uninterrupted.scores)  # redone from the prefiltered start
    assert resumed.m_cur == uninterrupted.m_cur and resumed.stats["prefilter"]["method"] == "eap-ig"
    # Through run_acdc: the second call finds the checkpoint and skips the attribution.
    ck2 = tmp_path / "run.json"
    first = run_acdc(patcher(), THRESHOLD, prefilter="eap-ig:60", ig_steps=2, checkpoint=ck2, checkpoint_every=0.0)
    again = run_acdc(patcher(), THRESHOLD, prefilter="eap-ig:60", ig_steps=2, checkpoint=ck2, resume=True)
    assert again.same_as(first) and again.meta["prefilter"]["edges"] == 60


# ---------------------------------------------------------------------------------------
# Kill anywhere, resume, same circuit: the matrix of issue 21. A kill is an exception no
# code catches, raised either right after the n-th checkpoint is written (a kill at a
# destination boundary) or at the n-th progress update (a kill inside a destination: the
# checkpoint on disk is the last boundary's). The resumed run gets a fresh Patcher, as a
# new process would.
class Killed(BaseException):
    """A hard kill: not an Exception, so nothing in circuitdag can catch it."""


def kill_after_saves(monkeypatch, n: int) -> None:
    import circuitdag.checkpoint as ckmod

    real, seen = ckmod.save_checkpoint, []

    def save(*args, **kw):
        real(*args, **kw)
        seen.append(1)
        if len(seen) == n:
            raise Killed

    monkeypatch.setattr(ckmod, "save_checkpoint", save)


def kill_after_updates(monkeypatch, n: int) -> None:
    acdc_mod = sys.modules["circuitdag.acdc_search"]

    class Bar(acdc_mod.tqdm):  # type: ignore[misc,name-defined]
        seen = 0

        def update(self, k=1):
            Bar.seen += 1
            if Bar.seen == n:
                raise Killed
            return super().update(k)

    monkeypatch.setattr(acdc_mod, "tqdm", Bar)


def count_updates(monkeypatch, run) -> int:
    acdc_mod = sys.modules["circuitdag.acdc_search"]

    class Bar(acdc_mod.tqdm):  # type: ignore[misc,name-defined]
        seen = 0

        def update(self, k=1):
            Bar.seen += 1
            return super().update(k)

    with monkeypatch.context() as m:
        m.setattr(acdc_mod, "tqdm", Bar)
        run()
    return Bar.seen


SMALL = {"n_layers": 2, "n_heads": 2}


def small_patcher(positions: bool, ablation: str) -> Patcher:
    from circuitdag.graph import Positions

    model = random_tiny(**SMALL)
    P = 4 if positions else 6
    data = random_data(batch=4 if positions else 6, pos=P, vocab=model.cfg.d_vocab)
    graph = Graph(spec_of(model), Positions(P, sink=(P - 1,)) if positions else None)
    return Patcher(model, graph, data, ablation=ablation, metric="kl")


def search(p: Patcher, path: str, kind: str, prefiltered: bool, ck=None, resume=False):
    """One ACDC run of the matrix: ``path`` components / layers / reference, an absolute
    or a relative threshold, from every edge or from the 60% of edges EAP-IG ranks
    highest."""
    from circuitdag.acdc_search import acdc_reference
    from circuitdag.attribution import attribute, top_edges
    from circuitdag.prepare import resolve_threshold

    task = RandomTaskStub()
    thr, _ = resolve_threshold(p, task, 0.004, None) if kind == "absolute" else resolve_threshold(p, task, None, 0.02)
    start = None
    if prefiltered:
        start = top_edges(attribute(p, "eap-ig", 3).scores, n_edges=int(0.6 * p.graph.n_edges))
    kw = {"checkpoint": ck, "resume": resume, "checkpoint_every": 0.0, "start": start}
    if path == "reference":
        return acdc_reference(p, thr, **kw)
    return acdc_fast(p, thr, k_init=2, sparse=path == "components", **kw)


class RandomTaskStub:
    default_threshold = 0.004


def assert_same(resumed, whole, exact: bool) -> None:
    np.testing.assert_array_equal(resumed.alive, whole.alive)
    np.testing.assert_array_equal(np.isnan(resumed.scores), np.isnan(whole.scores))
    if exact:  # the reference recomputes every metric from scratch, the component path
        np.testing.assert_array_equal(resumed.scores, whole.scores)  # redoes the removals: bit for bit
    else:  # the layer path rebuilds its cached run in one pass: float64 rounding
        np.testing.assert_allclose(resumed.scores, whole.scores, rtol=1e-9, atol=1e-12)


def kill_points(n_boundaries: int, n_updates: int, every: bool) -> list[tuple[str, int]]:
    if every:
        bounds = range(1, n_boundaries)
        inside = sorted({1, 2, n_updates // 3, n_updates // 2, n_updates - 1} - {0})
    else:
        bounds = [n_boundaries // 2]
        inside = [n_updates // 3]
    return [("boundary", b) for b in bounds] + [("inside", u) for u in inside]


# The threshold's kind only changes the number acdc_fast is given (resolve_threshold runs
# before the search), so it is not a factor of its own: half the cases take each kind,
# chosen so that every value of every other factor meets both (36 cases, not 72).
ABLATIONS, PATHS = ("resample", "zero", "mean"), ("components", "layers", "reference")
MATRIX = [(pos, abl, ("absolute", "relative")[(pos + ABLATIONS.index(abl) + PATHS.index(path) + pre) % 2], path, pre)
          for pos in (False, True) for abl in ABLATIONS for path in PATHS for pre in (False, True)]  # fmt: skip


@pytest.mark.parametrize("positions,ablation,kind,path,prefiltered", MATRIX,
                         ids=["-".join(["pos" if c[0] else "plain", c[1], c[2], c[3], "pre" if c[4] else "full"])
                              for c in MATRIX])  # fmt: skip
def test_killed_anywhere_resumes_to_the_same_circuit(tmp_path, monkeypatch, positions, ablation, kind, path,
                                                     prefiltered):  # fmt: skip
    """Plain graphs: a kill after every destination boundary and at five points inside
    destinations; position-aware graphs (29 destinations): one boundary and one inside
    point. Each resumed circuit has the uninterrupted run's edges and scores."""
    runs = []  # the uninterrupted run, its progress updates counted on the way
    n_upd = count_updates(monkeypatch, lambda: runs.append(search(small_patcher(positions, ablation), path, kind,
                                                                  prefiltered)))  # fmt: skip
    whole = runs[0]
    assert 0 < whole.alive.sum() < len(whole.alive)  # a run that decides something
    n_dest = len(small_patcher(positions, ablation).graph.visit_order())
    for where, n in kill_points(n_dest, n_upd, every=not positions):
        ck = tmp_path / f"{where}{n}.json"
        with monkeypatch.context() as m:
            (kill_after_saves if where == "boundary" else kill_after_updates)(m, n)
            try:
                search(small_patcher(positions, ablation), path, kind, prefiltered, ck=ck)
                killed = False
            except Killed:
                killed = True
        # The fast path's batch size follows timings, so its number of progress updates
        # varies a little from run to run: a late inside kill may not happen.
        assert killed or where == "inside", (where, n)
        if not killed or not ck.exists():  # not killed, or killed before the first boundary
            continue
        done = json.loads(ck.read_text())["next_dest"]
        assert 0 < done < n_dest, (where, n, done)
        resumed = search(small_patcher(positions, ablation), path, kind, prefiltered, ck=ck, resume=True)
        assert_same(resumed, whole, exact=path != "layers")


PROMPTS = "\n".join(json.dumps(r) for r in [  # one token layout, for --positions
    {"clean": "the cat sat on the", "corrupted": "the dog sat on the", "correct": "park"},
    {"clean": "he gave her a book", "corrupted": "she gave him a book", "correct": "and"},
    {"clean": "mary went to the park", "corrupted": "john went to the park", "correct": "and"},
    {"clean": "the dog ran to the", "corrupted": "the cat ran to the", "correct": "tree"},
    {"clean": "tom sat in the park", "corrupted": "anna sat in the park", "correct": "and"},
])  # fmt: skip


@pytest.mark.filterwarnings("ignore:.*barely does this task")  # a random model
@pytest.mark.parametrize("positions", [False, True], ids=["plain", "positions"])
def test_cli_resume_on_a_hugging_face_model(tmp_path, monkeypatch, tiny_gpt2_dir, positions):
    """The issue-21 report end to end: ``discover`` on a GPT-2 directory booted through
    TransformerBridge, KL and a relative threshold, killed right after its third
    checkpoint and resumed with ``--resume``: the same circuit.json edges and scores as an
    uninterrupted run (the resumed run used to score MLP destinations against the wrong
    base and keep several times as many edges)."""
    from circuitdag.cli import main

    (tmp_path / "p.jsonl").write_text(PROMPTS + "\n")
    args = ["discover", "--prompts", str(tmp_path / "p.jsonl"), "--model", str(tiny_gpt2_dir), "--metric", "kl",
            "--relative-threshold", "0.002", "--threads", "1", "--quiet", "--dtype", "float64",
            *(["--positions"] if positions else [])]  # fmt: skip
    assert main([*args, "--out", str(tmp_path / "whole")]) == 0
    with monkeypatch.context() as m:
        kill_after_saves(m, 3)
        with pytest.raises(Killed):
            main([*args, "--out", str(tmp_path / "killed"), "--checkpoint-every", "0"])
    assert json.loads((tmp_path / "killed" / "checkpoint.json").read_text())["next_dest"] == 3
    assert main([*args, "--out", str(tmp_path / "killed"), "--resume"]) == 0
    whole, resumed = (json.loads((tmp_path / d / "circuit.json").read_text()) for d in ("whole", "killed"))
    kept = [[e["name"] for e in doc["edges"] if e["in_circuit"]] for doc in (whole, resumed)]
    assert 0 < len(kept[0]) < whole["n_edges_total"] and kept[1] == kept[0]
    scores = [[np.nan if e["score"] is None else e["score"] for e in doc["edges"]] for doc in (whole, resumed)]
    assert [e["name"] for e in resumed["edges"]] == [e["name"] for e in whole["edges"]]
    assert resumed["stats"]["fast_path"] == "components" and resumed["stats"]["resume"]["same_metric"]
    np.testing.assert_array_equal(scores[1], scores[0])  # the removals redone: the same floats


def _damage(kind: str, doc: dict) -> bytes:
    if kind == "empty":
        return b""
    text = json.dumps(doc)
    if kind == "truncated":
        return text[: len(text) // 2].encode()
    if kind == "binary":
        return b"\x80\x81\xfe" * 10
    if kind == "not-a-checkpoint":
        return b'{"hello": 1}'
    bad = json.loads(text)
    if kind == "index-out-of-range":
        bad["removed"] = bad["removed"] + [10**6]
    elif kind == "negative-index":
        bad["removed"] = [-1]
    elif kind == "wrong-types":
        bad["removed"] = "all of them"
    elif kind == "short-scores":
        bad["scores"] = bad["scores"][:3]
    elif kind == "nan-metric":
        bad["m_cur"] = None
    elif kind == "next-dest-out-of-range":
        bad["next_dest"] = 10**6
    elif kind == "score-of-unvisited-edge":
        bad["scores"] = [0.5] * len(bad["scores"])
    elif kind == "removed-untested":
        untested = [i for i, s in enumerate(bad["scores"]) if s is None and i not in bad["removed"]]
        bad["removed"] = bad["removed"] + untested[:1]
    elif kind == "other-metric":
        bad["m_cur"] = bad["m_cur"] + 1.0
    return json.dumps(bad).encode()


DAMAGE = ["empty", "truncated", "binary", "not-a-checkpoint", "index-out-of-range", "negative-index", "wrong-types",
          "short-scores", "nan-metric", "next-dest-out-of-range", "score-of-unvisited-edge", "removed-untested",
          "other-metric"]  # fmt: skip


@pytest.fixture(scope="module")
def killed_run(tmp_path_factory):
    """A discover run of the default task killed after its second checkpoint."""
    import pytest as _pytest

    from circuitdag.cli import main

    out = tmp_path_factory.mktemp("killed")
    mp = _pytest.MonkeyPatch()
    try:
        kill_after_saves(mp, 2)
        with _pytest.raises(Killed):
            main(["discover", "--out", str(out), "--checkpoint-every", "0", "--quiet", "--no-svg"])
    finally:
        mp.undo()
    return out, json.loads((out / "checkpoint.json").read_text())


@pytest.mark.parametrize("kind", DAMAGE)
def test_a_damaged_checkpoint_is_one_line_and_left_alone(tmp_path, capsys, killed_run, kind):
    """Issue 21, item 2: a checkpoint that is empty, truncated, not JSON, or whose contents
    do not fit the graph gives one line naming the file and what to do (exit 2); the
    file stays as it was and no circuit is written."""
    import shutil

    from circuitdag.cli import main

    out = tmp_path / "run"
    shutil.copytree(killed_run[0], out)
    ck = out / "checkpoint.json"
    ck.write_bytes(_damage(kind, killed_run[1]))
    before = ck.read_bytes()
    assert main(["discover", "--out", str(out), "--resume", "--quiet", "--no-svg"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and str(ck) in err[0], err
    assert "delete it" in err[0] and "without --resume" in err[0], err[0]
    assert ck.read_bytes() == before and not (out / "circuit.json").exists()


@pytest.mark.slow
@pytest.mark.parametrize("path", ["components", "reference"])
def test_neuron_nodes_resume_to_the_same_circuit(tmp_path, monkeypatch, path):
    """MLPs split into neurons (``--neurons``): killed after every destination, resumed,
    the same edges and scores."""
    from circuitdag.acdc_search import acdc_reference

    def patcher_() -> Patcher:
        model = random_tiny(d_mlp=5)
        return Patcher(model, Graph(spec_of(model, [1])), random_data(1), ablation="resample", metric="kl")

    def run(ck=None, resume=False):
        kw = {"checkpoint": ck, "resume": resume, "checkpoint_every": 0.0}
        return acdc_reference(patcher_(), 0.02, **kw) if path == "reference" else acdc_fast(patcher_(), 0.02, **kw)

    whole = run()
    n_dest = len(patcher_().graph.visit_order())
    assert 0 < whole.alive.sum() < len(whole.alive)
    for b in range(1, n_dest):
        ck = tmp_path / f"b{b}.json"
        with monkeypatch.context() as m:
            kill_after_saves(m, b)
            with pytest.raises(Killed):
                run(ck)
        assert_same(run(ck, resume=True), whole, exact=True)


def test_resume_takes_the_interrupted_runs_thread_count(tmp_path, monkeypatch, capsys):
    """The default --threads follows the machine's load, and another thread count can change
    float sums in the last bits: without --threads, --resume uses the checkpoint's count."""
    import torch

    from circuitdag.cli import main

    args = ["discover", "--task", "pronoun", "--holdout", "0", "--no-svg", "--out", str(tmp_path)]
    try:
        with monkeypatch.context() as m:
            kill_after_saves(m, 3)
            with pytest.raises(Killed):
                main([*args, "--threads", "2", "--checkpoint-every", "0"])
        assert json.loads((tmp_path / "checkpoint.json").read_text())["stats"]["threads"] == 2
        torch.set_num_threads(1)
        capsys.readouterr()
        monkeypatch.setattr("circuitdag.cli._common.default_threads", lambda: 1)  # a busy machine now
        assert main([*args, "--resume"]) == 0
        assert json.loads((tmp_path / "circuit.json").read_text())["threads"] == 2
    finally:
        torch.set_num_threads(1)
    assert "--resume: 2 torch threads, as the interrupted run" in capsys.readouterr().err


def test_a_threshold_that_moved_with_the_thread_count_names_the_threads(tmp_path):
    """A relative threshold is derived from the metric gap, which another thread count can
    round differently (fresh-user check: 0.0005463615059852601 there, 0.0005463614808691531
    now): the refusal says which --threads the checkpoint was written with."""
    import torch

    from circuitdag.checkpoint import SearchState, load_checkpoint, save_checkpoint
    from circuitdag.errors import CheckpointError

    ck = tmp_path / "checkpoint.json"
    state = SearchState(np.ones(3, bool), np.full(3, np.nan), 0.5)
    state.stats["threads"] = 2
    save_checkpoint(ck, state, {"threshold": 0.0005463615059852601, "n_edges": 3})
    torch.set_num_threads(1)
    with pytest.raises(CheckpointError, match="round differently from the checkpoint's 2: give --threads 2"):
        load_checkpoint(ck, {"threshold": 0.0005463614808691531, "n_edges": 3})
    with pytest.raises(CheckpointError) as err:  # another setting: no word about threads
        load_checkpoint(ck, {"threshold": 0.0005463615059852601, "n_edges": 4})
    assert "--threads" not in str(err.value)
