"""A fresh user's findings (verify, stop 4): a misspelt Edge Pruning sparsity term is refused
before the model loads. Repro: `discover --task pronoun --algorithm edge-pruning --option
lagrangian=foo` loaded the model, cached the clean, corrupted and held-out runs and printed
the metric warning before 'must be one of per-gate, paper' (on SmolLM2 about a minute)."""

from __future__ import annotations

from pathlib import Path

import pytest

from circuitdag.algorithms import get_algorithm
from circuitdag.cli import main
from circuitdag.errors import ConfigError


def test_an_unknown_lagrangian_is_refused_by_the_option_check() -> None:
    method = get_algorithm("edge-pruning")
    assert method.check({"lagrangian": "paper"})["lagrangian"] == "paper"
    with pytest.raises(ConfigError, match="lagrangian= must be one of per-gate, paper, got 'foo'"):
        method.check({"lagrangian": "foo"})


def test_discover_refuses_it_before_loading(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                            capsys: pytest.CaptureFixture[str]) -> None:  # fmt: skip
    import circuitdag.cli.discover as cli_discover

    def never(*args: object, **kwargs: object) -> None:
        raise AssertionError("the model loaded")

    monkeypatch.setattr(cli_discover, "load", never)
    assert main(["discover", "--task", "pronoun", "--algorithm", "edge-pruning", "--option", "lagrangian=foo",
                 "--out", str(tmp_path / "o")]) == 2  # fmt: skip
    assert "must be one of per-gate, paper" in capsys.readouterr().err
