"""The `svcfp` command: one entry point, one subcommand per job."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence
from typing import Any

from controller import __version__
from controller.base.command import LOG_LEVELS, run_command
from svcfp.cli.demo import register as register_demo
from svcfp.cli.devices import register as register_devices
from svcfp.cli.engine import register as register_engine
from svcfp.cli.ingest import register as register_ingest
from svcfp.cli.mud import register as register_mud
from svcfp.cli.run import register as register_run
from svcfp.cli.switch import register as register_switch
from svcfp.cli.testbed import register as register_testbed

# Each subcommand module exposes `register(subparsers)`, which adds its parser and sets
# `func` to a callable taking the parsed namespace and returning an exit status.
Register = Callable[["argparse._SubParsersAction[argparse.ArgumentParser]"], None]


def _registrations() -> list[Register]:
    registrations: list[Register] = []
    registrations.append(register_switch)
    registrations.append(register_run)
    registrations.append(register_devices)
    registrations.append(register_engine)
    registrations.append(register_demo)
    registrations.append(register_testbed)
    registrations.append(register_ingest)
    registrations.append(register_mud)
    return registrations


class HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """Help that keeps the modules' docstrings as written and shows every option's default."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        text = action.help or ""
        shown = action.default not in (None, False, argparse.SUPPRESS) and action.option_strings
        if shown and "%(default)" not in text and "(default" not in text:
            default = action.default
            if isinstance(default, tuple | list):
                default = ",".join(str(v) for v in default) or "none"
            text = f"{text} (default: {str(default).replace('%', '%%')})".lstrip()
        return text


class Parser(argparse.ArgumentParser):
    """An argument parser whose help shows defaults, for every subcommand too."""

    def __init__(self, *args: object, **kwargs: object) -> None:
        kwargs.setdefault("formatter_class", HelpFormatter)
        super().__init__(*args, **kwargs)  # type: ignore[arg-type]

    def add_argument(self, *args: Any, **kwargs: Any) -> argparse.Action:
        """An option without help text still gets a help line: its default."""
        action = super().add_argument(*args, **kwargs)
        if action.help is None and action.default not in (None, False, argparse.SUPPRESS):
            action.help = "(default: %(default)s)"
        return action


def build_parser() -> argparse.ArgumentParser:
    """The full argument parser, with every subcommand that exists."""
    parser = Parser(
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
    subparsers: argparse._SubParsersAction[argparse.ArgumentParser] = parser.add_subparsers(
        dest="command", metavar="COMMAND", parser_class=Parser
    )
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
