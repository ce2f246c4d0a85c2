"""A controller database that already holds a run's data, and the check that it still does:
bad input must leave it alone."""

from __future__ import annotations

from pathlib import Path

from controller.engine.activity import ActivityRecord
from controller.store.storage import Baseline, Storage

STORED = [ActivityRecord("aa", 1, "tcp/443", 2, 20)]


def make_db(path: Path) -> Path:
    """A database at `path` in 3600 s units holding one poll (STORED)."""
    with Storage(path) as store:
        store.check_meta("time_unit_seconds", "3600.0")
        store.record_poll("s1", Baseline.zeros(4), STORED, 1)
    return path


def kept(db: Path) -> bool:
    """Whether `db` still holds exactly what `make_db` stored."""
    with Storage(db) as store:
        return store.activity() == STORED
