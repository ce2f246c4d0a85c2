"""The `store` fixture: a fresh SQLite database in the test's temporary folder, closed after;
and `db`: the path of a controller database that already holds one poll."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from controller.store.storage import Storage
from tests.support.database import make_db


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Storage]:
    opened = Storage(tmp_path / "svcfp.db")
    try:
        yield opened
    finally:
        opened.close()


@pytest.fixture
def db(tmp_path: Path) -> Path:
    return make_db(tmp_path / "svcfp.db")
