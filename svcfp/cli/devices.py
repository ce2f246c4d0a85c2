"""`svcfp devices list|purge`: see and purge a controller's device registry."""

from __future__ import annotations

import argparse
import time
from datetime import UTC, datetime
from pathlib import Path

from controller.base.errors import InputError
from controller.control import devices
from controller.store.storage import redacted
from svcfp.cli.inputs import DB_HELP, add_db_timeout, database_location


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add `svcfp devices list|purge`."""
    parser = subparsers.add_parser(
        "devices", help="see and purge the registered devices", description=devices.__doc__
    )
    actions = parser.add_subparsers(dest="action", metavar="ACTION", required=True)
    listing = actions.add_parser("list", help="every registered device, with its verdict")
    listing.add_argument(
        "--db",
        type=database_location,
        default=Path("svcfp.db"),
        help=f"controller database: {DB_HELP}",
    )
    add_db_timeout(listing)
    listing.set_defaults(func=list_main)
    purge = actions.add_parser("purge", help="forget chosen devices (their activity stays)")
    purge.add_argument(
        "--db",
        type=database_location,
        default=Path("svcfp.db"),
        help=f"controller database: {DB_HELP}",
    )
    add_db_timeout(purge)
    purge.add_argument("--mac", action="append", default=[], help="this MAC (repeatable)")
    purge.add_argument(
        "--from-digests", action="store_true", help="every device registered from a digest"
    )
    purge.add_argument("--idle", type=float, help="devices silent for more than this many seconds")
    purge.add_argument(
        "--group", action="store_true", help="group (multicast, broadcast) or zero addresses"
    )
    purge.add_argument("--dry-run", action="store_true", help="only say what would be purged")
    purge.set_defaults(func=purge_main)


def _when(stamp: float) -> str:
    return datetime.fromtimestamp(stamp, UTC).strftime("%Y-%m-%d %H:%M:%S")


def list_main(args: argparse.Namespace) -> int:
    """Entry point of `svcfp devices list`."""
    views = devices.list_devices(args.db, args.db_timeout)
    print(
        f"{'mac':17} {'id':>4} {'label':12} {'source':7} {'switch':6} {'port':>4} "
        f"{'first seen (UTC)':19} {'last seen (UTC)':19} {'verdict':12} {'sim':>5} {'n':>3}"
    )
    for view in views:
        row = view.row
        sim = "-" if view.similarity is None else f"{view.similarity:.2f}"
        print(
            f"{row.mac:17} {'-' if row.device_id is None else row.device_id:>4} "
            f"{row.label:12} {row.source:7} {row.switch or '-':6} "
            f"{'-' if row.port is None else row.port:>4} {_when(row.first_seen):19} "
            f"{_when(row.last_seen):19} {view.answer or '-':12} {sim:>5} {view.decisions:3d}"
        )
    active = sum(1 for v in views if v.row.device_id is not None)
    print(f"{len(views)} devices, {active} holding a device id")
    return 0


def purge_main(args: argparse.Namespace) -> int:
    """Entry point of `svcfp devices purge`."""
    if args.idle is not None and not args.idle >= 0:
        raise InputError(f"--idle {args.idle}: expected seconds ≥ 0")
    selection = devices.Purge(
        tuple(args.mac),
        args.from_digests,
        None if args.idle is None else time.time() - args.idle,
        args.group,
    )
    chosen = devices.purge_devices(args.db, selection, args.dry_run, args.db_timeout)
    for row in chosen:
        print(f"{'would purge' if args.dry_run else 'purged'} {row.mac} ({row.source})")
    for mac in devices.missing(args.mac, chosen):
        print(f"not registered: {mac}")
    print(
        f"{len(chosen)} devices {'would be ' if args.dry_run else ''}purged from "
        f"{redacted(args.db)}; a running controller keeps them until it restarts"
    )
    return 0
