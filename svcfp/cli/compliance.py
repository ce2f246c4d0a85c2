"""`--mud` on the commands that identify devices (`identify`, `evaluate`, `run`, `mud export`):
the MUD profiles to check devices against, and how findings are printed."""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path

from controller.mud.compliance import Finding, seen
from controller.mud.profile import MudProfiles
from svcfp import api


def add_mud_argument(parser: argparse.ArgumentParser) -> None:
    """`--mud PATH` (repeatable): MUD files or folders of them to check compliance against."""
    parser.add_argument(
        "--mud",
        type=Path,
        action="append",
        default=[],
        metavar="PATH",
        help="MUD file or folder of them (repeatable): report what each device of a type with "
        "a profile uses that the profile does not allow",
    )


def mud_profiles_from_args(args: argparse.Namespace) -> MudProfiles | None:
    """The profiles `--mud` names, or None without the flag."""
    paths: list[Path] = list(getattr(args, "mud", []) or [])
    return api.mud_profiles(paths) if paths else None


def finding_line(f: Finding, unit_seconds: float | None) -> str:
    """One tab-separated line of a finding."""
    first, last = seen(f, unit_seconds)
    return (
        f"{f.device}\t{f.type}\t{f.service}\t{f.role or '-'}\t{first}\t{last}\t{f.units}"
        f"\t{f.packets}\t{f.bytes}"
    )


FINDINGS_HEADER = "device\ttype\tservice\tdirection\tfirst seen\tlast seen\tunits\tpackets\tbytes"


def print_findings(title: str, findings: Sequence[Finding], unit_seconds: float | None) -> None:
    """A titled table of findings on stdout."""
    print(f"{title}: {len(findings)}")
    if findings:
        print(FINDINGS_HEADER)
        for f in findings:
            print(finding_line(f, unit_seconds))
