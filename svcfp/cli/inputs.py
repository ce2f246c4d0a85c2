"""The input flags every offline command shares (`ingest`, `enroll`, `identify`, `evaluate`),
turned into one `controller.ingest.sources.Sources`: the same names mean the same thing
everywhere."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from urllib.parse import urlsplit

from controller.base.errors import InputError
from controller.base.fileio import writable_folder
from controller.distributed.engine import DEFAULT_WORKERS, DaskEngine, DaskSettings
from controller.engine.activity import MAX_UNIT_SECONDS, MIN_UNIT_SECONDS
from controller.engine.learned import GRANULARITIES
from controller.engine.representation import DEFAULT_UNIT_SECONDS
from controller.engine.services import MAX_SERVICE_ID
from controller.ingest.files import FORMATS
from controller.ingest.ipfix_csv import parse_column_map
from controller.ingest.sources import TRACKS, Loaded, Sources
from controller.store.storage import DEFAULT_DB_TIMEOUT, is_url

# A parser or an argument group of one: both take add_argument.
Container = argparse._ActionsContainer

SERVICE_GRANULARITY_HELP = (
    "how ports group into services: 'catalogue' uses the catalogue file (or the built-in one) "
    "as written; 'ephemeral' gives every port below 49152 the devices use its own service and "
    "folds 49152-65535 into one service per protocol; 'learned' gives the most used ports "
    "(ranked by devices, then (device, unit) cells, then packets; dynamic ones included) their "
    "own service. Both learned forms read the input once more and need a port in at least two "
    "(device, unit) cells. Ports left out fall into catch-all ranges. (default: catalogue)"
)


DB_HELP = "a SQLite file or a postgresql://user@host:port/dbname URL"


def database_location(text: str) -> Path | str:
    """An argparse type: a `postgresql://` URL as given, anything else a SQLite path."""
    if not is_url(text):
        return Path(text)
    try:
        _ = urlsplit(text).port  # parsing the port checks it too
    except ValueError as exc:
        # Not the URL itself: it may hold a password.
        raise argparse.ArgumentTypeError(
            f"not a postgresql://user@host:port/dbname URL: {exc}"
        ) from None
    return text


def _db_seconds(text: str) -> float:
    return _number_in(text, 1.0, 3600.0, "a database timeout, in seconds,")


def add_db_timeout(parser: Container) -> None:
    """`--db-timeout SECONDS`, beside every `--db`."""
    parser.add_argument(
        "--db-timeout",
        type=_db_seconds,
        default=DEFAULT_DB_TIMEOUT,
        metavar="SECONDS",
        help="how long the database may take to answer (a postgresql:// server connecting, each "
        "statement; a lock another session or connection holds, SQLite's too) before the "
        "command ends with an error naming it "
        f"(default: {DEFAULT_DB_TIMEOUT:g})",
    )


def positive_seconds(text: str) -> float:
    """An argparse type: a finite, positive number of seconds."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of seconds") from None
    if not (value > 0 and value != float("inf")):
        raise argparse.ArgumentTypeError(f"{text!r}: must be a positive number of seconds")
    return value


def time_unit(text: str) -> float:
    """An argparse type: a time unit u in seconds, from a microsecond to the years 1970-2100."""
    value = positive_seconds(text)
    if not MIN_UNIT_SECONDS <= value <= MAX_UNIT_SECONDS:
        raise argparse.ArgumentTypeError(
            f"{text!r}: a time unit lies in [{MIN_UNIT_SECONDS:g}, {MAX_UNIT_SECONDS:g}] "
            "seconds (a microsecond to the years 1970-2100)"
        )
    return value


def _number_in(text: str, low: float, high: float, what: str) -> float:
    """`text` as a number in [`low`, `high`], or the argparse error naming `what` it is."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not low <= value <= high:
        raise argparse.ArgumentTypeError(f"{text!r}: {what} lies in [{low:g}, {high:g}]")
    return value


def percentile(text: str) -> float:
    """An argparse type: a percentile, a number in [0, 100]."""
    return _number_in(text, 0.0, 100.0, "a percentile")


def similarity(text: str) -> float:
    """An argparse type: a similarity threshold θ, a number in [0, 1]."""
    return _number_in(text, 0.0, 1.0, "a similarity")


def add_time_unit(parser: Container, default: float | None, note: str = "") -> None:
    """`--time-unit SECONDS`, the one name of the time unit u in every command."""
    shown = f"{default:g}" if default is not None else note
    parser.add_argument(
        "--time-unit",
        type=time_unit,
        default=default,
        metavar="SECONDS",
        help=f"time unit u in seconds (default: {shown})",
    )


def add_catalogue_arguments(parser: Container) -> None:
    """How raw ports become services: the catalogue file, its granularity, the service limit."""
    parser.add_argument(
        "--catalogue", type=Path, help="service catalogue JSON (default: the built-in one)"
    )
    parser.add_argument(
        "--service-granularity",
        choices=GRANULARITIES,
        default="catalogue",
        help=SERVICE_GRANULARITY_HELP,
    )
    parser.add_argument(
        "--max-services",
        type=int,
        default=MAX_SERVICE_ID,
        help=f"service limit of learned catalogues (default: {MAX_SERVICE_ID})",
    )


def add_input_arguments(parser: argparse.ArgumentParser, stored_activity: bool = True) -> None:
    """Raw files (positional), activity CSVs and the database as inputs, labels and tracks.

    `stored_activity` False leaves out `--activity` and `--db` (for `ingest`, whose `--db` is
    where the activity goes)."""
    parser.add_argument(
        "files",
        nargs="*",
        type=Path,
        metavar="FILE",
        help="flow records (IPFIX CSV, binary IPFIX, NetFlow v9) and captures (pcap, pcapng); "
        "a directory stands for its .pcap, .pcapng, .cap, .csv and .ipfix files, recursively",
    )
    group = parser.add_argument_group("input")
    if stored_activity:
        group.add_argument(
            "--activity",
            type=Path,
            action="append",
            default=[],
            help="activity CSV written by ingest or run --export (repeatable)",
        )
        group.add_argument(
            "--db",
            type=database_location,
            help=f"a controller database to read activity from: {DB_HELP}",
        )
        add_db_timeout(group)
    group.add_argument(
        "--input-format",
        choices=FORMATS,
        default="auto",
        help="pcap: captures (pcap, pcapng); ipfix: binary IPFIX / NetFlow v9 messages, back to "
        "back or as the UDP payloads of a capture of the exporter's traffic; ipfix-csv: IPFIX "
        "records as CSV; mudgee: MUDgee's <mac>_ipflows.csv flow rules with counters (one "
        "unit, no timestamps); auto tells files apart by their first bytes (and a CSV file's "
        "header) and takes captures for pcap (default: auto)",
    )
    group.add_argument(
        "--labels",
        type=Path,
        help="MAC labels: a 'mac,label' CSV or an IoT Sentinel style directory "
        "(<Type>/_iotdevice-mac.txt); only labelled devices count unless --all-devices",
    )
    group.add_argument(
        "--all-devices", action="store_true", help="count every source MAC, labelled or not"
    )
    group.add_argument(
        "--tracks",
        choices=TRACKS,
        default="device",
        help="device: one timeline per MAC; capture: each input file is its own track "
        "(default: device)",
    )
    group.add_argument(
        "--merge-instances",
        action="store_true",
        help="treat labels differing only by a trailing instance digit as one type "
        "(EdimaxCam1, EdimaxCam2 → EdimaxCam)",
    )
    add_time_unit(
        group,
        None,
        f"the unit of stored activity or of the references; {DEFAULT_UNIT_SECONDS:g} for raw files",
    )
    add_catalogue_arguments(group)
    group.add_argument(
        "--column-map",
        default="",
        help="IPFIX CSV only: name=column pairs mapping IANA names to this file's headers "
        "(default: none)",
    )
    group.add_argument(
        "--skip-bad-records",
        action="store_true",
        help="skip (and count) malformed records and damaged files instead of stopping",
    )


ENGINES = ("process", "dask")


def add_cluster_arguments(parser: argparse.ArgumentParser) -> None:
    """`--engine process|dask` and where the Dask cluster is."""
    group = parser.add_argument_group("engine")
    group.add_argument(
        "--engine",
        choices=ENGINES,
        default="process",
        help="process: all in this process; dask: on a Dask distributed cluster, each input "
        "file read as a task and fingerprints computed per group of devices, with the same "
        "results (default: process)",
    )
    group.add_argument(
        "--scheduler",
        metavar="ADDRESS",
        help="with --engine dask: the address of a running scheduler, e.g. tcp://host:8786 "
        "(default: a local cluster of --workers processes)",
    )
    group.add_argument(
        "--workers",
        type=int,
        default=DEFAULT_WORKERS,
        help=f"with --engine dask and no --scheduler: local worker processes "
        f"(default: {DEFAULT_WORKERS})",
    )
    group.add_argument(
        "--scratch",
        type=Path,
        help="with --engine dask: folder for the workers' Parquet activity, the same path on "
        "every worker and here (default: a temporary folder; needed with --scheduler)",
    )


@contextmanager
def engine_from_args(args: argparse.Namespace) -> Iterator[DaskEngine | None]:
    """The Dask engine the flags ask for, open for the command's duration (None: this
    process)."""
    if args.engine != "dask":
        if args.scheduler is not None or args.scratch is not None:
            raise InputError("--scheduler and --scratch go with --engine dask")
        yield None
        return
    if args.scratch is not None:
        # Before a cluster is started for nothing.
        writable_folder(args.scratch, "--scratch")
    settings = DaskSettings(args.scheduler, args.workers, scratch=args.scratch)
    with DaskEngine(settings) as engine:
        yield engine


def report_skips(command: str, loaded: Loaded) -> None:
    """Tell the user, on stderr, what was skipped as bad and how much of each file was lost."""
    for path, stats in loaded.stats.items():
        if not stats.skipped:
            continue
        lost = f", {stats.unread_bytes} bytes unreadable" if stats.unread_bytes else ""
        print(
            f"svcfp {command}: warning: {path}: {stats.skipped} skipped of {stats.records} "
            f"records{lost}",
            file=sys.stderr,
        )
        for problem in stats.problems:
            print(f"svcfp {command}: warning: skipped: {problem}", file=sys.stderr)


def read_paths(sources: Sources) -> list[Path]:
    """Every file the sources read (directories stand for their files), for `check_outputs`."""
    paths = [*sources.raw_files, *sources.activity]
    paths += [p for p in (sources.labels, sources.catalogue) if p is not None]
    if isinstance(sources.database, Path):
        paths.append(sources.database)
    return paths


def sources_from_args(args: argparse.Namespace) -> Sources:
    """The `Sources` the input flags describe."""
    if args.max_services < 1:
        raise InputError(f"--max-services {args.max_services}: must be at least 1")
    return Sources(
        files=tuple(args.files),
        activity=tuple(getattr(args, "activity", ())),
        database=getattr(args, "db", None) if hasattr(args, "activity") else None,
        db_timeout=getattr(args, "db_timeout", DEFAULT_DB_TIMEOUT),
        input_format=args.input_format,
        labels=args.labels,
        all_devices=args.all_devices,
        tracks=args.tracks,
        merge_instances=args.merge_instances,
        time_unit=args.time_unit,
        catalogue=args.catalogue,
        service_granularity=args.service_granularity,
        max_services=args.max_services,
        column_map=parse_column_map(args.column_map),
        skip_bad_records=args.skip_bad_records,
    )
