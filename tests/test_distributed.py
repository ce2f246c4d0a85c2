"""The Dask engine against the single process on the same inputs: a local cluster of two worker
processes reads the files as tasks (Parquet activity between them) and computes fingerprints and
decisions per group of devices; activity, fingerprints, decisions and the whole evaluation must
be identical, order included."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from controller.base.errors import InputError
from controller.engine.activity import ActivityTable
from controller.engine.evaluate import EvalSettings, Windows, make_windows
from controller.engine.exporter import ExporterConfig
from controller.engine.fingerprints import FingerprintSet
from controller.engine.partition import SERIAL, Parallel, device_parts
from controller.store.storage import Storage
from svcfp import api
from svcfp.cli import main

EXPORTER = ExporterConfig(granularity=4, tau=0.9, k=2, n_min=4, n_max=8)


@pytest.fixture(scope="module")
def engine() -> Iterator[api.DaskEngine]:
    pytest.importorskip("distributed")
    # Three device groups on two workers: groups and workers do not line up.
    with api.DaskEngine(api.DaskSettings(workers=2, parts=3)) as opened:
        assert opened.workers() == 2
        yield opened


@pytest.fixture(scope="module")
def inputs(tmp_path_factory: pytest.TempPathFactory) -> tuple[tuple[Path, ...], Path]:
    """Three flow files of overlapping fleets and hours (rows to sum across files, devices
    first seen in different files) and a file that is not flow records at all."""
    folder = tmp_path_factory.mktemp("flows")
    files = []
    for devices, seed in ((8, 1), (12, 2), (5, 3)):
        out = folder / f"flows-{seed}.csv"
        args = ["synth", "--devices", str(devices), "--units", "40", "--seed", str(seed)]
        assert main([*args, "--out", str(out), "--labels-out", str(folder / f"l{seed}.csv")]) == 0
        files.append(out)
    labels = folder / "l2.csv"
    return tuple(files), labels


def same_table(a: ActivityTable, b: ActivityTable) -> None:
    assert a.devices == b.devices and a.services == b.services
    assert a.unit_seconds == b.unit_seconds
    for name in ("device", "unit", "service", "packets", "bytes"):
        assert np.array_equal(getattr(a, name), getattr(b, name)), name


def same_fingerprints(a: FingerprintSet, b: FingerprintSet) -> None:
    assert len(a) > 0
    assert (a.services, a.devices, a.granularity, a.unit_seconds) == (
        b.services,
        b.devices,
        b.granularity,
        b.unit_seconds,
    )
    for name in ("weights", "device", "start", "end", "converged"):
        assert np.array_equal(getattr(a, name), getattr(b, name)), name


def test_activity_fingerprints_and_decisions_are_the_single_process_ones(
    engine: api.DaskEngine, inputs: tuple[tuple[Path, ...], Path]
) -> None:
    files, labels = inputs
    sources = api.Sources(files=files, labels=labels)
    alone = api.read(sources, need_labels=True)
    spread = api.read(sources, need_labels=True, engine=engine)
    same_table(alone.activity, spread.activity)
    assert spread.labels == alone.labels and len(alone.labels) == 12
    assert spread.stats == alone.stats and spread.records == alone.records > 10_000
    for path in files:
        same_table(alone.per_file[path], spread.per_file[path])

    cases: tuple[tuple[Windows, bool], ...] = (
        ("exporter", False),
        ("exporter", True),
        ("whole", False),
    )
    for windows, captures in cases:
        single = make_windows(alone.activity, EXPORTER, windows, captures)
        split = make_windows(spread.activity, EXPORTER, windows, captures, engine.parallel())
        same_fingerprints(single, split)

    refs = api.enroll(alone, EXPORTER)
    decisions = api.identify(alone, refs)
    assert len(decisions) > 24
    assert [d.to_json() for d in api.identify(spread, refs, engine=engine)] == [
        d.to_json() for d in decisions
    ]


def test_the_evaluation_is_the_single_process_one(
    engine: api.DaskEngine, inputs: tuple[tuple[Path, ...], Path]
) -> None:
    files, labels = inputs
    data = api.read(api.Sources(files=files, labels=labels), need_labels=True)
    settings = EvalSettings(granularities=(1, 4, None), exporter=EXPORTER, intensities=(None,))
    alone = api.evaluate(data, settings)
    spread = api.evaluate(data, settings, engine=engine)
    assert json.dumps(spread.to_json(), sort_keys=True) == json.dumps(
        alone.to_json(), sort_keys=True
    )
    assert len(alone.results) == 6
    weighed = EvalSettings(granularities=(None,), exporter=EXPORTER, intensities=("relative",))
    assert json.dumps(api.evaluate(data, weighed, engine=engine).to_json(), sort_keys=True) == (
        json.dumps(api.evaluate(data, weighed).to_json(), sort_keys=True)
    )


def test_parts_cut_between_devices_and_keep_every_row() -> None:
    table = ActivityTable.from_records(
        [(f"d{d}", u, "tcp/443", 1 + d, 10) for d in range(5) for u in range(d + 1)]
    )
    parts = device_parts(table, 3)
    # 15 rows (d0 has 1, ..., d4 has 5): cuts near rows 5 and 10, moved back to a device's start.
    assert [p.used_devices() for p in parts] == [("d0", "d1"), ("d2", "d3"), ("d4",)]
    assert all(p.devices == table.devices for p in parts)
    same_table(ActivityTable.concat(parts), table)
    assert device_parts(table, 1) == [table]
    fps = make_windows(table, EXPORTER, "whole", False, Parallel(parts=4))
    same_fingerprints(make_windows(table, EXPORTER, "whole", False, SERIAL), fps)


def test_cli_ingest_and_evaluate_on_a_local_cluster(
    tmp_path: Path, inputs: tuple[tuple[Path, ...], Path], capsys: pytest.CaptureFixture[str]
) -> None:
    pytest.importorskip("distributed")
    files, labels = inputs
    names = [str(f) for f in files]
    common = [*names, "--labels", str(labels)]
    assert main(["ingest", *common, "--out", str(tmp_path / "one.csv")]) == 0
    dask = ["--engine", "dask", "--workers", "2"]
    db = tmp_path / "spread.db"
    out = tmp_path / "spread.csv"
    assert main(["ingest", *common, *dask, "--out", str(out), "--db", str(db)]) == 0
    assert out.read_bytes() == (tmp_path / "one.csv").read_bytes()
    with Storage(db) as store:
        stored = store.activity_table()
    assert sorted(stored.records()) == sorted(ActivityTable.from_csv(out).records())
    assert len(stored) == 1750
    capsys.readouterr()
    flags = ["--granularities", "1,4", "--granularity", "4", "--tau", "0.9", "--k", "2"]
    assert main(["evaluate", *common, *flags, "--out", str(tmp_path / "r1")]) == 0
    single = capsys.readouterr().out.splitlines()[0]
    assert main(["evaluate", *common, *flags, *dask, "--out", str(tmp_path / "r2")]) == 0
    assert capsys.readouterr().out.splitlines()[0] == single
    assert single.startswith("best: ")
    assert (tmp_path / "r1" / "metrics.json").read_text() == (
        tmp_path / "r2" / "metrics.json"
    ).read_text()


def test_a_scheduler_needs_a_shared_scratch_folder() -> None:
    with pytest.raises(InputError, match=r"give a scratch folder every worker can reach"):
        api.DaskSettings(scheduler="tcp://127.0.0.1:1")
    assert main(["ingest", "x.csv", "--out", "o.csv", "--scratch", "s"]) == 2


def test_a_scratch_folder_or_scheduler_address_that_cannot_work_is_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    flows = tmp_path / "flows.csv"
    flows.write_text("")
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    base = ["ingest", str(flows), "--out", str(tmp_path / "o.csv"), "--engine", "dask"]
    assert main([*base, "--workers", "1", "--scratch", str(blocker / "scratch")]) == 2
    assert (
        f"--scratch {blocker / 'scratch'}: cannot make the folder: Not a directory"
        in capsys.readouterr().err
    )
    assert main([*base, "--scheduler", "nonsense", "--scratch", str(tmp_path / "s")]) == 2
    assert (
        "cannot start or reach the Dask scheduler (nonsense): missing port number in address "
        "'nonsense'" in capsys.readouterr().err
    )
