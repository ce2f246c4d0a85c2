"""How the readers' tests take a damaged input: refused whole, naming the damage, then read
with bad records skipped."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from controller.base.errors import InputError
from controller.engine.activity import ActivityTable
from controller.engine.catalogue import Catalogue
from controller.ingest.flows import IngestStats

Reader = Callable[..., tuple[ActivityTable, IngestStats]]


def refused_then_skipped(
    read: Reader, path: Path, match: str, unit: float
) -> tuple[ActivityTable, IngestStats]:
    """`read` refuses `path` with an error `match` finds; with bad records skipped it reads
    what is left (in units of `unit` seconds), and that is returned."""
    with pytest.raises(InputError, match=match):
        read(path, Catalogue.default())
    return read(path, Catalogue.default(), unit, skip_bad_records=True)
