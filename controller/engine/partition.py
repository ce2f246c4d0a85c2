"""Work split by device: fingerprints and decisions of disjoint groups of devices, computed by
any map (this process's, or a cluster's), and put back together in the order one process gives.

Every device's fingerprints depend on its own activity only (and on where the timeline ends,
which is passed along), and every decision on one fingerprint and the references, so a split
by device changes nothing in the results: `Parallel()` (one part, mapped here) is the
single-process engine (`SERIAL`), a cluster's map with more parts the distributed one.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from functools import partial
from itertools import pairwise
from typing import Any, TypeVar

import numpy as np

from controller.engine.activity import ActivityTable
from controller.engine.exporter import ExporterConfig, export_fingerprints, whole_windows
from controller.engine.fingerprints import FingerprintSet
from controller.engine.identify import Decision, References, identify

A = TypeVar("A")
R = TypeVar("R")
Mapper = Callable[[Callable[[Any], Any], Sequence[Any]], list[Any]]
"""map(function, items) → results in the items' order, wherever the function runs."""


def serial_map(function: Callable[[A], R], items: Sequence[A]) -> list[R]:
    """The map of one process."""
    return [function(item) for item in items]


@dataclass(frozen=True)
class Parallel:
    """How device-partitioned work runs: `map` over `parts` groups of devices."""

    map: Mapper = field(default=serial_map)
    parts: int = 1


SERIAL = Parallel()
"""One part, in this process: the single-process engine."""


def device_parts(table: ActivityTable, parts: int) -> list[ActivityTable]:
    """The table's rows in at most `parts` tables of consecutive device codes with about as many
    rows each (a device is never split); vocabularies are kept whole."""
    if parts <= 1 or not len(table):
        return [table]
    # Rows are sorted by device code: cut where the running row count crosses each share.
    cuts = np.searchsorted(table.device, table.device[(np.arange(1, parts) * len(table)) // parts])
    bounds = np.unique(np.concatenate([[0], cuts, [len(table)]]))
    return [_rows(table, int(lo), int(hi)) for lo, hi in pairwise(bounds.tolist())]


def _rows(table: ActivityTable, lo: int, hi: int) -> ActivityTable:
    keep = np.zeros(len(table), dtype=bool)
    keep[lo:hi] = True
    return table.where(keep)


def windows(
    activity: ActivityTable,
    config: ExporterConfig,
    whole: bool,
    captures: bool,
    parallel: Parallel = SERIAL,
) -> FingerprintSet:
    """Fingerprints of every track, computed per group of devices: one whole window per track,
    or the exporter's windows (for `captures`, each track ending with its own last activity and
    its open window exported too; otherwise every timeline ends where the whole table does)."""
    end = int(activity.unit.max()) + 1 if len(activity) else None
    job = partial(_windows_of, config=config, whole=whole, captures=captures, end_unit=end)
    sets = parallel.map(job, device_parts(activity, parallel.parts))
    return FingerprintSet.concat(sets)


def _windows_of(
    activity: ActivityTable,
    config: ExporterConfig,
    whole: bool,
    captures: bool,
    end_unit: int | None,
) -> FingerprintSet:
    if whole:
        return whole_windows(activity, config.granularity, config.threshold, config.intensity)
    if captures:
        return export_fingerprints(activity, config, own_end=True, flush=True)
    return export_fingerprints(activity, config, end_unit=end_unit)


def decisions(
    fingerprints: FingerprintSet, references: References, parallel: Parallel = SERIAL
) -> list[Decision]:
    """Decisions for every fingerprint, computed per group of devices, in the fingerprints'
    order."""
    if parallel.parts <= 1 or len(fingerprints) < 2:
        return identify(fingerprints, references)
    codes = np.unique(fingerprints.device)
    part_of = np.zeros(int(codes.max()) + 1, dtype=np.int64)
    for number, group in enumerate(np.array_split(codes, min(parallel.parts, codes.size))):
        part_of[group] = number
    rows = [
        np.flatnonzero(part_of[fingerprints.device] == n) for n in range(int(part_of.max()) + 1)
    ]
    rows = [r for r in rows if r.size]
    results = parallel.map(
        partial(identify, refs=references), [fingerprints.select(r) for r in rows]
    )
    by_row: dict[int, Decision] = {}
    for picked, found in zip(rows, results, strict=True):
        by_row.update(zip(picked.tolist(), found, strict=True))
    return [by_row[i] for i in range(len(fingerprints))]
