"""docs/own-prompts.md, run as a user would: its shell blocks in a fresh directory, then its
Python block, and the numbers the page states checked against what they print."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

DOC = Path(__file__).resolve().parents[1] / "docs" / "own-prompts.md"


def blocks(lang: str) -> list[str]:
    """The page's fenced code blocks in language ``lang`` ("" for plain output blocks)."""
    out, current, text = [], None, DOC.read_text()
    for line in text.splitlines(keepends=True):
        if line.startswith("```"):
            if current is None:
                current = (line[3:].strip(), [])
            else:
                if current[0] == lang:
                    out.append("".join(current[1]))
                current = None
        elif current is not None:
            current[1].append(line)
    return out


@pytest.mark.slow
def test_the_page_runs_as_written(tmp_path: Path) -> None:
    bindir = str(Path(sys.executable).parent) + "/"
    outputs = []
    for script in blocks("bash"):
        done = subprocess.run(["bash", "-euo", "pipefail", "-c", script.replace(".venv/bin/", bindir)],
                              cwd=tmp_path, capture_output=True, text=True, timeout=600, check=False,
                              env={"PATH": "/usr/bin:/bin", "OMP_NUM_THREADS": "1", "HOME": str(Path.home())})  # fmt: skip
        assert done.returncode == 0, done.stderr
        outputs.append(done.stdout)
    summary = outputs[-1].splitlines()[0]
    stated = re.search(r"```\n(prompts:/…/runs/my-prompts\.jsonl .*?), \.\.\.\n```", DOC.read_text()).group(1)
    tail = stated.partition(" (acdc)")[2]
    assert summary.startswith(f"prompts:{tmp_path.resolve()}/runs/my-prompts.jsonl (acdc)")
    assert re.sub(r"; [\d.]+s$", "", tail) in summary  # every number the page states, but the time
    assert len((tmp_path / "runs" / "my-prompts.jsonl").read_text().splitlines()) == 10
    assert (tmp_path / "runs" / "mine" / "circuit.svg").exists()

    code, printed = blocks("python")[0], blocks("")[-1]
    done = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, timeout=600, check=False,
                          env={"PATH": "/usr/bin:/bin", "OMP_NUM_THREADS": "1", "HOME": str(Path.home())})  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == printed.strip()
