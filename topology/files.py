"""The JSON files of a testbed run (records, plans, reports), written so a crash never leaves half
of one."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from controller.base.fileio import write_text_atomically


def write_json_atomic(path: Path, data: Any) -> None:
    """Replace `path` with `data` as indented JSON in one rename, creating its folder if needed."""
    path.parent.mkdir(parents=True, exist_ok=True)
    write_text_atomically(path, json.dumps(data, indent=2, sort_keys=True) + "\n")
