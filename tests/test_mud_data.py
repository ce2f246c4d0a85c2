"""The MUD commands on every file of the shared MUD data set (real MUDgee output), and the
cross-location evaluation's numbers on it."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path

import pytest

from controller.base.errors import InputError
from controller.engine.catalogue import Catalogue
from controller.ingest.files import detect_format, read_file
from controller.mud.export import ExportSettings, export_mud
from controller.mud.flows import read_flows
from controller.mud.locations import LocationSettings, evaluate_locations, load_locations
from controller.mud.mudfile import NotMud, parse_mud, read_mud
from controller.mud.references import import_muds
from controller.mud.validate import validate_mud
from svcfp.cli import main

pytestmark = pytest.mark.data

WHEN = datetime(2024, 1, 1, tzinfo=UTC)


@pytest.fixture(scope="module")
def profiles_root() -> Path:
    from tests.support.paths import data_dir

    found = data_dir()
    assert found is not None
    return found / "mud-profiles"


def test_every_json_file_imports_exports_validly_and_imports_back(profiles_root: Path) -> None:
    files = sorted(profiles_root.rglob("*.json"))
    assert len(files) == 95
    imported = 0
    for path in files:
        try:
            profile = read_mud(path)
        except NotMud as exc:
            # The data set's own index, not a MUD file.
            assert path.name == "summary.json", exc
            continue
        imported += 1
        assert profile.rules, path
        if not profile.services:
            # Only port ranges (any UDP port to a DNS name): nothing to fingerprint or export.
            assert [r.label for r in profile.rules] == ["udp/0-65535"], path
            continue
        exported = export_mud(
            profile.type,
            dict.fromkeys(profile.services, 1.0),
            ExportSettings(roles=profile.roles(), last_update=WHEN),
        )
        validate_mud(exported.document, str(path))
        back = parse_mud(exported.document, f"export of {path}")
        assert back.type == profile.type
        assert back.services == profile.services
        assert back.roles() == profile.roles()
        assert back.dropped == () and back.notes == ()
    assert imported == 94


def test_the_data_sets_departures_from_the_rfc_are_told_apart(profiles_root: Path) -> None:
    camera = read_mud(
        profiles_root / "ch_imilab_xiaomi_camera" / "camera_home_2021-04-03_025606.json"
    )
    assert camera.notes == (
        "the document is a JSON string holding the MUD document: decoded twice",
    )
    assert camera.dropped_counts == {"client-port": 4, "dns-name": 18}
    lifx = profiles_root / "uk_lifx_bulb" / "uk_lifx_bulbMud.json"
    assert read_mud(lifx).notes[0].startswith("ACLs under 'ietf-access-control-list:access-lists'")
    with pytest.raises(InputError, match="access-lists: not defined by the RFC 8520"):
        validate_mud(json.loads(lifx.read_text()), str(lifx))


def test_import_of_the_whole_folder(profiles_root: Path) -> None:
    result = import_muds([profiles_root])
    assert len(result.profiles) == 94
    assert result.skipped == (
        f"{profiles_root / 'summary.json'}: not a MUD file: expected a JSON object, got a list",
    )
    assert [p.type for p in result.unfingerprinted] == ["bulb_ran"]
    assert len(result.references.labels) == 93
    assert result.references.granularity == 1
    # Every service of every profile has its own entry in the catalogue the switch gets.
    names = set(result.catalogue.names)
    assert set(result.references.services) <= names
    assert result.catalogue.max_id <= 255
    totals: dict[str, int] = {}
    for p in result.profiles:
        for kind, n in p.dropped:
            totals[kind] = totals.get(kind, 0) + n
    assert totals == {
        "address": 505,
        "client-port": 4,
        "controller": 179,
        "dns-name": 1378,
        "ethernet": 131,
        "icmp-type": 96,
        "local-networks": 386,
        "non-ip-ace": 76,
    }


def test_every_csv_file_reads_or_is_refused_by_name(profiles_root: Path) -> None:
    flows = sorted(profiles_root.rglob("*_ipflows.csv"))
    rules = sorted(p for p in profiles_root.rglob("*.csv") if p not in set(flows))
    assert (len(flows), len(rules)) == (92, 90)
    catalogue = Catalogue.default()
    for path in flows:
        device = read_flows(path)
        assert device.uses, path
        assert detect_format(path) == "mudgee"
        activity, stats = read_file(path, catalogue, 3600.0, None)
        assert stats.records == device.rows
        assert int(activity.packets.sum()) == sum(u.packets for u in device.uses)
    for path in rules:
        with pytest.raises(InputError, match="MUDgee's list of rules, without packet counters"):
            detect_format(path)


def test_cross_location_identification_numbers(profiles_root: Path) -> None:
    data = load_locations(profiles_root)
    assert (len(data.profiles), len(data.tracks), len(data.models)) == (94, 92, 30)
    # A folder that recorded several devices labels each by the folder holding it alone.
    assert [(t.flows.device, t.model) for t in data.tracks if t.folder == "us_blink_camera"] == [
        ("58:ef:68:99:7d:ed", "t_wemo_plug"),
        ("f4:b8:5e:31:73:db", "blink_camera"),
        ("f4:b8:5e:68:8f:35", "blink_camera"),
    ]
    metrics = evaluate_locations(data, LocationSettings(percentiles=(5.0,)))
    nearest, centroid = metrics.results
    assert metrics.best() is centroid
    for result, right in ((nearest, 54), (centroid, 63)):
        rows = result.tracks
        assert sum(r["best_type"] == r["model"] for r in rows) == right
        assert result.grid.closed_set.accuracy == pytest.approx(right / 92)
        # θ at the 5th percentile is low: all tracks but one come out known, and only that one
        # is rejected once its model's MUD files are gone: the US Ring doorbell, whose
        # dynamic UDP ports no MUD file of another place has.
        assert [r["folder"] for r in rows if r["label"] == "unknown"] == ["ring_doorbell_merged_us"]
        assert [r["folder"] for r in rows if r["rejected"]] == ["ring_doorbell_merged_us"]
        assert result.grid.open_set.unknown_detection == pytest.approx(1 / 60)
    by_model = {m["model"]: m for m in centroid.per_model}
    assert by_model["mi_bulb"]["accuracy"] == pytest.approx(10 / 11)
    assert by_model["yi_camera"]["accuracy"] == 1.0
    assert by_model["tp_plug"]["accuracy"] == 1.0
    assert by_model["echo_dot"]["accuracy"] == 0.0  # taken for the echo plus: same services
    assert by_model["ring_doorbell"]["unknown_detection"] == 0.5
    # The same bulb in other countries uses what the other countries' MUD files allow.
    assert by_model["mi_bulb"]["with_findings"] == 0
    assert sum(len(r["findings"]) for r in centroid.tracks) == 124


def test_the_cli_evaluates_the_data_set(profiles_root: Path, tmp_path: Path) -> None:
    out = tmp_path / "report"
    assert (
        main(["mud", "evaluate", str(profiles_root), "--out", str(out), "--percentiles", "5"]) == 0
    )
    report = (out / "report.md").read_text()
    assert (
        "## Cross-location identification per model (list, θ at p5, centroid, unit 3600 s)"
        in report
    )
    assert "| mi_bulb | 11 | 11 | 14 | 0.909 | 0.909 | 0.000 | 11 | 0 | – |" in report
    metrics = json.loads((out / "metrics.json").read_text())
    assert [r["grid"]["mode"] for r in metrics["results"]] == ["nearest", "centroid"]
