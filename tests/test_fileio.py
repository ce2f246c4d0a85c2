from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from controller.base.errors import InputError
from controller.base.fileio import (
    listed,
    open_atomically,
    read_json,
    replace_atomically,
    write_text_atomically,
)


def _leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.startswith("."))


def test_atomic_writes_replace_whole_files_with_the_usual_permissions(tmp_path: Path) -> None:
    path = tmp_path / "out.txt"
    path.write_text("old\n")
    write_text_atomically(path, "new ✓\n")
    assert path.read_text(encoding="utf-8") == "new ✓\n"
    umask = os.umask(0)
    os.umask(umask)
    assert stat.S_IMODE(path.stat().st_mode) == 0o666 & ~umask
    with open_atomically(path, newline="") as handle:
        handle.write("a\r\nb\n")
    assert path.read_bytes() == b"a\r\nb\n"
    replace_atomically(path, lambda tmp: tmp.write_bytes(b"\x00\x01"))
    assert path.read_bytes() == b"\x00\x01"
    assert _leftovers(tmp_path) == []


def test_a_failed_write_keeps_the_old_file_and_leaves_nothing_behind(tmp_path: Path) -> None:
    path = tmp_path / "out.txt"
    path.write_text("old\n")
    with pytest.raises(RuntimeError, match="disk on fire"), open_atomically(path) as handle:
        handle.write("half of the new")
        raise RuntimeError("disk on fire")
    assert path.read_text() == "old\n"

    def fail(tmp: Path) -> None:
        tmp.write_text("half")
        raise OSError("no space left")

    with pytest.raises(OSError, match="no space left"):
        replace_atomically(path, fail)
    assert path.read_text() == "old\n"
    assert _leftovers(tmp_path) == []


def test_json_errors_name_the_file_and_line(tmp_path: Path) -> None:
    path = tmp_path / "doc.json"
    path.write_text('{"items": [1, 2]}')
    assert listed(read_json(path, "items"), "items", str(path)) == [1, 2]
    with pytest.raises(InputError, match=r'doc\.json: expected an object with a "things" list'):
        listed(read_json(path, "things"), "things", str(path))
    path.write_text('{\n "items": [1,\n}')
    with pytest.raises(InputError, match=r"doc\.json: line 3: not JSON: "):
        read_json(path, "items")
    with pytest.raises(InputError, match=r"missing\.json: cannot read settings: No such file"):
        read_json(tmp_path / "missing.json", "settings")
    path.write_bytes(b'{"items": "caf\xe9"}')  # Latin-1, not UTF-8
    with pytest.raises(
        InputError, match=r"doc\.json: cannot read items: not UTF-8 text \(byte 0xe9 at offset 14\)"
    ):
        read_json(path, "items")
    with pytest.raises(InputError, match=r": cannot read settings: Is a directory"):
        read_json(tmp_path, "settings")


def test_writes_where_no_file_can_go_are_named_errors(tmp_path: Path) -> None:
    folder = tmp_path / "taken"
    folder.mkdir()
    (folder / "inside.txt").write_text("kept")
    with pytest.raises(InputError, match=r"taken: cannot write a file there: it is a directory"):
        write_text_atomically(folder, "new")
    assert (folder / "inside.txt").read_text() == "kept"
    with pytest.raises(
        InputError, match=r"missing/out.txt: cannot write: No such file or directory \(.*missing\)"
    ):
        write_text_atomically(tmp_path / "missing" / "out.txt", "new")
    assert _leftovers(tmp_path) == [] and sorted(p.name for p in tmp_path.iterdir()) == ["taken"]
    nested = tmp_path / "deep.json"
    nested.write_text("[" * 100_000 + "]" * 100_000)
    with pytest.raises(InputError, match=r"deep.json: JSON nested too deeply to read"):
        read_json(nested, "items")
