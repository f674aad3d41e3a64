"""docs/tracr.md, "Your own RASP program", run as a user would: its shell blocks in a fresh
directory, then its Python block; what they print must be what the page shows."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

DOC = Path(__file__).resolve().parents[2] / "docs" / "tracr.md"


def blocks() -> list[tuple[str, str]]:
    """The page's fenced code blocks as (language, text), in order."""
    out: list[tuple[str, str]] = []
    current: tuple[str, list[str]] | None = None
    for line in DOC.read_text().splitlines(keepends=True):
        if line.startswith("```"):
            if current is None:
                current = (line[3:].strip(), [])
            else:
                out.append((current[0], "".join(current[1])))
                current = None
        elif current is not None:
            current[1].append(line)
    return out


def shown_after(kind: str) -> list[tuple[str, str]]:
    """(code, the output block right after it) for every block in language ``kind``."""
    bs = blocks()
    return [(code, bs[i + 1][1]) for i, (lang, code) in enumerate(bs[:-1]) if lang == kind and bs[i + 1][0] == ""]


def same(printed: str, shown: str) -> None:
    """Line by line; a shown line ending in '…' (a time) only has to start the printed one."""
    got, want = printed.strip().splitlines(), shown.strip().splitlines()
    assert len(got) == len(want), printed
    for g, w in zip(got, want):
        assert g.startswith(w[:-1]) if w.endswith("…") else g == w, (g, w)


@pytest.mark.slow
def test_own_rasp_program_runs_as_written(tmp_path: Path) -> None:
    env = {"PATH": "/usr/bin:/bin", "OMP_NUM_THREADS": "1", "HOME": str(Path.home())}
    bindir = str(Path(sys.executable).parent) + "/"
    shell = shown_after("bash")
    assert len(shell) == 2
    for script, shown in shell:
        done = subprocess.run(["bash", "-euo", "pipefail", "-c", script.replace(".venv/bin/", bindir)],
                              cwd=tmp_path, capture_output=True, text=True, timeout=600, check=False, env=env)  # fmt: skip
        assert done.returncode == 0, done.stderr
        same(done.stdout, shown)
    [(code, shown)] = shown_after("python")
    done = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, timeout=600,
                          check=False, env=env)  # fmt: skip
    assert done.returncode == 0, done.stderr
    same(done.stdout, shown)
