"""Whole files read and written safely: JSON documents whose errors name the file, and writes that
never leave half a file behind (a temporary file beside the target, renamed over it when done)."""

from __future__ import annotations

import csv
import json
import os
import tempfile
from collections.abc import Callable, Collection, Iterable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TextIO

from controller.base.errors import InputError


def read_text(path: Path, what: str) -> str:
    """The text of `path`; an `InputError` naming the file and what it should hold if unreadable."""
    try:
        return Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise InputError(f"{path}: cannot read {what}: {exc.strerror}") from exc
    except UnicodeDecodeError as exc:
        raise not_utf8(path, what, exc, at=exc.start) from None


def not_utf8(path: Path, what: str, exc: UnicodeDecodeError, at: int | None = None) -> InputError:
    """The error of `path` holding bytes that are not UTF-8 (`at`: their offset in the file,
    where the reader knows it; a reader of a stream only knows the byte)."""
    where = "" if at is None else f" at offset {at}"
    return InputError(
        f"{path}: cannot read {what}: not UTF-8 text (byte 0x{exc.object[exc.start]:02x}{where})"
    )


def parse_json(text: str, source: str) -> Any:
    """Parse a JSON document; an `InputError` naming `source` and the line when it is not JSON."""
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise InputError(f"{source}: line {exc.lineno}: not JSON: {exc.msg}") from None
    except RecursionError:
        raise InputError(f"{source}: JSON nested too deeply to read") from None


def read_json(path: Path, what: str) -> Any:
    """The JSON document in `path` (see `read_text` and `parse_json` for the errors)."""
    return parse_json(read_text(path, what), str(path))


@contextmanager
def _replacing(path: Path) -> Iterator[Path]:
    """A temporary path beside `path`, renamed over it when the block ends without error."""
    path = Path(path)
    if path.is_dir():
        raise InputError(f"{path}: cannot write a file there: it is a directory")
    try:
        fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    except OSError as exc:
        raise InputError(f"{path}: cannot write: {exc.strerror} ({path.parent})") from exc
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        yield tmp
        # mkstemp makes the file private to its owner; the result should look like any new file.
        umask = os.umask(0)
        os.umask(umask)
        tmp.chmod(0o666 & ~umask)
        try:
            tmp.replace(path)
        except OSError as exc:
            raise InputError(f"{path}: cannot write: {exc.strerror}") from exc
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def check_writable(path: Path, what: str) -> None:
    """Refuse, before any work is done, a `path` that cannot be written: a folder stands there,
    its folder is missing, not a folder, or does not let us create the temporary file a write
    goes through."""
    if Path(path).is_dir():
        raise InputError(f"{what} {path}: cannot write a file there: it is a directory")
    folder = Path(path).parent
    if not folder.is_dir():
        raise InputError(f"{what} {path}: folder {folder} does not exist")
    try:
        fd, probe = tempfile.mkstemp(prefix=f".{Path(path).name}.", suffix=".probe", dir=folder)
    except OSError as exc:
        raise InputError(f"{what} {path}: cannot write there: {exc.strerror}") from exc
    os.close(fd)
    Path(probe).unlink()


def check_outputs(outputs: Mapping[str, Path | None], inputs: Iterable[Path] = ()) -> None:
    """Refuse, before any work is done, outputs (flag → path) that cannot be written (see
    `check_writable`), that name one file twice, or that name a file the command reads: writing
    it would replace the input."""
    given = {flag: Path(path) for flag, path in outputs.items() if path is not None}
    for flag, path in given.items():
        check_writable(path, flag)
    read = {same_file(p): p for p in inputs}
    seen: dict[Path, str] = {}
    for flag, path in given.items():
        key = same_file(path)
        if key in seen:
            raise InputError(f"{flag} {path}: the same file as {seen[key]}")
        if key in read:
            raise InputError(f"{flag} {path}: also an input of this command; writing it would "
                             "replace what is read")  # fmt: skip
        seen[key] = flag


def writable_folder(folder: Path, what: str) -> None:
    """Make `folder` (and its parents) now, before the work whose files go there, and refuse it
    when it cannot be made or written."""
    try:
        Path(folder).mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise InputError(f"{what} {folder}: cannot make the folder: {exc.strerror}") from exc
    check_writable(Path(folder) / ".probe", what)


def same_file(path: Path) -> Path:
    """`path` as one name per file (symbolic links and relative parts resolved)."""
    return Path(os.path.realpath(path))


class FolderLister:
    """The files below folders with one of `suffixes` (any case), each folder listed once with
    one `os.scandir` however often it is reached (named twice, or inside another one named);
    folders behind a symbolic link are not entered (as `Path.rglob`, which lists every folder
    twice)."""

    def __init__(self, suffixes: Collection[str]) -> None:
        self.suffixes = frozenset(s.lower() for s in suffixes)
        self._listed: dict[Path, tuple[list[Path], list[Path]]] = {}

    def files_below(self, folder: Path) -> list[Path]:
        """The files with a wanted suffix below `folder`, sorted."""
        found: list[Path] = []
        pending = [Path(folder)]
        while pending:
            current = pending.pop()
            key = same_file(current)
            if key not in self._listed:
                self._listed[key] = self._listing(current)
            files, folders = self._listed[key]
            found.extend(files)
            pending.extend(folders)
        return sorted(found)

    def _listing(self, folder: Path) -> tuple[list[Path], list[Path]]:
        """The files of `folder` with a wanted suffix and its folders, from one listing; what
        cannot be looked at (an unreadable folder, an entry gone meanwhile) holds no file."""
        files: list[Path] = []
        folders: list[Path] = []
        try:
            with os.scandir(folder) as entries:
                for entry in entries:
                    path = folder / entry.name
                    try:
                        if entry.is_dir():
                            if not entry.is_symlink():
                                folders.append(path)
                        elif path.suffix.lower() in self.suffixes and entry.is_file():
                            files.append(path)
                    except OSError:
                        continue
        except OSError:
            pass
        return files, folders


def replace_atomically(path: Path, write: Callable[[Path], object]) -> None:
    """Call `write` on a temporary path beside `path`, then rename it over `path`: readers see the
    old file or the whole new one, and a failed write leaves the old file untouched."""
    with _replacing(path) as tmp:
        write(tmp)


@contextmanager
def open_atomically(path: Path, newline: str | None = None) -> Iterator[TextIO]:
    """A UTF-8 text handle whose content replaces `path` when the block ends without error."""
    with _replacing(path) as tmp, tmp.open("w", encoding="utf-8", newline=newline) as handle:
        yield handle


def write_text_atomically(path: Path, text: str) -> None:
    """Replace `path` with `text` (UTF-8) in one rename."""
    with open_atomically(path) as handle:
        handle.write(text)


def csv_rows(path: Path, lines: Iterable[str]) -> Iterator[list[str]]:
    """The rows of the CSV text `lines` read from `path`; what the csv module cannot split into
    fields (a field past its size limit) is an `InputError` naming the file and the line."""
    reader = csv.reader(lines)
    try:
        yield from reader
    except csv.Error as exc:
        raise InputError(f"{path}: line {reader.line_num}: not CSV: {exc}") from None


def listed(document: Any, key: str, source: str) -> list[Any]:
    """The `key` list of a JSON object, the usual shape of the project's JSON files."""
    if not isinstance(document, dict) or not isinstance(document.get(key), list):
        raise InputError(f'{source}: expected an object with a "{key}" list')
    entries: list[Any] = document[key]
    return entries
