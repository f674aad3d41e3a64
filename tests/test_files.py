"""circuitdag.files: every result file is replaced whole or not at all, and a file that
cannot be read says so in one line."""

from __future__ import annotations

import errno
import os
from pathlib import Path

import pytest

from circuitdag.errors import CircuitFileError, ConfigError
from circuitdag.files import read_json, write_atomic, write_json


def test_a_failed_write_keeps_the_old_file_and_leaves_no_temporary(tmp_path: Path, monkeypatch) -> None:
    path = tmp_path / "circuit.json"
    write_json(path, {"old": 1})
    real = Path.write_text

    def full_disk(self, data, *args, **kwargs):
        real(self, data[: len(data) // 2], *args, **kwargs)  # half written, then the disk is full
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(Path, "write_text", full_disk)
    with pytest.raises(ConfigError, match=r"^cannot write .*circuit.json: No space left on device; choose another --out$"):
        write_json(path, {"new": 2}, error=ConfigError)
    monkeypatch.undo()
    assert read_json(path) == {"old": 1}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["circuit.json"]


def test_writes_create_the_directory_and_bytes_are_kept(tmp_path: Path) -> None:
    path = write_atomic(tmp_path / "a" / "b" / "x.bin", b"\x00\xff")
    assert path.read_bytes() == b"\x00\xff"
    assert write_atomic(tmp_path / "t.txt", "héllo").read_text(encoding="utf-8") == "héllo"


def test_a_directory_in_the_way_is_one_line(tmp_path: Path) -> None:
    (tmp_path / "circuit.svg").mkdir()
    with pytest.raises(CircuitFileError, match=r"^cannot write .*circuit.svg: Is a directory; choose another -o$"):
        write_atomic(tmp_path / "circuit.svg", "<svg/>", option="-o")
    assert [p.name for p in tmp_path.iterdir()] == ["circuit.svg"]


@pytest.mark.parametrize(("content", "message"), [
    (None, "cannot read"),
    (b"", "is empty"),
    (b"  \n", "is empty"),
    (b"\xff\xfe\x00", "is not JSON \\(not UTF-8 text\\); is it a circuit.json\\?"),
    (b"{not json", "is not JSON \\(Expecting property name enclosed in double quotes at line 1\\); is it a circuit.json\\?"),
    (b'{"a": "cut', "is not JSON \\(Unterminated string starting at line 1\\); is it"),  # json's msg ends in "at"
])  # fmt: skip
def test_reading_bad_files_is_one_line(tmp_path: Path, content: bytes | None, message: str) -> None:
    path = tmp_path / "circuit.json"
    if content is not None:
        path.write_bytes(content)
    with pytest.raises(CircuitFileError, match=message) as info:
        read_json(path, "a circuit.json")
    assert "\n" not in str(info.value) and str(path) in str(info.value)


def test_every_result_writer_goes_through_files() -> None:
    """No module but circuitdag.files replaces a file by hand (temp file + os.replace)."""
    root = Path(__file__).resolve().parents[1] / "circuitdag"
    by_hand = sorted(str(p.relative_to(root)) for p in root.rglob("*.py")
                     if "os.replace(" in p.read_text() and p.name != "files.py")  # fmt: skip
    assert by_hand == ["models/smollm2.py"]  # a whole converted model directory, renamed into place


@pytest.mark.parametrize(("field", "value"), [("metric_full", "abc"), ("metric_circuit", [1]), ("seed", "abc"),
                                              ("seed", 1.5), ("task", ["a"]), ("metric", 3)])  # fmt: skip
def test_a_record_field_of_the_wrong_type_is_one_line(tmp_path: Path, field: str, value: object) -> None:
    import circuitdag as cd
    from circuitdag.io import circuit_from_dict, circuit_to_dict

    model = cd.tasks.get("tracr-reverse").load_model()
    doc = circuit_to_dict(cd.discover(model, "tracr-reverse", "eap", edges=3))
    doc[field] = value
    with pytest.raises(CircuitFileError, match=f"^<dict>: {field} is .*; the file is damaged$"):
        circuit_from_dict(doc)
