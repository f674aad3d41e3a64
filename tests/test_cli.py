"""The command line, end to end, and its one-line errors."""

import json

import pytest

from circuitdag.cli import build_parser, main


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
        (["discover", "--prepend-bos", "yes"], "task 'tracr-reverse' builds its own token ids and has no BOS option"),
        (["sweep", "--prepend-bos", "no", "--trials", "0"], "has no BOS option; leave --prepend-bos at auto"),
    ],
)
def test_bad_input_gives_one_line_error(argv, message, capsys, tmp_path):
    code, _, err = run(capsys, *argv, *(["--out", str(tmp_path)] if argv[0] in ("discover", "sweep") else []))
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

    from circuitdag.cli import _common as cli

    cores = len(os.sched_getaffinity(0))
    monkeypatch.setattr(cli, "_busy_threads", lambda: 0)
    assert cli.default_threads() == cores
    monkeypatch.setattr(cli, "_busy_threads", lambda: cores + 3)
    assert cli.default_threads() == 1


def test_metric_task(word_lm_dir, tmp_path, capsys):
    """`--metric task` (docs/tasks.md) runs a task's own metric, and a task without one says so."""
    from circuitdag.tasks.greater_than import NOUNS

    model = word_lm_dir(" ".join(["The", "lasted", "from", "the", "year", "to", *NOUNS, *"0123456789"]),
                        split_digits=True)  # fmt: skip
    with pytest.warns(UserWarning, match="the model barely does this task"):  # an untrained model
        code, out, err = run(capsys, "discover", "--task", "greater-than", "--model", str(model), "--metric", "task",
                             "--n-prompts", "20", "--out", str(tmp_path / "gt"), "-q", "--threads", "1")  # fmt: skip
    assert code == 0, err
    doc = json.loads((tmp_path / "gt" / "circuit.json").read_text())
    assert doc["metric"] == "task" and doc["n_prompts"] == 20 and "metric task = the task's own metric" in out
    code, _, err = run(capsys, "discover", "--task", "pronoun", "--metric", "task", "--out", str(tmp_path), "-q")
    assert code == 2 and "task 'pronoun' has no metric of its own, so --metric task cannot be used" in err


def test_roc_help_and_points(tmp_path, capsys):
    parser = build_parser()
    roc = next(a for a in parser._subparsers._group_actions[0].choices["roc"]._actions if "--task" in a.option_strings)
    assert roc.required and "default" not in roc.help  # required, so it has no default
    code, out, _ = run(capsys, "roc", "--task", "tracr-reverse", "--ablation", "zero", "--thresholds", "0", "0.001",
                         "1", "--plot", str(tmp_path / "roc.svg"), "--threads", "1")  # fmt: skip
    res = json.loads(out)
    assert code == 0 and res["auc"] == 1.0
    assert [(p["threshold"], p["fpr"], p["tpr"]) for p in res["points"]] == [(0.0, 1.0, 1.0), (0.001, 0.0, 1.0),
                                                                              (1.0, 0.0, 0.0)]  # fmt: skip
    svg = (tmp_path / "roc.svg").read_text()
    assert "AUC 1.000" in svg and "chance" in svg  # the legend


def test_resume_without_a_checkpoint_says_so(tmp_path, capsys):
    code, _, err = run(capsys, "discover", "--resume", "--out", str(tmp_path), "-q", "--threads", "1")
    assert code == 0 and f"--resume: there is no {tmp_path / 'checkpoint.json'} to resume from" in err


def test_summary_line_shows_what_the_values_are(tmp_path, capsys):
    code, out, err = run(capsys, "discover", "--task", "pronoun", "--out", str(tmp_path), "-q", "--threads", "1")
    assert code == 0, err
    doc = json.loads((tmp_path / "circuit.json").read_text())
    # logit_diff is stored negated (lower is closer); the line says so, and shows all three values.
    assert "metric logit_diff = -(logit[correct] - logit[wrong]), lower is closer to the full model" in out
    assert f"full {doc['metric_full']:.4g}, circuit {doc['metric_circuit']:.4g}, corrupted " in out
    assert doc["metric_stored_as"].startswith("-(logit[correct] - logit[wrong])")
    assert main_num(0.0) == "0" and main_num(3e-9) == "3e-09"


def main_num(x):
    from circuitdag.cli.discover import _num

    return _num(x)
