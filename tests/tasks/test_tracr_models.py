"""The shipped tracr models: they load without JAX, compute their programs, and carry a
well-formed ground truth (derived at compile time by scripts/compile_tracr.py)."""

from __future__ import annotations

import re
import subprocess
import sys

import pytest
import torch

from circuitdag.tasks.tracr import PAD, SPECS, TASKS, TracrTask, input_space

EDGE = re.compile(r"^(embed|a\d+\.\d+|m\d+)->(a\d+\.\d+|m\d+|logits)<(q|k|v|mlp|resid)>$")


@pytest.fixture(params=TASKS, ids=lambda cls: cls.name)
def task(request: pytest.FixtureRequest) -> TracrTask:
    return request.param()


def test_tasks_are_named_and_complete() -> None:
    assert [t.name for t in TASKS] == [
        "tracr-reverse", "tracr-proportion", "tracr-sort-unique", "tracr-hist", "tracr-length",
        "tracr-pair-balance",
    ]  # fmt: skip
    assert {t.program for t in TASKS} == set(SPECS)


def test_no_jax_at_runtime() -> None:
    """Loading and running every shipped tracr task imports neither JAX nor tracr (in a
    fresh process: other tests in this one compile programs with them)."""
    script = (
        "import sys, torch\n"
        "from circuitdag.tasks.tracr import TASKS\n"
        "for cls in TASKS:\n"
        "    task = cls(); model = task.load_model(); model(task.data(model).clean)\n"
        "assert 'jax' not in sys.modules and 'tracr' not in sys.modules, sorted(sys.modules)\n"
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300, check=False)
    assert done.returncode == 0, done.stderr


def test_model_file_matches_meta(task: TracrTask) -> None:
    model = task.load_model()
    meta = task.meta()
    cfg = model.cfg
    assert meta["name"] == task.name
    assert cfg.normalization is None and cfg.causal is False and cfg.act_fn == "relu"
    assert meta["input_vocab"][0] == meta["bos"] == "BOS" or "BOS" in meta["input_vocab"]
    assert len(meta["input_vocab"]) == cfg.d_vocab
    assert cfg.n_ctx == meta["max_seq_len"] + 1
    if meta["output"]["kind"] == "categorical":
        assert len(meta["output"]["vocab"]) == cfg.d_vocab_out
    else:
        assert cfg.d_vocab_out == 1
    size = task.path.with_suffix(".safetensors").stat().st_size
    assert size < 1_000_000


def test_reproduces_stored_tracr_outputs(task: TracrTask) -> None:
    """The examples were produced by tracr itself at compile time."""
    model = task.load_model(dtype=torch.float64)
    examples = task.meta()["examples"]
    with torch.no_grad():
        outs = model(torch.tensor([ex["tokens"] for ex in examples]))
    for ex, out in zip(examples, outs):
        assert task.encode(ex["input"]) == ex["tokens"]
        n = len(ex["output"])
        # Raw output-space values everywhere except BOS (where tracr's output is undefined).
        raw = torch.tensor(ex["raw"], dtype=torch.float64)
        assert (out[1 : 1 + n] - raw[1 : 1 + n]).abs().max() < 1e-4
        assert task.expected(ex["input"])[:n] == ex["output"]


def test_computes_the_program_on_every_input(task: TracrTask) -> None:
    """Decoded output == the plain-Python reference of the RASP program, whole input space."""
    spec, meta = task.spec, task.meta()
    space = input_space(spec)
    model = task.load_model()
    with torch.no_grad():
        out = model(torch.tensor([task.encode(xs) for xs in space]))[:, 1:]
    for xs, row in zip(space, out):
        want = task.expected(xs)
        for y, logits in zip(want, row):
            if y is None:  # padding
                continue
            if spec.numerical:
                assert abs(float(logits[0]) - y) < 1e-3, (xs, want)
            else:
                assert meta["output"]["vocab"][int(logits.argmax())] == y, (xs, want)


def test_data(task: TracrTask) -> None:
    model = task.load_model()
    d = task.data(model, seed=0)
    n = task.spec.max_seq_len
    bos = task.meta()["input_vocab"].index("BOS")
    assert d.clean.shape == d.corrupted.shape == (min(100, len(input_space(task.spec))), n + 1)
    assert (d.clean[:, 0] == bos).all() and (d.corrupted[:, 0] == bos).all()
    assert (d.answer_pos == torch.arange(1, n + 1)).all()
    assert not (d.clean == d.corrupted).all(-1).any(), "a counterfactual equals its clean input"
    assert len({tuple(r) for r in d.clean.tolist()}) == d.n_prompts
    pad = task.meta()["input_vocab"].index(PAD)
    if task.spec.inputs != "padded":  # same length: no padding anywhere
        assert not (d.clean == pad).any() and not (d.corrupted == pad).any() and d.valid is None
    else:
        assert d.valid is not None and (d.valid == (d.clean[:, 1:] != pad)).all()
    if task.spec.numerical:
        assert d.correct is None
    else:
        assert d.correct is not None
        with torch.no_grad():
            pred = model(d.clean).argmax(-1).gather(1, d.answer_pos)
        ok = pred == d.correct
        assert ok[d.valid].all() if d.valid is not None else ok.all()
    again = task.data(model, seed=0)
    assert torch.equal(again.clean, d.clean) and torch.equal(again.corrupted, d.corrupted)
    assert not torch.equal(task.data(model, seed=1).corrupted, d.corrupted)


def _order(node: str) -> tuple[int, int]:
    if node == "embed":
        return (-1, 0)
    if node == "logits":
        return (10**6, 0)
    if node.startswith("a"):
        return (int(node[1:].split(".")[0]), 0)
    return (int(node[1:]), 1)


@pytest.mark.parametrize("ablation", ["zero", "resample"])
def test_ground_truth_is_well_formed(task: TracrTask, ablation: str) -> None:
    gt = task.meta()["ground_truth"]
    structural = set(gt["structural"])
    edges = task.ground_truth(ablation)
    inert = task.inert_edges(ablation)
    assert edges, "a ground truth with no edges"
    assert edges | inert == structural and not edges & inert
    # Checked at compile time: each inert edge is inert on its own too, and plain ACDC
    # at the default threshold on the default data finds exactly the ground truth.
    assert set(gt[ablation]["inert_alone"]) == inert
    assert gt[ablation]["acdc_on_task_data_matches"] is True
    assert gt[ablation]["min_effect_on_task_data"] > 10 * task.default_threshold
    cfg = task.load_model().cfg
    for name in structural:
        m = EDGE.match(name)
        assert m, name
        src, dst, kind = m.groups()
        assert _order(src) < _order(dst), name  # the sender is written before the receiver reads
        assert (kind in "qkv") == dst.startswith("a") and (kind == "mlp") == dst.startswith("m"), name
        for node in (src, dst):
            if node.startswith("a"):
                layer, head = map(int, node[1:].split("."))
                assert layer < cfg.n_layers and head < cfg.n_heads, name
            elif node.startswith("m"):
                assert int(node[1:]) < cfg.n_layers, name
    # Every ground-truth edge lies on an embed -> logits path within the ground truth.
    reach = {"embed"}
    for name in sorted(edges, key=lambda e: _order(EDGE.match(e).group(2))):  # type: ignore[union-attr]
        src, dst, _ = EDGE.match(name).groups()  # type: ignore[union-attr]
        if src in reach:
            reach.add(dst)
    assert "logits" in reach
    assert all(EDGE.match(e).group(1) in reach for e in edges)  # type: ignore[union-attr]


def test_unknown_ablation_is_refused() -> None:
    from circuitdag.errors import TaskError

    with pytest.raises(TaskError, match="zero"):
        TASKS[0]().ground_truth("mean")


def test_reverse_ground_truth_matches_the_literature() -> None:
    """Resample ablation with same-length counterfactuals leaves only the token path
    (Miller et al. 2024); zero ablation also needs the length/opp_idx MLPs."""
    task = TASKS[0]()
    assert task.ground_truth("resample") == {"embed->a3.0<v>", "a3.0->logits<resid>"}
    assert {"m2->a3.0<q>", "m1->m2<mlp>", "m0->m1<mlp>"} <= task.ground_truth("zero")


def test_a_tracr_task_refuses_another_model(capsys, tmp_path):
    """A tracr task's prompts are token ids of its program: another model is refused, not run."""
    from circuitdag.cli import main

    assert main(["discover", "--task", "tracr-reverse", "--model", "tracr-hist", "-q", "--out", str(tmp_path)]) == 2
    assert "runs on its own compiled model" in capsys.readouterr().err


def test_evaluate_reports_no_ground_truth_for_a_circuit_of_another_model(tmp_path, capsys):
    """``induction``'s ground truth is its zoo model's circuit; on another model there is none."""
    import json

    from circuitdag.cli import main

    out = tmp_path / "run"
    assert main(["discover", "--task", "induction", "--model", "an", "--n-prompts", "4", "-q", "--out", str(out)]) == 0
    capsys.readouterr()
    assert main(["evaluate", str(out / "circuit.json")]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary.get("precision") is None and summary.get("recall") is None
