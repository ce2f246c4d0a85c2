"""The `svcfp` command: one entry point, one subcommand per job."""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Callable, Sequence

from controller import __version__
from controller.demo import register as register_demo
from controller.engine_cli import register as register_engine
from controller.errors import SvcfpError
from controller.ingest.cli import register as register_ingest
from controller.run import register as register_run
from controller.testbed import register as register_testbed
from refswitch.cli import register as register_switch

# Each subcommand module exposes `register(subparsers)`, which adds its parser and sets
# `func` to a callable taking the parsed namespace and returning an exit status.
Register = Callable[["argparse._SubParsersAction[argparse.ArgumentParser]"], None]


def _registrations() -> list[Register]:
    registrations: list[Register] = []
    registrations.append(register_switch)
    registrations.append(register_run)
    registrations.append(register_engine)
    registrations.append(register_demo)
    registrations.append(register_testbed)
    registrations.append(register_ingest)
    return registrations


def build_parser() -> argparse.ArgumentParser:
    """The full argument parser, with every subcommand that exists."""
    parser = argparse.ArgumentParser(
        prog="svcfp",
        description="In-network service-level fingerprinting of IoT devices.",
    )
    parser.add_argument("--version", action="version", version=f"svcfp {__version__}")
    parser.add_argument(
        "--log-level",
        default="INFO",
        choices=["DEBUG", "INFO", "WARNING", "ERROR"],
        help="logging threshold (default: INFO)",
    )
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for register in _registrations():
        register(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the CLI; returns the process exit status."""
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=getattr(logging, args.log_level),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    func = getattr(args, "func", None)
    if func is None:
        parser.print_help()
        return 0
    try:
        status: int = func(args)
    except SvcfpError as exc:
        print(f"svcfp {args.command}: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        return 130
    return status


if __name__ == "__main__":
    sys.exit(main())
