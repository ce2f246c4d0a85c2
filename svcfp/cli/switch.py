"""`svcfp switch`: the reference switch (`refswitch.cli` holds its flags and its main loop)."""

from __future__ import annotations

import argparse

from refswitch import cli as refswitch_cli


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add `svcfp switch`."""
    parser = subparsers.add_parser(
        "switch",
        help="run the reference P4Runtime switch (fingerprint.p4 in Python)",
        description=refswitch_cli.__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    refswitch_cli.add_arguments(parser)
    parser.set_defaults(func=refswitch_cli.run)
