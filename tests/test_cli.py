"""The command line, end to end, and its one-line errors."""

import json

import pytest

from circuitdag.cli import main


def run(capsys, *argv):
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_tasks_lists_tracr(capsys):
    code, out, _ = run(capsys, "tasks")
    assert code == 0 and "tracr-reverse" in out and "TRUTH" in out


def test_discover_render_evaluate(tmp_path, capsys):
    out_dir = tmp_path / "rev"
    code, out, err = run(capsys, "discover", "--task", "tracr-reverse", "--ablation", "zero", "--out", str(out_dir), "-q")
    assert code == 0, err
    assert (out_dir / "circuit.json").exists() and (out_dir / "circuit.svg").read_text().startswith("<?xml")
    assert "tracr-reverse: 8/" in out
    assert not (out_dir / "checkpoint.json").exists()
    doc = json.loads((out_dir / "circuit.json").read_text())
    assert doc["format"] == "circuitdag.circuit/1" and doc["ablation"] == "zero" and doc["positions"] is False
    code, out, _ = run(capsys, "evaluate", str(out_dir / "circuit.json"))
    summary = json.loads(out)
    assert code == 0 and summary["matches_ground_truth"] is True and summary["precision"] == 1.0
    code, out, _ = run(capsys, "render", str(out_dir / "circuit.json"), "-o", str(tmp_path / "x.svg"))
    assert code == 0 and (tmp_path / "x.svg").exists()


def test_roc(capsys):
    code, out, _ = run(capsys, "roc", "--task", "tracr-reverse", "--ablation", "zero", "--thresholds", "0", "0.001", "1")
    assert code == 0 and json.loads(out)["auc"] == 1.0


@pytest.mark.parametrize(
    "argv,message",
    [
        (["discover", "--task", "no-such-task"], "unknown task 'no-such-task'"),
        (["discover", "--metric", "accuracy"], "unknown metric 'accuracy'"),
        (["discover", "--ablation", "negate"], "unknown ablation 'negate'"),
        (["discover", "--threshold", "-0.5"], "--threshold must be >= 0"),
        (["discover", "--threshold", "abc"], "--threshold must be a number"),
        (["evaluate", "/nonexistent/circuit.json"], "cannot read /nonexistent/circuit.json"),
    ],
)
def test_bad_input_gives_one_line_error(argv, message, capsys, tmp_path):
    code, _, err = run(capsys, *argv, *(["--out", str(tmp_path)] if argv[0] == "discover" else []))
    assert code == 2
    assert message in err and err.count("\n") == 1


def test_wrong_format_circuit_files(tmp_path, capsys):
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    code, _, err = run(capsys, "evaluate", str(bad))
    assert code == 2 and "is not JSON" in err
    bad.write_text(json.dumps({"format": "something/else"}))
    code, _, err = run(capsys, "render", str(bad))
    assert code == 2 and "is not a circuitdag circuit" in err


def test_unwritable_output_directory(tmp_path, capsys):
    blocker = tmp_path / "file"
    blocker.write_text("")
    code, _, err = run(capsys, "discover", "--out", str(blocker / "sub"))
    assert code == 2 and "not writable" in err
