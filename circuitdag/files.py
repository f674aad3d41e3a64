"""Writing and reading the files circuitdag makes, with one-line errors.

Every result file (circuit.json, checkpoints, curves, reports, exports, SVG and HTML) is
written by :func:`write_atomic`: the text goes to a temporary file next to ``path``
(named for this process, so processes of one sweep never share one) and is renamed over
``path`` only when whole, so a reader (or a run killed half-way) sees the old file or the
new one, never half of one; the temporary file is removed when writing fails (a full
disk). JSON documents the user hands back (circuit.json, a curve's scores, an EAP-IG
graph) are read by :func:`read_json`.

Errors are one line naming the file, the reason and what to do; their class is the
caller's (:class:`~circuitdag.errors.CircuitFileError` by default), so a command reports
them like any other bad input.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from circuitdag.errors import CircuitDagError, CircuitFileError


def write_atomic(path: str | Path, data: str | bytes, *, option: str | None = "--out",
                 error: type[CircuitDagError] = CircuitFileError) -> Path:  # fmt: skip
    """Replace ``path`` with ``data`` (text as UTF-8) atomically, creating its directory.

    ``option``: the command-line option that chose the path, named in the error ("choose
    another --out"; None: no hint). Raises ``error`` (one line) when the file cannot be
    written: a read-only or full disk, a directory of that name, a missing permission."""
    path = Path(path)
    tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(data, str):
            tmp.write_text(data, encoding="utf-8")
        else:
            tmp.write_bytes(data)
        os.replace(tmp, path)
    except OSError as exc:
        try:
            tmp.unlink(missing_ok=True)
        except OSError:
            pass
        hint = f"; choose another {option}" if option else ""
        raise error(f"cannot write {path}: {exc.strerror or exc}{hint}") from None
    return path


def write_json(path: str | Path, doc: Any, *, indent: int | None = 1, option: str | None = "--out",
               error: type[CircuitDagError] = CircuitFileError) -> Path:  # fmt: skip
    """:func:`write_atomic` of ``doc`` as JSON (``indent`` spaces; None: one line)."""
    return write_atomic(path, json.dumps(doc, indent=indent), option=option, error=error)


def read_json(path: str | Path, what: str = "a circuitdag file",
              error: type[CircuitDagError] = CircuitFileError) -> Any:  # fmt: skip
    """The JSON document in ``path``. ``what`` names what the file should be ("a
    circuit.json"), asked back in the error. Raises ``error`` (one line) for a file that
    cannot be read, is not UTF-8 text, is empty or is not JSON."""
    path = Path(path)
    try:
        text = path.read_bytes().decode("utf-8")
    except OSError as exc:
        raise error(f"cannot read {path}: {exc.strerror or exc}") from None
    except UnicodeDecodeError:
        raise error(f"{path} is not JSON (not UTF-8 text); is it {what}?") from None
    if not text.strip():
        raise error(f"{path} is empty (a run killed before it was written whole?); is it {what}?")
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        where = f"line {exc.lineno}" if exc.msg.endswith(" at") else f"at line {exc.lineno}"  # "Unterminated string starting at"
        raise error(f"{path} is not JSON ({exc.msg} {where}); is it {what}?") from None


def read_text_lines(path: str | Path, what: str = "a text file",
                    error: type[CircuitDagError] = CircuitFileError) -> list[tuple[int, str]]:  # fmt: skip
    """The non-blank lines of ``path`` with their 1-based numbers. Raises ``error`` (one
    line) for a file that cannot be read, is not UTF-8 text or has no line."""
    path = Path(path)
    try:
        text = path.read_bytes().decode("utf-8-sig")
    except OSError as exc:
        raise error(f"cannot read {path}: {exc.strerror or exc}") from None
    except UnicodeDecodeError:
        raise error(f"{path} is not UTF-8 text; is it {what}?") from None
    lines = [(i, line) for i, line in enumerate(text.splitlines(), 1) if line.strip()]
    if not lines:
        raise error(f"{path} is empty; is it {what}?")
    return lines
