from __future__ import annotations

import pytest

from controller.base.errors import InputError
from controller.engine.catalogue import Catalogue
from controller.engine.services import ServiceSpec
from tests.support.engine import matches
from topology import graph as topo
from topology.emulation import default_service_host, listeners, targets
from topology.ports import quiet_ports, realize, served_port

CATALOGUE = Catalogue.default()


def counted(service: str, sport: int, dport: int) -> str:
    proto = 6 if service.startswith("tcp") else 17
    return CATALOGUE.names[CATALOGUE.tables.lookup(proto, sport, dport)]


@pytest.mark.parametrize("service", ["tcp/443", "udp/53", "tcp/1-1023", "udp/5683"])
def test_destination_services_are_sent_to_their_port_from_any_client_port(service: str) -> None:
    how = realize(service, CATALOGUE)
    assert how.sports == ()
    for sport in (33000, 45000, 60999):
        assert counted(service, sport, how.dport) == service


@pytest.mark.parametrize("service", ["tcp/1024-49151", "udp/49152-65535"])
def test_source_only_services_come_from_their_range_to_a_quiet_port(service: str) -> None:
    how = realize(service, CATALOGUE)
    assert how.dport in quiet_ports(CATALOGUE, 1)
    assert len(how.sports) == 128 and len(set(how.sports)) == 128
    assert {counted(service, sport, how.dport) for sport in how.sports} == {service}


def test_port_less_and_unknown_services() -> None:
    assert realize("icmp", CATALOGUE).dport == 0
    assert realize("tcp/12345", CATALOGUE).dport == 12345


def test_quiet_ports_match_no_destination_entry() -> None:
    ports = quiet_ports(CATALOGUE, 50, start=45000)
    assert len(ports) == 50 and min(ports) >= 45000
    for port in ports:
        assert not any(
            matches(s, 6, port) or matches(s, 17, port) for s in CATALOGUE.dst_services()
        )


def test_served_port_replies_are_counted_as_the_service() -> None:
    prober = quiet_ports(CATALOGUE, 1, start=45000)[0]
    for service in ("tcp/80", "udp/9999", "tcp/8060"):
        port = served_port(service, CATALOGUE, prober)
        assert counted(service, port, prober) == service


def test_a_service_the_catalogue_cannot_count_is_an_input_error() -> None:
    # Everything from 1 to 65535 is one destination service: nothing can be counted by source.
    wide = Catalogue.from_specs(
        [ServiceSpec(6, 1, 65535, name="tcp/all"), ServiceSpec(6, 2000, 3000, in_dst_table=False)]
    )
    with pytest.raises(InputError, match="quiet ports"):
        realize("tcp/2000-3000", wide)


def test_services_nobody_lists_are_answered_by_the_cloud_host() -> None:
    graph = topo.default_topology([("d1", "camera")])
    assert default_service_host(graph) == "cloud"
    used = ["udp/53", "udp/123", "tcp/443", "udp/32108", "udp/5353", "icmpv6", "icmp", "ip/2"]
    assert listeners(graph, used) == {
        "dns": ("udp/53",),
        "ntp": ("udp/123",),
        "cloud": ("tcp/1883", "tcp/443", "tcp/80", "tcp/8883", "udp/32108"),
    }
    assert targets(graph, used) == {
        "udp/53": "10.0.0.1",
        "udp/123": "10.0.0.2",
        "tcp/443": "10.0.0.3",
        "udp/32108": "10.0.0.3",
        "icmp": "10.0.0.3",
        "ip/2": "10.0.0.3",
    }
