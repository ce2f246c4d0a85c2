"""Exporting learned fingerprints as MUD files: the exact ACEs, validation against the RFC 8520 /
RFC 8519 YANG modules, and the round trip export → import → identify."""

from __future__ import annotations

import copy
import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from controller.base.errors import InputError
from controller.engine.activity import ActivityTable
from controller.engine.exporter import ExporterConfig, export_fingerprints, whole_windows
from controller.engine.identify import enroll, identify
from controller.mud.export import ExportSettings, device_support, export_mud, type_support
from controller.mud.mudfile import parse_mud
from controller.mud.references import import_muds, references_of
from controller.mud.validate import validate_mud
from tests.support.mud import camera

WHEN = datetime(2024, 5, 6, 7, 8, 9, tzinfo=UTC)


def aces(doc: dict[str, Any], acl: str) -> list[dict[str, Any]]:
    for entry in doc["ietf-access-control-list:acls"]["acl"]:
        if entry["name"] == acl:
            return [a["matches"] for a in entry["aces"]["ace"]]
    raise KeyError(acl)


def test_each_service_becomes_a_from_and_a_to_device_ace_in_its_families() -> None:
    exported = export_mud(
        "cam",
        {"tcp/443": 1.0, "udp/123": 1.0, "icmp": 1.0, "icmpv6": 0.5},
        ExportSettings(served=frozenset({"udp/123"}), last_update=WHEN),
    )
    doc = exported.document
    mud = doc["ietf-mud:mud"]
    assert mud["mud-url"] == "https://example.com/mud/cam.json"
    assert mud["last-update"] == "2024-05-06T07:08:09+00:00"
    assert mud["model-name"] == "cam"
    assert mud["from-device-policy"] == {
        "access-lists": {"access-list": [{"name": "from-ipv4-cam"}, {"name": "from-ipv6-cam"}]}
    }
    assert aces(doc, "from-ipv4-cam") == [
        {"ipv4": {"protocol": 1}},
        {
            "ipv4": {"protocol": 6},
            "tcp": {
                "destination-port": {"operator": "eq", "port": 443},
                "ietf-mud:direction-initiated": "from-device",
            },
        },
        {"ipv4": {"protocol": 17}, "udp": {"source-port": {"operator": "eq", "port": 123}}},
    ]
    assert aces(doc, "to-ipv4-cam")[1:] == [
        {
            "ipv4": {"protocol": 6},
            "tcp": {
                "source-port": {"operator": "eq", "port": 443},
                "ietf-mud:direction-initiated": "from-device",
            },
        },
        {"ipv4": {"protocol": 17}, "udp": {"destination-port": {"operator": "eq", "port": 123}}},
    ]
    # ICMP is IPv4's, ICMPv6 IPv6's; TCP and UDP are written for both.
    assert [m["ipv6"]["protocol"] for m in aces(doc, "from-ipv6-cam")] == [6, 17, 58]
    validate_mud(doc, "cam")
    assert [r.label for r in parse_mud(doc, "cam.json").rules] == [
        "icmp",
        "tcp/443 client",
        "udp/123 server",
        "icmpv6",
    ]


def test_rare_and_unwritable_services_are_left_out_by_name() -> None:
    exported = export_mud(
        "hub",
        {"tcp/8883": 0.9, "udp/5353": 0.1, "other": 1.0, "ip/other": 0.7, "udp/49152-65535": 0.6},
        ExportSettings(min_support=0.5, last_update=WHEN),
    )
    assert [r.label for r in exported.rules] == ["tcp/8883 client", "udp/49152-65535 client"]
    assert exported.rare == ("udp/5353",)
    assert exported.unwritable == ("ip/other", "other")
    ranged = aces(exported.document, "from-ipv4-hub")[1]
    assert ranged["udp"] == {"destination-port": {"lower-port": 49152, "upper-port": 65535}}
    validate_mud(exported.document, "hub")
    with pytest.raises(InputError, match="hub: no service to write"):
        export_mud("hub", {"other": 1.0}, ExportSettings())
    with pytest.raises(InputError, match="minimum support 2"):
        ExportSettings(min_support=2)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (
            lambda d: d["ietf-mud:mud"].pop("mud-url"),
            "x: not valid RFC 8520 JSON: /ietf-mud:mud: missing-data: expected 'mud-url'",
        ),
        (
            lambda d: d["ietf-access-control-list:acls"]["acl"][0]["aces"]["ace"][0]["matches"][
                "tcp"
            ]["destination-port"].update(port=70000),
            'x: not valid RFC 8520 JSON: /ietf-access-control-list:acls/acl[name="from-ipv4-x"]'
            '/aces/ace[name="from-ipv4-x-0"]/matches/tcp/destination-port/port: invalid-type',
        ),
        (
            lambda d: d["ietf-mud:mud"]["to-device-policy"]["access-lists"]["access-list"].append(
                {"name": "ghost"}
            ),
            "x: not valid RFC 8520 JSON: /ietf-mud:mud/to-device-policy/access-lists/access-list"
            '[name="ghost"]/name: instance-required',
        ),
        (
            lambda d: d["ietf-mud:mud"].update({"last-update": "2021-04-03T02:55:15"}),
            "x: not valid RFC 8520 JSON: /ietf-mud:mud/last-update: invalid-type",
        ),
        (
            lambda d: d.update(
                {"ietf-access-control-list:access-lists": d.pop("ietf-access-control-list:acls")}
            ),
            "x: not valid RFC 8520 JSON: /ietf-access-control-list:access-lists: not defined "
            "by the RFC 8520 / RFC 8519 modules",
        ),
    ],
)
def test_the_validator_names_the_element_that_breaks_the_yang_tree(
    change: Any, message: str
) -> None:
    doc = export_mud("x", {"tcp/443": 1.0}, ExportSettings(last_update=WHEN)).document
    validate_mud(copy.deepcopy(doc), "x")
    change(doc)
    with pytest.raises(InputError) as info:
        validate_mud(doc, "x")
    assert str(info.value).startswith(message)


def test_a_hand_written_rfc_style_file_validates() -> None:
    validate_mud(camera(), "cam.json")


# Three types whose devices use these services in every unit; each type has two devices.
SERVICES = {
    "camera": ("tcp/443", "udp/53", "udp/123"),
    "plug": ("tcp/9999", "udp/53"),
    "speaker": ("tcp/443", "tcp/8009", "udp/5353", "udp/1900"),
}
DEVICES = {
    f"02:00:00:00:0{t}:0{i}": name for t, name in enumerate(SERVICES, start=1) for i in (1, 2)
}


def activity() -> ActivityTable:
    return ActivityTable.from_records(
        [
            (mac, unit, service, 3, 300)
            for mac, name in DEVICES.items()
            for unit in range(12)
            for service in SERVICES[name]
            # The second speaker never uses udp/1900: type support 0.5 there.
            if not (mac.endswith("03:02") and service == "udp/1900")
        ],
        unit_seconds=3600.0,
    )


def test_round_trip_export_import_identify_gives_the_same_types(tmp_path: Path) -> None:
    config = ExporterConfig(granularity=1, k=1, n_min=3, n_max=6)
    fps = export_fingerprints(activity(), config)
    learned = enroll(fps, DEVICES, config=config)
    assert type_support(learned, "speaker")["udp/1900"] == 0.5
    before = [(d.device, d.label) for d in identify(fps, learned)]
    paths = []
    for name in learned.types:
        exported = export_mud(name, type_support(learned, name), ExportSettings(last_update=WHEN))
        validate_mud(exported.document, name)
        paths.append(tmp_path / f"{name}.json")
        paths[-1].write_text(json.dumps(exported.document), encoding="utf-8")
    imported = import_muds(paths)
    assert imported.references.labels == ("camera", "plug", "speaker")
    assert imported.references.theta == 0.0  # one profile per type: nothing to choose θ from
    # The imported profiles are Service Lists: identify whole windows of the same activity.
    after = [
        (d.device, d.label) for d in identify(whole_windows(activity(), 1), imported.references)
    ]
    assert sorted(set(before)) == sorted(after)
    assert {label for _, label in after} == {"camera", "plug", "speaker"}
    similarity = {
        d.device: d.similarity for d in identify(whole_windows(activity(), 1), imported.references)
    }
    # The second speaker lacks udp/1900, which the type's file allows: 3 of 4 services.
    assert similarity == {mac: 0.75 if mac.endswith("03:02") else 1.0 for mac in DEVICES}


def test_a_devices_export_uses_its_own_windows() -> None:
    config = ExporterConfig(granularity=None, k=1, n_min=3, n_max=6)
    fps = export_fingerprints(activity(), config)
    support = device_support(fps, "02:00:00:00:03:01")
    assert support == {"tcp/443": 1.0, "tcp/8009": 1.0, "udp/1900": 1.0, "udp/5353": 1.0}
    with pytest.raises(InputError, match="no fingerprint of device 02:00:00:00:09:09"):
        device_support(fps, "02:00:00:00:09:09")


def test_imported_references_and_the_catalogue_the_switch_needs(tmp_path: Path) -> None:
    cam = parse_mud(camera(), "cam.json")
    refs = references_of([cam, cam], theta=None)
    assert refs.services == ("icmp", "tcp/443", "udp/123", "udp/53")
    assert refs.weights.tolist() == [[1.0, 1.0, 1.0, 1.0], [1.0, 1.0, 1.0, 1.0]]
    assert refs.granularity == 1 and refs.theta == 1.0
    path = tmp_path / "cam.json"
    doc = camera()
    doc["ietf-access-control-list:acls"]["acl"][0]["aces"]["ace"][0]["matches"]["tcp"][
        "destination-port"
    ]["port"] = 47808
    path.write_text(json.dumps(doc), encoding="utf-8")
    imported = import_muds([path])
    added = [s for s in imported.catalogue.services if s.name == "tcp/47808"]
    assert len(added) == 1 and (added[0].proto, added[0].port_lo, added[0].in_dst_table) == (
        6,
        47808,
        True,
    )
    # The switch now names that port by itself, not as a catch-all.
    assert (
        imported.catalogue.names[imported.catalogue.tables.lookup(6, 50123, 47808)] == "tcp/47808"
    )
