"""The `store` fixture: a fresh SQLite database in the test's temporary folder, closed after."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from controller.store.storage import Storage


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Storage]:
    opened = Storage(tmp_path / "svcfp.db")
    try:
        yield opened
    finally:
        opened.close()
