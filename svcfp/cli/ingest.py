"""`svcfp ingest` (flow records and captures → activity) and `svcfp synth` (synthetic traffic)."""

from __future__ import annotations

import argparse
import csv
import logging
from pathlib import Path

from controller.base.errors import InputError
from controller.base.fileio import open_atomically
from controller.engine.activity import ActivityTable
from controller.engine.catalogue import GRANULARITIES, MAX_SERVICE_ID, for_granularity
from controller.ingest.files import FORMATS, IngestOptions, catalogue_for, ingest_files
from controller.ingest.ipfix_csv import parse_column_map
from controller.ingest.labels import Labels
from controller.store.storage import Storage

log = logging.getLogger(__name__)

SYNTH_START = 1_483_228_800  # 2017-01-01T00:00:00Z
GRANULARITY_HELP = (
    "how ports group into services: 'catalogue' uses the catalogue file (or the built-in one) "
    "as written; 'ephemeral' gives every port below 49152 the devices use its own service and "
    "folds 49152-65535 into one service per protocol; 'learned' gives the most used ports "
    "(ranked by devices, then (device, unit) cells, then packets; dynamic ones included) their "
    "own service. Both learned forms read the input once more and need a port in at least two "
    "(device, unit) cells. Ports left out fall into catch-all ranges. Default: catalogue"
)


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add the `ingest` and `synth` subcommands."""
    ingest = subparsers.add_parser(
        "ingest",
        help="turn IPFIX (CSV or binary) flow records and pcap/pcapng captures into activity",
        description="Attribute every flow or packet to (device, service, time unit) exactly as "
        "the switch does, and write the per-unit activity.",
    )
    ingest.add_argument(
        "files",
        nargs="+",
        type=Path,
        metavar="FILE",
        help="flow or capture files; a directory stands for its .pcap, .pcapng, .cap, .csv and "
        ".ipfix files, recursively",
    )
    ingest.add_argument(
        "--format",
        choices=FORMATS,
        default="auto",
        help="pcap: packet captures (pcap, pcapng); ipfix: binary IPFIX / NetFlow v9 messages, "
        "back to back or as the UDP payloads of a capture of the exporter's traffic; ipfix-csv: "
        "IPFIX records as CSV; auto (default) tells files apart by their first bytes and takes "
        "captures for pcap",
    )
    ingest.add_argument(
        "--labels",
        type=Path,
        help="MAC labels: a 'mac,label' CSV or an IoT Sentinel style directory "
        "(<Type>/_iotdevice-mac.txt); only labelled devices count unless --all-devices",
    )
    ingest.add_argument(
        "--all-devices", action="store_true", help="count every source MAC, labelled or not"
    )
    _add_unit_and_catalogue(ingest)
    ingest.add_argument(
        "--save-catalogue", type=Path, help="write the catalogue used (JSON), e.g. a learned one"
    )
    ingest.add_argument(
        "--column-map",
        default="",
        help="IPFIX CSV only: name=column pairs mapping IANA names to this file's headers",
    )
    ingest.add_argument("--out", type=Path, help="activity CSV to write")
    ingest.add_argument("--db", type=Path, help="SQLite database to add the activity to")
    ingest.add_argument(
        "--skip-bad-records",
        action="store_true",
        help="skip (and count) malformed records instead of stopping at the first",
    )
    ingest.set_defaults(func=run_ingest)

    synth = subparsers.add_parser(
        "synth",
        help="generate synthetic IoT traffic from device profiles",
        description="Deterministic (per seed) synthetic flow records or activity of a fleet of "
        "devices built round-robin from the profiles.",
    )
    synth.add_argument("--profiles", type=Path, help="profiles JSON (default: built-in)")
    synth.add_argument("--kinds", default="", help="comma-separated profile names (default: all)")
    synth.add_argument("--devices", type=int, default=10, help="default: 10")
    synth.add_argument("--units", type=int, default=24 * 7, help="default: 168")
    synth.add_argument("--seed", type=int, default=0, help="default: 0")
    synth.add_argument(
        "--start", type=int, default=SYNTH_START, help="epoch seconds of the first unit"
    )
    _add_unit_and_catalogue(synth)
    synth.add_argument(
        "--output",
        choices=("flows", "activity"),
        default="flows",
        help="flows: IPFIX CSV flow records; activity: activity CSV (default: flows)",
    )
    synth.add_argument("--out", type=Path, required=True, help="file to write")
    synth.add_argument("--labels-out", type=Path, help="also write the fleet's mac,label CSV")
    synth.set_defaults(func=run_synth)


def _add_unit_and_catalogue(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--time-unit", type=float, default=3600.0, help="seconds per time unit (default: 3600)"
    )
    parser.add_argument(
        "--granularity", choices=GRANULARITIES, default="catalogue", help=GRANULARITY_HELP
    )
    parser.add_argument("--catalogue", type=Path, help="service catalogue JSON")
    parser.add_argument(
        "--max-services",
        type=int,
        default=MAX_SERVICE_ID,
        help=f"service limit for learned catalogues (default: {MAX_SERVICE_ID})",
    )


def run_ingest(args: argparse.Namespace) -> int:
    """`svcfp ingest`."""
    if args.out is None and args.db is None:
        raise InputError("give --out FILE and/or --db FILE for the activity")
    if args.time_unit <= 0:
        raise InputError(f"--time-unit must be positive, got {args.time_unit}")
    labels = Labels.load(args.labels) if args.labels is not None else None
    for note in labels.notes if labels is not None else ():
        log.warning("%s", note)
    options = IngestOptions(
        fmt=args.format,
        labels=labels,
        all_devices=args.all_devices,
        skip_bad_records=args.skip_bad_records,
        column_map=parse_column_map(args.column_map),
    )
    catalogue = catalogue_for(
        args.granularity,
        args.files,
        args.catalogue,
        args.max_services,
        options,
        args.time_unit,
    )
    result = ingest_files(args.files, catalogue, args.time_unit, options)
    for path, stats in result.stats.items():
        log.info("%s: %d records, %d skipped", path, stats.records, stats.skipped)
        for problem in stats.problems:
            log.warning("skipped: %s", problem)
    activity = result.activity
    if args.save_catalogue is not None:
        catalogue.save(args.save_catalogue)
    if args.out is not None:
        activity.to_csv(args.out)
    if args.db is not None:
        store_activity(args.db, activity)
    print(
        f"{result.records} records from {len(result.stats)} file(s), {result.skipped} skipped; "
        f"{len(activity.used_devices())} devices, {len(activity)} activity rows, "
        f"{len(activity.used_services())} services ({args.granularity} granularity, "
        f"{catalogue.max_id} in the catalogue)"
    )
    return 0


def store_activity(path: Path, activity: ActivityTable) -> None:
    """Add activity to the database in one transaction (summing rows already there)."""
    with Storage(path) as storage:
        storage.add_activity(activity)


def run_synth(args: argparse.Namespace) -> int:
    """`svcfp synth`."""
    from controller.ingest import synth

    if args.time_unit <= 0:
        raise InputError(f"--time-unit must be positive, got {args.time_unit}")
    profiles = synth.load_profiles(args.profiles)
    kinds = [k.strip() for k in args.kinds.split(",") if k.strip()]
    fleet = synth.make_fleet(profiles, args.devices, kinds or None)
    start_unit = int(args.start // args.time_unit)
    if args.output == "flows":
        batch = synth.flows(fleet, args.units, args.seed, args.time_unit, start_unit)
        synth.write_flows_csv(args.out, batch)
        written = f"{len(batch)} flow records"
    else:
        if args.granularity != "catalogue":
            raise InputError(
                "synth writes activity with the catalogue granularity; for ephemeral or learned "
                "write flows and run 'svcfp ingest --granularity ...' on them"
            )
        catalogue = for_granularity("catalogue", args.catalogue, limit=args.max_services)
        table = synth.activity(fleet, args.units, args.seed, catalogue, args.time_unit, start_unit)
        table.to_csv(args.out)
        written = f"{len(table)} activity rows"
    if args.labels_out is not None:
        write_labels(args.labels_out, [(d.mac, d.profile.name) for d in fleet])
    print(f"{written} for {len(fleet)} devices over {args.units} units -> {args.out}")
    return 0


def write_labels(path: Path, rows: list[tuple[str, str]]) -> None:
    """Write a `mac,label` CSV; the file appears only when complete."""
    with open_atomically(path, newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(("mac", "label"))
        writer.writerows(rows)
