"""Ingest any mix of flow and capture files into one activity table.

Formats: `pcap` (pcap or pcapng), `ipfix` (binary IPFIX / NetFlow v9 messages), `ipfix-csv`
(IPFIX CSV), `mudgee` (MUDgee's per-device flow rules with counters); `auto` tells them apart by
their first bytes (and a CSV file's header).
"""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import numpy.typing as npt

from controller.base.errors import InputError
from controller.base.fileio import FolderLister, same_file
from controller.base.pcapfile import CAPTURE_MAGICS
from controller.engine.activity import ActivityTable
from controller.engine.catalogue import Catalogue
from controller.engine.learned import for_granularity
from controller.engine.services import MAX_SERVICE_ID
from controller.ingest.flows import IngestStats, PortCounter
from controller.ingest.ipfix_csv import read_ipfix_csv
from controller.ingest.ipfix_file import read_ipfix
from controller.ingest.labels import Labels
from controller.ingest.mudgee import read_mudgee
from controller.ingest.pcap import read_pcap
from controller.mud.flows import is_flows_header

Format = Literal["auto", "ipfix-csv", "ipfix", "pcap", "mudgee"]
FORMATS: tuple[Format, ...] = ("auto", "ipfix-csv", "ipfix", "pcap", "mudgee")

DIRECTORY_SUFFIXES = {".pcap", ".pcapng", ".cap", ".csv", ".ipfix"}


@dataclass(frozen=True)
class IngestOptions:
    """How files are read: their format, which devices count, and what bad records do."""

    fmt: Format = "auto"
    labels: Labels | None = None
    all_devices: bool = False
    skip_bad_records: bool = False
    column_map: Mapping[str, str] | None = None

    def counted_devices(self) -> npt.NDArray[np.uint64] | None:
        """The MACs whose traffic counts: the labelled ones, or every MAC (None)."""
        if self.labels is None or self.all_devices:
            return None
        return self.labels.mac_ints()


@dataclass(frozen=True, eq=False)
class IngestResult:
    """The activity of all files and, per file, what was read and skipped."""

    activity: ActivityTable
    stats: Mapping[Path, IngestStats]

    @property
    def records(self) -> int:
        """Records (flows or packets) read over all files."""
        return sum(s.records for s in self.stats.values())

    @property
    def skipped(self) -> int:
        """Records skipped over all files."""
        return sum(s.skipped for s in self.stats.values())


def expand_paths(
    paths: Sequence[Path], suffixes: Collection[str] = DIRECTORY_SUFFIXES
) -> list[Path]:
    """Files as given; a directory stands for its files with one of `suffixes` (by default
    every capture and flow file), recursively. A path that does not exist is an error. A file
    named twice (or also found in a directory given) comes once, where it first came."""
    found: list[Path] = []
    lister = FolderLister(suffixes)
    for path in map(Path, paths):
        if path.is_dir():
            inside = lister.files_below(path)
            if not inside:
                raise InputError(
                    f"{path}: no {', '.join(sorted(suffixes))} files in this directory"
                )
            found.extend(inside)
        elif path.exists():
            found.append(path)
        else:
            raise InputError(f"{path}: no such file or directory")
    seen: set[Path] = set()
    once = []
    for path in found:
        key = same_file(path)
        if key not in seen:
            seen.add(key)
            once.append(path)
    return once


def detect_format(path: Path) -> Format:
    """`pcap`, `ipfix`, `mudgee` or `ipfix-csv` from the file's first bytes (a CSV file's
    header line tells MUDgee flows from IPFIX records)."""
    try:
        with Path(path).open("rb") as handle:
            start = handle.read(4096)
    except OSError as exc:
        raise InputError(f"{path}: cannot read: {exc.strerror}") from exc
    if not start:
        raise InputError(f"{path}: empty file")
    # The magic first: a pcapng file begins with a newline byte (0x0a0d0d0a).
    if start[:4] in CAPTURE_MAGICS:
        return "pcap"
    # A CSV file saved with a byte-order mark is told by what follows it.
    start = start.removeprefix(b"\xef\xbb\xbf")
    head = start[:4]
    first_line = start.split(b"\n", 1)[0]
    if head[:2] in (b"\x00\x0a", b"\x00\x09"):
        return "ipfix"
    if head and all(32 <= b < 127 or b in (9, 10, 13) for b in head):
        text = first_line.decode("ascii", errors="replace")
        if is_flows_header(text):
            return "mudgee"
        if text.startswith("srcMac,dstMac,"):
            raise InputError(
                f"{path}: MUDgee's list of rules, without packet counters: it holds no "
                "activity (its <mac>_ipflows.csv beside it does)"
            )
        return "ipfix-csv"
    raise InputError(
        f"{path}: cannot tell the format (first bytes {head.hex()}); use --input-format"
    )


def read_file(
    path: Path,
    catalogue: Catalogue,
    unit_seconds: float,
    devices: npt.NDArray[np.uint64] | None,
    options: IngestOptions = IngestOptions(),
    ports: PortCounter | None = None,
) -> tuple[ActivityTable, IngestStats]:
    """Activity of one flow or capture file in the format `options` names (or the one its first
    bytes show); `devices` (48-bit MACs, None for all) are the devices that count."""
    fmt = options.fmt
    if fmt not in FORMATS:
        raise InputError(f"unknown format {fmt!r}; choose one of {', '.join(FORMATS)}")
    kind = detect_format(path) if fmt == "auto" else fmt
    skip = options.skip_bad_records
    if kind == "pcap":
        return read_pcap(path, catalogue, unit_seconds, devices, skip, ports=ports)
    if kind == "ipfix":
        return read_ipfix(path, catalogue, unit_seconds, devices, skip, ports=ports)
    if kind == "mudgee":
        return read_mudgee(path, catalogue, unit_seconds, devices)
    return read_ipfix_csv(
        path, catalogue, unit_seconds, devices, options.column_map, skip, ports=ports
    )


def ingest_files(
    paths: Sequence[Path],
    catalogue: Catalogue,
    unit_seconds: float = 3600.0,
    options: IngestOptions = IngestOptions(),
    ports: PortCounter | None = None,
) -> IngestResult:
    """Activity of every file; only labelled devices count unless `all_devices` (or no labels).

    `ports`, when given, also collects the counted devices' service-port usage.
    """
    tables: list[ActivityTable] = []
    stats: dict[Path, IngestStats] = {}
    devices = options.counted_devices()
    for path in expand_paths(paths):
        table, stats[path] = read_file(path, catalogue, unit_seconds, devices, options, ports)
        tables.append(table)
    if not tables:
        return IngestResult(ActivityTable.empty(unit_seconds, services=catalogue.names), stats)
    return IngestResult(ActivityTable.concat(tables), stats)


def catalogue_for(
    granularity: str,
    paths: Sequence[Path],
    catalogue_path: Path | None = None,
    limit: int = MAX_SERVICE_ID,
    options: IngestOptions = IngestOptions(),
    unit_seconds: float = 3600.0,
) -> Catalogue:
    """The catalogue of a granularity; `ephemeral` and `learned` first read `paths` once to
    learn which service ports the counted devices use."""
    if granularity == "catalogue":
        return for_granularity("catalogue", catalogue_path, limit=limit)
    counter = PortCounter(options.counted_devices(), unit_seconds)
    ingest_files(paths, Catalogue.default(), options=options, ports=counter)
    return for_granularity(granularity, catalogue_path, counter.usage(), limit)
