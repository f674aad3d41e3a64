"""Every numeric option of every command, given an absurd value (0, negative, NaN, inf,
huge), either finishes or is refused at once with one line and exit status 2, in bounded
time and memory. The table below lists the options as ``circuitdag <command> --help``
shows them; ``test_table_covers_every_numeric_option`` fails when a command gains one."""

from __future__ import annotations

import argparse
import contextlib
import resource
import signal
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from circuitdag.cli import build_parser, main

BAD = ("0", "-1", "nan", "inf", "1000000000", "1e308")
SECONDS = 60  # per run; the slowest that finish (tracr compile) take about 15 s
HEADROOM = 3 << 30  # address space a run may add (bytes)
RASP = Path(__file__).parent / "tasks" / "user_rasp" / "program.py"

# command -> the arguments of a small run of it (the values in {} come from the fixtures).
# fmt: off
BASE = {
    "discover": ["discover", "--task", "tracr-reverse", "--threads", "1", "-q", "--out", "{out}"],
    "roc": ["roc", "--task", "tracr-reverse", "--ablation", "zero", "--thresholds", "0.001", "--threads", "1"],
    "sweep": ["sweep", "--task", "tracr-reverse", "--trials", "1", "--threads", "1", "-q", "--out", "{out}"],
    "sweep-worker": ["sweep-worker", "--storage", "{storage}", "--trials", "1", "-q", "--out", "{out}"],
    "curve": ["curve", "{circuit}", "--percents", "10", "--threads", "1", "-q", "--out", "{out}"],
    "activations": ["activations", "--model", "pronoun", "--text", "So Mary is", "-o", "{out}/a.html"],
    "heads": ["heads", "--task", "tracr-reverse", "--threads", "1", "--out", "{out}"],
    "compare": ["compare", "{circuit}", "{circuit}", "--threads", "1", "--out", "{out}"],
    "neurons": ["neurons", "--task", "an-neuron", "--n-prompts", "10", "--layer", "1", "--corpus", "{corpus}",
                "--corpus-tokens", "50", "--threads", "1", "-q", "--out", "{out}"],
    "render": ["render", "{circuit}", "-o", "{out}/c.svg"],
    "evaluate": ["evaluate", "{circuit}"],
    "ccs": ["ccs", "--model", "pronoun", "--steps", "5", "--tries", "1", "--layer", "0", "--threads", "1", "-q",
            "--out", "{out}"],
    "features": ["features", "--model", "pronoun", "--corpus", "{corpus}", "--max-tokens", "100", "--chunk", "4",
                 "--null", "20", "--describe", "1", "--layer", "0", "--threads", "1", "-q", "--out", "{out}"],
    "soft-prompts": ["soft-prompts", "--model", "pronoun", "--task", "pronoun", "--tokens", "1", "--seeds", "2",
                     "--steps", "2", "--segment-points", "2", "--simplex-steps", "1", "--random-directions", "1",
                     "--n-prompts", "8", "--threads", "1", "-q", "--out", "{out}"],
    "tracr compile": ["tracr", "compile", f"{RASP}:smaller_count", "--vocab", "1", "2", "3", "--max-len", "3",
                      "--out", "{out}/compiled"],
}
# fmt: on

# (command, option) -> how the value goes in, when not as ``option VALUE``.
SHAPE: dict[tuple[str, str], Callable[[str], list[str]]] = {
    ("discover", "--edges"): lambda v: ["--algorithm", "eap", "--edges", v],
    ("discover", "--batch-size"): lambda v: ["--algorithm", "eap", "--batch-size", v],
    ("discover", "--ig-steps"): lambda v: ["--algorithm", "eap-ig", "--ig-steps", v],
    ("discover", "--prefilter"): lambda v: ["--prefilter", f"eap:{v}"],
    ("sweep", "--threshold-range"): lambda v: ["--threshold-range", "1e-4", v],
    ("curve", "--percents"): lambda v: ["--percents", v],
    ("tracr compile", "--lengths"): lambda v: ["--lengths", v],
}

# Options that take a number although argparse reads them as text.
TEXT_NUMBERS = {
    "discover": ("--threshold", "--relative-threshold", "--prefilter", "--neurons"),
    "roc": ("--thresholds",),
    "sweep": ("--trials", "--threshold-range", "--target-faithfulness"),
    "sweep-worker": ("--trials",),
    "curve": ("--percents",),
    "neurons": ("--layer",),
}

# Combinations that run for real for longer than a moment (each compiles a RASP program).
SLOW = {("tracr compile", "--seed")}

# Known failures (none now: sweep's --trials and --sampler-seed were the last ones).
KNOWN: dict[tuple[str, str, str | None], pytest.MarkDecorator] = {}


def _commands(
    parser: argparse.ArgumentParser, prefix: str = ""
) -> Iterator[tuple[str, argparse.ArgumentParser]]:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield from _commands(sub, f"{prefix} {name}".strip())
    if prefix:
        yield prefix, parser


def numeric_options() -> list[tuple[str, str]]:
    """(command, option) for every option that takes a number, from the parser itself."""
    found = []
    for command, parser in _commands(build_parser()):
        for action in parser._actions:
            if not action.option_strings:
                continue
            flag = max(action.option_strings, key=len)
            if (
                action.type in (int, float)
                or getattr(action.type, "numeric", False)
                or flag in TEXT_NUMBERS.get(command, ())
            ):
                found.append((command, flag))
    return found


def test_table_covers_every_numeric_option() -> None:
    options = numeric_options()
    assert {c for c, _ in options} <= set(BASE), "a command with numeric options has no BASE row"
    assert len(options) >= 43


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """A scored circuit (for curve and compare), a sweep study (for sweep-worker), a corpus."""
    root = tmp_path_factory.mktemp("options")
    assert (
        main(["discover", "--task", "tracr-reverse", "--threads", "1", "-q", "--out", str(root / "c")]) == 0
    )
    assert main(["sweep", "--task", "tracr-reverse", "--trials", "0", "-q", "--out", str(root / "s")]) == 0
    (root / "corpus.txt").write_text("I saw an owl near the apple tree . She took a lemon .\n" * 5)
    return {"circuit": str(root / "c" / "circuit.json"), "storage": f"sqlite:///{root / 's' / 'sweep.db'}",
            "corpus": str(root / "corpus.txt")}  # fmt: skip


class _Timeout(Exception):
    pass


@contextlib.contextmanager
def bounded(seconds: int, headroom: int) -> Iterator[None]:
    """Raise _Timeout after ``seconds`` and MemoryError past ``headroom`` more bytes of
    address space than the process holds now."""

    def alarm(*_: object) -> None:
        raise _Timeout(f"still running after {seconds} s")

    with open("/proc/self/statm") as f:
        vsize = int(f.read().split()[0]) * resource.getpagesize()
    soft, hard = resource.getrlimit(resource.RLIMIT_AS)
    old = signal.signal(signal.SIGALRM, alarm)
    resource.setrlimit(resource.RLIMIT_AS, (vsize + headroom, hard))
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        resource.setrlimit(resource.RLIMIT_AS, (soft, hard))
        signal.signal(signal.SIGALRM, old)


def run_bounded(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[str, str]:
    """Run the CLI in this process; returns (verdict, detail): verdict "ok" when it finished
    (exit 0) or refused with one line and exit 2, else what went wrong."""
    import torch

    threads = torch.get_num_threads()
    try:
        # A warning (another seed than the circuit's, ...) is printed by the CLI; here only
        # the exit, the time and the memory are judged.
        with bounded(SECONDS, HEADROOM), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            try:
                code = main(argv)
            except SystemExit as exc:  # argparse
                code = exc.code if isinstance(exc.code, int) else 1
    except _Timeout as exc:
        return "timeout", str(exc)
    except MemoryError:
        return "memory", f"more than {HEADROOM >> 30} GB"
    except Exception as exc:  # noqa: BLE001 - any escape is a finding
        return "traceback", f"{type(exc).__name__}: {exc}"[:300]
    finally:
        torch.set_num_threads(threads)
    _, err = capsys.readouterr()
    errors = [line for line in err.splitlines() if "error" in line.lower() or line.startswith(" ")]
    if code == 0:
        return "ok", "finished"
    if code == 2 and len(errors) == 1 and "usage:" not in err and "Traceback" not in err:
        return "ok", errors[0]
    return f"exit {code}", err.strip()[-300:]


def argv_of(command: str, option: str, value: str, files: dict[str, str], out: Path) -> list[str]:
    base = [a.format(out=out, **files) for a in BASE[command]]
    given = SHAPE.get((command, option), lambda v: [option, v])(value)
    # A given option replaces the base's value of it.
    for flag in [a for a in given if a.startswith("--")]:
        if flag in base:
            i = base.index(flag)
            j = i + 1
            while j < len(base) and not base[j].startswith("-"):
                j += 1
            del base[i:j]
    return base + given


CASES = [
    pytest.param(
        c,
        o,
        v,
        marks=[pytest.mark.slow] * ((c, o) in SLOW)
        + [m for m in (KNOWN.get((c, o, v)), KNOWN.get((c, o, None))) if m is not None],
    )
    for c, o in numeric_options()
    for v in BAD
]


@pytest.mark.parametrize("command,option,value", CASES)
def test_absurd_value_finishes_or_is_refused_in_one_line(command, option, value, files, tmp_path, capsys):
    verdict, detail = run_bounded(argv_of(command, option, value, files, tmp_path), capsys)
    assert verdict == "ok", f"{command} {option} {value}: {verdict}: {detail}"


# ---------------------------------------------------------------------- caps and refusals, one by one
def _discover(tmp_path: Path, *extra: str) -> list[str]:
    return ["discover", "--task", "tracr-reverse", "--threads", "1", "-q", "--out", str(tmp_path), *extra]


def test_k_max_is_capped_at_the_widest_node(tmp_path, capsys, caplog) -> None:
    """--k-max 10^9 made BatchSizer allocate 10^9 candidate sizes (11.6 GB in 100 s on a
    110-edge graph); no batch holds more candidates than a node has incoming edges."""
    import json

    verdict, detail = run_bounded(_discover(tmp_path, "--k-max", "1000000000"), capsys)
    assert verdict == "ok", detail
    k_max = json.loads((tmp_path / "circuit.json").read_text())["stats"]["k_max"]
    assert 1 <= k_max < 100
    assert (
        f"--k-max 1000000000 capped at {k_max} (no node has more than {k_max} incoming edges)" in caplog.text
    )


def test_threads_are_capped_at_the_usable_cores(tmp_path, capsys, caplog) -> None:
    import json

    from circuitdag._options import usable_cores

    verdict, detail = run_bounded(_discover(tmp_path, "--threads", "1000000000"), capsys)
    assert verdict == "ok", detail
    assert json.loads((tmp_path / "circuit.json").read_text())["threads"] <= usable_cores()
    assert f"--threads 1000000000 capped at {usable_cores()}" in caplog.text


def test_edges_and_batch_size_are_capped_at_the_graph_and_the_prompts(tmp_path, capsys, caplog) -> None:
    import json

    argv = _discover(tmp_path, "--algorithm", "eap", "--edges", "1000000000", "--batch-size", "1000000000")
    assert main(argv) == 0, capsys.readouterr().err
    doc = json.loads((tmp_path / "circuit.json").read_text())
    assert doc["edges_requested"] == doc["n_edges_total"] and doc["stats"]["batch_size"] == doc["n_prompts"]
    assert f"--edges 1000000000 capped at {doc['n_edges_total']} (the graph's edges)" in caplog.text
    assert f"--batch-size 1000000000 capped at {doc['n_prompts']} (the run has" in caplog.text


@pytest.mark.parametrize(
    "argv,message",
    [
        (["discover", "--threshold", "inf"], "--threshold must be finite, got inf"),
        (["discover", "--relative-threshold", "inf"], "--relative-threshold must be finite, got inf"),
        # tracr-reverse's metric gap is 1.007: 1.79e308 times it overflows to inf
        (["discover", "--relative-threshold", "1.79e308"], "is not a finite threshold"),
        (["discover", "--algorithm", "eap", "--relative-threshold", "1.79e308"], "is not a finite threshold"),
        (["roc", "--task", "tracr-reverse", "--thresholds", "0.1", "inf"], "--threshold must be finite"),
        (["discover", "--k-max", "0"], "--k-max must be >= 1, got 0"),
        (["discover", "--threads", "0"], "--threads must be >= 1, got 0"),
        (["discover", "--checkpoint-every", "nan"], "--checkpoint-every must be a finite number"),
        (["discover", "--checkpoint-every", "-1"], "--checkpoint-every must be >= 0"),
        (["discover", "--seed", "-1"], "--seed must be >= 0"),
        (
            ["discover", "--algorithm", "eap-ig", "--ig-steps", "1000000000"],
            "--ig-steps must be at most 1000",
        ),
        (["discover", "--k-max", "nan"], "--k-max must be a whole number, got 'nan'"),
        (["heads", "--task", "tracr-reverse", "-k", "-1"], "-k must be >= 1"),
        (["neurons", "--task", "an-neuron", "--layer", "-1"], "--layer takes layer numbers >= 0"),
        # induction generates as many prompts as asked: 10^9 would not fit in memory
        (
            ["discover", "--task", "induction", "--n-prompts", "1000000000"],
            "--n-prompts 1000000000 needs more than",
        ),
    ],
)
def test_refused_in_one_line(argv, message, tmp_path, capsys) -> None:
    if argv[0] == "discover":
        task = [] if "--task" in argv else ["--task", "tracr-reverse"]
        argv = [*argv, *task, "--threads", "1", "-q", "--out", str(tmp_path)]
    verdict, detail = run_bounded(argv, capsys)
    assert verdict == "ok" and message in detail, detail


def test_a_seed_that_changes_nothing_is_reported(tmp_path, caplog) -> None:
    """an-neuron's prompts are fixed: --seed only matters when --n-prompts draws a subset;
    pronoun draws other names and templates with every seed but 0 (issue 24), and
    pronoun-opposite also each replacement name."""
    import torch

    from circuitdag.tasks import get_task

    for name, uses in (("pronoun", True), ("pronoun-opposite", True), ("an-neuron", False), ("ioi", True)):
        assert get_task(name).data_uses_seed is uses, name
    task = get_task("pronoun")
    model = task.load_model()
    assert not torch.equal(task.data(model, seed=0).clean, task.data(model, seed=3).clean)
    opposite = get_task("pronoun-opposite")
    assert not torch.equal(opposite.data(model, seed=0).corrupted, opposite.data(model, seed=3).corrupted)

    argv = [
        "discover",
        "--task",
        "an-neuron",
        "--algorithm",
        "eap",
        "--threads",
        "1",
        "-q",
        "--out",
        str(tmp_path),
    ]
    assert main([*argv, "--seed", "3"]) == 0
    assert "--seed 3 changes nothing: task an-neuron has a fixed list of prompts" in caplog.text
    caplog.clear()
    assert main([*argv, "--seed", "3", "--n-prompts", "20"]) == 0
    assert main([*argv[:2], "pronoun", *argv[3:], "--seed", "3"]) == 0
    assert "changes nothing" not in caplog.text
