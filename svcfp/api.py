"""The svcfp Python API: what the command line does, as typed functions over the library.

Researchers read their data, enroll references, identify and evaluate without a shell::

    from pathlib import Path
from typing import Any
    from svcfp import api

    captures = Path("iot-sentinel/captures")
    data = api.read(api.Sources(files=(captures,), labels=captures, tracks="capture",
                                time_unit=1.0))
    refs = api.enroll(data, windows="whole")
    decisions = api.identify(data, refs, windows="whole")
    metrics = api.evaluate(data, api.EvalSettings(windows="whole", captures=True, split="group"))

Testbed operators run a controller the same way (`api.run_controller(api.RunConfig(...))`). The
`svcfp` command is a thin layer over these functions: each subcommand builds the same objects
from its flags.

MUD (RFC 8520) profiles meet the same engine: `mud_import` turns manufacturers' MUD files into
references (and the catalogue the switch needs), `mud_export` writes what was learned as a MUD
file, `compliance` lists what identified devices use that their type's profile does not allow,
and `mud_evaluate` runs the cross-location evaluation of a MUDgee data set::

    imported = api.mud_import([Path("mud-profiles")])
    decisions = api.identify(data, imported.references, windows="whole")
    findings = api.compliance(data, decisions, api.mud_profiles([Path("mud-profiles")]))
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from controller.base.errors import InputError
from controller.base.fileio import read_json
from controller.control.config import RunConfig, RunStats, SwitchSpec
from controller.control.controller import UnitCallback, run_controller
from controller.distributed.engine import DaskEngine, DaskSettings
from controller.engine import partition
from controller.engine.catalogue import Catalogue
from controller.engine.evaluate import Dataset, EvalSettings, Progress, Windows, make_windows
from controller.engine.evaluate import evaluate as evaluate_dataset
from controller.engine.exporter import ExporterConfig
from controller.engine.identify import (
    DEFAULT_MODE,
    DEFAULT_NEIGHBOURS,
    DEFAULT_PER_TYPE_THETA,
    DEFAULT_PERCENTILE,
    DEFAULT_WEIGHTING,
    SIBLING_SHARE,
    Decision,
    Mode,
    References,
    Weighting,
)
from controller.engine.identify import enroll as enroll_fingerprints
from controller.engine.partition import SERIAL, Parallel
from controller.engine.representation import DEFAULT_INTENSITY, DEFAULT_UNIT_SECONDS
from controller.engine.results import Evaluation
from controller.ingest.sources import FileReader, Loaded, Sources, load, read_serially
from controller.mud.compliance import Finding, check_activity, decision_findings
from controller.mud.export import (
    ExportSettings,
    MudExport,
    device_support,
    export_mud,
    type_support,
)
from controller.mud.locations import (
    LocationEvaluation,
    LocationSettings,
    evaluate_locations,
    load_locations,
)
from controller.mud.mudfile import MudFile, mud_files, read_muds
from controller.mud.profile import MudProfiles
from controller.mud.references import MudImport, import_muds
from controller.mud.validate import validate_mud
from controller.store.compliance import stored_findings
from controller.store.storage import DEFAULT_DB_TIMEOUT, SourceFile, Storage, open_store

if TYPE_CHECKING:
    from controller.web.settings import WebSettings

__all__ = [
    "DaskEngine",
    "DaskSettings",
    "Decision",
    "EvalSettings",
    "Evaluation",
    "ExportSettings",
    "ExporterConfig",
    "Finding",
    "Loaded",
    "LocationSettings",
    "MudExport",
    "MudFile",
    "MudImport",
    "MudProfiles",
    "References",
    "RunConfig",
    "RunStats",
    "Sources",
    "SwitchSpec",
    "compliance",
    "enroll",
    "evaluate",
    "identify",
    "ingest",
    "labelled_compliance",
    "mud_evaluate",
    "mud_export",
    "mud_files",
    "mud_findings",
    "mud_import",
    "mud_profiles",
    "read",
    "run",
    "run_with_dashboard",
    "validate_mud_file",
]


def read(sources: Sources, need_labels: bool = False, engine: DaskEngine | None = None) -> Loaded:
    """Read activity, flow records and captures into activity by track, with their labels;
    with `engine` (an open `DaskEngine`) each raw file is read as a task on its cluster."""
    return load(sources, need_labels, reader=_reader(engine))


def _reader(engine: DaskEngine | None) -> FileReader:
    return read_serially if engine is None else engine.read_files


def _parallel(engine: DaskEngine | None) -> Parallel:
    return SERIAL if engine is None else engine.parallel()


def ingest(
    sources: Sources,
    out: Path | None = None,
    db: Path | str | None = None,
    replace: bool = False,
    engine: DaskEngine | None = None,
    db_timeout: float = DEFAULT_DB_TIMEOUT,
) -> Loaded:
    """Read flow records and captures (by MAC: a shared MAC stays one device) and write the
    activity to an activity CSV `out` and/or the database `db` (a SQLite path or a
    `postgresql://` URL, its server waited for at most `db_timeout` seconds at a time), where
    each file is added once (recognised by its content; `replace` takes back what it added
    before)."""
    if not sources.files:
        raise InputError("no input: give the flow or capture files to ingest")
    loaded = load(sources, split_shared=False, reader=_reader(engine))
    # The database first: when it refuses the files (already added, not a database), the
    # activity file given beside it is left as it was.
    if db is not None:
        with open_store(db, timeout=db_timeout) as storage:
            storage.add_sources(
                [(SourceFile.of(path), table) for path, table in loaded.per_file.items()],
                replace=replace,
            )
    if out is not None:
        loaded.activity.to_csv(out)
    return loaded


def enroll(
    data: Loaded,
    exporter: ExporterConfig | None = None,
    windows: Windows = "exporter",
    mode: Mode = DEFAULT_MODE,
    theta: float | None = None,
    percentile: float = DEFAULT_PERCENTILE,
    neighbours: int = DEFAULT_NEIGHBOURS,
    per_type: bool = DEFAULT_PER_TYPE_THETA,
    weighting: Weighting = DEFAULT_WEIGHTING,
    sibling_share: float = SIBLING_SHARE,
) -> References:
    """Reference fingerprints of the labelled tracks of `data` (θ chosen at `percentile` of the
    references' own similarity unless given; with `per_type`, per type where it can be;
    services weighed as `weighting` says; sibling families found at `sibling_share`)."""
    config = exporter if exporter is not None else ExporterConfig(intensity=DEFAULT_INTENSITY)
    fingerprints = make_windows(data.activity, config, windows, data.groups is not None)
    return enroll_fingerprints(
        fingerprints,
        data.labels,
        mode=mode,
        theta=theta,
        percentile=percentile,
        neighbours=neighbours,
        config=config,
        per_type=per_type,
        weighting=weighting,
        sibling_share=sibling_share,
    )


def identify(
    data: Loaded,
    references: References,
    exporter: ExporterConfig | None = None,
    windows: Windows = "exporter",
    engine: DaskEngine | None = None,
) -> list[Decision]:
    """Decisions, with explanations, for every fingerprint of `data` against `references`;
    the exporter settings default to the references' own. With `engine` fingerprints and
    decisions are computed per group of devices on its cluster."""
    if not math.isclose(data.activity.unit_seconds, references.unit_seconds):
        raise InputError(
            f"references use {references.unit_seconds:g} s units, the input "
            f"{data.activity.unit_seconds:g} s"
        )
    config = exporter or references.config or ExporterConfig(granularity=references.granularity)
    if (config.granularity, config.intensity) != (references.granularity, references.intensity):
        raise InputError(
            f"references are {references.representation}, the exporter "
            f"asks for {config.representation}"
        )
    parallel = _parallel(engine)
    fingerprints = make_windows(data.activity, config, windows, data.groups is not None, parallel)
    return partition.decisions(fingerprints, references, parallel)


def evaluate(
    data: Loaded,
    settings: EvalSettings,
    progress: Progress | None = None,
    engine: DaskEngine | None = None,
) -> Evaluation:
    """The time-ordered evaluation of `settings` on the labelled tracks of `data`; `progress`
    hears of each grid point done. With `engine` fingerprints are computed per group of
    devices on its cluster."""
    dataset = Dataset(data.activity, data.labels, data.groups, data.name, data.flows)
    return evaluate_dataset(dataset, settings, progress, _parallel(engine))


def run(config: RunConfig, on_unit_closed: UnitCallback | None = None) -> RunStats:
    """Run a controller until SIGINT/SIGTERM or its duration ends (the last poll is flushed)."""
    return asyncio.run(run_controller(config, on_unit_closed))


# --- MUD (RFC 8520) -----------------------------------------------------------------------------


def mud_profiles(paths: Sequence[Path], type_name: str | None = None) -> MudProfiles:
    """The profiles of the MUD files among `paths` (folders searched for `*.json`; JSON files
    in them that are no MUD document are passed over)."""
    profiles, _ = read_muds(paths, type_name)
    return MudProfiles(tuple(profiles))


def mud_import(
    paths: Sequence[Path | MudFile],
    type_name: str | None = None,
    unit_seconds: float = DEFAULT_UNIT_SECONDS,
    catalogue: Path | None = None,
    mode: Mode = DEFAULT_MODE,
    theta: float | None = None,
    percentile: float = DEFAULT_PERCENTILE,
) -> MudImport:
    """MUD files → Service List references (one per file with a service), the catalogue the
    switch needs (`catalogue`, or the built-in one, with the services it lacks), and per file
    what was dropped. `paths` may be what `mud_files` found already: folders are not listed
    again."""
    return import_muds(
        paths,
        type_name,
        unit_seconds,
        Catalogue.load_or_default(catalogue),
        mode=mode,
        theta=theta,
        percentile=percentile,
    )


def mud_export(
    type_name: str,
    settings: ExportSettings,
    references: References | None = None,
    data: Loaded | None = None,
    device: str | None = None,
    exporter: ExporterConfig | None = None,
    windows: Windows = "exporter",
) -> MudExport:
    """A MUD document for a type (from its reference fingerprints) or for one device (from its
    fingerprints in `data`), validated against RFC 8520 / RFC 8519."""
    if references is not None:
        support = type_support(references, type_name)
    elif data is not None and device is not None:
        config = exporter if exporter is not None else ExporterConfig()
        fingerprints = make_windows(data.activity, config, windows, data.groups is not None)
        support = device_support(fingerprints, device)
    else:
        raise InputError("export needs references and a type, or input data and a device")
    exported = export_mud(type_name, support, settings)
    validate_mud(exported.document, f"the MUD file of {type_name}")
    return exported


def validate_mud_file(path: Path) -> None:
    """Refuse a file that is not valid RFC 8520 / RFC 8519 JSON (the error names the element)."""
    validate_mud(read_json(path, "MUD file"), str(path))


def compliance(
    data: Loaded, decisions: Sequence[Decision], profiles: MudProfiles
) -> list[list[Finding]]:
    """Per decision, what its device used in its window that the profile of the type it was
    identified as does not allow."""
    return decision_findings(data.activity, decisions, profiles, data.catalogue)


def labelled_compliance(data: Loaded, profiles: MudProfiles) -> list[Finding]:
    """What every labelled track used that its type's profile does not allow (whole input)."""
    return check_activity(data.activity, data.labels, profiles, data.catalogue)


def mud_findings(db: Path) -> list[Finding]:
    """The compliance findings `svcfp run` stored in a controller database."""
    with Storage(db, readonly=True) as storage:
        return stored_findings(storage)


def mud_evaluate(
    root: Path, settings: LocationSettings, models: Mapping[str, str] | None = None
) -> LocationEvaluation:
    """The cross-location evaluation of a folder of MUDgee capture folders."""
    return evaluate_locations(load_locations(root, models), settings)


def run_with_dashboard(
    config: RunConfig,
    web: WebSettings,
    on_unit_closed: UnitCallback | None = None,
    on_url: Callable[[str], None] | None = None,
) -> RunStats:
    """Run a controller as `run` does, with its dashboard and metrics served at `web`."""
    # Imported here: the web stack (aiohttp, Jinja2, prometheus-client) is the `web` extra.
    from controller.web.run import run_with_dashboard as serve

    return asyncio.run(serve(config, web, on_unit_closed, on_url))
