"""Compile the P4 program with p4c: the committed P4Info and BMv2 JSON are p4c's own output.

`python -m controller.p4rt.build --p4 p4src/fingerprint.p4 --p4info p4src/fingerprint.p4info.txtpb
--out p4src` (what `make build` runs) writes `<out>/<prog>.json` (the BMv2 config) and
`<out>/<prog>.p4info.txtpb`. When `<out>` is the committed files' own folder they are rewritten in
place and the command says whether they changed (CI fails on any difference from the commit);
with another `<out>` the fresh P4Info is compared with the committed one and a difference fails
with a unified diff. Where p4c is not installed it says so and succeeds: the committed files are
what the controller, the reference switch and BMv2 use.

p4c writes the source's path and its own output path into the JSON, so it always runs in a
staging folder with the relative paths `p4src/<prog>.p4` and `-o p4src`: the JSON is then the same
byte for byte wherever the checkout and the output folder are.
"""

from __future__ import annotations

import argparse
import difflib
import os
import re
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from controller.base.errors import InputError, SvcfpError

P4C = "p4c"
# The folder name p4c sees for the source and its output, whatever the real ones are.
STAGED_FOLDER = "p4src"
_DEFINE = re.compile(r"[A-Za-z_]\w*(=.*)?")


@dataclass(frozen=True)
class Build:
    """What one p4c run produced."""

    bmv2_json: Path
    p4info: Path


def find_p4c(path: str | None = None) -> Path | None:
    """The p4c executable on `path` (default: the PATH environment variable), or None."""
    found = shutil.which(P4C, path=path)
    return Path(found) if found else None


def parse_defines(values: Sequence[str]) -> dict[str, str]:
    """`NAME=VALUE` (or bare `NAME`, meaning 1) strings from the command line as a mapping."""
    defines: dict[str, str] = {}
    for value in values:
        if not _DEFINE.fullmatch(value):
            raise InputError(f"-D {value!r}: expected NAME=VALUE with NAME a C identifier")
        name, _, setting = value.partition("=")
        defines[name] = setting if "=" in value else "1"
    return defines


def compile_p4(
    p4c: Path, source: Path, out: Path, defines: Mapping[str, str] | None = None
) -> Build:
    """Run `p4c --target bmv2 --arch v1model` on `source`, writing `<stem>.json` and
    `<stem>.p4info.txtpb` into `out` (see the module docstring for the staging folder)."""
    if not source.is_file():
        raise InputError(f"{source}: P4 source not found")
    out.mkdir(parents=True, exist_ok=True)
    build = Build(
        bmv2_json=out / f"{source.stem}.json",
        p4info=out / f"{source.stem}.p4info.txtpb",
    )
    with tempfile.TemporaryDirectory(prefix="svcfp-p4c-") as staging:
        folder = Path(staging) / STAGED_FOLDER
        folder.mkdir()
        # Every P4 file beside the source, so its local #includes resolve as they would in place.
        for sibling in source.parent.glob("*.p4"):
            shutil.copyfile(sibling, folder / sibling.name)
        staged = Build(
            bmv2_json=Path(STAGED_FOLDER, build.bmv2_json.name),
            p4info=Path(STAGED_FOLDER, build.p4info.name),
        )
        command = [
            str(p4c),
            "--target",
            "bmv2",
            "--arch",
            "v1model",
            "--p4runtime-files",
            str(staged.p4info),
            "-o",
            STAGED_FOLDER,
            *(f"-D{name}={value}" for name, value in (defines or {}).items()),
            str(Path(STAGED_FOLDER, source.name)),
        ]
        result = subprocess.run(command, capture_output=True, text=True, check=False, cwd=staging)
        if result.returncode != 0:
            raise SvcfpError(
                f"{source}: p4c failed with status {result.returncode}:\n"
                f"{result.stderr.strip() or result.stdout.strip()}"
            )
        for produced, target in (
            (staged.bmv2_json, build.bmv2_json),
            (staged.p4info, build.p4info),
        ):
            if not (Path(staging) / produced).is_file():
                raise SvcfpError(f"{source}: p4c succeeded but did not write {target.name}")
            shutil.copyfile(Path(staging) / produced, target)
    return build


def p4info_diff(committed: Path, fresh: Path) -> str:
    """A unified diff from the committed P4Info to the fresh one; empty when they are identical."""
    if not committed.is_file():
        raise InputError(f"{committed}: committed P4Info not found")
    return "".join(
        difflib.unified_diff(
            committed.read_text().splitlines(keepends=True),
            fresh.read_text().splitlines(keepends=True),
            fromfile=str(committed),
            tofile=str(fresh),
        )
    )


def build(
    source: Path,
    committed: Path,
    out: Path,
    defines: Mapping[str, str],
    p4c: Path | None,
) -> int:
    """Compile if p4c is available; rewrite or check the committed files; the exit status."""
    if p4c is None:
        if not committed.is_file():
            raise InputError(f"{committed}: committed P4Info not found")
        print(
            f"p4c not found on PATH: {source} was not compiled; the committed P4Info "
            f"{committed} and the BMv2 JSON beside it stay in use"
        )
        return 0
    in_place = out.resolve() == committed.resolve().parent
    if in_place and defines:
        raise InputError(
            f"-D overrides would overwrite the committed {committed}: pass --out another folder"
        )
    before = {
        path: path.read_bytes() if path.is_file() else None
        for path in (committed, committed.with_name(f"{source.stem}.json"))
    }
    result = compile_p4(p4c, source, out, defines)
    print(f"compiled {source} -> {result.bmv2_json}, {result.p4info}")
    if in_place:
        changed = [str(path) for path, data in before.items() if path.read_bytes() != data]
        if changed:
            print(f"rewritten by p4c: {', '.join(changed)} (commit them)")
        else:
            print(f"{committed} and its BMv2 JSON are exactly what p4c generated")
        return 0
    if defines:
        # The committed P4Info describes the default sizes; a resized build brings its own.
        print(f"built with -D overrides: use {result.p4info}, not {committed}")
        return 0
    diff = p4info_diff(committed, result.p4info)
    if diff:
        print(
            f"the P4Info p4c generated differs from the committed {committed}:\n{diff}",
            file=sys.stderr,
        )
        return 1
    print(f"{committed} matches what p4c generated")
    return 0


def main(argv: Sequence[str] | None = None, environ: Mapping[str, str] | None = None) -> int:
    """Command-line entry point; returns the exit status."""
    parser = argparse.ArgumentParser(
        prog="python -m controller.p4rt.build",
        description="Compile the P4 program for BMv2 and check the committed P4Info.",
    )
    parser.add_argument("--p4", type=Path, required=True, help="P4_16 source (v1model)")
    parser.add_argument("--p4info", type=Path, required=True, help="committed P4Info (text)")
    parser.add_argument("--out", type=Path, required=True, help="build directory")
    parser.add_argument(
        "-D",
        dest="defines",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="preprocessor define passed to p4c, e.g. -D MAX_DEVICES=4096 (repeatable)",
    )
    args = parser.parse_args(argv)
    env = os.environ if environ is None else environ
    try:
        return build(
            args.p4, args.p4info, args.out, parse_defines(args.defines), find_p4c(env.get("PATH"))
        )
    except SvcfpError as exc:
        print(f"p4build: error: {exc}", file=sys.stderr)
        return exc.exit_code


if __name__ == "__main__":
    sys.exit(main())
