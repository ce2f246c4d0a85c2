"""Everything the engine can read, through one pipeline: activity CSVs, a controller database,
and flow records or captures in any format (`controller.ingest.files`), labelled and split into
tracks the same way for every command and the Python API.

A *track* is the timeline fingerprints are made on: a device (its MAC key), or with
`tracks="capture"` one input file of a device ("<mac>#<file>"), which is how capture data sets
such as IoT Sentinel are evaluated (each capture is its own short observation; its file is its
group for group splits).

Labels come from a `mac,label` CSV or a capture directory in the IoT Sentinel layout. With a
capture directory each capture is labelled by its type folder and counts that folder's device
only (`Labels.for_capture`). A MAC shared by two types (a hub and its sensor) has no label of its
own: its captures record different setups, so each of them becomes its own track even with
`tracks="device"`, unless `split_shared` is off (plain ingestion, which writes activity by MAC).
"""

from __future__ import annotations

import math
import os
from collections import Counter
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Literal

import numpy as np
import numpy.typing as npt

from controller.base.checks import is_decimal
from controller.base.errors import InputError
from controller.base.fileio import same_file
from controller.base.macs import mac_to_int
from controller.engine.activity import ActivityTable
from controller.engine.catalogue import Catalogue
from controller.engine.learned import FlowCells, Granularity
from controller.engine.representation import DEFAULT_UNIT_SECONDS
from controller.engine.services import MAX_SERVICE_ID
from controller.ingest.files import (
    Format,
    IngestOptions,
    IngestResult,
    catalogue_for,
    expand_paths,
    read_file,
)
from controller.ingest.flows import IngestStats, PortCounter
from controller.ingest.labels import Labels
from controller.store.storage import DEFAULT_DB_TIMEOUT, is_url, open_reader

TRACK_SEPARATOR = "#"
Tracks = Literal["device", "capture"]
TRACKS: tuple[Tracks, ...] = ("device", "capture")


@dataclass(frozen=True)
class Sources:
    """What to read and how.

    `files` are flow records and captures (a directory stands for its capture and flow files);
    `activity` activity CSVs; `database` a controller database (a SQLite path or a
    `postgresql://` URL, whose server is waited for at most `db_timeout` seconds at a time).
    `time_unit` is the unit in
    seconds (None: the unit of stored activity, or the default hour for raw files).
    `service_granularity` decides how raw files' ports group into services (see
    `controller.engine.catalogue`); `catalogue` is the catalogue file it starts from.
    `flow_cells`: also keep the raw files' records by track and ports (`Loaded.flows`), so that
    an evaluation can learn a catalogue from its training split alone.
    """

    files: tuple[Path, ...] = ()
    activity: tuple[Path, ...] = ()
    database: Path | str | None = None
    db_timeout: float = DEFAULT_DB_TIMEOUT
    input_format: Format = "auto"
    labels: Path | None = None
    all_devices: bool = False
    tracks: Tracks = "device"
    merge_instances: bool = False
    time_unit: float | None = None
    catalogue: Path | None = None
    service_granularity: Granularity = "catalogue"
    max_services: int = MAX_SERVICE_ID
    column_map: Mapping[str, str] = field(default_factory=dict)
    skip_bad_records: bool = False
    flow_cells: bool = False

    def __post_init__(self) -> None:
        if self.tracks not in TRACKS:
            raise InputError(f"tracks {self.tracks!r}: choose one of {', '.join(TRACKS)}")
        if self.time_unit is not None and not (
            math.isfinite(self.time_unit) and self.time_unit > 0
        ):
            raise InputError(f"time unit {self.time_unit}: must be a positive number of seconds")

    @property
    def is_empty(self) -> bool:
        """Whether nothing at all is to be read."""
        return not (self.files or self.activity or self.database is not None)

    @cached_property
    def raw_files(self) -> tuple[Path, ...]:
        """The flow and capture files of `files`, directories standing for theirs
        (`expand_paths`). The directories are walked once, the first time this is asked: the
        files a command checks its outputs against are the files it then reads, even when a
        directory changes in between."""
        return tuple(expand_paths(self.files))


@dataclass(frozen=True, eq=False)
class Loaded(IngestResult):
    """Activity by track, what is known about its tracks, and what reading it found.

    `stats` holds, per raw file, the records read and skipped; `labels` maps tracks to types;
    `groups` (capture tracks only) tracks to their capture; `catalogue` is the one raw files were
    attributed with (None without raw files), and `per_file` each raw file's share of `activity`
    (what storing it per source needs).
    """

    labels: Mapping[str, str] = field(default_factory=dict)
    groups: Mapping[str, str] | None = None
    name: str = "inputs"
    catalogue: Catalogue | None = None
    per_file: Mapping[Path, ActivityTable] = field(default_factory=dict)
    flows: FlowCells | None = None


def mac_of(track: str) -> str:
    """The MAC device key of a track key ("<mac>#<capture>" or just "<mac>")."""
    return track.split(TRACK_SEPARATOR, 1)[0]


@dataclass(frozen=True, eq=False)
class FileJob:
    """One raw file to read, with everything `read_file` takes: a task of its own."""

    path: Path
    catalogue: Catalogue
    unit_seconds: float
    devices: npt.NDArray[np.uint64] | None
    options: IngestOptions

    def read(self) -> tuple[ActivityTable, IngestStats]:
        """The file's activity and what reading it found."""
        return read_file(self.path, self.catalogue, self.unit_seconds, self.devices, self.options)


FileResult = tuple[ActivityTable, IngestStats] | InputError
FileReader = Callable[[Sequence[FileJob]], Sequence[FileResult]]
"""Reads every job, in any order or place, and answers in the jobs' order: each file's activity,
or the InputError that says why it cannot be read."""


def read_serially(jobs: Sequence[FileJob]) -> list[FileResult]:
    """Every file in turn, in this process; the first unreadable one ends the reading unless
    bad files are to be skipped."""
    results: list[FileResult] = []
    for job in jobs:
        try:
            results.append(job.read())
        except InputError as exc:
            results.append(exc)
            if not job.options.skip_bad_records:
                break
    return results


def load(
    sources: Sources,
    need_labels: bool = False,
    split_shared: bool = True,
    reader: FileReader = read_serially,
) -> Loaded:
    """Read `sources` into one activity table keyed by track, with the tracks' labels; raw
    files are read by `reader` (in this process by default, or as a cluster's tasks)."""
    if sources.is_empty:
        raise InputError("no input: give flow or capture files, activity CSVs or a database")
    if need_labels and sources.labels is None:
        raise InputError("labels needed: give a mac,label CSV or a capture directory")
    known = Labels.load(sources.labels) if sources.labels is not None else None
    by_mac: Mapping[str, str] = known.by_mac if known is not None else {}
    parts: list[tuple[str, ActivityTable, Mapping[str, str], Path | None]] = []
    for path in sources.activity:
        parts.append((path.stem, ActivityTable.from_csv(path), by_mac, None))
    if sources.database is not None:
        parts.append(
            (
                database_name(sources.database),
                read_database(sources.database, sources.db_timeout),
                by_mac,
                None,
            )
        )
    raw = list(sources.raw_files)
    unit = sources.time_unit
    catalogue = None
    stats: dict[Path, IngestStats] = {}
    if raw:
        unit = DEFAULT_UNIT_SECONDS if unit is None else unit
        options = IngestOptions(
            fmt=sources.input_format,
            labels=known,
            all_devices=sources.all_devices,
            skip_bad_records=sources.skip_bad_records,
            column_map=sources.column_map,
        )
        catalogue = catalogue_for(
            sources.service_granularity,
            raw,
            sources.catalogue,
            sources.max_services,
            options,
            unit,
        )
        tags = _tags(raw, sources.files)
        jobs = []
        for path in raw:
            in_capture = known.for_capture(path) if known is not None else {}
            counted = None
            if known is not None and not sources.all_devices:
                counted = np.array(sorted(mac_to_int(m) for m in in_capture), dtype=np.uint64)
            jobs.append(FileJob(path, catalogue, unit, counted, options))
        # Not strict: a reader stops at the first unreadable file unless bad files are skipped.
        for job, result in zip(jobs, reader(jobs), strict=False):
            path = job.path
            if isinstance(result, InputError):
                # A file that cannot be read at all is one bad input among many, when asked.
                if not sources.skip_bad_records:
                    raise result
                stats[path] = IngestStats()
                stats[path].skip(f"{result}; the whole file was left out", path.stat().st_size)
                continue
            table, stats[path] = result
            in_capture = known.for_capture(path) if known is not None else {}
            parts.append((tags[path], table, in_capture, path))
    if not parts:
        raise InputError("no input could be read: every file was left out as bad")
    if unit is None:
        # Stored activity keeps its own unit unless another one is asked for.
        unit = parts[0][1].unit_seconds
    tables = []
    cells: list[FlowCells] = []
    per_file: dict[Path, ActivityTable] = {}
    labels: dict[str, str] = {}
    shared = known.shared if known is not None and split_shared else {}
    for tag, table, labels_here, origin in parts:
        if not math.isclose(table.unit_seconds, unit):
            table = table.with_unit_seconds(unit)
        macs = None if sources.tracks == "capture" else shared
        if macs is None or macs:
            table = table.renamed(_retag(table.devices, tag, macs))
        tables.append(table)
        if origin is not None:
            per_file[origin] = table
            if sources.flow_cells:
                cells.append(_flow_cells(origin, unit, options, labels_here, tag, macs, sources))
        labels.update(
            {d: labels_here[mac_of(d)] for d in table.used_devices() if mac_of(d) in labels_here}
        )
    activity = ActivityTable.concat(tables)
    if sources.merge_instances:
        merged = merge_instances(set(labels.values()))
        labels = {track: merged[label] for track, label in labels.items()}
    groups = None
    if sources.tracks == "capture":
        groups = {d: d.split(TRACK_SEPARATOR, 1)[1] for d in activity.devices}
    name = parts[0][0] if len(parts) == 1 else f"{len(parts)} inputs"
    flows = FlowCells.concat(cells) if cells and len(cells) == len(parts) else None
    return Loaded(activity, stats, labels, groups, name, catalogue, per_file, flows)


def _flow_cells(
    path: Path,
    unit: float,
    options: IngestOptions,
    in_capture: Mapping[str, str],
    tag: str,
    macs: Collection[str] | None,
    sources: Sources,
) -> FlowCells:
    """One raw file's records by track and ports, its tracks named as its activity's are."""
    counted = None
    if options.labels is not None and not sources.all_devices:
        counted = np.array(sorted(mac_to_int(m) for m in in_capture), dtype=np.uint64)
    counter = PortCounter(counted, unit)
    read_file(path, Catalogue.default(), unit, counted, options, counter)
    found = counter.cells()
    return (
        found if macs is not None and not macs else found.renamed(_retag(found.tracks, tag, macs))
    )


def read_database(location: Path | str, db_timeout: float = DEFAULT_DB_TIMEOUT) -> ActivityTable:
    """The activity a controller (or `svcfp ingest --db`) stored at `location`, without the
    hosts labelled `infrastructure` (the controller does not identify them either)."""
    if not is_url(location) and not Path(location).is_file():
        raise InputError(f"{location}: no such database")
    # Only read: nothing is created or migrated in a file (an empty one is refused).
    with open_reader(location, db_timeout) as storage:
        table = storage.activity_table()
        infrastructure = {
            row.mac for row in storage.devices(every_scope=True) if row.infrastructure
        }
    return table.without(infrastructure)


def database_name(location: Path | str) -> str:
    """A short name of a database: its file's stem, or the database name of a URL."""
    if is_url(location):
        return str(location).rsplit("/", 1)[-1].split("?", 1)[0] or "postgresql"
    return Path(location).stem


def merge_instances(types: set[str]) -> dict[str, str]:
    """Type names → merged names, where names that differ only by one trailing instance digit
    are one type: EdimaxCam1 and EdimaxCam2 → EdimaxCam; WeMoSwitch and WeMoSwitch2 →
    WeMoSwitch. A name whose shortened form matches nothing else is kept (iKettle2)."""
    stems: dict[str, list[str]] = {}
    for name in types:
        stem = name[:-1] if is_decimal(name[-1:]) else name
        stems.setdefault(stem, []).append(name)
    merged = {name: name for name in types}
    for stem, names in stems.items():
        if len(names) > 1 or (stem in types and stem not in names):
            for name in names:
                merged[name] = stem
    return merged


def _retag(devices: Sequence[str], tag: str, macs: Collection[str] | None = None) -> list[str]:
    """Tracks of one input file: its devices (only those in `macs`, when given) keyed
    "<mac>#<tag>"."""
    return [f"{d}{TRACK_SEPARATOR}{tag}" if macs is None or d in macs else d for d in devices]


def _tag(path: Path, roots: Sequence[Path]) -> str:
    """A file's name relative to the directory it was found in (or its stem)."""
    for root in roots:
        if root.is_dir() and path.is_relative_to(root):
            return str(path.relative_to(root).with_suffix(""))
    return path.stem


def _tags(paths: Sequence[Path], roots: Sequence[Path]) -> dict[Path, str]:
    """Each file's track name (`_tag`), unique: files whose names clash (day1/cap.pcap and
    day2/cap.pcap, or x.pcap beside x.pcapng) are named from the folder they share, with their
    suffix where that is what tells them apart."""
    tags = {path: _tag(path, roots) for path in paths}
    counts = Counter(tags.values())
    clash = [path for path in paths if counts[tags[path]] > 1]
    if not clash:
        return tags
    real = {path: same_file(path) for path in clash}
    base = Path(os.path.commonpath([str(r.parent) for r in real.values()]))
    for path in clash:
        tags[path] = str(real[path].relative_to(base).with_suffix(""))
    counts = Counter(tags.values())
    for path in clash:
        if counts[tags[path]] > 1:
            tags[path] = str(real[path].relative_to(base))
    return tags
