"""Task plugins: a third-party distribution registers a task through the
``circuitdag.tasks`` entry points, and a broken one is skipped with a warning naming it.

The example package ``tests/plugin_example`` is installed into a temporary folder
(``pip install --no-deps --no-build-isolation --target``), never into the shared
environment, and that folder is put on ``sys.path`` for the test only.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import circuitdag.tasks as registry
from circuitdag.cli import main
from circuitdag.errors import TaskError

torch.set_num_threads(1)

EXAMPLE = Path(__file__).resolve().parent.parent / "plugin_example"
REPO = EXAMPLE.parent.parent


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """tests/plugin_example installed (by pip, from a copy: setuptools builds in the
    source tree) into a temporary target folder."""
    src = tmp_path_factory.mktemp("src") / "plugin_example"
    shutil.copytree(EXAMPLE, src, ignore=shutil.ignore_patterns("build", "*.egg-info", "__pycache__"))
    target = tmp_path_factory.mktemp("site")
    cmd = [sys.executable, "-m", "pip", "install", "--no-deps", "--no-build-isolation", "--no-index",
           "--quiet", "--target", str(target), str(src)]  # fmt: skip
    proc = subprocess.run(cmd, check=False, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert (target / "circuitdag_toy_plugin-0.1.0.dist-info" / "entry_points.txt").exists()
    return target


def _fake_distribution(site: Path, dist: str, entry_points: str, modules: dict[str, str]) -> None:
    """Write an installed distribution by hand: its dist-info (METADATA, entry points)
    and its modules, which is all ``importlib.metadata`` and ``import`` look at."""
    info = site / f"{dist.replace('-', '_')}-0.1.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {dist}\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text(entry_points)
    for name, text in modules.items():
        (site / f"{name}.py").write_text(text)


@pytest.fixture
def on_path(monkeypatch: pytest.MonkeyPatch):
    """Put folders on sys.path with an empty registry cache; undo both afterwards."""
    monkeypatch.setattr(registry, "_cache", {})
    added: list[str] = []

    def add(folder: Path) -> None:
        monkeypatch.syspath_prepend(str(folder))
        added.extend(p.stem for p in folder.glob("*.py"))

    yield add
    for name in added:
        sys.modules.pop(name, None)


def test_installed_plugin_is_listed_and_runs(installed: Path, on_path, tmp_path: Path, capsys) -> None:
    assert "toy-copy" not in registry.task_names()
    on_path(installed)
    assert "toy-copy" in registry.task_names()
    task = registry.get_task("toy-copy")
    assert task.name == "toy-copy" and task.has_ground_truth

    assert main(["tasks"]) == 0
    line = next(line for line in capsys.readouterr().out.splitlines() if line.startswith("toy-copy"))
    assert "predict the first token" in line and "yes" in line

    out = tmp_path / "run"
    assert main(["discover", "--task", "toy-copy", "--out", str(out), "-q"]) == 0
    assert "toy-copy (acdc): 2/" in capsys.readouterr().out
    doc = json.loads((out / "circuit.json").read_text())
    assert doc["task"] == "toy-copy"
    assert main(["evaluate", str(out / "circuit.json")]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["matches_ground_truth"] is True and summary["faithfulness"] == pytest.approx(1.0)


BROKEN = {
    "circuitdag-broken-plugin": (
        "[circuitdag.tasks]\nbroken-task = circuitdag_broken_plugin:BrokenTask\n",
        {"circuitdag_broken_plugin": "raise RuntimeError('this plugin is broken on purpose')\n"},
    ),
    "circuitdag-not-a-task": (
        "[circuitdag.tasks]\nnot-a-task = circuitdag_not_a_task:NotATask\n",
        {"circuitdag_not_a_task": "class NotATask:\n    pass\n"},
    ),
}


def test_broken_plugins_warn_with_their_distribution(on_path, tmp_path: Path, capsys) -> None:
    for dist, (eps, modules) in BROKEN.items():
        _fake_distribution(tmp_path, dist, eps, modules)
    on_path(tmp_path)
    assert {"broken-task", "not-a-task"} <= set(registry.task_names())

    with pytest.warns(RuntimeWarning) as caught:
        names = [t.name for t in registry.all_tasks()]
    messages = " | ".join(str(w.message) for w in caught)
    assert "circuitdag-broken-plugin" in messages and "broken on purpose" in messages
    assert "not-a-task" in messages and "not a circuitdag Task" in messages
    assert "broken-task" not in names and "pronoun" in names and "tracr-reverse" in names

    with pytest.warns(RuntimeWarning) as caught:
        assert main(["tasks"]) == 0
    assert "circuitdag-broken-plugin" in " | ".join(str(w.message) for w in caught)
    out = capsys.readouterr().out
    assert "pronoun" in out and "broken-task" not in out

    with pytest.raises(TaskError, match="distribution 'circuitdag-broken-plugin' failed to load"):
        registry.get_task("broken-task")
    assert main(["discover", "--task", "broken-task", "--out", str(tmp_path / "x")]) == 2
    assert "circuitdag-broken-plugin" in capsys.readouterr().err


def test_builtin_table_matches_pyproject_entry_points() -> None:
    """BUILTIN (used from an uninstalled source tree) and the entry points circuitdag's
    own distribution declares list the same tasks."""
    text = (REPO / "pyproject.toml").read_text()
    section = text.split(f'[project.entry-points."{registry.ENTRY_POINT_GROUP}"]\n', 1)[1].split("\n[", 1)[0]
    declared = dict(re.findall(r'^([\w-]+) = "([\w.:]+)"$', section, flags=re.MULTILINE))
    assert declared == registry.BUILTIN
    for name in ("pronoun", "pronoun-opposite", "induction", "induction-compiled", "an-neuron"):
        assert registry.get_task(name).name == name
