"""`svcfp enroll`, `svcfp identify` and `svcfp evaluate`: the fingerprint engine from the shell.

Inputs are read by `controller.ingest.sources` (the flags are `svcfp.cli.inputs`): activity CSVs,
a controller database, or flow records and captures in any format ingested on the fly.
`--tracks capture` treats every input file as its own observation of its devices (track keys
"<mac>#<file>"), which is how capture data sets such as IoT Sentinel are evaluated.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from tqdm import tqdm

from controller.base.errors import InputError
from controller.base.fileio import check_outputs, write_text_atomically
from controller.engine.evaluate import (
    CATALOGUES,
    DEFAULT_GRANULARITIES,
    DEFAULT_INTENSITIES,
    DEFAULT_PREFIXES,
    DEFAULT_TRAIN_FRACTION,
    SPLITS,
    CatalogueChoice,
    EvalSettings,
    Windows,
)
from controller.engine.exporter import (
    DEFAULT_K,
    DEFAULT_N_MAX,
    DEFAULT_N_MIN,
    DEFAULT_TAU,
    ExporterConfig,
)
from controller.engine.identify import (
    DEFAULT_MODE,
    DEFAULT_NEIGHBOURS,
    DEFAULT_PER_TYPE_THETA,
    DEFAULT_PERCENTILE,
    DEFAULT_WEIGHTING,
    MODES,
    SIBLING_SHARE,
    UNKNOWN,
    WEIGHTINGS,
    Decision,
    Mode,
    References,
    Weighting,
)
from controller.engine.report import prepare_report_folder, write_report
from controller.engine.representation import (
    DEFAULT_GRANULARITY,
    DEFAULT_INTENSITY,
    DEFAULT_THRESHOLD,
    INTENSITIES,
    INTENSITY_NAMES,
    Intensity,
    parse_granularity,
    representation_name,
)
from controller.mud.compliance import Finding, findings_table
from controller.mud.profile import MudProfiles
from svcfp import api
from svcfp.cli.compliance import add_mud_argument, mud_profiles_from_args, print_findings
from svcfp.cli.inputs import (
    add_cluster_arguments,
    add_input_arguments,
    engine_from_args,
    percentile,
    read_paths,
    report_skips,
    similarity,
    sources_from_args,
    time_unit,
)

if TYPE_CHECKING:
    Subparsers = argparse._SubParsersAction[argparse.ArgumentParser]

Number = TypeVar("Number", int, float)
KEEP: Any = type("Keep", (), {"__repr__": lambda self: "KEEP"})()
"""The default of an exporter flag that keeps the references' setting (None is a setting)."""


# --- flags ----------------------------------------------------------------------------------------


def _granularity(text: str) -> int | None:
    try:
        return parse_granularity(text)
    except InputError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _granularities(text: str) -> tuple[int | None, ...]:
    return tuple(_granularity(part) for part in text.split(",") if part.strip())


def _positives(kind: Callable[[str], Number], noun: str) -> Callable[[str], tuple[Number, ...]]:
    """An argparse type: a comma-separated list of positive `noun` (numbers, integers)."""

    def parse(text: str) -> tuple[Number, ...]:
        try:
            values = tuple(kind(part) for part in text.split(",") if part.strip())
        except ValueError:
            raise argparse.ArgumentTypeError(
                f"expected comma-separated {noun}, got {text!r}"
            ) from None
        if not values or any(v <= 0 for v in values):
            raise argparse.ArgumentTypeError(f"expected positive {noun}, got {text!r}")
        return values

    return parse


_floats = _positives(float, "numbers")
# A bad time unit is refused by `time_unit` itself, in its own words.
_time_units = _positives(time_unit, "time units in seconds")
_units = _positives(int, "integers")


def _modes(text: str) -> tuple[Mode, ...]:
    chosen: list[Mode] = []
    for part in text.split(","):
        name = part.strip()
        if name not in MODES:
            raise InputError(f"--modes: {name!r} is not one of {', '.join(MODES)}")
        chosen.append("nearest" if name == "nearest" else "centroid")
    return tuple(chosen)


def _add_exporter(
    parser: argparse.ArgumentParser, defaults: bool = True, windows: bool = True
) -> None:
    group = parser.add_argument_group("fingerprints")

    def default(value: Any) -> Any:
        return value if defaults else KEEP

    flags: tuple[tuple[str, Callable[[str], Any], Any, str], ...] = (
        (
            "--threshold",
            int,
            DEFAULT_THRESHOLD,
            "h: packets per unit for a service to count as used",
        ),
        ("--granularity", _granularity, DEFAULT_GRANULARITY, "G: list, an integer, or prevalence"),
        ("--tau", float, DEFAULT_TAU, "τ: similarity to the previous unit meaning unchanged"),
        ("--k", int, DEFAULT_K, "unchanged units in a row for convergence"),
        ("--n-min", int, DEFAULT_N_MIN, "fewest units in a converged window"),
        ("--n-max", int, DEFAULT_N_MAX, "export unconverged windows at this many units"),
    )
    for flag, kind, value, meaning in flags:
        shown = representation_name(value) if kind is _granularity else value
        group.add_argument(
            flag, type=kind, default=default(value), help=f"{meaning} (default: {shown})"
        )
    if not windows:
        return
    group.add_argument(
        "--windows",
        choices=["exporter", "whole"],
        default="exporter" if defaults else None,
        help="exporter: converged windows; whole: one window per track's active span "
        "(default: exporter)",
    )


def _add_matching(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("matching")
    # A θ given is the θ used: a percentile to choose it by would go unheard.
    threshold = group.add_mutually_exclusive_group()
    threshold.add_argument(
        "--theta",
        type=similarity,
        help="open-set threshold θ (default: chosen from the references, see --percentile)",
    )
    threshold.add_argument(
        "--percentile",
        type=percentile,
        default=DEFAULT_PERCENTILE,
        help="θ = this percentile of the references' leave-one-out own-type similarity "
        f"(default: {DEFAULT_PERCENTILE})",
    )
    group.add_argument(
        "--neighbours",
        type=int,
        default=DEFAULT_NEIGHBOURS,
        help=f"nearest references that vote (default: {DEFAULT_NEIGHBOURS})",
    )


def add_engine_arguments(parser: argparse.ArgumentParser) -> None:
    """The exporter's flags (h, G, τ, k, n_min, n_max, intensity) and θ for a command that
    fingerprints activity unit by unit; a flag left out keeps the references' setting."""
    _add_exporter(parser, defaults=False, windows=False)
    _add_intensity(parser, defaults=False)
    parser.add_argument("--theta", type=similarity, help="override the references' θ")


# --- intensity, per-type thresholds and the evaluation grid ---------------------------------------

INTENSITY_CHOICES = ("none", *INTENSITIES)


def _intensity(text: str) -> Intensity | None:
    name = text.strip().lower()
    if name in ("none", "presence", ""):
        return None
    for intensity in INTENSITIES:
        if name in (intensity, INTENSITY_NAMES[intensity]):
            return intensity
    raise argparse.ArgumentTypeError(
        f"intensity {text!r}: choose one of {', '.join(INTENSITY_CHOICES)}"
    )


def _intensities(text: str) -> tuple[Intensity | None, ...]:
    return tuple(_intensity(part) for part in text.split(",") if part.strip())


def _add_intensity(parser: argparse.ArgumentParser, defaults: bool = True) -> None:
    """--intensity: what fingerprints say of how much each service is used."""
    parser.add_argument(
        "--intensity",
        type=_intensity,
        default=DEFAULT_INTENSITY if defaults else KEEP,
        help="intensity weights next to prevalence: none (the paper's presence-only "
        "fingerprints), relative (packet share and packet size, independent of the "
        "observation rate), sized (relative, and packet sizes matched within τ the references "
        "learn per service, the more a service's size varies within a type the wider) "
        "or absolute (packets per unit and packet size) "
        + (
            f"(default: {DEFAULT_INTENSITY or 'none'})"
            if defaults
            else "(default: the references' setting)"
        ),
    )


def _add_thresholds(parser: argparse.ArgumentParser) -> None:
    """--per-type-theta: one θ per known type, from its own references."""
    parser.add_argument(
        "--per-type-theta",
        action=argparse.BooleanOptionalAction,
        default=DEFAULT_PER_TYPE_THETA,
        help="give every type with enough references its own θ (the --percentile of its own "
        f"leave-one-out similarities) instead of one θ for all (default: "
        f"{'on' if DEFAULT_PER_TYPE_THETA else 'off'})",
    )


def _add_families(parser: argparse.ArgumentParser) -> None:
    """--sibling-share: how alike two types' references must be to be siblings."""
    parser.add_argument(
        "--sibling-share",
        type=float,
        default=SIBLING_SHARE,
        metavar="S",
        help="a type is a sibling of another (the references cannot tell them apart) when at "
        "least this share of its references, each left out, score the other as high as their "
        f"own type; in (0, 1] (default: {SIBLING_SHARE:g})",
    )


Choice = TypeVar("Choice", bound=str)


def _choices(text: str, allowed: tuple[Choice, ...], what: str) -> tuple[Choice, ...]:
    """A comma-separated list of names, each one of `allowed` (`what` names one in errors)."""
    chosen: list[Choice] = []
    for part in text.split(","):
        name = part.strip()
        if not name:
            continue
        found = [choice for choice in allowed if choice == name]
        if not found:
            raise argparse.ArgumentTypeError(f"{what} {name!r}: choose from {', '.join(allowed)}")
        chosen.append(found[0])
    if not chosen:
        raise argparse.ArgumentTypeError(f"expected one or more of {', '.join(allowed)}")
    return tuple(chosen)


def _weightings(text: str) -> tuple[Weighting, ...]:
    return _choices(text, WEIGHTINGS, "service weighting")


def _catalogues(text: str) -> tuple[CatalogueChoice, ...]:
    return _choices(text, CATALOGUES, "catalogue")


def _add_grid(parser: argparse.ArgumentParser) -> None:
    """The evaluation grid's intensity, neighbour, sampling and catalogue axes."""
    parser.add_argument(
        "--catalogues",
        type=_catalogues,
        default=("built-in",),
        help="service catalogues to compare: built-in (services as ingested) and/or "
        "train-learned (per split, the most used ports of the training traffic alone; needs "
        "flow records or captures) (default: built-in)",
    )
    parser.add_argument(
        "--intensities",
        type=_intensities,
        default=DEFAULT_INTENSITIES,
        help="intensities to compare, each with every granularity (default: "
        + ",".join("none" if i is None else i for i in DEFAULT_INTENSITIES)
        + ")",
    )
    parser.add_argument(
        "--service-weightings",
        type=_weightings,
        default=(DEFAULT_WEIGHTING,),
        help="service weightings of the references to compare: none (every service alike) "
        f"and/or idf (rarer services among the known types weigh more) (default: "
        f"{DEFAULT_WEIGHTING})",
    )
    parser.add_argument(
        "--neighbour-counts",
        type=_units,
        help="nearest references that vote, several to compare (default: --neighbours)",
    )
    parser.add_argument(
        "--sampling",
        type=_units,
        default=(),
        help="also identify the test data observed through 1:N packet sampling, for each N "
        "given, e.g. 10,100 (default: none)",
    )


def engine_config(args: argparse.Namespace, base: ExporterConfig | None = None) -> ExporterConfig:
    """The exporter settings of `base` (default: the module defaults) with the flags given."""
    start = base or ExporterConfig()
    values = {
        "threshold": args.threshold,
        "tau": args.tau,
        "k": args.k,
        "n_min": args.n_min,
        "n_max": args.n_max,
    }
    config = replace(start, **{k: v for k, v in values.items() if v is not KEEP})
    # None is a setting of its own here (presence-only, prevalence): only KEEP keeps base's.
    granularity = args.granularity
    if granularity is not KEEP:
        config = replace(config, granularity=granularity)
    intensity = getattr(args, "intensity", None if base is None else KEEP)
    if intensity is not KEEP:
        config = replace(config, intensity=intensity)
    return config


# --- commands -------------------------------------------------------------------------------------


def cmd_enroll(args: argparse.Namespace) -> int:
    """Enroll reference fingerprints from labelled activity."""
    if args.theta is not None and args.per_type_theta:
        raise InputError(
            "--per-type-theta chooses each type's θ at --percentile: not with --theta, one θ for "
            "every type"
        )
    sources = sources_from_args(args)
    check_outputs({"--out": args.out}, read_paths(sources))
    inputs = api.read(sources, need_labels=True)
    report_skips("enroll", inputs)
    refs = api.enroll(
        inputs,
        engine_config(args),
        args.windows,
        mode=args.mode,
        theta=args.theta,
        percentile=args.percentile,
        neighbours=args.neighbours,
        per_type=args.per_type_theta,
        weighting=args.service_weighting,
        sibling_share=args.sibling_share,
    )
    refs.save(args.out)
    counts = Counter(refs.labels)
    print(
        f"enrolled {len(refs.labels)} reference fingerprints of {len(counts)} types "
        f"({refs.representation}, {refs.mode}"
        + ("" if refs.weighting == "none" else f", {refs.weighting} service weights")
        + f", θ = {refs.theta:.4f}"
        + (", per-type θ" if refs.thetas is not None else "")
        + f") into {args.out}"
    )
    for label, n in sorted(counts.items()):
        print(f"  {label}: {n}")
    for family in refs.families:
        print(f"  not told apart: {' + '.join(family)}")
    return 0


def _decision_line(d: Decision) -> str:
    why = d.explanation
    matched = ", ".join(f"{c.service}+{c.share:.3f}" for c in why.matched) or "-"
    unexpected = ", ".join(c.service for c in why.unexpected) or "-"
    missing = ", ".join(c.service for c in why.missing) or "-"
    siblings = f"\tnot told apart from: {', '.join(d.siblings)}" if d.siblings else ""
    return (
        f"{d.device}\t{d.start_unit}-{d.end_unit}\t{d.label}\t{d.best_type}\t{d.similarity:.3f}"
        f"\tmatched: {matched}\tunexpected: {unexpected}\tmissing: {missing}{siblings}"
    )


def _decisions(
    args: argparse.Namespace, refs: References, inputs: api.Loaded, engine: api.DaskEngine | None
) -> list[Decision]:
    if not math.isclose(inputs.activity.unit_seconds, refs.unit_seconds):
        raise InputError(
            f"{args.references}: references use {refs.unit_seconds:g} s units, the input "
            f"{inputs.activity.unit_seconds:g} s; pass --time-unit {refs.unit_seconds:g}"
        )
    config = engine_config(args, refs.config)
    if (config.granularity, config.intensity) != (refs.granularity, refs.intensity):
        raise InputError(
            f"{args.references}: references are {refs.representation}, "
            f"{'--granularity' if refs.intensity == config.intensity else '--intensity'} asks "
            f"for {config.representation}"
        )
    windows: Windows = "whole" if args.windows == "whole" else "exporter"
    return api.identify(inputs, refs, config, windows, engine)


def cmd_identify(args: argparse.Namespace) -> int:
    """Identify the devices of the input against enrolled references."""
    refs = References.load(args.references)
    if args.theta is not None:
        refs = refs.with_settings(theta=args.theta)
    if args.neighbours is not None:
        refs = refs.with_settings(neighbours=args.neighbours)
    sources = sources_from_args(args)
    if sources.time_unit is None:
        sources = replace(sources, time_unit=refs.unit_seconds)
    with engine_from_args(args) as engine:
        inputs = api.read(sources, engine=engine)
        report_skips("identify", inputs)
        decisions = _decisions(args, refs, inputs, engine)
    profiles = mud_profiles_from_args(args)
    findings = (
        api.compliance(inputs, decisions, profiles)
        if profiles is not None
        else [[] for _ in decisions]
    )
    if args.output_format == "json":
        out = [d.to_json() for d in decisions]
        if profiles is not None:
            unit = inputs.activity.unit_seconds
            for entry, found in zip(out, findings, strict=True):
                entry["compliance"] = [f.to_json(unit) for f in found]
        json.dump(out, sys.stdout, indent=1)
        print()
    else:
        print("device\twindow\tlabel\tbest type\tsimilarity\texplanation")
        for d in decisions:
            print(_decision_line(d))
        if profiles is not None:
            print()
            print_findings(
                "MUD compliance findings",
                [f for found in findings for f in found],
                inputs.activity.unit_seconds,
            )
    known = sum(d.label != UNKNOWN for d in decisions)
    print(
        f"{len(decisions)} decisions, {known} known, {len(decisions) - known} unknown",
        file=sys.stderr,
    )
    return 0


def cmd_evaluate(args: argparse.Namespace) -> int:
    """Evaluate the method over a grid of representations and time units; write a report."""
    prepare_report_folder(args.out)
    with engine_from_args(args) as engine:
        return _evaluate(args, engine)


def _evaluate(args: argparse.Namespace, engine: api.DaskEngine | None) -> int:
    sources = replace(sources_from_args(args), flow_cells="train-learned" in args.catalogues)
    settings = EvalSettings(
        granularities=args.granularities,
        unit_seconds=args.time_units or (),
        exporter=engine_config(args),
        windows=args.windows,
        captures=args.tracks == "capture",
        split=args.split,
        train_fraction=args.train_fraction,
        modes=_modes(args.modes),
        neighbours=args.neighbour_counts or (args.neighbours,),
        percentile=args.percentile,
        theta=args.theta,
        prefixes=args.prefixes,
        intensities=args.intensities,
        sampling=args.sampling,
        catalogues=args.catalogues,
        weightings=args.service_weightings,
        sibling_share=args.sibling_share,
    )
    # Settings and profiles are checked before the inputs are read and evaluated (minutes).
    profiles = mud_profiles_from_args(args)
    inputs = api.read(sources, need_labels=True, engine=engine)
    report_skips("evaluate", inputs)
    show = sys.stderr.isatty() and not args.no_progress
    with tqdm(desc="evaluate", disable=not show) as bar:

        def advance(done: int, total: int) -> None:
            bar.total = total
            bar.update(done - bar.n)

        metrics = api.evaluate(inputs, settings, progress=advance, engine=engine)
    sections: list[str] = []
    if profiles is not None:
        findings = api.labelled_compliance(inputs, profiles)
        unit = inputs.activity.unit_seconds
        sections.append(compliance_section(findings, profiles, unit))
        write_text_atomically(
            args.out / "compliance.json",
            json.dumps([f.to_json(unit) for f in findings], indent=1) + "\n",
        )
    paths = write_report(metrics, args.out, sections)
    if profiles is not None:
        paths.append(args.out / "compliance.json")
    best, chosen = metrics.best(), metrics.chosen()
    print(
        f"best: {best.label}: "
        f"accuracy {best.closed_set.accuracy:.3f}, macro-F1 {best.closed_set.macro_f1:.3f}"
    )
    if chosen is not None:
        print(
            f"chosen on the training windows: {chosen.label} (left-out accuracy "
            f"{chosen.train_accuracy:.3f}): accuracy {chosen.closed_set.accuracy:.3f}, "
            f"macro-F1 {chosen.closed_set.macro_f1:.3f}"
        )
    for path in paths:
        print(f"wrote {path}")
    return 0


def compliance_section(
    findings: Sequence[Finding], profiles: MudProfiles, unit_seconds: float
) -> str:
    """The report section listing what labelled devices use that their type's profile does
    not allow."""
    lines = [
        "## MUD compliance",
        "",
        f"Every service a labelled device used that the MUD profile of its type does not allow "
        f"(profiles of {len(profiles.types)} types: {', '.join(profiles.types)}). "
        f"{len(findings)} findings.",
        "",
        *findings_table(findings, unit_seconds),
    ]
    return "\n".join(lines)


def register(subparsers: Subparsers) -> None:
    """Add `enroll`, `identify` and `evaluate`."""
    p = subparsers.add_parser("enroll", help="enroll reference fingerprints from labelled data")
    add_input_arguments(p)
    _add_exporter(p)
    _add_intensity(p)
    _add_matching(p)
    _add_thresholds(p)
    _add_families(p)
    p.add_argument("--mode", choices=MODES, default=DEFAULT_MODE, help=f"default: {DEFAULT_MODE}")
    p.add_argument(
        "--service-weighting",
        choices=WEIGHTINGS,
        default=DEFAULT_WEIGHTING,
        help="none: every service alike; idf: a service fewer known types use weighs more "
        f"(default: {DEFAULT_WEIGHTING})",
    )
    p.add_argument("--out", type=Path, required=True, help="references JSON to write")
    p.set_defaults(func=cmd_enroll)

    p = subparsers.add_parser("identify", help="identify devices against references")
    add_input_arguments(p)
    add_cluster_arguments(p)
    _add_exporter(p, defaults=False)
    _add_intensity(p, defaults=False)
    p.add_argument("--references", type=Path, required=True, help="references JSON from enroll")
    p.add_argument("--theta", type=similarity, help="override the references' θ")
    p.add_argument("--neighbours", type=int, help="override the references' neighbour count")
    p.add_argument(
        "--output-format",
        choices=["table", "json"],
        default="table",
        help="decisions as a table or as JSON (default: table)",
    )
    add_mud_argument(p)
    p.set_defaults(func=cmd_identify)

    p = subparsers.add_parser("evaluate", help="evaluate identification and write a report")
    add_input_arguments(p)
    add_cluster_arguments(p)
    _add_exporter(p)
    _add_matching(p)
    _add_families(p)
    _add_grid(p)
    p.add_argument(
        "--granularities",
        type=_granularities,
        default=DEFAULT_GRANULARITIES,
        help="representations to compare (default: "
        + ",".join(representation_name(g) for g in DEFAULT_GRANULARITIES)
        + ")",
    )
    p.add_argument(
        "--time-units",
        type=_time_units,
        metavar="SECONDS,...",
        help="time units in seconds to compare (default: --time-unit)",
    )
    p.add_argument(
        "--prefixes",
        type=_units,
        default=DEFAULT_PREFIXES,
        help="with --tracks capture: units of each test capture seen for early identification "
        f"(default: {','.join(map(str, DEFAULT_PREFIXES))})",
    )
    p.add_argument(
        "--split",
        choices=SPLITS,
        default="time",
        help="time: each device's windows in time order; group: each type's captures (groups) "
        "in time order; instance: each type's first devices train, its other devices test "
        "(types with one device split in time) (default: time)",
    )
    p.add_argument(
        "--train-fraction",
        type=float,
        default=DEFAULT_TRAIN_FRACTION,
        help=f"share of each device's windows (or type's groups) that train "
        f"(default: {DEFAULT_TRAIN_FRACTION})",
    )
    p.add_argument("--modes", default=",".join(MODES), help="matching modes (default: both)")
    p.add_argument("--out", type=Path, required=True, help="report directory")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    add_mud_argument(p)
    p.set_defaults(func=cmd_evaluate)
