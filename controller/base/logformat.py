"""Log lines as text or as JSON, with the same fields everywhere.

The project's log messages are `event=NAME key=value ...`; as JSON each line is one object with
`time` (UTC, ISO 8601), `level`, `logger`, `event` (null for a line without one), `message`, and
every `key=value` of the message as a field of its own (numbers as numbers; a value written as
JSON, e.g. a quoted string or an object, as that JSON), so log pipelines filter on
fields rather than parse text.
"""

from __future__ import annotations

import contextlib
import json
import logging
import re
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Literal

LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
LogFormat = Literal["text", "json"]
LOG_FORMATS: tuple[LogFormat, ...] = ("text", "json")
# A field starts a word: a lowercase name, "=", then its value.
_FIELD = re.compile(r"(?:^|(?<=\s))([a-z][a-z0-9_]*)=")
# Fields every JSON line has; a message's own fields of these names are kept under "field_".
RESERVED = frozenset({"time", "level", "logger", "event", "message", "exception"})
_DECODER = json.JSONDecoder()


def _value(text: str) -> Any:
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            continue
    return text


def message_fields(message: str) -> dict[str, Any]:
    """The `key=value` fields of a log message, in order (a later repeat wins)."""
    fields: dict[str, Any] = {}
    position = 0
    while True:
        match = _FIELD.search(message, position)
        if match is None:
            return fields
        start = match.end()
        if start < len(message) and message[start] in '{["':
            try:
                value, end = _DECODER.raw_decode(message, start)
            except json.JSONDecodeError:
                value, end = None, -1
            if end != -1:
                fields[match.group(1)] = value
                position = end
                continue
        following = _FIELD.search(message, start)
        end = len(message) if following is None else following.start()
        segment = message[start:end].rstrip()
        first = segment.split(" ", 1)[0]
        # A value runs to the next field, unless its first word ends a clause ("mac=...: more
        # than 8 new MACs"): then it is that word.
        raw = first.rstrip(":,;") if first.endswith((":", ",", ";")) else segment
        fields[match.group(1)] = _value(raw)
        position = end


class JsonFormatter(logging.Formatter):
    """One JSON object per record."""

    def format(self, record: logging.LogRecord) -> str:
        """The record as a JSON line."""
        message = record.getMessage()
        seconds = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
        line: dict[str, Any] = {
            "time": f"{seconds}.{int(record.msecs):03d}Z",
            "level": record.levelname,
            "logger": record.name,
            "event": None,
            "message": message,
        }
        for key, value in message_fields(message).items():
            if key == "event":
                line["event"] = value
            else:
                line[f"field_{key}" if key in RESERVED else key] = value
        if record.exc_info:
            line["exception"] = self.formatException(record.exc_info)
        return json.dumps(line, default=str)


class _Handler(logging.StreamHandler):  # type: ignore[type-arg]
    """The handler `configure_logging` installs (and may replace or re-format later)."""


def configure_logging(level: str = "INFO", log_format: LogFormat = "text") -> None:
    """Log to standard error at `level`, as text or JSON lines.

    Does nothing when something else already handles the root logger (a test runner's capture);
    a handler this function installed before is replaced.
    """
    root = logging.getLogger()
    ours = [h for h in root.handlers if isinstance(h, _Handler)]
    if root.handlers and not ours:
        return
    for old in ours:
        root.removeHandler(old)
    handler = _Handler()
    handler.setFormatter(JsonFormatter() if log_format == "json" else logging.Formatter(LOG_FORMAT))
    root.addHandler(handler)
    root.setLevel(getattr(logging, level))


@contextlib.contextmanager
def logging_to(path: Path) -> Iterator[None]:
    """While inside, what `configure_logging` sends to standard error goes to the file `path`
    instead (a terminal that shows a live table); others' handlers are left alone."""
    root = logging.getLogger()
    ours = [h for h in root.handlers if isinstance(h, _Handler)]
    if not ours:
        yield
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    handler = logging.FileHandler(path, encoding="utf-8")
    handler.setFormatter(ours[0].formatter)
    for old in ours:
        root.removeHandler(old)
    root.addHandler(handler)
    try:
        yield
    finally:
        root.removeHandler(handler)
        handler.close()
        for old in ours:
            root.addHandler(old)
