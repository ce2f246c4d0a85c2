"""Compliance against MUD profiles: exact findings from activity and from MUDgee flows, stored
and merged in the database, and checked live as units close."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from controller.base.errors import InputError
from controller.control.live import LiveIdentification, LiveSettings
from controller.engine.activity import ActivityTable
from controller.engine.catalogue import Catalogue
from controller.engine.exporter import ExporterConfig, export_fingerprints
from controller.engine.identify import enroll
from controller.ingest.files import detect_format, read_file
from controller.mud.compliance import Finding, check_activity, check_uses, merge_findings
from controller.mud.flows import FlowUse, read_flows
from controller.mud.mudfile import parse_mud
from controller.mud.profile import MudProfiles
from controller.store.compliance import add_findings, stored_findings
from controller.store.storage import Storage
from tests.support.mud import camera, write_flows

pytest_plugins = ["tests.support.storage"]

CAM = "02:00:00:00:00:01"
PLUG = "02:00:00:00:00:02"
PROFILES = MudProfiles((parse_mud(camera(), "cam.json"),))


def table(rows: list[tuple[str, int, str, int, int]]) -> ActivityTable:
    return ActivityTable.from_records(rows, unit_seconds=60.0)


def test_activity_findings_have_first_and_last_unit_and_counts() -> None:
    activity = table(
        [
            (CAM, 3, "tcp/443", 10, 1000),
            (CAM, 3, "tcp/23", 2, 120),
            (CAM, 5, "tcp/23", 1, 60),
            (CAM, 8, "tcp/23", 4, 240),
            (CAM, 8, "udp/49152-65535", 7, 700),
            (CAM, 8, "other", 9, 540),  # ARP: outside MUD
            (CAM, 9, "udp/123", 1, 90),  # allowed (served), the role unknown here
            (PLUG, 3, "tcp/23", 5, 300),  # its type has no profile
        ]
    )
    findings = check_activity(activity, {CAM: "cam-1", PLUG: "plug"}, PROFILES)
    assert findings == [
        Finding(CAM, "cam-1", "tcp/23", None, 3, 8, 3, 7, 420),
        Finding(CAM, "cam-1", "udp/49152-65535", None, 8, 8, 1, 7, 700),
    ]
    assert findings[0].to_json(60.0)["first_seen"] == 180.0
    assert findings[0].to_json(60.0)["last_seen"] == 540.0
    # h = 2: the single-packet unit 5 no longer counts.
    strict = check_activity(activity, {CAM: "cam-1"}, PROFILES, threshold=2)
    assert strict[0] == Finding(CAM, "cam-1", "tcp/23", None, 3, 8, 2, 6, 360)


def test_catalogue_names_resolve_to_their_ports() -> None:
    catalogue = Catalogue.from_json(
        '{"services": [{"name": "https", "proto": "tcp", "ports": "443"},'
        ' {"name": "telnet", "proto": "tcp", "ports": "23"}]}'
    )
    activity = table([(CAM, 0, "https", 1, 60), (CAM, 0, "telnet", 1, 60)])
    findings = check_activity(activity, {CAM: "cam-1"}, PROFILES, catalogue)
    assert [f.service for f in findings] == ["telnet"]


def test_uses_with_roles_are_checked_in_their_role() -> None:
    uses = [
        FlowUse("tcp/443", "client", 50, 5000),
        FlowUse("udp/123", "client", 3, 270),  # the profile lets it serve udp/123 only
        FlowUse("udp/123", "server", 4, 360),
        FlowUse("icmp", None, 2, 196),
    ]
    assert check_uses(CAM, "cam-1", uses, PROFILES) == [
        Finding(CAM, "cam-1", "udp/123", "client", 0, 0, 1, 3, 270)
    ]
    assert check_uses(CAM, "hub", uses, PROFILES) == []


def test_findings_merge_in_the_database(store: Storage) -> None:
    first = Finding(CAM, "cam-1", "tcp/23", None, 3, 4, 2, 5, 300)
    later = Finding(CAM, "cam-1", "tcp/23", None, 9, 9, 1, 1, 60)
    served = Finding(CAM, "cam-1", "udp/123", "client", 0, 0, 1, 3, 270)
    add_findings(store, [first, served], when=1.0)
    add_findings(store, [later], when=2.0)
    assert stored_findings(store) == [
        Finding(CAM, "cam-1", "tcp/23", None, 3, 9, 3, 6, 360),
        Finding(CAM, "cam-1", "udp/123", "client", 0, 0, 1, 3, 270),
    ]
    assert merge_findings([first, later, served]) == stored_findings(store)


EXPORTER = ExporterConfig(granularity=1, tau=0.9, k=1, n_min=2, n_max=4)


def test_live_units_are_checked_from_the_window_that_typed_the_device(
    store: Storage, caplog: pytest.LogCaptureFixture
) -> None:
    normal = table([(CAM, u, s, 2, 200) for u in range(8) for s in ("tcp/443", "udp/53")])
    refs = enroll(export_fingerprints(normal, EXPORTER), {CAM: "cam-1"}, theta=0.5, config=EXPORTER)
    store.check_time_unit(60.0)
    live = LiveIdentification(store, LiveSettings(EXPORTER, refs, PROFILES), unit_seconds=60.0)
    # Telnet in unit 20, before the device has a type; the window 20..21 then types it.
    first = table(
        [
            (CAM, 20, "tcp/443", 2, 200),
            (CAM, 20, "udp/53", 2, 200),
            (CAM, 20, "tcp/23", 1, 60),
            (CAM, 21, "tcp/443", 2, 200),
            (CAM, 21, "udp/53", 2, 200),
        ]
    )
    store.add_activity(first)
    with caplog.at_level(logging.WARNING, logger="controller.control.compliance"):
        assert live.close_units(first.select(units=(20, 21)), end_unit=21) == []
        assert stored_findings(store) == []
        decided = live.close_units(first.select(units=(21, 22)), end_unit=22)
        assert [(d.label, d.start_unit, d.end_unit) for d in decided] == [("cam-1", 20, 22)]
        assert stored_findings(store) == [Finding(CAM, "cam-1", "tcp/23", None, 20, 20, 1, 1, 60)]
        later = table([(CAM, 22, "tcp/23", 3, 180), (CAM, 22, "tcp/443", 2, 200)])
        store.add_activity(later)
        live.close_units(later, end_unit=23)
    assert stored_findings(store) == [Finding(CAM, "cam-1", "tcp/23", None, 20, 22, 2, 4, 240)]
    lines = [r.getMessage() for r in caplog.records]
    assert lines[-1] == (
        f"event=mud-violation device=- mac={CAM} type=cam-1 service=tcp/23 units=22..22 "
        "packets=3 bytes=180"
    )
    # A restarted controller knows the device's type from its stored decision.
    again = LiveIdentification(store, LiveSettings(EXPORTER, refs, PROFILES), unit_seconds=60.0)
    assert again.compliance is not None and again.compliance.types == {CAM: "cam-1"}


FLOWS = [
    # From the device: DNS and tcp/443 as a client, udp/123 served, ICMP, ARP, a portless rule.
    f"{CAM},22:ef:03:1a:97:b9,0x0800,*,*,*,17,*,53,1000,*,*,600,6",
    f"{CAM},*,0x0800,*,*,*,6,*,443,900,*,*,40000,50",
    f"{CAM},*,0x0800,*,*,*,17,123,*,610,*,*,360,4",
    f"{CAM},*,0x0800,*,*,*,1,*,*,601,8,0,196,2",
    f"{CAM},*,0x0806,*,*,*,*,*,*,1000,*,*,84,2",
    f"{CAM},22:ef:03:1a:97:b9,0x0800,*,*,*,6,*,*,800,*,*,120,2",
    f"{CAM},*,0x0800,*,*,*,6,*,8080,900,*,*,0,0",
    # To the device, and another device's rule.
    f"*,{CAM},0x0800,*,*,*,6,443,*,900,*,*,90000,70",
    f"{PLUG},*,0x0800,*,*,*,17,*,53,1000,*,*,60,1",
]


def test_a_mudgee_flows_file_gives_uses_with_roles(tmp_path: Path) -> None:
    path = write_flows(tmp_path / "020000000001_ipflows.csv", FLOWS)
    flows = read_flows(path)
    assert flows.device == CAM and flows.rows == 9
    assert flows.uses == (
        FlowUse("icmp", None, 2, 196),
        FlowUse("tcp/443", "client", 50, 40000),
        FlowUse("udp/123", "server", 4, 360),
        FlowUse("udp/53", "client", 6, 600),
    )
    assert dict(flows.left_out) == {"no-port": 2, "non-ip": 2, "other-device": 1, "to-device": 70}
    assert [(r.service, r.packets) for r in flows.activity(unit=3).records()] == [
        ("icmp", 2),
        ("tcp/443", 50),
        ("udp/123", 4),
        ("udp/53", 6),
    ]


def test_the_ingest_pipeline_reads_mudgee_flows_by_the_catalogue(tmp_path: Path) -> None:
    path = write_flows(
        tmp_path / "020000000001_ipflows.csv",
        [*FLOWS, f"{CAM},*,0x0800,*,*,*,17,*,47001,900,*,*,70,1"],
    )
    assert detect_format(path) == "mudgee"
    activity, stats = read_file(path, Catalogue.default(), 3600.0, None)
    assert stats.records == 10
    assert {r.service: r.packets for r in activity.records()} == {
        "icmp": 2,
        "tcp/443": 50,
        "udp/123": 4,
        "udp/53": 6,
        "udp/1024-49151": 1,  # a port the catalogue does not list falls into its catch-all
    }
    rules = tmp_path / "camrule.csv"
    rules.write_text("srcMac,dstMac,ethType,srcIp,dstIp,ipProto,srcPort,dstPort,priority\n")
    with pytest.raises(InputError, match=r"camrule\.csv: MUDgee's list of rules, without packet"):
        detect_format(rules)


@pytest.mark.parametrize(
    ("name", "rows", "message"),
    [
        ("cam_ipflows.csv", [], "cam_ipflows.csv: not a MUDgee flows file: expected <mac>"),
        (
            "020000000001_ipflows.csv",
            [f"{CAM},*,0x0800,*,*,*,6,*,443,900,*,*,40000,many"],
            "020000000001_ipflows.csv:2: packetCount 'many' is not a count",
        ),
        (
            "020000000001_ipflows.csv",
            [f"{CAM},*,0x0800,*,*,*,6,*,443,900,*,*,40000,{10**23}"],
            f"020000000001_ipflows.csv:2: packetCount {10**23} is out of range",
        ),
        (
            "020000000001_ipflows.csv",
            [f"{CAM},*,0x0800,*,*,*,6,*,²,900,*,*,40000,1"],
            "020000000001_ipflows.csv:2: dstPort '²' is not a number in 0..65535 or *",
        ),
        (
            "020000000001_ipflows.csv",
            [f"{CAM},*,0x0800,*,*,*,6,*,70000,900,*,*,40,1"],
            "020000000001_ipflows.csv:2: dstPort '70000' is not a number in 0..65535 or *",
        ),
        (
            "020000000001_ipflows.csv",
            ["02:00:00:00:00,*,0x0800,*,*,*,6,*,443,900,*,*,40,1"],
            "020000000001_ipflows.csv:2: srcMac '02:00:00:00:00' is not a MAC address or *",
        ),
        (
            "020000000001_ipflows.csv",
            [f"{CAM},*,0x0800"],
            "020000000001_ipflows.csv:2: fewer fields than the header",
        ),
    ],
)
def test_a_bad_flows_file_is_named_with_its_line(
    tmp_path: Path, name: str, rows: list[str], message: str
) -> None:
    path = write_flows(tmp_path / name, rows)
    with pytest.raises(InputError) as info:
        read_flows(path)
    assert str(info.value) == f"{tmp_path / message}" or str(info.value).startswith(
        str(tmp_path / message)
    )


def test_a_flows_file_without_its_columns_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "020000000001_ipflows.csv"
    path.write_text("srcMac,dstMac\n", encoding="utf-8")
    with pytest.raises(InputError, match="missing column"):
        read_flows(path)


def test_an_odd_window_does_not_move_the_profile_a_device_is_checked_against(
    store: Storage,
) -> None:
    # The camera is typed by its first window; then a window of telnet alone, which alone is
    # unknown (it shares nothing with the references). The device's accumulated answer stays
    # cam-1 (one unknown window of two), so the telnet is checked against the camera's
    # profile; taking each window's own label, the camera would be "unknown" for it, unchecked.
    normal = table([(CAM, u, s, 2, 200) for u in range(8) for s in ("tcp/443", "udp/53")])
    refs = enroll(export_fingerprints(normal, EXPORTER), {CAM: "cam-1"}, theta=0.5, config=EXPORTER)
    store.check_time_unit(60.0)
    live = LiveIdentification(store, LiveSettings(EXPORTER, refs, PROFILES), unit_seconds=60.0)
    typed = table([(CAM, u, s, 2, 200) for u in (20, 21) for s in ("tcp/443", "udp/53")])
    odd = table([(CAM, u, "tcp/23", 1, 60) for u in (22, 23)])
    decided = []
    for part, end in ((typed, 22), (odd, 24)):
        store.add_activity(part)
        decided += live.close_units(part, end_unit=end)
    stored = store.decisions()
    assert [(d.label, d.start_unit, d.end_unit) for d in decided] == [
        ("cam-1", 20, 22),
        ("unknown", 22, 24),
    ]
    assert [d.accumulated for d in stored] == ["cam-1", "cam-1"]
    assert live.compliance is not None and live.compliance.types == {CAM: "cam-1"}
    assert stored_findings(store) == [Finding(CAM, "cam-1", "tcp/23", None, 22, 23, 2, 2, 120)]
