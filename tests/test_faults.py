"""Faults a new user met after issue 21's first round (a fresh-user session's report):
each is one line and exit 2, never a traceback or a silently wrong result."""

import json

import pytest

from circuitdag.cli import main


def _one_line(capsys) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    return err[0]


def test_a_relative_threshold_above_the_gap_is_refused(tmp_path, capsys):
    assert main(["discover", "--relative-threshold", "1e308", "--out", str(tmp_path), "-q"]) == 2
    assert "more than the whole full-vs-corrupted metric gap" in _one_line(capsys)


def test_an_output_path_that_is_a_directory_is_one_line(tmp_path, capsys):
    (tmp_path / "circuit.svg").mkdir()
    assert main(["discover", "--out", str(tmp_path), "-q", "--threads", "1"]) == 2
    assert "circuit.svg is a directory, where discover writes its circuit.svg" in _one_line(capsys)
    assert not (tmp_path / "circuit.json").exists()  # refused before the search, not after it


def test_a_binary_file_is_not_json_for_curve(tmp_path, capsys):
    bad = tmp_path / "bin.json"
    bad.write_bytes(bytes(range(256)) * 4)
    assert main(["curve", str(bad), "-q"]) == 2
    assert "is not JSON (not UTF-8 text)" in _one_line(capsys)


def test_in_circuit_must_be_a_bool(tmp_path, capsys):
    assert main(["discover", "--out", str(tmp_path), "-q", "--no-svg", "--threads", "1"]) == 0
    capsys.readouterr()
    doc = json.loads((tmp_path / "circuit.json").read_text())
    doc["edges"][0]["in_circuit"] = "yes"
    (tmp_path / "bad.json").write_text(json.dumps(doc))
    assert main(["evaluate", str(tmp_path / "bad.json")]) == 2
    assert "not true or false" in _one_line(capsys)


@pytest.mark.parametrize("damage", ["truncated", "empty", "bad-config"])
def test_a_damaged_model_directory_is_one_line(tmp_path, capsys, tiny_gpt2_dir, damage):
    import shutil

    model = tmp_path / "neox"  # also a TransformerLens alias of a hub model: must stay this directory
    shutil.copytree(tiny_gpt2_dir, model)
    weights = model / "model.safetensors"
    if damage == "truncated":
        weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    elif damage == "empty":
        weights.write_bytes(b"")
    else:
        (model / "config.json").write_text('{"model_type": ')
    prompts = tmp_path / "p.jsonl"
    prompts.write_text(json.dumps({"clean": "the cat sat", "corrupted": "the dog sat", "correct": "on"}) + "\n")
    assert main(["discover", "--model", str(model), "--prompts", str(prompts), "--out", str(tmp_path / "o"), "-q"]) == 2
    line = _one_line(capsys)
    assert str(model) in line and "no local directory of that name" not in line


def test_sweep_honours_n_prompts(tmp_path, capsys):
    """sweep --n-prompts was accepted and ignored (every trial used the task's default)."""
    out = tmp_path / "s"
    assert main(["sweep", "--n-prompts", "5", "--trials", "1", "--ablation", "zero", "--sampler-seed", "0",
                 "--out", str(out), "-q", "--threads", "1"]) == 0  # fmt: skip
    (path,) = out.glob("trials/*/circuit.json")
    assert json.loads(path.read_text())["n_prompts"] == 5


def test_sigterm_during_discover_says_so_and_keeps_the_checkpoint(tmp_path):
    """A scheduler's kill (SIGTERM) ends discover like Ctrl-C: one line saying what happened
    and how to go on, exit 143, the checkpoint left for --resume (it printed nothing)."""
    import signal
    import subprocess
    import sys
    import time

    script = (
        "import sys, time\n"
        "import circuitdag.checkpoint as ck\n"
        "save = ck.save_checkpoint\n"
        "def slow(*a, **k):\n"
        "    save(*a, **k); time.sleep(0.2)\n"
        "ck.save_checkpoint = slow\n"
        "from circuitdag.cli import main\n"
        "sys.exit(main(sys.argv[1:]))\n"
    )
    out = tmp_path / "run"
    argv = ["discover", "--task", "tracr-reverse", "--algorithm", "acdc-reference", "--checkpoint-every", "0",
            "--threads", "1", "-q", "--no-svg", "--out", str(out)]  # fmt: skip
    proc = subprocess.Popen([sys.executable, "-c", script, *argv], stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 120
        while not (out / "checkpoint.json").exists():
            assert proc.poll() is None and time.monotonic() < deadline, "the run ended before it was terminated"
            time.sleep(0.02)
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 143, err
    assert err == "circuitdag: terminated (SIGTERM); rerun with --resume to continue from the checkpoint\n"
    assert (out / "checkpoint.json").exists() and not (out / "circuit.json").exists()


def test_an_unknown_hub_name_offline_is_one_line_at_once(monkeypatch):
    """Offline, a name that is no local directory and not in the Hugging Face cache is
    refused before transformers retries for ~25 s, printing a line per retry."""
    from transformer_lens import TransformerBridge

    from circuitdag.errors import ModelError
    from circuitdag.models.bridge import load_bridge

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(TransformerBridge, "boot_transformers", lambda *a, **k: pytest.fail("tried to boot"))
    with pytest.raises(ModelError, match="not a local directory, not in the Hugging Face cache, and the hub cannot"):
        load_bridge("nosuch-org/nosuch-model-v22")


def test_an_interruption_before_any_checkpoint_suggests_no_resume(tmp_path, capsys, monkeypatch):
    """Stopped before its first checkpoint, discover has nothing to resume from and says
    only that it was interrupted (it suggested --resume, which then started over)."""
    import circuitdag.acdc_search as search

    def stop(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(search, "acdc_fast", stop)
    monkeypatch.setattr("circuitdag.algorithms.acdc.acdc_fast", stop)
    assert main(["discover", "--task", "tracr-reverse", "-q", "--no-svg", "--out", str(tmp_path)]) == 130
    assert capsys.readouterr().err == "circuitdag: interrupted\n"
