"""Live identification without a switch: closed units in, fingerprints and decisions stored,
logged, and a restart that never feeds a unit twice."""

from __future__ import annotations

import logging
import math
from pathlib import Path

import pytest

from controller.base.errors import InputError
from controller.control.live import (
    NEXT_UNIT_KEY,
    LiveIdentification,
    LiveSettings,
    identify_fingerprints,
)
from controller.engine.activity import ActivityTable
from controller.engine.exporter import ExporterConfig, export_fingerprints
from controller.engine.identify import References, enroll
from controller.store.storage import DeviceRow, FingerprintRecord, Storage

pytest_plugins = ["tests.support.storage"]

EXPORTER = ExporterConfig(granularity=1, tau=0.9, k=1, n_min=2, n_max=4)
CAM = "02:00:00:00:00:01"
PLUG = "02:00:00:00:00:02"


def units(
    first: int, last: int, used: dict[str, tuple[str, ...]], unit_seconds: float = 1.0
) -> ActivityTable:
    """Every device of `used` sends 2 packets to each of its services in units first..last."""
    return ActivityTable.from_records(
        [
            (device, unit, service, 2, 200)
            for unit in range(first, last + 1)
            for device, services in used.items()
            for service in services
        ],
        unit_seconds=unit_seconds,
    )


USED = {CAM: ("tcp/443", "udp/53"), PLUG: ("udp/123",)}


@pytest.fixture
def references() -> References:
    fps = export_fingerprints(units(0, 7, USED), EXPORTER)
    return enroll(fps, {CAM: "camera", PLUG: "plug"}, config=EXPORTER)


def test_exports_are_stored_without_references(store: Storage) -> None:
    live = LiveIdentification(store, LiveSettings(EXPORTER), unit_seconds=1.0)
    assert live.close_units(units(10, 11, {CAM: ("tcp/443",)}), end_unit=12) == []
    assert store.fingerprints() == [
        FingerprintRecord(CAM, 10, 12, "list", {"tcp/443": 1.0}, converged=True)
    ]
    assert store.decisions() == []
    assert store.meta(NEXT_UNIT_KEY) == "12"


def test_decisions_are_stored_with_their_explanation_and_logged(
    store: Storage, references: References, caplog: pytest.LogCaptureFixture
) -> None:
    store.put_devices([DeviceRow(CAM, 7, "camera", "s1", 1, "static", 0.0, 0.0)])
    live = LiveIdentification(store, LiveSettings(EXPORTER, references), unit_seconds=1.0)
    odd: dict[str, tuple[str, ...]] = {CAM: ("tcp/443", "udp/53"), PLUG: ("udp/123", "udp/5353")}
    with caplog.at_level(logging.INFO, logger="controller.control.live"):
        decided = live.close_units(units(20, 21, odd), end_unit=22)
    assert [(d.device, d.label, d.start_unit, d.end_unit) for d in decided] == [
        (CAM, "camera", 20, 22),
        (PLUG, "unknown", 20, 22),
    ]
    stored = store.decisions()
    assert [(d.device, d.label, d.similarity) for d in stored] == [
        (CAM, "camera", 1.0),
        (PLUG, "unknown", 0.5),
    ]
    why = stored[1].explanation
    assert [c["service"] for c in why["matched"]] == ["udp/123"]
    assert [c["service"] for c in why["unexpected"]] == ["udp/5353"]
    assert why["missing"] == [] and why["best_type"] == "plug"
    assert math.fsum(c["share"] for c in why["matched"] + why["unexpected"]) == 0.5
    lines = [r.getMessage() for r in caplog.records if "event=decision" in r.getMessage()]
    assert lines == [
        f"event=decision device=7 mac={CAM} window=20..22 label=camera best_type=camera "
        "similarity=1.000 theta=1.000 accumulated=camera changed=false "
        "matched=tcp/443:0.500,udp/53:0.500 unexpected=- missing=-",
        f"event=decision device=- mac={PLUG} window=20..22 label=unknown best_type=plug "
        "similarity=0.500 theta=1.000 accumulated=unknown changed=false "
        "matched=udp/123:0.500 unexpected=udp/5353:1.000 missing=-",
    ]
    # Each decision is stored with the device's accumulated answer after it.
    accumulated = [d.explanation["accumulated"] for d in stored]
    assert [(a["label"], a["windows"], a["changed"], a["previous"]) for a in accumulated] == [
        ("camera", 1, False, "unknown"),
        ("unknown", 1, False, "unknown"),
    ]


def test_a_restart_feeds_no_unit_twice_and_starts_new_windows(tmp_path: Path) -> None:
    path = tmp_path / "live.db"
    with Storage(path) as store:
        first = LiveIdentification(store, LiveSettings(EXPORTER), unit_seconds=1.0)
        # Stopped during unit 31: it was fed as far as it had gone; the camera's window is open.
        first.close_units(units(30, 31, {CAM: ("tcp/443",)}), end_unit=32)
        first.close_units(units(32, 32, {CAM: ("tcp/443",)}), end_unit=33)
        assert [(f.window_start_unit, f.window_end_unit) for f in store.fingerprints()] == [
            (30, 32)
        ]
    with Storage(path) as store:
        again = LiveIdentification(store, LiveSettings(EXPORTER), unit_seconds=1.0)
        assert again.next_unit == 33
        # The clock hands over unit 32 again with the rest of its activity: not fed twice.
        assert again.close_units(units(32, 32, {CAM: ("udp/53",)}), end_unit=33) == []
        again.close_units(units(33, 34, {CAM: ("tcp/443",)}), end_unit=35)
        windows = [
            (f.window_start_unit, f.window_end_unit, f.fingerprint) for f in store.fingerprints()
        ]
        assert store.meta(NEXT_UNIT_KEY) == "35"
    assert windows == [(30, 32, {"tcp/443": 1.0}), (33, 35, {"tcp/443": 1.0})]


def test_a_restart_resumes_the_accumulated_answers(tmp_path: Path, references: References) -> None:
    path = tmp_path / "live.db"
    settings = LiveSettings(EXPORTER, references)
    with Storage(path) as store:
        first = LiveIdentification(store, settings, unit_seconds=1.0)
        first.close_units(units(20, 21, USED), end_unit=22)
        first.close_units(units(22, 23, USED), end_unit=24)
    with Storage(path) as store:
        again = LiveIdentification(store, settings, unit_seconds=1.0)
        again.close_units(units(24, 25, USED), end_unit=26)
        stored = store.decisions()
    # The camera's third window is its third since its answer began, across the restart.
    assert [
        (d.device, d.window_end_unit, d.explanation["accumulated"]["windows"]) for d in stored
    ] == [(CAM, 22, 1), (PLUG, 22, 1), (CAM, 24, 2), (PLUG, 24, 2), (CAM, 26, 3), (PLUG, 26, 3)]
    assert {d.explanation["accumulated"]["label"] for d in stored if d.device == CAM} == {"camera"}


def test_settings_refuse_references_of_other_units_or_representation(
    references: References,
) -> None:
    LiveSettings(EXPORTER, references).check(1.0, "refs.json")
    with pytest.raises(
        InputError, match=r"refs.json: references use 1 s units, the controller 60 s"
    ):
        LiveSettings(EXPORTER, references).check(60.0, "refs.json")
    prevalence = ExporterConfig(granularity=None, tau=0.9, k=1, n_min=2, n_max=4)
    with pytest.raises(InputError, match=r"references are list, --granularity asks for prevalence"):
        LiveSettings(prevalence, references).check(1.0, "refs.json")
    LiveSettings(prevalence).check(60.0, "no references")


def test_fingerprints_of_an_empty_batch_are_not_identified(references: References) -> None:
    assert identify_fingerprints([], references) == []
    fps = list(export_fingerprints(units(0, 1, USED), EXPORTER))
    assert [d.label for d in identify_fingerprints(fps, references)] == ["camera", "plug"]
