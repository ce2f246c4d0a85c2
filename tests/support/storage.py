"""The `store` fixture: a fresh SQLite database in the test's temporary folder, closed after;
and `db`: the path of a controller database that already holds one poll."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from controller.engine.activity import ActivityRecord
from controller.store.storage import Baseline, Storage

# What the `db` fixture's database holds: a run's data that bad input must leave alone.
STORED = [ActivityRecord("aa", 1, "tcp/443", 2, 20)]


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Storage]:
    opened = Storage(tmp_path / "svcfp.db")
    try:
        yield opened
    finally:
        opened.close()


@pytest.fixture
def db(tmp_path: Path) -> Path:
    path = tmp_path / "svcfp.db"
    with Storage(path) as store:
        store.check_meta("time_unit_seconds", "3600.0")
        store.record_poll("s1", Baseline.zeros(4), STORED, 1)
    return path


def kept(db: Path) -> bool:
    """Whether `db` still holds exactly what the `db` fixture stored."""
    with Storage(db) as store:
        return store.activity() == STORED
