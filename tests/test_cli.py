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
    assert "tracr-reverse (acdc): 8/" in out
    assert not (out_dir / "checkpoint.json").exists()
    doc = json.loads((out_dir / "circuit.json").read_text())
    assert doc["format"] == "circuitdag.circuit/1" and doc["ablation"] == "zero" and doc["positions"] is False
    code, out, _ = run(capsys, "evaluate", str(out_dir / "circuit.json"))
    summary = json.loads(out)
    assert code == 0 and summary["matches_ground_truth"] is True and summary["precision"] == 1.0
    code, out, _ = run(capsys, "render", str(out_dir / "circuit.json"), "-o", str(tmp_path / "x.svg"))
    assert code == 0 and (tmp_path / "x.svg").exists()


def test_discover_with_attribution_and_prefilter(tmp_path, capsys):
    code, out, err = run(capsys, "discover", "--task", "tracr-reverse", "--algorithm", "eap-ig", "--edges", "20",
                         "--ig-steps", "3", "--out", str(tmp_path / "ig"), "-q")  # fmt: skip
    assert code == 0, err
    doc = json.loads((tmp_path / "ig" / "circuit.json").read_text())
    assert doc["algorithm"] == "eap-ig" and doc["ig_steps"] == 3 and doc["edges_requested"] == 20
    assert 0 < doc["n_edges"] <= 20 and doc["stats"]["peak_memory_gb"] > 0 and doc["threads"] >= 1
    code, out, err = run(capsys, "discover", "--task", "tracr-reverse", "--prefilter", "eap-ig:40",
                         "--out", str(tmp_path / "pre"), "-q")  # fmt: skip
    assert code == 0, err
    doc = json.loads((tmp_path / "pre" / "circuit.json").read_text())
    pre = doc["prefilter"]
    assert doc["algorithm"] == "acdc" and pre["method"] == "eap-ig" and pre["edges"] == 40
    assert f"prefilter eap-ig:40: ACDC tested {pre['tested']}, kept {pre['kept']}" in out
    assert sum(e["score"] is not None for e in doc["edges"]) == pre["tested"]


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
        (["discover", "--algorithm", "eap", "--prefilter", "eap-ig"], "--prefilter goes with --algorithm acdc"),
        (["discover", "--edges", "5"], "--edges sets the size of an attribution circuit"),
        (["discover", "--algorithm", "eap-ig", "--edges", "5", "--threshold", "1"], "either --edges N or --threshold"),
        (["discover", "--prefilter", "eap-ig:lots"], "--prefilter takes METHOD[:N]"),
        (["discover", "--prefilter", "random:10"], "--prefilter method must be one of"),
        (["discover", "--algorithm", "eap-ig", "--ig-steps", "0"], "--ig-steps must be >= 1"),
        (["discover", "--algorithm", "eap", "--edges", "-1"], "--edges must be >= 0"),
        (["discover", "--batch-size", "0"], "--batch-size must be >= 1"),
        (["discover", "--prefilter", "eap-ig:20", "--edges", "5"], "--prefilter eap-ig:N"),
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


def test_pronoun_positions_end_to_end(tmp_path, capsys):
    """The issue's acceptance run: discover --task pronoun --positions on the shipped toy
    model, an SVG with one column per named position, evaluate's two seed numbers."""
    out_dir = tmp_path / "pos"
    code, out, err = run(capsys, "discover", "--task", "pronoun", "--positions", "--out", str(out_dir), "-q",
                         "--threads", "1")  # fmt: skip
    assert code == 0, err
    doc = json.loads((out_dir / "circuit.json").read_text())
    assert doc["positions"] is True and doc["position_layout"]["names"][2] == "name"
    names = {e["name"] for e in doc["edges"] if e["in_circuit"]}
    assert "embed@name->a0.1@'t<v>" in names  # the toy model's head reads the name at 't
    assert all("@" in n.split("->")[0] for n in names)
    svg = (out_dir / "circuit.svg").read_text()
    assert ">name</text>" in svg and ">&#39;t</text>" in svg and "cluster_pos" not in svg.split("<svg")[0]
    code, out, _ = run(capsys, "evaluate", str(out_dir / "circuit.json"))
    summary = json.loads(out)
    assert code == 0 and summary["head_positions_total"] == 2 * 4 * 11
    assert 0 < summary["head_positions_used"] < 10 and summary["recovered"] > 0.9
    code, _, _ = run(capsys, "render", str(out_dir / "circuit.json"), "-o", str(tmp_path / "again.svg"))
    assert code == 0 and (tmp_path / "again.svg").read_text() == svg



def test_default_threads_leaves_busy_cores_alone(monkeypatch):
    import os

    from circuitdag import cli

    cores = len(os.sched_getaffinity(0))
    monkeypatch.setattr(cli, "_busy_threads", lambda: 0)
    assert cli.default_threads() == cores
    monkeypatch.setattr(cli, "_busy_threads", lambda: cores + 3)
    assert cli.default_threads() == 1
