"""`svcfp mud`: MUD (RFC 8520) files in, out and checked.

- `import`: MUD files → reference fingerprints (one Service List per file) and the catalogue
  the switch needs to count their services; says per file what it dropped.
- `export`: a type's references, or one device's fingerprints, → a MUD file valid against the
  RFC 8520 / RFC 8519 YANG modules.
- `validate`: check MUD files against those modules.
- `evaluate`: the cross-location evaluation of a MUDgee data set (report as `svcfp evaluate`).
- `findings`: the compliance findings `svcfp run --mud` stored.

`--mud` on `svcfp identify`, `svcfp evaluate` and `svcfp run` checks devices against profiles
(see `svcfp.cli.compliance`).
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING

from controller.base.errors import InputError
from controller.base.fileio import check_outputs, csv_rows, read_text, write_text_atomically
from controller.base.macs import mac_key
from controller.engine.identify import DEFAULT_MODE, DEFAULT_PERCENTILE, MODES, References
from controller.engine.representation import representation_name
from controller.engine.services import parse_service
from controller.mud.compliance import findings_table
from controller.mud.export import DEFAULT_CACHE_VALIDITY, ExportSettings
from controller.mud.locations import LocationSettings, write_location_report
from controller.mud.profile import MudProfiles, Role
from controller.store.storage import Storage
from svcfp import api
from svcfp.cli.compliance import add_mud_argument, mud_profiles_from_args, print_findings
from svcfp.cli.engine import _add_exporter, _floats, _modes, engine_config
from svcfp.cli.inputs import (
    add_input_arguments,
    add_time_unit,
    percentile,
    read_paths,
    report_skips,
    similarity,
    sources_from_args,
)

if TYPE_CHECKING:
    Subparsers = argparse._SubParsersAction[argparse.ArgumentParser]


# --- import ---------------------------------------------------------------------------------------


def cmd_import(args: argparse.Namespace) -> int:
    """MUD files → references (and a catalogue); per file, what was dropped."""
    found = api.mud_files(args.paths)
    check_outputs(
        {"--out": args.out, "--catalogue-out": args.catalogue_out}, [f.path for f in found]
    )
    imported = api.mud_import(
        found,
        type_name=args.type,
        unit_seconds=args.time_unit,
        catalogue=args.catalogue,
        mode=args.mode,
        theta=args.theta,
        percentile=args.percentile,
    )
    refs = imported.references
    refs.save(args.out)
    if args.catalogue_out is not None:
        imported.catalogue.save(args.catalogue_out)
    summaries = [p.summary() for p in imported.profiles]
    if args.output_format == "json":
        json.dump(
            {
                "files": summaries,
                "skipped": list(imported.skipped),
                "references": len(refs.labels),
                "types": list(refs.types),
                "theta": refs.theta,
                "catalogue_services": imported.catalogue.max_id,
            },
            sys.stdout,
            indent=1,
        )
        print()
    else:
        for s in summaries:
            print(_summary_line(s))
        for skipped in imported.skipped:
            print(f"skipped: {skipped}")
    print(
        f"imported {len(imported.profiles)} MUD files: {len(refs.labels)} reference "
        f"fingerprints of {len(refs.types)} types ({representation_name(refs.granularity)}, "
        f"{refs.mode}, θ = {refs.theta:.4f}) into {args.out}"
        + (
            f"; catalogue of {imported.catalogue.max_id} services into {args.catalogue_out}"
            if args.catalogue_out is not None
            else ""
        ),
        file=sys.stderr,
    )
    for profile in imported.unfingerprinted:
        print(
            f"svcfp mud import: note: {profile.source}: allows no single service (only "
            f"{', '.join(r.label for r in profile.compliance_only) or 'nothing'}): no reference",
            file=sys.stderr,
        )
    return 0


def _summary_line(summary: dict[str, object]) -> str:
    services = summary["services"]
    assert isinstance(services, list)
    dropped = summary["dropped"]
    assert isinstance(dropped, dict)
    only = summary["compliance_only"]
    assert isinstance(only, list)
    parts = [
        f"{summary['file']}: {summary['type']}: {len(services)} services "
        f"({', '.join(services) or '-'})",
        f"compliance only: {', '.join(only)}" if only else "",
        "dropped: " + (", ".join(f"{k} {v}" for k, v in sorted(dropped.items())) or "nothing"),
    ]
    notes = summary["notes"]
    assert isinstance(notes, list)
    parts += [f"note: {n}" for n in notes]
    return "; ".join(p for p in parts if p)


# --- export ---------------------------------------------------------------------------------------


def cmd_export(args: argparse.Namespace) -> int:
    """A type's or a device's learned fingerprint → a valid MUD file."""
    inputs = [*read_paths(sources_from_args(args)), *args.mud]
    if args.references is not None:
        inputs.append(args.references)
    check_outputs({"--out": args.out}, inputs)
    served = frozenset(s.strip() for s in args.served.split(",") if s.strip())
    for name in sorted(served):
        try:
            parse_service(name)
        except ValueError:
            raise InputError(f"--served {name!r}: not a service name (e.g. tcp/80)") from None
    profiles = mud_profiles_from_args(args)
    if args.references is not None:
        if args.device is not None or args.files:
            raise InputError("--references exports a type: give --type, not --device or files")
        if args.type is None:
            raise InputError("--references needs --type: the type to export")
        refs = References.load(args.references)
        type_name = args.type
    else:
        if args.device is None:
            raise InputError("give --references and --type, or input data and --device")
        refs = None
        device = mac_key(args.device)
        type_name = args.type or device
    roles = {} if profiles is None else _roles(profiles, type_name)
    settings = ExportSettings(
        min_support=args.min_support,
        served=served,
        roles=roles,
        mud_url=args.mud_url,
        systeminfo=args.systeminfo,
        mfg_name=args.mfg_name,
        cache_validity=args.cache_validity,
    )
    if refs is not None:
        exported = api.mud_export(type_name, settings, references=refs)
    else:
        sources = sources_from_args(args)
        if not sources.all_devices and sources.labels is None:
            sources = replace(sources, all_devices=True)
        data = api.read(sources)
        report_skips("mud export", data)
        exported = api.mud_export(
            type_name,
            settings,
            data=data,
            device=device,
            exporter=engine_config(args),
            windows=args.windows,
        )
    write_text_atomically(args.out, json.dumps(exported.document, indent=2) + "\n")
    print(
        f"wrote {args.out}: {exported.type}, {len(exported.rules)} services "
        f"({', '.join(r.label for r in exported.rules)})"
    )
    if exported.rare:
        print(f"left out as rare (support < {args.min_support:g}): {', '.join(exported.rare)}")
    if exported.unwritable:
        print(f"left out (not one protocol and port): {', '.join(exported.unwritable)}")
    return 0


def _roles(profiles: MudProfiles, type_name: str) -> dict[str, frozenset[Role]]:
    roles: dict[str, set[Role]] = {}
    for p in profiles.profiles:
        if p.type == type_name:
            for service, found in p.roles().items():
                roles.setdefault(service, set()).update(found)
    return {s: frozenset(v) for s, v in roles.items()}


# --- validate, evaluate, findings -----------------------------------------------------------------


def cmd_validate(args: argparse.Namespace) -> int:
    """Check MUD files against the RFC 8520 / RFC 8519 YANG modules; 2 if any is invalid."""
    bad = 0
    for path in args.files:
        try:
            api.validate_mud_file(path)
        except InputError as exc:
            bad += 1
            print(f"invalid: {exc}")
            continue
        print(f"valid: {path}")
    print(f"{len(args.files) - bad} valid, {bad} invalid", file=sys.stderr)
    return 2 if bad else 0


def cmd_evaluate(args: argparse.Namespace) -> int:
    """The cross-location evaluation of a MUDgee data set; writes the report."""
    from controller.engine.report import prepare_report_folder

    prepare_report_folder(args.out)
    settings = LocationSettings(
        modes=_modes(args.modes),
        percentiles=args.percentiles,
        theta=args.theta,
        threshold=args.threshold,
    )
    models = _read_models(args.models) if args.models is not None else None
    metrics = api.mud_evaluate(args.root, settings, models)
    for path in write_location_report(metrics, args.out):
        print(f"wrote {path}")
    return 0


def _read_models(path: Path) -> dict[str, str]:
    """A `folder,model` CSV."""
    models: dict[str, str] = {}
    for line, row in enumerate(csv_rows(path, read_text(path, "models").splitlines()), start=1):
        if not row or row[0].startswith("#") or (line == 1 and row[:1] == ["folder"]):
            continue
        if len(row) != 2 or not row[0].strip() or not row[1].strip():
            raise InputError(f"{path}:{line}: expected 'folder,model'")
        models[row[0].strip()] = row[1].strip()
    return models


def cmd_findings(args: argparse.Namespace) -> int:
    """The compliance findings a controller stored."""
    findings = api.mud_findings(args.db)
    with Storage(args.db, readonly=True) as storage:
        unit_seconds = storage.unit_seconds()
    if args.output_format == "json":
        json.dump([f.to_json(unit_seconds) for f in findings], sys.stdout, indent=1)
        print()
    elif args.output_format == "markdown":
        print("\n".join(findings_table(findings, unit_seconds)))
    else:
        print_findings(f"compliance findings in {args.db}", findings, unit_seconds)
    return 0


def register(subparsers: Subparsers) -> None:
    """Add `svcfp mud` and its subcommands."""
    mud = subparsers.add_parser("mud", help="MUD (RFC 8520): import, export, validate, evaluate")
    commands = mud.add_subparsers(dest="mud_command", metavar="SUBCOMMAND", required=True)

    p = commands.add_parser("import", help="MUD files → reference fingerprints and a catalogue")
    p.add_argument("paths", nargs="+", type=Path, metavar="PATH", help="MUD files or folders")
    p.add_argument("--out", type=Path, required=True, help="references JSON to write")
    p.add_argument(
        "--catalogue-out", type=Path, help="catalogue JSON to write: the switch's service entries"
    )
    p.add_argument("--catalogue", type=Path, help="catalogue to extend (default: the built-in one)")
    p.add_argument(
        "--type", help="type of every file (default: each file's model-name, else systeminfo)"
    )
    add_time_unit(p, 3600.0)
    p.add_argument("--mode", choices=MODES, default=DEFAULT_MODE, help=f"default: {DEFAULT_MODE}")
    threshold = p.add_mutually_exclusive_group()
    threshold.add_argument(
        "--theta", type=similarity, help="open-set θ (default: chosen, see --percentile)"
    )
    threshold.add_argument(
        "--percentile",
        type=percentile,
        default=DEFAULT_PERCENTILE,
        help="θ = this percentile of the profiles' leave-one-out own-type similarity, where a "
        f"type has two (default: {DEFAULT_PERCENTILE}; 0 without)",
    )
    p.add_argument("--output-format", choices=["table", "json"], default="table")
    p.set_defaults(func=cmd_import)

    p = commands.add_parser("export", help="a type's or a device's fingerprint → a MUD file")
    add_input_arguments(p)
    _add_exporter(p)
    p.add_argument("--references", type=Path, help="references JSON: export the type --type")
    p.add_argument("--device", help="export this device (MAC) of the input data")
    p.add_argument("--type", help="the type (model-name) the file describes")
    p.add_argument("--out", type=Path, required=True, help="MUD file to write")
    p.add_argument(
        "--min-support",
        type=float,
        default=0.0,
        help="leave out services used in a smaller share of the fingerprints (prevalence: "
        "mean share of units) (default: 0, every service used)",
    )
    p.add_argument(
        "--served", default="", help="services the device offers (server role), comma-separated"
    )
    add_mud_argument(p)
    p.add_argument("--mud-url", help="the file's MUD URL (default: a placeholder on example.com)")
    p.add_argument("--systeminfo", help="the file's systeminfo text")
    p.add_argument("--mfg-name", help="the manufacturer's name")
    p.add_argument(
        "--cache-validity",
        type=int,
        default=DEFAULT_CACHE_VALIDITY,
        help=f"hours a MUD manager may cache the file (default: {DEFAULT_CACHE_VALIDITY})",
    )
    p.set_defaults(func=cmd_export)

    p = commands.add_parser("validate", help="check MUD files against RFC 8520 / RFC 8519")
    p.add_argument("files", nargs="+", type=Path, metavar="FILE")
    p.set_defaults(func=cmd_validate)

    p = commands.add_parser("evaluate", help="cross-location evaluation of a MUDgee data set")
    p.add_argument("root", type=Path, help="folder of capture folders (MUD files + flows)")
    p.add_argument("--out", type=Path, required=True, help="report directory")
    p.add_argument("--modes", default=",".join(MODES), help="matching modes (default: both)")
    threshold = p.add_mutually_exclusive_group()
    threshold.add_argument(
        "--percentiles",
        type=_floats,
        default=LocationSettings().percentiles,
        help="θ percentiles to compare (default: "
        + ",".join(f"{v:g}" for v in LocationSettings().percentiles)
        + ")",
    )
    threshold.add_argument("--theta", type=similarity, help="a fixed θ instead of percentiles")
    p.add_argument("--threshold", type=int, default=1, help="h: packets for a service to count")
    p.add_argument("--models", type=Path, help="'folder,model' CSV (default: from folder names)")
    p.set_defaults(func=cmd_evaluate)

    p = commands.add_parser("findings", help="compliance findings stored by svcfp run --mud")
    p.add_argument("--db", type=Path, required=True, help="the controller database")
    p.add_argument("--output-format", choices=["table", "json", "markdown"], default="table")
    p.set_defaults(func=cmd_findings)
