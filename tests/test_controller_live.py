"""Live identification over real gRPC: devices of known profiles (and one type the references
leave out) play their schedules as frames through the reference switch in accelerated units; the
controller fingerprints and identifies them as units close, and stores what it decided."""

from __future__ import annotations

import asyncio
import math
import time
from dataclasses import replace
from pathlib import Path

import pytest

from controller.control.controller import Controller
from controller.control.live import NEXT_UNIT_KEY, LiveSettings
from controller.engine.accumulate import WindowDecision, accumulate
from controller.engine.catalogue import Catalogue
from controller.engine.exporter import ExporterConfig, export_fingerprints
from controller.engine.identify import UNKNOWN, References, enroll, identify
from controller.ingest import synth
from controller.ingest.sources import read_database
from controller.store.records import INFRASTRUCTURE
from controller.store.storage import Storage
from tests.support.switch import SERVER, Wire, config, frame, running, until

pytestmark = pytest.mark.slow

UNIT = 0.5
UNITS = 16
# Frames of a unit go out this long after it starts, well before the polls that read them end it.
SEND_AFTER = 0.1
KNOWN = ("camera", "plug", "speaker")
HELD_OUT = "hub"
EXPORTER = ExporterConfig(granularity=4, tau=0.9, k=2, n_min=4, n_max=8)
# The emulated devices: MAC → (type, switch port); the reference fleet's MACs are 02:00:00:00:00:xx.
DEVICES = {
    "02:00:00:00:01:01": ("camera", 1),
    "02:00:00:00:01:02": ("plug", 2),
    "02:00:00:00:01:03": ("speaker", 3),
    "02:00:00:00:01:04": (HELD_OUT, 4),
}
# Packets per (unit, service): with h = 1 a fingerprint depends only on which services a unit used.
MAX_PACKETS = 3


@pytest.fixture(scope="module")
def references() -> References:
    """References of the known types, enrolled from synthetic activity of their profiles."""
    profiles = synth.load_profiles()
    fleet = synth.make_fleet(profiles, 5 * len(KNOWN), kinds=KNOWN)
    hours = synth.activity(fleet, 96, 7, Catalogue.default(), unit_seconds=3600.0)
    # The same units, each standing for one accelerated unit.
    fps = export_fingerprints(replace(hours, unit_seconds=UNIT), EXPORTER)
    return enroll(fps, {d.mac: d.profile.name for d in fleet}, config=EXPORTER)


def frames_by_unit(
    devices: dict[str, tuple[str, int]] = DEVICES,
    units: int = UNITS,
    later: dict[str, tuple[str, int]] | None = None,
) -> dict[int, list[tuple[bytes, int]]]:
    """Each device's schedule as frames (and their ingress port), by unit from the start;
    `later` maps a device to the type it plays from a unit on."""
    profiles = synth.load_profiles()
    planned: dict[int, list[tuple[bytes, int]]] = {}
    for seed, (mac, (kind, port)) in enumerate(sorted(devices.items())):
        uses = synth.schedule(profiles[kind], units, 100 + seed, unit_seconds=3600.0)
        if later is not None and mac in later:
            other, at = later[mac]
            after = synth.schedule(profiles[other], units, 200 + seed, unit_seconds=3600.0)
            uses = [u for u in uses if u.unit < at] + [u for u in after if u.unit >= at]
        for use in uses:
            sport, dport = (50000, use.port) if use.role == "client" else (use.port, 50000)
            data = frame(mac, SERVER, use.proto, sport, dport, 100)
            planned.setdefault(use.unit, []).extend([(data, port)] * min(use.packets, MAX_PACKETS))
    return planned


def play(
    tmp_path: Path,
    devices: dict[str, tuple[str, int]],
    settings: LiveSettings,
    units: int,
    planned: dict[int, list[tuple[bytes, int]]],
    labels: dict[str, str] | None = None,
) -> int:
    """Run a controller on the reference switch while `planned` frames go out unit by unit,
    until every unit was fed to the exporter; the first unit. The devices file labels each
    device with its type, or with what `labels` says."""
    given = labels or {}
    # Not devices.csv: `config` writes its own there.
    listed = tmp_path / "fleet.csv"
    listed.write_text(
        "mac,label,port\n"
        + "".join(f"{m},{given.get(m, k)},{p}\n" for m, (k, p) in devices.items())
    )
    wire = Wire()

    async def scenario() -> int:
        live_config = config(
            tmp_path, wire.address, time_unit=UNIT, interval=0.05, devices=listed, live=settings
        )
        async with running(Controller(live_config)) as controller:
            start = math.floor(time.time() / UNIT) + 1
            for offset in range(units):
                await asyncio.sleep(max(0.0, (start + offset) * UNIT + SEND_AFTER - time.time()))
                for data, port in planned.get(offset, []):
                    wire.send(data, port)
            live = controller.live
            assert live is not None
            await until(lambda: (live.next_unit or 0) >= start + units, timeout=3.0)
        return start

    try:
        return asyncio.run(scenario())
    finally:
        wire.stop()


def test_live_decisions_are_stored_explained_and_match_the_offline_engine(
    references: References, tmp_path: Path
) -> None:
    settings = LiveSettings(EXPORTER, references)
    settings.check(UNIT, "references")
    start = play(tmp_path, DEVICES, settings, UNITS, frames_by_unit())

    with Storage(tmp_path / "svcfp.db") as store:
        activity = store.activity_table()
        stored_fps = store.fingerprints()
        decisions = store.decisions()
        fed_to = int(store.meta(NEXT_UNIT_KEY) or 0)
    assert fed_to >= start + UNITS
    assert set(activity.used_devices()) == set(DEVICES)

    # Every device is answered, and answered right: its type, or unknown for the held-out one.
    answers: dict[str, set[str]] = {}
    for d in decisions:
        answers.setdefault(d.device, set()).add(d.label)
    assert answers == {
        mac: {UNKNOWN if kind == HELD_OUT else kind} for mac, (kind, _) in DEVICES.items()
    }

    # The live engine decided exactly what the offline engine decides on the stored activity:
    # the same windows, weights, labels and similarities, so no unit was fed twice or skipped.
    offline = export_fingerprints(activity, EXPORTER, end_unit=fed_to)
    assert sorted(
        (f.device, f.window_start_unit, f.window_end_unit, f.fingerprint) for f in stored_fps
    ) == sorted((fp.device, fp.start_unit, fp.end_unit, fp.as_dict()) for fp in offline)
    assert sorted(
        (d.device, d.window_start_unit, d.window_end_unit, d.label, d.similarity) for d in decisions
    ) == sorted(
        (d.device, d.start_unit, d.end_unit, d.label, d.similarity)
        for d in identify(offline, references)
    )

    for d in decisions:
        why = d.explanation
        shares = [c["share"] for group in ("matched", "unexpected", "missing") for c in why[group]]
        assert math.isclose(math.fsum(shares), d.similarity, rel_tol=1e-9), d
        assert why["similarity"] == d.similarity and why["theta"] == references.theta
        assert d.representation == "G=4"


CHANGING = "02:00:00:00:01:05"
STEADY = "02:00:00:00:01:06"
CHANGE_UNITS = 40
CHANGE_AT = 12


def test_a_host_labelled_infrastructure_is_counted_but_never_identified(
    references: References, tmp_path: Path
) -> None:
    # A gateway that happens to use a plug's services: without its label it would be a plug.
    gateway = "02:00:00:00:01:02"
    settings = LiveSettings(EXPORTER, references)
    play(tmp_path, DEVICES, settings, UNITS, frames_by_unit(), {gateway: INFRASTRUCTURE})
    db = tmp_path / "svcfp.db"
    with Storage(db) as store:
        activity = store.activity_table()
        fingerprinted = {f.device for f in store.fingerprints()}
        decided = {d.device for d in store.decisions()}
        alerted = {a.device for a in store.alerts()}
        labels = {row.mac: row.label for row in store.devices()}
    assert set(activity.used_devices()) == set(DEVICES)
    assert activity.select(devices=[gateway]).packets.sum() > 0
    others = set(DEVICES) - {gateway}
    assert fingerprinted == others
    assert decided == others
    assert gateway not in alerted
    assert labels[gateway] == INFRASTRUCTURE
    # Offline, the database's activity comes without it too: both paths decide on the same set.
    assert set(read_database(db).used_devices()) == others


def test_accumulated_decisions_and_a_change_alert_for_a_device_that_changes(
    references: References, tmp_path: Path
) -> None:
    """A camera that plays the plug's profile from unit 12 on, and a speaker throughout: the
    controller stores each decision with the device's accumulated answer, exactly as the
    offline accumulation of the offline decisions, and alerts the camera's change once."""
    devices = {CHANGING: ("camera", 1), STEADY: ("speaker", 2)}
    settings = LiveSettings(EXPORTER, references)
    planned = frames_by_unit(devices, CHANGE_UNITS, {CHANGING: ("plug", CHANGE_AT)})
    play(tmp_path, devices, settings, CHANGE_UNITS, planned)

    with Storage(tmp_path / "svcfp.db") as store:
        activity = store.activity_table()
        decisions = store.decisions()
        alerts = store.alerts()
        fed_to = int(store.meta(NEXT_UNIT_KEY) or 0)
    offline = identify(export_fingerprints(activity, EXPORTER, end_unit=fed_to), references)
    beliefs = accumulate(
        references.types,
        [
            WindowDecision(d.device, d.start_unit, d.end_unit, d.best_type, d.confidence, d.known)
            for d in offline
        ],
        references.families,
    )
    assert sorted(
        (d.device, d.window_end_unit, *(d.explanation["accumulated"][k] for k in BELIEF_KEYS))
        for d in decisions
    ) == sorted((b.device, b.end_unit, *(b.to_json()[k] for k in BELIEF_KEYS)) for b in beliefs)
    camera = [b for b in beliefs if b.device == CHANGING]
    assert camera[0].label == "camera" and camera[-1].label == "plug"
    assert all(b.label == "speaker" for b in beliefs if b.device == STEADY)
    # The change is alerted once, at the window whose accumulated answer turned.
    turned = [b for b in camera if b.previous == "camera" and b.label != "camera"]
    assert len(turned) == 1
    changes = [a for a in alerts if a.kind == "behaviour_change"]
    assert [(a.device, a.details["window"][1]) for a in changes] == [(CHANGING, turned[0].end_unit)]
    assert changes[0].message.startswith("behaviour changed: was camera, now ")
    assert changes[0].details["accumulated"]["previous"] == "camera"


BELIEF_KEYS = ("label", "windows", "changed", "previous")
