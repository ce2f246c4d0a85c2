from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from controller.base.errors import InputError
from controller.engine.catalogue import Catalogue
from controller.engine.learned import PortUsage, for_granularity, service_ports
from controller.engine.services import (
    MAX_SERVICE_ID,
    ServiceSpec,
    derived_priority,
    parse_service,
    service_name,
)
from tests.support.engine import matches


def load(tmp_path: Path, services: list[dict[str, object]]) -> Catalogue:
    path = tmp_path / "cat.json"
    path.write_text(json.dumps({"services": services}))
    return Catalogue.load(path)


def test_file_format_ids_names_priorities(tmp_path: Path) -> None:
    cat = load(
        tmp_path,
        [
            {"name": "tcp/443", "proto": "tcp", "ports": "443"},
            {"proto": "udp", "ports": "49152-65535", "tables": "src"},
            {"proto": "icmp"},
            {"proto": 47},
            {"name": "web-any", "proto": "any", "ports": "80", "priority": 7},
        ],
    )
    assert cat.names == ["other", "tcp/443", "udp/49152-65535", "icmp", "ip/47", "web-any"]
    assert cat.max_id == 5
    s = cat.services
    assert (s[0].id, s[0].proto, s[0].port_lo, s[0].port_hi) == (1, 6, 443, 443)
    assert (s[1].proto, s[1].port_lo, s[1].port_hi, s[1].in_dst_table) == (17, 49152, 65535, False)
    assert (s[2].proto, s[2].port_lo, s[2].port_hi) == (1, 0, 0)
    assert s[4].proto is None and s[4].priority == 7
    # Narrower wins; equal width: the specific protocol beats the wildcard.
    assert s[0].priority > s[1].priority
    assert derived_priority(6, 80, 80) == derived_priority(None, 80, 80) + 1
    assert [x.id for x in cat.dst_services()] == [1, 3, 4, 5]
    assert [x.id for x in cat.src_services()] == [1, 2, 3, 4, 5]
    again = tmp_path / "again.json"
    cat.save(again)
    assert Catalogue.load(again) == cat


def test_service_names_parse_back_to_their_protocol_and_ports() -> None:
    cases = {
        "tcp/443": (6, 443, 443),
        "udp/49152-65535": (17, 49152, 65535),
        "icmp": (1, 0, 0),
        "icmpv6": (58, 0, 0),
        "ip/2": (2, 0, 0),
    }
    for name, parsed in cases.items():
        assert parse_service(name) == parsed
        assert service_name(*parsed) == name
    assert parse_service(" TCP/80 ") == (6, 80, 80)
    for bad in ("tcp/x", "tcp/99999", "udp/9-8", "ip/256", "sctp/1", "tcp/"):
        with pytest.raises(ValueError, match="not a service name"):
            parse_service(bad)


def test_lookup_dst_then_src_priorities_ranges_wildcards(tmp_path: Path) -> None:
    cat = load(
        tmp_path,
        [
            {"proto": "tcp", "ports": "80"},  # 1
            {"proto": "tcp", "ports": "1-1023"},  # 2
            {"proto": "tcp", "ports": "1024-65535", "tables": "src"},  # 3
            {"proto": "udp", "ports": "53"},  # 4
            {"name": "any/53", "proto": "any", "ports": "53"},  # 5
            {"proto": "icmp"},  # 6
            {"name": "ip/other", "proto": "any", "ports": "0", "tables": "src"},  # 7
        ],
    )
    assert cat.tables.lookup(6, 50000, 80) == 1  # client to tcp/80
    # A server answering from tcp/80: the dst lookup misses, the src lookup hits.
    assert cat.tables.lookup(6, 80, 50000) == 1
    assert cat.tables.lookup(6, 50000, 22) == 2  # well-known catch-all by destination
    assert cat.tables.lookup(6, 22, 80) == 1  # dst first, even though src matches the range
    assert cat.tables.lookup(6, 40000, 8888) == 3  # only the source table has the high range
    assert cat.tables.lookup(17, 5000, 53) == 4  # udp/53 beats the wildcard any/53
    assert cat.tables.lookup(6, 5000, 53) == 5  # tcp/53 is only matched by the wildcard
    assert cat.tables.lookup(17, 6000, 7000) == 0  # no udp entry matches
    assert cat.tables.lookup(1, 0, 0) == 6
    assert cat.tables.lookup(1, 1234, 80) == 6  # non-TCP/UDP protocols use ports 0
    assert cat.tables.lookup(47, 0, 0) == 7  # other IP protocols: wildcard in the source table
    assert cat.tables.lookup(6, 50000, 80, l4_valid=False) == 0  # truncated TCP is never looked up
    assert cat.tables.lookup(1, 0, 0, l4_valid=False) == 6  # only TCP/UDP need their header
    assert cat.tables.lookup(-1, 0, 0) == 0  # not IP
    proto = [6, 6, 6, 6, 6, 17, 6, 17, 1, 1, 47, 6, 1, -1]
    sport = [50000, 80, 50000, 22, 40000, 5000, 5000, 6000, 0, 1234, 0, 50000, 0, 0]
    dport = [80, 50000, 22, 80, 8888, 53, 53, 7000, 0, 80, 0, 80, 0, 0]
    valid = [True] * 11 + [False, False, True]
    expected = [1, 1, 2, 1, 3, 4, 5, 0, 6, 6, 7, 0, 6, 0]
    assert cat.tables.lookup_many(proto, sport, dport, valid).tolist() == expected
    assert [
        cat.tables.lookup(p, s, d, v) for p, s, d, v in zip(proto, sport, dport, valid, strict=True)
    ] == expected


def test_lookup_many_agrees_with_a_brute_force_switch_model() -> None:
    cat = Catalogue.default()
    rng = np.random.default_rng(7)
    n = 20_000
    proto = rng.choice([6, 17, 1, 58, 2, 0, 47], n)
    sport = rng.choice([53, 80, 123, 443, 1900, 5353, 8080, 40000, 50000, 60000, 7, 999], n)
    dport = rng.choice([53, 80, 123, 443, 1900, 5353, 8080, 40000, 50000, 60000, 7, 999], n)

    def model(p: int, s: int, d: int) -> int:
        if p not in (6, 17):
            s = d = 0
        for table, port in ((cat.dst_services(), d), (cat.src_services(), s)):
            hits = [x for x in table if matches(x, p, port)]
            if hits:
                return max(hits, key=lambda x: x.priority).id
        return 0

    got = cat.tables.lookup_many(proto, sport, dport)
    want = [model(int(p), int(s), int(d)) for p, s, d in zip(proto, sport, dport, strict=True)]
    assert got.tolist() == want


def test_default_catalogue_covers_iot_services() -> None:
    cat = Catalogue.default()
    names = cat.names
    for name in (
        "tcp/80",
        "tcp/443",
        "udp/53",
        "udp/123",
        "udp/5353",
        "udp/1900",
        "udp/67",
        "udp/80",
        "udp/8765",
        "tcp/8767",
        "tcp/10000",
        "tcp/1883",
        "tcp/8883",
        "udp/5683",
        "tcp/554",
        "icmp",
        "icmpv6",
        "ip/other",
        "tcp/1-1023",
        "tcp/1024-49151",
        "tcp/49152-65535",
        "udp/49152-65535",
    ):
        assert name in names
    assert cat.max_id <= MAX_SERVICE_ID
    # A Hue bridge's responses from tcp/80 to a client's port count as tcp/80.
    assert names[cat.tables.lookup(6, 80, 51000)] == "tcp/80"
    assert names[cat.tables.lookup(6, 80, 40000)] == "tcp/80"
    assert names[cat.tables.lookup(6, 40000, 12345)] == "tcp/1024-49151"
    assert names[cat.tables.lookup(17, 55000, 33333)] == "udp/49152-65535"
    assert names[cat.tables.lookup(2, 0, 0)] == "ip/2"
    assert names[cat.tables.lookup(47, 0, 0)] == "ip/other"


@pytest.mark.parametrize(
    ("services", "message"),
    [
        ([{"proto": "tcp", "ports": "70000"}], r"service 1: port range 70000-70000"),
        ([{"proto": "tcp", "ports": "9-3"}], r"port range 9-3"),
        ([{"proto": "tcp", "ports": "http"}], r"service 1: ports must be"),
        ([{"proto": "tcp", "ports": "²"}], r"service 1: ports must be"),
        ([{"proto": "tcp", "ports": "1-¹⁷"}], r"service 1: ports must be"),
        ([{"ports": "80"}], r"service 1: missing field 'proto'"),
        ([{"proto": "xyz"}], r"unknown protocol 'xyz'"),
        ([{"proto": 300}], r"outside 0..255"),
        ([{"proto": "icmp", "ports": "8"}], r"can never match"),
        ([{"proto": "tcp", "ports": "1", "colour": 1}], r"unknown field\(s\) colour"),
        ([{"proto": "tcp", "ports": "1", "tables": "dst"}], r"tables must be"),
        ([{"proto": "tcp", "ports": "1", "priority": 0}], r"priority must be"),
        ([{"proto": "tcp", "ports": "1"}, {"proto": "tcp", "ports": "1"}], r"already used"),
        ([{"name": "other", "proto": "tcp", "ports": "1"}], r"reserved"),
        (
            [{"proto": "tcp", "ports": "1-10"}, {"proto": "tcp", "ports": "5-14"}],
            r"services 1 \(tcp/1-10\) and 2 \(tcp/5-14\) overlap in the dst table",
        ),
    ],
)
def test_file_errors_name_the_file_and_entry(
    tmp_path: Path, services: list[dict[str, object]], message: str
) -> None:
    with pytest.raises(InputError, match=message) as exc:
        load(tmp_path, services)
    assert "cat.json" in str(exc.value)


def test_too_many_services_and_bad_json(tmp_path: Path) -> None:
    many: list[dict[str, object]] = [{"proto": "tcp", "ports": str(p)} for p in range(1, 257)]
    with pytest.raises(InputError, match="256 services, but the switch holds at most 255"):
        load(tmp_path, many)
    path = tmp_path / "broken.json"
    path.write_text("{nope")
    with pytest.raises(InputError, match=r"broken\.json: line 1: not JSON"):
        Catalogue.load(path)
    path.write_text("[]")
    with pytest.raises(InputError, match='"services" list'):
        Catalogue.load(path)


def test_service_port_of_a_flow() -> None:
    # Flow 0: one device's port 50756 to tcp/9292; flow 1: another device's 50756 to HTTP;
    # flows 2-4: a Windows XP client's low ports 1035/1036 to tcp/10000; flow 5: a server's
    # tcp/49153 to two clients; flows 6, 7: DHCP and NTP, system ports on both ends.
    proto = np.array([6, 6, 6, 6, 6, 6, 17, 17])
    sport = np.array([50756, 50756, 1035, 1036, 49153, 49153, 68, 123])
    dport = np.array([9292, 80, 10000, 10000, 40001, 40002, 67, 123])
    # The flow to HTTP is settled by its system port and lends 50756 no counterpart: 50756 and
    # 9292 meet one port each and the lower one, 9292, is the service.
    expected = [9292, 80, 10000, 10000, 49153, 49153, 67, 123]
    assert service_ports(proto, sport, dport).tolist() == expected
    # With a registered port in place of HTTP no flow is settled: 50756 meets two ports, 9292
    # and 8080 one each, and the ephemeral port is taken for the service of both.
    open_flows = service_ports(proto[:2], sport[:2], np.array([9292, 8080]))
    assert open_flows.tolist() == [50756, 50756]
    usage = PortUsage.from_flows(
        device=[0, 1], proto=[6, 6], sport=[50756, 50756], dport=[9292, 80], packets=[3, 4]
    )
    assert usage.port.tolist() == [80, 9292] and usage.proto.tolist() == [6, 6]
    nothing = np.zeros(0, np.int64)
    assert service_ports(nothing, nothing, nothing).size == 0


def test_granularities() -> None:
    assert for_granularity("catalogue") == Catalogue.default()
    eph = for_granularity("ephemeral")
    assert "tcp/8767" in eph.names and "udp/49152-65535" in eph.names
    assert "udp/55444" not in eph.names  # dynamic ports fold into one service per protocol
    # Devices 0 and 1 use tcp/443 as clients, device 1 serves udp/55444 in two units, device 2
    # uses tcp/8888 in two units, and device 2 once talks to udp/7777: noise, not a service.
    usage = PortUsage.from_flows(
        device=[0, 1, 1, 1, 2, 2, 2],
        proto=[6, 6, 17, 17, 6, 6, 17],
        sport=[50000, 40000, 55444, 55444, 33000, 33001, 50001],
        dport=[443, 443, 60000, 61000, 8888, 8888, 7777],
        packets=[5, 5, 7, 1, 100, 1, 9],
        unit=[0, 0, 0, 1, 0, 1, 0],
    )
    assert usage.devices.tolist() == [2, 1, 1, 1]  # tcp/443, tcp/8888, udp/7777, udp/55444
    assert usage.cells.tolist() == [2, 2, 1, 2]
    assert usage.ranked() == [(6, 443), (6, 8888), (17, 55444), (17, 7777)]
    assert usage.ranked(min_cells=2) == [(6, 443), (6, 8888), (17, 55444)]
    learned = for_granularity("learned", observed=usage)
    assert learned.names[1:4] == ["tcp/443", "tcp/8888", "udp/55444"]
    assert "udp/7777" not in learned.names
    assert learned.names[learned.tables.lookup(17, 55444, 61000)] == "udp/55444"
    eph_obs = for_granularity("ephemeral", observed=usage)
    assert eph_obs.names[1:3] == ["tcp/443", "tcp/8888"]
    small = for_granularity("learned", observed=usage, limit=12)
    assert small.max_id == 12 and small.names[1] == "tcp/443"
    with pytest.raises(InputError, match="needs observed traffic"):
        for_granularity("learned")
    with pytest.raises(InputError, match="unknown granularity 'fine'"):
        for_granularity("fine")
    with pytest.raises(InputError, match="no room"):
        for_granularity("learned", observed=usage, limit=5)
    assert Catalogue.from_specs([ServiceSpec(6, 1, 1)]).names == ["other", "tcp/1"]
