"""A fresh user's findings (verify, stop 4): a command that cannot write its --out says so
before its work, not after it. Repro: `circuitdag neurons --task an-neuron --out /proc/neu`
patched all 512 neurons (minutes on SmolLM2), then "cannot write the report into /proc/neu";
`curve`, `heads` and `compare` likewise computed everything first."""

from __future__ import annotations

from pathlib import Path

import pytest

from circuitdag.cli import main


def _never(*args: object, **kwargs: object) -> None:
    raise AssertionError("the work started although --out cannot be written")


@pytest.fixture
def a_file(tmp_path: Path) -> Path:
    path = tmp_path / "taken"
    path.write_text("a file, not a directory")
    return path


def test_curve_refuses_an_unwritable_out_before_its_passes(a_file: Path, tmp_path: Path,
                                                           monkeypatch: pytest.MonkeyPatch,
                                                           capsys: pytest.CaptureFixture[str]) -> None:  # fmt: skip
    import circuitdag.mib

    monkeypatch.setattr(circuitdag.mib, "write_curve", _never)
    (tmp_path / "circuit.json").write_text("{}")
    assert main(["curve", str(tmp_path / "circuit.json"), "--out", str(a_file)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "not writable" in err[0] and "--out" in err[0]


def test_neurons_refuses_an_unwritable_out_before_the_analysis(a_file: Path, monkeypatch: pytest.MonkeyPatch,
                                                               capsys: pytest.CaptureFixture[str]) -> None:  # fmt: skip
    import circuitdag.neurons.analysis

    monkeypatch.setattr(circuitdag.neurons.analysis, "analyze_neurons", _never)
    assert main(["neurons", "--task", "an-neuron", "-q", "--out", str(a_file / "sub")]) == 2
    assert "not writable" in capsys.readouterr().err


@pytest.mark.parametrize("command", ["heads", "compare"])
def test_heads_and_compare_refuse_an_unwritable_out_first(command: str, a_file: Path, tmp_path: Path,
                                                          monkeypatch: pytest.MonkeyPatch,
                                                          capsys: pytest.CaptureFixture[str]) -> None:  # fmt: skip
    import circuitdag.compare
    import circuitdag.heads

    monkeypatch.setattr(circuitdag.heads, "write_heads", _never)
    monkeypatch.setattr(circuitdag.compare, "write_comparison", _never)
    args = {"heads": ["heads", "--task", "reversal", "--model", "compiled"],
            "compare": ["compare", str(tmp_path / "a.json"), str(tmp_path / "b.json")]}[command]  # fmt: skip
    assert main([*args, "--out", str(a_file)]) == 2
    assert "not writable" in capsys.readouterr().err
