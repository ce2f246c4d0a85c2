"""How the tests see which folders a command listed: every `os.scandir` call counted by folder."""

from __future__ import annotations

import os
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest


def count_listings(monkeypatch: pytest.MonkeyPatch) -> Counter[Path]:
    """From now on until the test ends, each folder `os.scandir` lists is counted here."""
    listed: Counter[Path] = Counter()
    scandir = os.scandir

    def counted(path: str) -> Iterator[os.DirEntry[str]]:
        listed[Path(path)] += 1
        return scandir(path)

    monkeypatch.setattr(os, "scandir", counted)
    return listed
