"""Reading MUD files: rules with roles, what was dropped, real generators' departures from the
RFC, and errors that name the file and the element."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from controller.base.errors import InputError
from controller.mud.mudfile import NotMud, parse_mud, read_mud, read_muds
from controller.mud.profile import MudProfiles, Rule
from tests.support.mud import ace, camera, document, port


def labels(doc: dict[str, Any]) -> list[str]:
    return [r.label for r in parse_mud(doc, "cam.json").rules]


def test_a_camera_profile_becomes_rules_with_roles_and_counts_what_it_drops() -> None:
    profile = parse_mud(camera(), "cam.json")
    assert profile.type == "cam-1"
    assert profile.mud_url == "https://cam.example.com/cam-1.json"
    assert [r.label for r in profile.rules] == [
        "icmp",
        "tcp/443 client",
        "udp/53 client",
        "udp/123 server",
    ]
    assert profile.services == ("icmp", "tcp/443", "udp/123", "udp/53")
    assert profile.roles() == {
        "tcp/443": frozenset({"client"}),
        "udp/123": frozenset({"server"}),
        "udp/53": frozenset({"client"}),
    }
    assert profile.dropped_counts == {
        "address": 1,
        "controller": 2,
        "dns-name": 2,
        "icmp-type": 1,
        "local-networks": 2,
    }
    assert profile.notes == ()


@pytest.mark.parametrize(
    ("side", "key", "role"),
    [
        ("from", "destination-port", "client"),
        ("from", "source-port", "server"),
        ("to", "destination-port", "server"),
        ("to", "source-port", "client"),
    ],
)
def test_the_policy_and_the_port_decide_the_role(side: str, key: str, role: str) -> None:
    entry = ace("a", {"ipv4": {"protocol": 17}, "udp": {key: port(5683)}})
    doc = document([entry], []) if side == "from" else document([], [entry])
    assert labels(doc) == [f"udp/5683 {role}"]


def test_ranges_operators_and_portless_entries() -> None:
    doc = document(
        [
            ace(
                "r",
                {
                    "ipv4": {"protocol": 6},
                    "tcp": {"destination-port": {"lower-port": 8000, "upper-port": 8010}},
                },
            ),
            ace(
                "lte",
                {
                    "ipv4": {"protocol": 17},
                    "udp": {"destination-port": {"operator": "lte", "port": 20}},
                },
            ),
            ace(
                "gte",
                {
                    "ipv4": {"protocol": 17},
                    "udp": {"source-port": {"operator": "gte", "port": 60000}},
                },
            ),
            ace(
                "neq",
                {"ipv4": {"protocol": 6}, "tcp": {"source-port": {"operator": "neq", "port": 0}}},
            ),
            ace("any", {"ipv4": {"protocol": 17, "ietf-acldns:dst-dnsname": "x.example"}}),
            ace("proto", {"ipv4": {"ietf-acldns:dst-dnsname": "y.example"}}),
        ],
        [],
    )
    profile = parse_mud(doc, "r.json")
    assert [r.label for r in profile.rules] == [
        "ip/any",
        "tcp/1-65535 server",
        "tcp/8000-8010 client",
        "udp/0-20 client",
        "udp/0-65535",
        "udp/60000-65535 server",
    ]
    # None of them is one service: they decide compliance only.
    assert profile.services == ()
    assert len(profile.compliance_only) == 6


def test_both_ports_keep_the_lower_one_and_non_ip_deny_and_unused_entries_drop() -> None:
    doc = document(
        [
            ace(
                "pair",
                {
                    "ipv4": {"protocol": 6},
                    "tcp": {"source-port": port(80), "destination-port": port(34455)},
                },
            ),
            ace(
                "arp", {"eth": {"ethertype": "0x0806"}, "ietf-mud:mud": {"local-networks": [None]}}
            ),
            ace("deny", {"ipv4": {"protocol": 17}, "udp": {"destination-port": port(9)}}, "drop"),
            ace(
                "dhcp",
                {
                    "eth": {"destination-mac-address": "ff:ff:ff:ff:ff:ff"},
                    "ipv4": {"protocol": 17},
                    "udp": {"destination-port": port(67)},
                },
            ),
        ],
        [],
    )
    doc["ietf-access-control-list:acls"]["acl"].append(
        {"name": "spare", "aces": {"ace": [ace("s", {"ipv4": {"protocol": 6}})]}}
    )
    profile = parse_mud(doc, "p.json")
    assert [r.label for r in profile.rules] == ["tcp/80 server", "udp/67 client"]
    assert profile.dropped_counts == {
        "client-port": 1,
        "deny-ace": 1,
        "ethernet": 2,
        "local-networks": 1,
        "non-ip-ace": 1,
        "unused-acl": 1,
    }


def test_real_generators_departures_are_read_with_notes(tmp_path: Path) -> None:
    draft = document(
        [
            ace(
                "a",
                {
                    "ietf-mud:mud": {"local-networks": []},
                    "ipv4": {"protocol": 17},
                    "udp": {"destination-port": port(53)},
                },
            )
        ],
        [],
        model=None,
        acls_key="ietf-access-control-list:access-lists",
    )
    path = tmp_path / "bulb_ukMud.json"
    # Stored as a JSON string holding the document, as one generator writes it.
    path.write_text(json.dumps(json.dumps(draft)), encoding="utf-8")
    profile = read_mud(path)
    assert profile.type == "An example camera"  # systeminfo without a model-name
    assert [r.label for r in profile.rules] == ["udp/53 client"]
    assert profile.notes == (
        "the document is a JSON string holding the MUD document: decoded twice",
        "ACLs under 'ietf-access-control-list:access-lists' (the pre-RFC 8519 name), read as "
        "'ietf-access-control-list:acls'",
        "local-networks: [] read as [null] (RFC 7951's empty value)",
    )
    assert read_mud(path, "bulb").type == "bulb"


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (
            lambda d: d["ietf-access-control-list:acls"]["acl"][0]["aces"]["ace"][0]["matches"][
                "tcp"
            ]["destination-port"].update(operator="near"),
            "cam.json: ietf-access-control-list:acls/acl[0]/aces/ace[0]/matches/tcp/"
            "destination-port/operator: expected eq, lte, gte or neq, got 'near'",
        ),
        (
            lambda d: d["ietf-access-control-list:acls"]["acl"][1]["aces"]["ace"][2]["matches"][
                "udp"
            ]["destination-port"].update(port=70000),
            "cam.json: ietf-access-control-list:acls/acl[1]/aces/ace[2]/matches/udp/"
            "destination-port/port: expected an integer in 0..65535, got 70000",
        ),
        (
            lambda d: d["ietf-mud:mud"].pop("to-device-policy"),
            "cam.json: ietf-mud:mud/to-device-policy: missing (RFC 8520 requires both device "
            "policies)",
        ),
        (
            lambda d: d["ietf-mud:mud"]["from-device-policy"]["access-lists"]["access-list"].append(
                {"name": "ghost"}
            ),
            "cam.json: ietf-mud:mud/from-device-policy: access list 'ghost' is not defined under "
            "ietf-access-control-list:acls/acl",
        ),
        (
            lambda d: d["ietf-access-control-list:acls"]["acl"][0]["aces"]["ace"][0]["matches"][
                "ipv4"
            ].update(protocol=17),
            "cam.json: ietf-access-control-list:acls/acl[0]/aces/ace[0]/matches/ipv4/protocol: "
            "protocol 17 but a tcp match",
        ),
        (
            lambda d: d["ietf-access-control-list:acls"]["acl"][0]["aces"]["ace"][1][
                "actions"
            ].update(forwarding="maybe"),
            "cam.json: ietf-access-control-list:acls/acl[0]/aces/ace[1]/actions/forwarding: "
            "expected accept, drop or reject, got 'maybe'",
        ),
        (
            lambda d: d["ietf-access-control-list:acls"]["acl"][0]["aces"]["ace"][1]["matches"][
                "ietf-mud:mud"
            ].update(cousin=True),
            "cam.json: ietf-access-control-list:acls/acl[0]/aces/ace[1]/matches/ietf-mud:mud/"
            "cousin: not a MUD class",
        ),
        (
            lambda d: d.pop("ietf-access-control-list:acls"),
            "cam.json: ietf-access-control-list:acls: missing: the file has no access lists",
        ),
    ],
)
def test_a_bad_element_is_named(change: Any, message: str) -> None:
    doc = camera()
    change(doc)
    with pytest.raises(InputError) as info:
        parse_mud(doc, "cam.json")
    assert str(info.value).startswith(message)


def test_json_that_is_no_mud_file_is_passed_over_in_folders_only(tmp_path: Path) -> None:
    (tmp_path / "cam").mkdir()
    (tmp_path / "cam" / "camMud.json").write_text(json.dumps(camera()), encoding="utf-8")
    (tmp_path / "summary.json").write_text("[1, 2]", encoding="utf-8")
    (tmp_path / "other.json").write_text('{"a": 1}', encoding="utf-8")
    profiles, skipped = read_muds([tmp_path])
    assert [p.type for p in profiles] == ["cam-1"]
    assert skipped == [
        f"{tmp_path / 'other.json'}: not a MUD file: no 'ietf-mud:mud' container (RFC 8520)",
        f"{tmp_path / 'summary.json'}: not a MUD file: expected a JSON object, got a list",
    ]
    with pytest.raises(NotMud, match=r"summary\.json: not a MUD file"):
        read_muds([tmp_path / "summary.json"])
    (tmp_path / "broken.json").write_text("{", encoding="utf-8")
    with pytest.raises(InputError, match=r"broken\.json: line 1: not JSON"):
        read_muds([tmp_path])
    with pytest.raises(InputError, match="absent: no such MUD file or folder"):
        read_muds([tmp_path / "absent"])


def test_a_types_profiles_allow_what_any_of_them_allows() -> None:
    cam = parse_mud(camera(), "a.json")
    other = parse_mud(
        document(
            [ace("x", {"ipv4": {"protocol": 6}, "tcp": {"destination-port": port(8883)}})], []
        ),
        "b.json",
    )
    profiles = MudProfiles((cam, other))
    assert profiles.types == ("cam-1",)
    assert Rule(6, 8883, 8883, "client") in profiles.rules_of("cam-1")
    assert profiles.allows("cam-1", "tcp/8883")
    assert profiles.allows("cam-1", "udp/123", "server")
    assert not profiles.allows("cam-1", "udp/123", "client")
    assert profiles.allows("cam-1", "udp/123")  # the role unknown: either counts
    assert not profiles.allows("cam-1", "udp/5353")
    assert profiles.allows("cam-1", "other")  # non-IP frames: outside MUD
    assert not profiles.allows("cam-1", "ip/other")
    assert not profiles.allows("hub", "tcp/443")
