"""The Tofino build of the data plane: compile `fingerprint_tna.p4` with the Tofino compiler, read
its resource summary, find the largest layout that fits, and pack the device config a Tofino
P4Runtime server takes.

`python -m controller.p4rt.tofino build` (what `make build TARGET=tofino` runs) compiles for
Tofino 1 (TNA) and Tofino 2 (T2NA), rewrites the committed P4Info (the Tofino 1 build's, p4c's own
output) and the resource table of p4src/README.md between its markers; `... layouts` compiles at
increasing MAX_DEVICES × MAX_SERVICES and rewrites the layout table. Where the compiler is not
installed both say so and succeed.

The P4Info is written with `--p4runtime-force-std-externs`: the TNA `Counter`, `Register` and
`Digest` then appear as the standard `counters`, `registers` and `digests` entries P4Runtime
servers for Tofino (Stratum) take, under the same names as the v1model program's. Without it they
are Barefoot `externs` entries; `controller.base.p4info` reads those too (see its docstring).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import struct
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from controller.base.checks import is_decimal
from controller.base.errors import InputError, SvcfpError

DEFAULT_P4C = Path("/opt/p4tofino/bin/p4c")
P4C_ENV = "SVCFP_TOFINO_P4C"


@dataclass(frozen=True)
class Chip:
    """One Tofino generation: the compiler's target and architecture names, extra flags."""

    name: str
    target: str
    arch: str
    title: str
    flags: tuple[str, ...] = ()


# Tofino 2's CLOT allocation makes the assembler stop on this parse graph ("No length for clot
# 0", then a crash); without CLOTs every header goes through PHV and the program fits.
CHIPS = {
    "tofino": Chip("tofino", "tofino", "tna", "Tofino 1"),
    "tofino2": Chip("tofino2", "tofino2", "t2na", "Tofino 2", ("-Xp4c=--no-clot",)),
}


@dataclass(frozen=True)
class TofinoBuild:
    """What one compiler run produced, under `out`."""

    chip: Chip
    out: Path
    p4info: Path

    @property
    def binary(self) -> Path:
        """The pipeline binary (tofino.bin or tofino2.bin)."""
        return self.out / "pipe" / f"{self.chip.target}.bin"

    @property
    def context_json(self) -> Path:
        """The driver's context JSON."""
        return self.out / "pipe" / "context.json"

    @property
    def logs(self) -> Path:
        """The resource logs `-g` writes."""
        return self.out / "pipe" / "logs"


@dataclass(frozen=True)
class Resources:
    """The compiler's resource summary of one build (MAU totals over every stage)."""

    stages_used: int
    stages: int
    sram: int
    sram_percent: float
    map_ram: int
    tcam: int
    tcam_percent: float
    phv_containers: int
    phv_bits: int


def find_tofino_p4c(environ: Mapping[str, str] | None = None) -> Path | None:
    """The Tofino compiler's driver: $SVCFP_TOFINO_P4C, else /opt/p4tofino/bin/p4c; None when
    neither is an executable file."""
    env = os.environ if environ is None else environ
    candidate = Path(env[P4C_ENV]) if env.get(P4C_ENV) else DEFAULT_P4C
    return candidate if candidate.is_file() and os.access(candidate, os.X_OK) else None


def compile_tna(
    p4c: Path,
    source: Path,
    out: Path,
    chip: str = "tofino",
    defines: Mapping[str, str] | None = None,
    std_externs: bool = True,
) -> TofinoBuild:
    """Compile `source` for `chip` with resource logs (`-g`) into `out`; the P4Info is
    `out/<stem>.p4info.txtpb`, or with Barefoot externs (`std_externs` False) the binary
    `out/<stem>.p4info.bin`. `SvcfpError` carries the compiler's errors when it fails."""
    if not source.is_file():
        raise InputError(f"{source}: P4 source not found")
    try:
        spec = CHIPS[chip]
    except KeyError:
        raise InputError(f"unknown Tofino chip {chip!r}: expected one of {sorted(CHIPS)}") from None
    out.mkdir(parents=True, exist_ok=True)
    suffix = "txtpb" if std_externs else "bin"
    build = TofinoBuild(spec, out, out / f"{source.stem}.p4info.{suffix}")
    # A failed run must not leave an earlier run's outputs looking like its own.
    shutil.rmtree(out / "pipe", ignore_errors=True)
    build.p4info.unlink(missing_ok=True)
    command = [
        str(p4c),
        "--target",
        spec.target,
        "--arch",
        spec.arch,
        "-g",
        *(["--p4runtime-force-std-externs"] if std_externs else []),
        "--p4runtime-files",
        str(build.p4info.resolve()),
        *spec.flags,
        *(f"-D{name}={value}" for name, value in (defines or {}).items()),
        "-o",
        str(out.resolve()),
        source.name,
    ]
    env = dict(os.environ)
    lib = p4c.resolve().parent.parent / "lib"
    env["LD_LIBRARY_PATH"] = ":".join(p for p in (str(lib), env.get("LD_LIBRARY_PATH")) if p)
    result = subprocess.run(
        command, capture_output=True, text=True, check=False, cwd=source.parent, env=env
    )
    errors = [line for line in (result.stdout + result.stderr).splitlines() if "error" in line]
    failed = result.returncode != 0 or not build.binary.is_file() or not build.p4info.is_file()
    if failed:
        raise SvcfpError(
            f"{source}: the Tofino compiler ({spec.title}) failed with status "
            f"{result.returncode}:\n" + "\n".join(e for e in errors if not e.startswith("0 errors"))
        )
    return build


def _table(lines: list[str], start: int) -> tuple[list[str], list[list[str]], int]:
    """The header and rows of the |-table whose header line is lines[start]; the index after."""
    header = [cell.strip() for cell in lines[start].strip().strip("|").split("|")]
    rows = []
    index = start + 1
    while index < len(lines) and (lines[index].startswith("|") or lines[index].startswith("-")):
        if lines[index].startswith("|"):
            rows.append([cell.strip() for cell in lines[index].strip().strip("|").split("|")])
        index += 1
    return header, rows, index


def read_resources(logs: Path) -> Resources:
    """The MAU totals of `mau.resources.log` (counts, then average use per stage) and the PHV
    use of `metrics.json`, both written by `-g`."""
    try:
        lines = (logs / "mau.resources.log").read_text().splitlines()
        metrics = json.loads((logs / "metrics.json").read_text())
    except (OSError, ValueError) as exc:
        raise InputError(f"{logs}: no readable resource logs (compiled with -g?): {exc}") from exc
    starts = [i for i, line in enumerate(lines) if line.startswith("| Stage Number")]
    if len(starts) < 2:
        raise InputError(f"{logs / 'mau.resources.log'}: no per-stage resource tables")
    header, rows, _ = _table(lines, starts[0])
    stage_rows = [row for row in rows if is_decimal(row[0])]
    totals = next(row for row in rows if row[0] == "Totals")
    used = sum(1 for row in stage_rows if any(cell not in ("0", "") for cell in row[1:]))
    percent_header, percent_rows, _ = _table(lines, starts[1])
    average = next(row for row in percent_rows if row[0] == "Average")

    def count(column: str) -> int:
        return int(totals[header.index(column)])

    def percent(column: str) -> float:
        return float(average[percent_header.index(column)].rstrip("%"))

    phv = [group for kind in metrics["phv"].values() for group in kind]
    return Resources(
        stages_used=used,
        stages=len(stage_rows),
        sram=count("SRAM"),
        sram_percent=percent("SRAM"),
        map_ram=count("Map RAM"),
        tcam=count("TCAM"),
        tcam_percent=percent("TCAM"),
        phv_containers=sum(int(g["containers_occupied"]) for g in phv),
        phv_bits=sum(int(g["bits_occupied"]) for g in phv),
    )


def pack_device_config(program_name: str, binary: bytes, context_json: bytes) -> bytes:
    """The `p4_device_config` a Tofino P4Runtime server takes (the layout p4runtime-shell's
    Tofino config builder writes, and Stratum's legacy format): the program name, the pipeline
    binary and the context JSON, each after its length as a little-endian 32-bit integer."""
    parts = (program_name.encode(), binary, context_json)
    return b"".join(struct.pack("<I", len(part)) + part for part in parts)


def device_config(out: Path, program_name: str, chip: str = "tofino") -> bytes:
    """`pack_device_config` of the compiler output folder `out` (from `compile_tna`, or any
    `p4c -o out` run): `out/pipe/<chip>.bin` and `out/pipe/context.json`."""
    build = TofinoBuild(CHIPS[chip], out, out)
    try:
        return pack_device_config(
            program_name, build.binary.read_bytes(), build.context_json.read_bytes()
        )
    except OSError as exc:
        raise InputError(
            f"{out}: not a Tofino compiler output folder ({exc.filename}: {exc.strerror})"
        ) from exc


RESOURCES_BEGIN = "<!-- tofino-resources:begin (make build TARGET=tofino rewrites this) -->"
RESOURCES_END = "<!-- tofino-resources:end -->"
LAYOUTS_BEGIN = "<!-- tofino-layouts:begin (make tofino-layouts rewrites this) -->"
LAYOUTS_END = "<!-- tofino-layouts:end -->"
RESOURCE_HEADER = (
    "| chip | MAX_DEVICES × MAX_SERVICES | counter cells | stages used | "
    "SRAM blocks (mean stage use) | map RAMs | TCAM blocks (mean stage use) | "
    "PHV containers (bits) |\n"
    "|---|---|---|---|---|---|---|---|\n"
)


def resource_row(chip: Chip, devices: int, services: int, found: Resources) -> str:
    """One row of the resource table."""
    return (
        f"| {chip.title} | {devices} × {services} | {devices * services} | "
        f"{found.stages_used} of {found.stages} | {found.sram} ({found.sram_percent:.1f} %) | "
        f"{found.map_ram} | {found.tcam} ({found.tcam_percent:.1f} %) | "
        f"{found.phv_containers} ({found.phv_bits}) |\n"
    )


def replace_between(text: str, begin: str, end: str, body: str, source: str) -> str:
    """`text` with what lies between the lines `begin` and `end` replaced by `body`."""
    pattern = re.compile(re.escape(begin) + r"\n.*?" + re.escape(end), re.DOTALL)
    if not pattern.search(text):
        raise InputError(f"{source}: markers {begin!r} … {end!r} not found")
    return pattern.sub(lambda _: f"{begin}\n{body}{end}", text, count=1)


def source_layout(source: Path) -> tuple[int, int]:
    """The default (MAX_DEVICES, MAX_SERVICES) `source` compiles with: its own `#define`s."""
    text = source.read_text()
    found = {
        name: int(value)
        for name, value in re.findall(r"^#define (MAX_DEVICES|MAX_SERVICES) (\d+)$", text, re.M)
    }
    if set(found) != {"MAX_DEVICES", "MAX_SERVICES"}:
        raise InputError(f"{source}: no default MAX_DEVICES and MAX_SERVICES #defines")
    return found["MAX_DEVICES"], found["MAX_SERVICES"]


def build(source: Path, committed: Path, out: Path, readme: Path, p4c: Path | None) -> int:
    """Compile for every chip, rewrite the committed P4Info (Tofino 1's) and the README's
    resource table; the exit status."""
    if p4c is None:
        print(
            f"Tofino compiler not found ({DEFAULT_P4C}, or ${P4C_ENV}): {source} was not "
            f"compiled for Tofino; the committed {committed} stays in use"
        )
        return 0
    devices, services = source_layout(source)
    rows = []
    for name, spec in CHIPS.items():
        result = compile_tna(p4c, source, out / name, name)
        found = read_resources(result.logs)
        rows.append(resource_row(spec, devices, services, found))
        print(f"compiled {source} for {spec.title} -> {result.out}")
        if name == "tofino":
            before = committed.read_bytes() if committed.is_file() else None
            shutil.copyfile(result.p4info, committed)
            changed = committed.read_bytes() != before
            print(f"{committed} " + ("rewritten (commit it)" if changed else "unchanged"))
    text = readme.read_text()
    readme.write_text(
        replace_between(
            text, RESOURCES_BEGIN, RESOURCES_END, RESOURCE_HEADER + "".join(rows), str(readme)
        )
    )
    print(f"{readme}: resource table rewritten")
    return 0


@dataclass(frozen=True)
class Attempt:
    """One compile of the layout search."""

    chip: Chip
    devices: int
    services: int
    resources: Resources | None
    reason: str = ""


def _why(error: SvcfpError) -> str:
    """The compiler's first error of a failed build, without its file and line."""
    for line in str(error).splitlines():
        if "error:" in line:
            return re.sub(r"^.*?error: (\S+\(\d+\): )?", "", line).strip()
    return str(error).splitlines()[-1] if str(error) else "failed"


def search_layouts(
    p4c: Path,
    source: Path,
    out: Path,
    chip: str,
    services: Sequence[int] = (64, 128, 256),
    max_devices: int = 65536,
    budget_seconds: float = 900.0,
    step: int = 32,
    first: int = 64,
) -> list[Attempt]:
    """For each MAX_SERVICES, MAX_DEVICES doubling from `first` until the build no longer fits (or
    reaches `max_devices`), then halving the gap between the largest that fit and the smallest
    that did not down to `step` devices; stops early once `budget_seconds` are spent."""
    spec = CHIPS[chip]
    attempts: list[Attempt] = []
    started = time.monotonic()

    def attempt(devices: int, per_device: int) -> Attempt:
        defines = {"MAX_DEVICES": str(devices), "MAX_SERVICES": str(per_device)}
        folder = out / f"{chip}-{devices}x{per_device}"
        try:
            result = compile_tna(p4c, source, folder, chip, defines)
        except SvcfpError as exc:
            found = Attempt(spec, devices, per_device, None, _why(exc))
        else:
            found = Attempt(spec, devices, per_device, read_resources(result.logs))
        shutil.rmtree(folder, ignore_errors=True)
        attempts.append(found)
        return found

    def in_budget() -> bool:
        return time.monotonic() - started < budget_seconds

    for per_device in services:
        fits, fails = 0, 0
        devices = first
        while devices <= max_devices and in_budget():
            if attempt(devices, per_device).resources is None:
                fails = devices
                break
            fits = devices
            devices *= 2
        while fits and fails and fails - fits > step and in_budget():
            middle = (fits + fails) // 2 // step * step
            if attempt(middle, per_device).resources is None:
                fails = middle
            else:
                fits = middle
    return attempts


def largest(attempts: Sequence[Attempt]) -> Attempt | None:
    """The fitting attempt with the most counter cells (then the most devices)."""
    fitting = [a for a in attempts if a.resources is not None]
    return max(fitting, key=lambda a: (a.devices * a.services, a.devices), default=None)


def layouts_table(attempts: Sequence[Attempt]) -> str:
    """The layout search as a Markdown table: for each chip and MAX_SERVICES, the largest
    MAX_DEVICES that fits and the first that does not."""
    lines = [
        "| chip | MAX_SERVICES | largest MAX_DEVICES that fits | counter cells | stages | "
        "SRAM blocks | map RAMs | smallest MAX_DEVICES that does not fit |\n",
        "|---|---|---|---|---|---|---|---|\n",
    ]
    groups: dict[tuple[str, int], list[Attempt]] = {}
    for attempt in attempts:
        groups.setdefault((attempt.chip.title, attempt.services), []).append(attempt)
    for (title, per_device), group in groups.items():
        best = largest(group)
        failures = [a for a in group if a.resources is None]
        failed = min(failures, key=lambda a: a.devices, default=None)
        next_up = f"{failed.devices}: {failed.reason.replace('|', '/')}" if failed else "not tried"
        if best is None or best.resources is None:
            lines.append(f"| {title} | {per_device} | none | | | | | {next_up} |\n")
            continue
        found = best.resources
        lines.append(
            f"| {title} | {per_device} | {best.devices} | {best.devices * per_device} | "
            f"{found.stages_used} of {found.stages} | {found.sram} | {found.map_ram} | "
            f"{next_up} |\n"
        )
    return "".join(lines)


def main(argv: Sequence[str] | None = None, environ: Mapping[str, str] | None = None) -> int:
    """Command-line entry point; returns the exit status."""
    parser = argparse.ArgumentParser(
        prog="python -m controller.p4rt.tofino",
        description="Compile the TNA program for Tofino; resources, layouts, device config.",
    )
    commands = parser.add_subparsers(dest="command", required=True)
    for name in ("build", "layouts"):
        command = commands.add_parser(name)
        command.add_argument("--p4", type=Path, required=True, help="TNA P4_16 source")
        command.add_argument("--out", type=Path, required=True, help="build directory")
        command.add_argument("--readme", type=Path, required=True, help="README to rewrite")
        if name == "build":
            command.add_argument("--p4info", type=Path, required=True, help="committed P4Info")
        else:
            command.add_argument(
                "--budget", type=float, default=900.0, help="seconds per chip (default 900)"
            )
    pack = commands.add_parser("pack", help="write the device config of a compiler output")
    pack.add_argument("--compiled", type=Path, required=True, help="p4c -o folder")
    pack.add_argument("--name", required=True, help="program name")
    pack.add_argument("--chip", choices=sorted(CHIPS), default="tofino")
    pack.add_argument("--output", type=Path, required=True)
    args = parser.parse_args(argv)
    try:
        if args.command == "pack":
            args.output.write_bytes(device_config(args.compiled, args.name, args.chip))
            return 0
        p4c = find_tofino_p4c(environ)
        if args.command == "build":
            return build(args.p4, args.p4info, args.out, args.readme, p4c)
        if p4c is None:
            print(f"Tofino compiler not found ({DEFAULT_P4C}, or ${P4C_ENV}): no layout search")
            return 0
        attempts = [
            attempt
            for chip in CHIPS
            for attempt in search_layouts(p4c, args.p4, args.out, chip, budget_seconds=args.budget)
        ]
        text = args.readme.read_text()
        args.readme.write_text(
            replace_between(text, LAYOUTS_BEGIN, LAYOUTS_END, layouts_table(attempts), "README")
        )
        for chip in CHIPS.values():
            best = largest([a for a in attempts if a.chip == chip])
            shown = f"{best.devices} × {best.services}" if best else "none"
            print(f"{chip.title}: largest layout that fits {shown}")
        return 0
    except SvcfpError as exc:
        print(f"tofino: error: {exc}", file=sys.stderr)
        return exc.exit_code


if __name__ == "__main__":
    sys.exit(main())
