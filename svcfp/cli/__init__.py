"""The `svcfp` command: one entry point, one subcommand per job."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence
from typing import Any

from controller import __version__
from controller.base.command import LOG_LEVELS, run_command
from controller.base.logformat import LOG_FORMATS
from svcfp.cli.dashboard import register as register_dashboard
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
    registrations.append(register_dashboard)
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


class _Unset(list[Any]):
    """Stands for "not on the command line" while `Parser` finds which options were given (a
    list, so that `append` options can append to a copy of it)."""


_UNSET = _Unset()


class Parser(argparse.ArgumentParser):
    """An argument parser whose help shows defaults, for every subcommand too.

    A parser made with `track_given=True` also records, as `given` on the namespace, which
    options the command line set (whatever their value): a config file fills in the others.
    """

    def __init__(self, *args: object, track_given: bool = False, **kwargs: object) -> None:
        kwargs.setdefault("formatter_class", HelpFormatter)
        super().__init__(*args, **kwargs)  # type: ignore[arg-type]
        self.track_given = track_given

    def parse_known_args(  # type: ignore[override]
        self, args: Sequence[str] | None = None, namespace: argparse.Namespace | None = None
    ) -> tuple[argparse.Namespace, list[str]]:
        """Parse; with `track_given`, once more over placeholders to see which were set."""
        parsed, extra = super().parse_known_args(args, namespace)
        if self.track_given:
            probe = argparse.Namespace(
                **{a.dest: _UNSET for a in self._actions if a.dest != argparse.SUPPRESS}
            )
            super().parse_known_args(sys.argv[1:] if args is None else list(args), probe)
            parsed.given = frozenset(k for k, v in vars(probe).items() if v is not _UNSET)
        return parsed, extra

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
    parser.add_argument(
        "--log-format",
        default="text",
        choices=LOG_FORMATS,
        help="log lines as text or as JSON objects, one per line (default: text)",
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
    return run_command(
        f"svcfp {args.command}", lambda: int(func(args)), args.log_level, args.log_format
    )


if __name__ == "__main__":
    sys.exit(main())
