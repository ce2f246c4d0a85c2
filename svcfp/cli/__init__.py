"""The `svcfp` command: one entry point, one subcommand per job."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence

from controller import __version__
from controller.base.command import LOG_LEVELS, run_command
from svcfp.cli.engine import register as register_engine
from svcfp.cli.ingest import register as register_ingest
from svcfp.cli.run import register as register_run
from svcfp.cli.switch import register as register_switch
from topology.demo import register as register_demo
from topology.testbed import register as register_testbed

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
        choices=LOG_LEVELS,
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
    func = getattr(args, "func", None)
    if func is None:
        parser.print_help()
        return 0
    return run_command(f"svcfp {args.command}", lambda: int(func(args)), args.log_level)


if __name__ == "__main__":
    sys.exit(main())
