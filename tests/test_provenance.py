"""circuit.json and the ACDC checkpoint record everything that changes a result, and
--resume refuses a checkpoint whose record differs (docs/reproducibility.md)."""

from __future__ import annotations

import json

import pytest
import torch

from circuitdag.cli import main
from circuitdag.discovery import run_acdc
from circuitdag.errors import ConfigError
from circuitdag.models import load_model
from circuitdag.models.bridge import load_bridge
from circuitdag.models.zoo import zoo_path
from circuitdag.prepare import prepare
from circuitdag.provenance import RESUME_KEYS, data_fingerprint, library_versions
from circuitdag.tasks import get_task

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def task():
    return get_task("pronoun")


def test_weight_processing_is_recorded_and_checked_on_resume(task, tmp_path) -> None:
    """The zoo pronoun model with and without TransformerLens's weight processing gives 15
    vs 11 edges under zero ablation; the two circuit files used to carry identical settings."""
    processed = load_model("pronoun")
    raw = load_bridge(zoo_path("pronoun"), process_weights=False)
    raw.cfg.model_name = "pronoun"
    docs = []
    for model in (processed, raw):
        patcher, meta = prepare(model, task, ablation="zero")
        circuit = run_acdc(patcher, task.default_threshold, meta=meta)
        path = tmp_path / f"{meta['process_weights']}.json"
        circuit.save(path)
        docs.append(json.loads(path.read_text()))
    assert [d["process_weights"] for d in docs] == [True, False]
    assert [sum(e["in_circuit"] for e in d["edges"]) for d in docs] == [15, 11]
    for d in docs:
        assert (d["dtype"], d["device"], d["bos"], d["prepend_bos"]) == ("float32", "cpu", True, "auto")
        assert d["versions"] == library_versions() and d["versions"]["torch"] == torch.__version__
        assert d["n_prompts"] == 100 and d["seed"] == 0 and len(d["data_sha256"]) == 16
    # A checkpoint of the processed model is refused by a run on the raw one.
    ck = tmp_path / "checkpoint.json"
    patcher, meta = prepare(processed, task, ablation="zero")
    run_acdc(patcher, task.default_threshold, meta=meta, checkpoint=ck)
    patcher, meta = prepare(raw, task, ablation="zero")
    with pytest.raises(ConfigError, match="process_weights: True there, False now"):
        run_acdc(patcher, task.default_threshold, meta=meta, checkpoint=ck, resume=True)


def test_resume_with_another_dtype_is_refused(task, tmp_path, capsys) -> None:
    out = tmp_path / "run"
    out.mkdir()
    patcher, meta = prepare(load_model("pronoun"), task)  # a run interrupted before the end
    first = run_acdc(patcher, task.default_threshold, meta=meta, checkpoint=out / "checkpoint.json")
    argv = ["discover", "--task", "pronoun", "--out", str(out), "--resume", "-q", "--threads", "1"]
    assert main([*argv, "--dtype", "float64"]) == 2
    err = capsys.readouterr().err
    assert "dtype: 'float32' there, 'float64' now" in err.splitlines()[-1]
    assert not (out / "circuit.json").exists()
    assert main(argv) == 0  # the same settings resume
    doc = json.loads((out / "circuit.json").read_text())
    assert doc["dtype"] == "float32" and {e["name"] for e in doc["edges"] if e["in_circuit"]} == first.edge_names


def test_the_checkpoint_stores_every_resume_key(task, tmp_path) -> None:
    ck = tmp_path / "checkpoint.json"
    patcher, meta = prepare(load_model("pronoun"), task)
    run_acdc(patcher, task.default_threshold, meta=meta, checkpoint=ck)
    info = json.loads(ck.read_text())["info"]
    assert set(RESUME_KEYS) <= set(info) and None not in [info[k] for k in RESUME_KEYS if k != "prepend_bos"]
    assert info["data_sha256"] == data_fingerprint(patcher.data)


def test_the_fingerprint_sees_one_changed_token(task) -> None:
    data = task.data(load_model("pronoun"))
    clean = data.clean.clone()
    clean[3, 2] += 1
    from dataclasses import replace

    assert data_fingerprint(replace(data, clean=clean)) != data_fingerprint(data)
    assert data_fingerprint(replace(data)) == data_fingerprint(data)


def test_prepend_bos_is_recorded(tmp_path, capsys) -> None:
    docs = {}
    for option in ("auto", "no"):
        out = tmp_path / option
        argv = ["discover", "--task", "pronoun", "--prepend-bos", option, "--out", str(out), "-q", "--threads", "1"]
        assert main(argv) == 0, capsys.readouterr().err
        docs[option] = json.loads((out / "circuit.json").read_text())
    auto, no = docs["auto"], docs["no"]
    assert (auto["prepend_bos"], auto["bos"]) == ("auto", True) and "default_prepend_bos is True" in auto["bos_reason"]
    assert (no["prepend_bos"], no["bos"], no["bos_reason"]) == ("no", False, "the task's prepend_bos option")
    assert no["data_sha256"] != auto["data_sha256"]


def test_curve_rebuilds_the_prompts_a_circuit_was_found_on(tmp_path, capsys) -> None:
    """`curve` takes the BOS option and number of prompts from circuit.json (here
    --prepend-bos no, which changes the zoo model's prompts), and warns when the prompts it
    rebuilds have another fingerprint."""
    out = tmp_path / "no-bos"
    argv = ["discover", "--task", "pronoun", "--prepend-bos", "no", "--out", str(out), "-q", "--threads", "1"]
    assert main(argv) == 0, capsys.readouterr().err
    path = out / "circuit.json"
    assert main(["curve", str(path), "-q", "--threads", "1"]) == 0, capsys.readouterr().err  # no warning
    doc = json.loads(path.read_text())
    doc["data_sha256"] = "0" * 16
    path.write_text(json.dumps(doc))
    with pytest.warns(UserWarning, match="was found on other prompts than this curve runs on"):
        assert main(["curve", str(path), "-q", "--threads", "1"]) == 0
