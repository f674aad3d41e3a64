"""`circuitdag tracr compile` on a RASP program that is not shipped (tests/tasks/user_rasp),
then `--task tracr:DIR` without JAX: the discovered circuit equals the derived ground truth."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch

from circuitdag.cli import main
from circuitdag.errors import ConfigError, TaskError
from circuitdag.models import load_model
from circuitdag.tasks import get_task
from circuitdag.tasks.tracr import CompiledTracrTask
from circuitdag.tracr_compile import compile_tracr

PROGRAM = Path(__file__).parent / "user_rasp" / "program.py"
ROOT = Path(__file__).resolve().parents[2]

pytestmark = pytest.mark.slow  # compiling imports JAX and runs tracr (~15 s on 2 busy cores)


@pytest.fixture(scope="module")
def compiled(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("tracr") / "smaller"
    argv = ["tracr", "compile", f"{PROGRAM}:smaller_count", "--vocab", "1", "2", "3", "--max-len", "4"]
    assert main([*argv, "--lengths", "3", "4", "--out", str(out)]) == 0
    return out


def test_directory_holds_model_inputs_truth_and_provenance(compiled: Path) -> None:
    assert sorted(p.name for p in compiled.iterdir()) == [
        "inputs.json", "model.json", "model.safetensors", "program.py",
    ]  # fmt: skip
    meta = json.loads((compiled / "model.json").read_text())
    assert meta["lengths"] == [3, 4] and meta["output"] == {"kind": "categorical", "vocab": [0, 1, 2]}
    assert sorted(map(str, meta["input_vocab"])) == ["1", "2", "3", "BOS", "PAD"]
    prov = meta["provenance"]
    assert prov["target"] == f"{PROGRAM}:smaller_count" and "def smaller_count" in prov["function_source"]
    assert prov["source_sha256"] == hashlib.sha256(PROGRAM.read_bytes()).hexdigest()
    assert prov["versions"]["tracr-pypi"] and (compiled / "program.py").read_bytes() == PROGRAM.read_bytes()
    for n, total in (("3", 27), ("4", 81)):  # the whole input space, nothing sampled
        assert (
            meta["check_vs_tracr"][n]["inputs_checked"] == total and not meta["check_vs_tracr"][n]["sampled"]
        )
        gt = meta["ground_truth"]["by_length"][n]
        assert gt["zero"]["edges"] and gt["resample"]["edges"]
        assert gt["zero"]["acdc_on_task_data_matches"] and gt["resample"]["acdc_on_task_data_matches"]


def test_model_computes_the_program_on_every_input(compiled: Path) -> None:
    """The written model, loaded without the compiler, decodes to the outputs tracr's RASP
    evaluator gave (inputs.json) and to the program itself: min(#smaller tokens, 2)."""
    task = get_task(f"tracr:{compiled}@3")
    assert isinstance(task, CompiledTracrTask) and task.length == 3
    model = load_model(str(compiled), dtype=torch.float64)  # --model DIR
    vocab = task.meta()["output"]["vocab"]
    for n in (3, 4):
        entry = json.loads((compiled / "inputs.json").read_text())["lengths"][str(n)]
        with torch.no_grad():
            out = model(torch.tensor([task.encode(xs) for xs in entry["inputs"]]))[:, 1:]
        decoded = [[vocab[i] for i in row] for row in out.argmax(-1).tolist()]
        assert decoded == entry["outputs"]
        assert decoded == [[min(sum(y < x for y in xs), 2) for x in xs] for xs in entry["inputs"]]
    for ex in task.meta()["examples"]:  # raw values from tracr's own forward pass
        with torch.no_grad():
            raw = model(torch.tensor([ex["tokens"]]))[0, 1:]
        assert np.abs(raw.numpy() - np.array(ex["raw"])[1:]).max() < 1e-4


def test_discover_without_jax_equals_the_ground_truth(compiled: Path, tmp_path: Path) -> None:
    """The done-when of issue 11: discover with --task tracr:DIR (in a fresh process, which
    must not import JAX) returns exactly the derived ground truth, each length, each ablation."""
    script = textwrap.dedent(f"""
        import json, sys
        from circuitdag.cli import main
        from circuitdag.tasks import get_task
        result = {{}}
        for spec in ("tracr:{compiled}", "tracr:{compiled}@3"):
            for ablation in ("zero", "resample"):
                out = "{tmp_path}/" + spec[-2:] + ablation
                assert main(["discover", "--task", spec, "--ablation", ablation, "--out", out, "-q"]) == 0
                doc = json.load(open(out + "/circuit.json"))
                edges = sorted(e["name"] for e in doc["edges"] if e["in_circuit"])
                result[spec + " " + ablation] = [edges, sorted(get_task(spec).ground_truth(ablation))]
        assert "jax" not in sys.modules and "tracr" not in sys.modules, "the run imported JAX"
        print(json.dumps(result))
    """)  # fmt: skip
    proc = subprocess.run(
        [sys.executable, "-c", script], check=False, cwd=ROOT, capture_output=True, text=True, timeout=300
    )
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout.splitlines()[-1])
    assert len(result) == 4
    for key, (found, truth) in result.items():
        assert truth and found == truth, key


def test_task_refuses_unknown_lengths_and_directories(compiled: Path, tmp_path: Path) -> None:
    with pytest.raises(TaskError, match=r"input lengths \[3, 4\], not 7"):
        get_task(f"tracr:{compiled}@7")
    with pytest.raises(TaskError, match="must be an input length"):
        get_task(f"tracr:{compiled}@x")
    with pytest.raises(TaskError, match="not a compiled tracr directory"):
        get_task(f"tracr:{tmp_path}")


def _compile(capsys: pytest.CaptureFixture[str], target: str, out: Path, *extra: str) -> tuple[int, str]:
    rc = main(
        ["tracr", "compile", target, "--vocab", "1", "2", "3", "--max-len", "3", "--out", str(out), *extra]
    )
    return rc, capsys.readouterr().err


def test_a_failing_check_exits_1_and_writes_nothing(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    """The previous-token program leaves position 1 without an output (None): no model
    output can be checked against it, so the compile fails with one line."""
    rc, err = _compile(capsys, f"{PROGRAM}:no_default", tmp_path / "prev")
    assert rc == 1 and err.count("\n") == 1 and "check failed" in err and "selects nothing" in err
    assert not (tmp_path / "prev").exists()


def test_bad_input_exits_2(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    cases = [
        (f"{PROGRAM}:not_a_program", (), "expected a RASP program"),
        (f"{PROGRAM}:missing", (), "has no function 'missing'"),
        (f"{tmp_path}/nope.py:f", (), "no Python file"),
        ("no_such_module_xyz:f", (), "cannot import module"),
        (f"{PROGRAM}:smaller_count", ("--lengths", "5"), "--lengths must be integers in 1..3"),
    ]
    for target, extra, message in cases:
        with pytest.raises(ConfigError, match=message):
            compile_tracr(target, [1, 2, 3], 3, tmp_path / "x", lengths=[int(extra[1])] if extra else None)
        rc, err = _compile(capsys, target, tmp_path / "x", *extra)
        assert rc == 2 and err.startswith("circuitdag: error:") and err.count("\n") == 1, err
    with pytest.raises(ConfigError, match="compiler's BOS token"):
        compile_tracr(f"{PROGRAM}:smaller_count", [1, "BOS"], 3, tmp_path / "x")


def test_script_reproduces_a_shipped_program(tmp_path: Path) -> None:
    """scripts/compile_tracr.py runs the package's compile code; it reproduces the shipped
    tracr-hist exactly (weights, ground truth, examples)."""
    import importlib.util

    from safetensors.numpy import load_file

    from circuitdag.tasks.tracr import ZOO_DIR

    spec = importlib.util.spec_from_file_location(
        "compile_tracr_script", ROOT / "scripts" / "compile_tracr.py"
    )
    assert spec is not None and spec.loader is not None
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    script.compile_one("hist", tmp_path)
    ours, shipped = (json.loads((d / "hist.json").read_text()) for d in (tmp_path, ZOO_DIR))
    for key in ("config", "input_vocab", "output", "ground_truth"):
        assert ours[key] == shipped[key], key
    for a, b in zip(ours["examples"], shipped["examples"], strict=True):  # raw: tracr's float32 run
        assert {k: v for k, v in a.items() if k != "raw"} == {k: v for k, v in b.items() if k != "raw"}
        assert np.abs(np.array(a["raw"]) - np.array(b["raw"])).max() < 1e-5
    w_ours, w_shipped = (
        load_file(str(tmp_path / "hist.safetensors")),
        load_file(str(ZOO_DIR / "hist.safetensors")),
    )
    assert w_ours.keys() == w_shipped.keys() and all(np.array_equal(w_ours[k], w_shipped[k]) for k in w_ours)


def test_sampled_and_given_input_spaces(tmp_path: Path) -> None:
    """More inputs than --max-inputs: a seeded sample, stated in the checks and inputs.json;
    --inputs: exactly the given sequences, grouped by length."""
    from circuitdag.tracr_compile import _input_space

    space, total = _input_space(list(range(10)), 5, 50, seed=0)
    assert total == 100_000 and len(space) == len({tuple(xs) for xs in space}) == 50
    assert (
        space
        == _input_space(list(range(10)), 5, 50, seed=0)[0]
        != _input_space(list(range(10)), 5, 50, seed=1)[0]
    )

    result = compile_tracr(
        f"{PROGRAM}:smaller_count", [1, 2, 3], 3, tmp_path / "s", lengths=[2, 3], max_inputs=10
    )
    checks = json.loads((tmp_path / "s" / "model.json").read_text())["check_vs_tracr"]
    assert (checks["2"]["inputs_checked"], checks["2"]["sampled"]) == (9, False)
    assert (checks["3"]["inputs_checked"], checks["3"]["inputs_in_space"], checks["3"]["sampled"]) == (
        10,
        27,
        True,
    )
    entry = json.loads((tmp_path / "s" / "inputs.json").read_text())["lengths"]["3"]
    assert entry["sampled"] and len(entry["inputs"]) == 10 and result["lengths"]["3"]["inputs_checked"] == 10

    given = [[1, 2, 3], [3, 2, 1], [1, 2], [2, 1, 3], [2, 2]]
    compile_tracr(f"{PROGRAM}:smaller_count", [1, 2, 3], 3, tmp_path / "g", inputs=given)
    doc = json.loads((tmp_path / "g" / "inputs.json").read_text())["lengths"]
    assert {n: e["inputs"] for n, e in doc.items()} == {
        "2": [[1, 2], [2, 2]],
        "3": [[1, 2, 3], [3, 2, 1], [2, 1, 3]],
    }
    assert doc["3"]["outputs"] == [[0, 1, 2], [2, 1, 0], [1, 0, 2]] and not doc["3"]["sampled"]
    with pytest.raises(ConfigError, match="fewer than two distinct inputs"):
        compile_tracr(f"{PROGRAM}:smaller_count", [1, 2, 3], 3, tmp_path / "h", inputs=[[1, 2, 3], [1, 2]])


def test_tracr_forward_under_jit_equals_tracrs_own_run() -> None:
    """The checks run tracr's forward compiled by jax.jit (one program per input shape);
    tracr's own op-by-op run is the reference: the same embeddings and decoded outputs,
    raw outputs to float32 rounding, on every input of length 3."""
    import itertools

    from circuitdag.tracr_compile import load_program
    from circuitdag.tracr_port import port_program

    program, _ = load_program(f"{PROGRAM}:smaller_count")
    port = port_program(program, [1, 2, 3], 3)
    tokens = np.array([port.encode(xs) for xs in itertools.product([1, 2, 3], repeat=3)])
    (emb, raw, dec), (emb0, raw0, dec0) = port.tracr_forward(tokens), port.tracr_forward(tokens, jit=False)
    np.testing.assert_array_equal(emb, emb0)
    np.testing.assert_allclose(raw, raw0, rtol=0, atol=1e-6)
    np.testing.assert_array_equal(dec, dec0)
    assert port._jitted is not None  # the checks' default


def test_input_spaces_larger_than_an_index_are_sampled() -> None:
    """3^64 inputs do not fit random.sample's C index (an OverflowError before); a seeded
    sample of distinct inputs is drawn instead."""
    from circuitdag.tracr_compile import _input_space

    inputs, total = _input_space([1, 2, 3], 64, 5, seed=0)
    assert total == 3**64 and len(inputs) == 5 and all(len(x) == 64 for x in inputs)
    assert len({tuple(x) for x in inputs}) == 5 and inputs == _input_space([1, 2, 3], 64, 5, seed=0)[0]
    small, _ = _input_space([1, 2, 3], 5, 7, seed=1)  # within an index: random.sample as before
    assert len(small) == 7
