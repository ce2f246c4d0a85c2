"""`svcfp ingest` (flow records and captures → activity) and `svcfp synth` (synthetic traffic)."""

from __future__ import annotations

import argparse
import csv
import logging
from collections.abc import Callable
from pathlib import Path

from controller.base.checks import is_decimal
from controller.base.errors import InputError
from controller.base.fileio import check_outputs, check_writable, open_atomically
from controller.engine.activity import MAX_EPOCH_SECONDS
from controller.engine.learned import for_granularity
from controller.ingest.labels import Labels
from svcfp import api
from svcfp.cli.inputs import (
    DB_HELP,
    add_catalogue_arguments,
    add_cluster_arguments,
    add_db_timeout,
    add_input_arguments,
    add_time_unit,
    database_location,
    engine_from_args,
    read_paths,
    report_skips,
    sources_from_args,
)

log = logging.getLogger(__name__)

SYNTH_START = 1_483_228_800  # 2017-01-01T00:00:00Z
# synth holds everything it generates in memory before writing it: the built-in profiles make
# about 11 flow records per device and unit, 250 bytes each at the peak, so a million device-units
# is some 11 million records and 2.5 GB. Ten years of hourly units is 87,600.
MAX_UNITS = 100_000
MAX_DEVICES = 0xFFFF
MAX_DEVICE_UNITS = 1_000_000


def _count_up_to(limit: int) -> Callable[[str], int]:
    """An argparse type: a whole number in 1..`limit`."""

    def parse(text: str) -> int:
        if not is_decimal(text.strip()) or not 1 <= int(text) <= limit:
            raise argparse.ArgumentTypeError(f"{text!r}: a whole number in 1..{limit}")
        return int(text)

    return parse


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add the `ingest` and `synth` subcommands."""
    ingest = subparsers.add_parser(
        "ingest",
        help="turn IPFIX (CSV or binary) flow records and pcap/pcapng captures into activity",
        description="Attribute every flow or packet to (device, service, time unit) exactly as "
        "the switch does, and write the per-unit activity.",
    )
    add_input_arguments(ingest, stored_activity=False)
    add_cluster_arguments(ingest)
    ingest.add_argument(
        "--save-catalogue", type=Path, help="write the catalogue used (JSON), e.g. a learned one"
    )
    ingest.add_argument("--out", type=Path, help="activity CSV to write")
    ingest.add_argument(
        "--db", type=database_location, help=f"database to add the activity to: {DB_HELP}"
    )
    add_db_timeout(ingest)
    ingest.add_argument(
        "--replace",
        action="store_true",
        help="with --db: replace what a file added before instead of refusing it (files are "
        "recognised by their content)",
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
    synth.add_argument(
        "--devices",
        type=_count_up_to(MAX_DEVICES),
        default=10,
        help=f"devices, 1..{MAX_DEVICES} (default: 10); devices × units at most {MAX_DEVICE_UNITS}",
    )
    synth.add_argument(
        "--units",
        type=_count_up_to(MAX_UNITS),
        default=24 * 7,
        help=f"time units, 1..{MAX_UNITS} (default: 168)",
    )
    synth.add_argument("--seed", type=int, default=0, help="random seed (default: 0)")
    synth.add_argument(
        "--start",
        type=int,
        default=SYNTH_START,
        help=f"epoch seconds of the first unit (default: {SYNTH_START})",
    )
    add_time_unit(synth, 3600.0)
    add_catalogue_arguments(synth)
    synth.add_argument(
        "--output-format",
        choices=("flows", "activity"),
        default="flows",
        help="flows: IPFIX CSV flow records; activity: activity CSV (default: flows)",
    )
    synth.add_argument("--out", type=Path, required=True, help="file to write")
    synth.add_argument("--labels-out", type=Path, help="also write the fleet's mac,label CSV")
    synth.set_defaults(func=run_synth)


def run_ingest(args: argparse.Namespace) -> int:
    """`svcfp ingest`."""
    if args.out is None and args.db is None:
        raise InputError("give --out FILE and/or --db FILE for the activity")
    if args.replace and args.db is None:
        raise InputError("--replace replaces files added to a database: give --db")
    sources = sources_from_args(args)
    if not sources.files:
        raise InputError("no input: give the flow or capture files to ingest")
    check_outputs({"--out": args.out, "--save-catalogue": args.save_catalogue}, read_paths(sources))
    if isinstance(args.db, Path):
        check_writable(args.db, "--db")
    if sources.labels is not None:
        for note in Labels.load(sources.labels).notes:
            log.warning("%s", note)
    with engine_from_args(args) as engine:
        loaded = api.ingest(sources, args.out, args.db, args.replace, engine, args.db_timeout)
    report_skips("ingest", loaded)
    activity = loaded.activity
    catalogue = loaded.catalogue
    assert catalogue is not None
    if args.save_catalogue is not None:
        catalogue.save(args.save_catalogue)
    lost = sum(s.unread_bytes for s in loaded.stats.values())
    skipped = f"{loaded.skipped} skipped" + (f" ({lost} bytes unreadable)" if lost else "")
    print(
        f"{loaded.records} records from {len(loaded.stats)} file(s), {skipped}; "
        f"{len(activity.used_devices())} devices, {len(activity)} activity rows, "
        f"{len(activity.used_services())} services ({sources.service_granularity} granularity, "
        f"{catalogue.max_id} in the catalogue)"
    )
    return 0


def run_synth(args: argparse.Namespace) -> int:
    """`svcfp synth`."""
    from controller.ingest import synth

    if args.devices * args.units > MAX_DEVICE_UNITS:
        raise InputError(
            f"--devices {args.devices} × --units {args.units}: at most {MAX_DEVICE_UNITS} "
            "device-units in one run (every record is held in memory before it is written)"
        )
    check_outputs(
        {"--out": args.out, "--labels-out": args.labels_out},
        [] if args.profiles is None else [args.profiles],
    )
    if not 0 <= args.start < MAX_EPOCH_SECONDS:
        raise InputError(f"--start {args.start}: the first unit must start between 1970 and 2100")
    profiles = synth.load_profiles(args.profiles)
    kinds = [k.strip() for k in args.kinds.split(",") if k.strip()]
    fleet = synth.make_fleet(profiles, args.devices, kinds or None)
    start_unit = int(args.start // args.time_unit)
    if (start_unit + args.units) * args.time_unit > MAX_EPOCH_SECONDS:
        raise InputError(
            f"--units {args.units} of --time-unit {args.time_unit:g} s from --start "
            f"{args.start}: the last unit must end by 2100"
        )
    if args.output_format == "flows":
        batch = synth.flows(fleet, args.units, args.seed, args.time_unit, start_unit)
        synth.write_flows_csv(args.out, batch)
        written = f"{len(batch)} flow records"
    else:
        if args.service_granularity != "catalogue":
            raise InputError(
                "synth writes activity with the catalogue granularity; for ephemeral or learned "
                "write flows and run 'svcfp ingest --service-granularity ...' on them"
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
