"""Your own model and prompts: a prompts file (JSONL/CSV) on a local Hugging Face directory,
from the command line and from Python, and the checks at the task boundary."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest
import torch

import circuitdag as cd
from circuitdag.cli import main
from circuitdag.errors import TaskError
from circuitdag.tasks import get_task, load_data
from circuitdag.tasks.prompts import PromptTask, read_prompts

WORDS = "when after john mary tom anna and went to the store park , gave a book ball"
NAMES = ["john", "mary", "tom", "anna"]


def ioi_rows(n: int = 20, seed: int = 0) -> list[dict[str, str]]:
    """IOI-style prompts over the tiny vocabulary: ``a`` is the indirect object."""
    rng = random.Random(seed)
    rows = []
    for _ in range(n):
        a, b = rng.sample(NAMES, 2)
        c, e = [x for x in NAMES if x not in (a, b)]
        w, place, obj = rng.choice(["when", "after"]), rng.choice(["store", "park"]), rng.choice(["book", "ball"])
        rows.append({"clean": f"{w} {a} and {b} went to the {place} , {b} gave a {obj} to",
                     "corrupted": f"{w} {c} and {e} went to the {place} , {e} gave a {obj} to",
                     "correct": a, "wrong": b})  # fmt: skip
    return rows


@pytest.fixture(scope="module")
def model_dir(word_lm_dir) -> Path:
    """A tiny random GPT-2-format model directory over :data:`WORDS` (for the data checks)."""
    return word_lm_dir(WORDS)


@pytest.fixture(scope="module")
def trained_dir(tmp_path_factory) -> Path:
    """A tiny GPT-2-format model directory that does a task, as a user has one: the zoo's
    pronoun model written out with ``save_pretrained`` (config, safetensors, tokenizer)."""
    from transformers import AutoTokenizer, GPT2LMHeadModel

    from circuitdag.models.zoo import zoo_path

    path = tmp_path_factory.mktemp("my-model")
    GPT2LMHeadModel.from_pretrained(zoo_path("pronoun")).save_pretrained(path)
    AutoTokenizer.from_pretrained(zoo_path("pronoun")).save_pretrained(path)
    return path


def pronoun_rows(n: int = 20, seed: int = 0) -> list[dict[str, str]]:
    """Pronoun prompts for :func:`trained_dir`; the corruption swaps the name's gender."""
    rng = random.Random(seed)
    names = {"he": ["John", "David", "Michael", "James", "Paul"], "she": ["Mary", "Sarah", "Emma", "Anna", "Helen"]}
    rows = []
    for i in range(n):
        right, wrong = ("he", "she") if i % 2 else ("she", "he")
        tail = f"is a {rng.choice(['really', 'very', 'quite'])} {rng.choice(['kind', 'smart', 'calm'])} " \
               f"{rng.choice(['teacher', 'driver', 'writer'])}, isn't"  # fmt: skip
        rows.append({"clean": f"So {rng.choice(names[right])} {tail}", "corrupted": f"So {rng.choice(names[wrong])} {tail}",
                     "correct": right, "wrong": wrong})  # fmt: skip
    return rows


@pytest.fixture
def prompts_file(tmp_path: Path) -> Path:
    path = tmp_path / "prompts.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in pronoun_rows()))
    assert len(path.read_text().splitlines()) == 20
    return path


def test_discover_with_own_model_and_prompts_file(trained_dir, prompts_file, tmp_path, capsys, monkeypatch) -> None:
    import importlib

    from transformers.utils import logging as hf_logging

    hub_tqdm = importlib.import_module("huggingface_hub.utils.tqdm")  # the module (the package exports a class of that name)

    # Bars on, as in a fresh process: -q must turn them off. An earlier in-process command
    # with -q may have set HF_HUB_DISABLE_PROGRESS_BARS before huggingface_hub was imported,
    # which the hub reads once (then enabling the bars warns): undo both for this test.
    monkeypatch.delenv("HF_HUB_DISABLE_PROGRESS_BARS", raising=False)
    monkeypatch.setattr(hub_tqdm, "HF_HUB_DISABLE_PROGRESS_BARS", None)
    hf_logging.enable_progress_bar()
    out = tmp_path / "run"
    code = main(["discover", "--model", str(trained_dir), "--prompts", str(prompts_file), "--out", str(out),
                 "-q", "--threads", "1"])  # fmt: skip
    stdout, err = capsys.readouterr()
    assert code == 0, err
    assert err == ""  # -q: no loading bar, no phase messages
    doc = json.loads((out / "circuit.json").read_text())
    assert doc["task"] == f"prompts:{prompts_file.resolve()}" and doc["n_prompts"] == 20
    assert doc["metric"] == "logit_diff" and doc["relative_threshold"] == 0.01
    assert doc["threshold"] == pytest.approx(0.01 * abs(doc["metric_gap"]))
    assert doc["n_edges"] > 0 and (out / "circuit.svg").exists()
    assert stdout.startswith(f"prompts:{prompts_file.resolve()} (acdc): {doc['n_edges']}/")
    # The saved task and model names find the prompts and the model again (evaluate, curve).
    assert doc["model"] == str(trained_dir.resolve())
    assert (doc["metric_corrupted"] - doc["metric_circuit"]) / (doc["metric_corrupted"] - doc["metric_full"]) > 0.9
    assert main(["evaluate", str(out / "circuit.json")]) == 0
    assert json.loads(capsys.readouterr().out)["edges"] == doc["n_edges"]
    hf_logging.enable_progress_bar()
    assert main(["curve", str(out / "circuit.json"), "-q", "--threads", "1"]) == 0
    assert capsys.readouterr().err == "" and (out / "curve.svg").exists()


def test_three_lines_of_python(trained_dir, prompts_file) -> None:
    task = cd.Task.from_prompts(prompts_file)
    circuit = cd.acdc(str(trained_dir), task)
    assert circuit.n_edges > 0 and circuit.meta["n_prompts"] == 20 and circuit.faithfulness() > 0.9
    # The same prompts as a list, with a threshold in metric units.
    again = cd.acdc(str(trained_dir), cd.Task.from_prompts(pronoun_rows()), threshold=circuit.meta["threshold"])
    assert again.edge_names == circuit.edge_names


def test_csv_file_and_tuples_give_the_same_data(model_dir, tmp_path) -> None:
    rows = ioi_rows(6)
    csv = tmp_path / "p.csv"
    csv.write_text("clean,corrupted,correct,wrong\n" + "".join(
        f"\"{r['clean']}\",\"{r['corrupted']}\",{r['correct']},{r['wrong']}\n" for r in rows))  # fmt: skip
    model = cd.load_model(str(model_dir))
    a = PromptTask.from_file(csv).data(model)
    b = PromptTask([(r["clean"], r["corrupted"], r["correct"], r["wrong"]) for r in rows]).data(model)
    assert torch.equal(a.clean, b.clean) and torch.equal(a.correct, b.correct) and torch.equal(a.wrong, b.wrong)
    # One layout: positions named automatically (a shared token by its text, else w1, w2, ...).
    assert a.position_names == ("bos", "w1", "w2", "and", "w3", "went", "to", "the", "w4", "comma", "w5", "gave",
                                "a", "w6", "to_2")  # fmt: skip
    assert torch.equal(a.answer_pos[:, 0], torch.full((6,), a.clean.shape[1] - 1))


def test_prompts_of_different_lengths_are_padded(model_dir) -> None:
    model = cd.load_model(str(model_dir))
    task = PromptTask([("john gave a book to", "tom gave a book to", "mary"),
                       ("when john went to the store , john gave a ball to", "when tom went to the store , tom gave a ball to",
                        "anna")])  # fmt: skip
    d = task.data(model)
    assert task.default_metric == "kl"  # no wrong answers
    assert d.answer_pos[:, 0].tolist() == [5, 12] and d.position_names is None  # BOS first
    assert d.clean.shape == (2, 13) and int(d.clean[0, 6]) == model.tokenizer.pad_token_id


def test_position_names_from_the_file(model_dir, tmp_path) -> None:
    rows = ioi_rows(3)
    names = "w IO and S1 went to the place comma S2 gave a object end"
    for r in rows:
        r["positions"] = names
    path = tmp_path / "p.json"
    path.write_text(json.dumps(rows))
    d = PromptTask.from_file(path).data(cd.load_model(str(model_dir)))
    assert d.position_names == ("bos", *names.split())  # the model wants BOS: named "bos"


@pytest.mark.parametrize(
    "rows,message",
    [
        ([{"clean": "john gave a book to", "corrupted": "tom gave a book to"}], "missing 'correct'"),
        ([{"clean": "john gave a book to", "corrupted": "tom gave a book to", "correct": "x", "answer": "y"}],
         "unknown field(s) 'answer'"),
        ([("john gave a book to", "tom gave a book", "mary")], "the clean prompt has 6 tokens"),
        ([("john gave a book to", "john gave a book to", "mary")], "are the same tokens"),
        ([("john gave a book to", "tom gave a book to", "marybeth")], "'marybeth' is not in the model's vocabulary"),
        ([("john gave a zorro to", "tom gave a zorro to", "mary")], "has words the model's tokenizer does not know"),
        ([("john gave a book to", "tom gave a book to", "mary", "mary")], "the same token"),
        ([("john gave a book to", "tom gave a book to", "mary", "tom"), ("a", "b", "mary")],
         "prompt 1 has no 'wrong' answer"),
        ([{"clean": "john gave", "corrupted": "tom gave", "correct": "a", "positions": "x"}], "1 position names"),
        ([("to " * 40, "a " * 40, "mary")], "more than the model's context of 32"),
    ],
)
def test_bad_prompts_are_refused_with_the_row(rows, message, model_dir) -> None:
    with pytest.raises(TaskError, match=None) as err:
        PromptTask(rows).data(cd.load_model(str(model_dir)))
    assert message in str(err.value)


@pytest.mark.parametrize(
    "text,suffix,message",
    [
        ("", ".jsonl", "holds no prompts"),
        ("{not json\n", ".jsonl", "line 1 is not JSON"),
        ("clean,corrupted\na,b\n", ".csv", "missing correct"),
        ("x", ".txt", "end in .jsonl, .json, .csv or .tsv"),
    ],
)
def test_bad_files_are_refused(text, suffix, message, tmp_path) -> None:
    path = tmp_path / f"p{suffix}"
    path.write_text(text)
    with pytest.raises(TaskError) as err:
        read_prompts(path)
    assert message in str(err.value)


@pytest.mark.parametrize(
    "argv,message",
    [
        (["--prompts", "p.jsonl"], "--prompts needs --model"),
        (["--prompts", "p.jsonl", "--model", "x", "--task", "pronoun"], "either --task NAME or --prompts FILE"),
        (["--prompts", "/nonexistent.jsonl", "--model", "x"], "cannot read prompts file /nonexistent.jsonl"),
        (["--n-prompts", "0"], "--n-prompts must be >= 1"),
        (["--n-prompts", "500", "--task", "pronoun"], "has 100 prompts for this model; --n-prompts 500"),
        (["--threshold", "1", "--relative-threshold", "0.1"], "not both"),
        (["--relative-threshold", "-1"], "--relative-threshold must be >= 0"),
    ],
)
def test_cli_errors(argv, message, tmp_path, capsys) -> None:
    code = main(["discover", *argv, "--out", str(tmp_path), "-q", "--threads", "1"])
    err = capsys.readouterr().err
    assert code == 2 and message in err and err.count("\n") == 1, err


def test_n_prompts_for_every_kind_of_task(model_dir) -> None:
    """A generated task makes N prompts; a fixed list gives a seeded subset in list order."""
    pronoun = get_task("pronoun")
    zoo = pronoun.load_model()
    full = pronoun.data(zoo, seed=3)  # the list of seed 3 (pronoun draws its names and templates with the seed)
    sub = load_data(pronoun, zoo, seed=3, n_prompts=10)
    rows = [next(i for i in range(full.n_prompts) if torch.equal(full.clean[i], r)) for r in sub.clean]
    assert sub.n_prompts == 10 and rows == sorted(rows) and len(set(sub.correct[:, 0].tolist())) == 2
    assert torch.equal(load_data(pronoun, zoo, seed=3, n_prompts=10).clean, sub.clean)
    rev = get_task("tracr-reverse")
    assert load_data(rev, rev.load_model(), n_prompts=7).n_prompts == 7 and rev.n_prompts == 100
    own = PromptTask(ioi_rows())
    assert load_data(own, cd.load_model(str(model_dir)), n_prompts=5).n_prompts == 5


def test_n_prompts_on_the_command_line(tmp_path, capsys) -> None:
    code = main(["discover", "--task", "tracr-reverse", "--n-prompts", "12", "--out", str(tmp_path), "-q",
                 "--threads", "1"])  # fmt: skip
    assert code == 0, capsys.readouterr().err
    assert json.loads((tmp_path / "circuit.json").read_text())["n_prompts"] == 12


def test_a_prompts_file_that_is_not_utf8_is_a_one_line_error(tmp_path):
    from circuitdag.errors import TaskError
    from circuitdag.tasks.prompts import read_prompts

    path = tmp_path / "bin.jsonl"
    path.write_bytes(b"\xff\xfe\x00{garbage")
    with pytest.raises(TaskError, match="not UTF-8"):
        read_prompts(path)


@pytest.mark.parametrize("suffix", [".jsonl", ".json", ".csv", ".tsv"])
def test_a_byte_order_mark_is_accepted(suffix, tmp_path):
    """Excel and Notepad start UTF-8 files with a byte-order mark; it is not part of the
    first field's name (CSV/TSV) or of the JSON text."""
    row = {"clean": "john gave a book to", "corrupted": "mary gave a book to", "correct": "mary", "wrong": "john"}
    text = {
        ".jsonl": json.dumps(row) + "\n",
        ".json": json.dumps([row]),
        ".csv": "clean,corrupted,correct,wrong\n" + ",".join(row.values()) + "\n",
        ".tsv": "clean\tcorrupted\tcorrect\twrong\n" + "\t".join(row.values()) + "\n",
    }[suffix]
    path = tmp_path / f"bom{suffix}"
    path.write_bytes(b"\xef\xbb\xbf" + text.encode())
    (prompt,) = read_prompts(path)
    assert (prompt.clean, prompt.corrupted, prompt.correct, prompt.wrong) == tuple(row.values())
