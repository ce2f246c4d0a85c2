from __future__ import annotations

from collections import defaultdict
from pathlib import Path

import dpkt
import pytest

from controller.base.errors import InputError
from controller.engine.catalogue import Catalogue
from topology import graph as topo
from topology.devices import Activity
from topology.emulation import DeviceSchedule
from topology.frames import synthesize, write_pcap

A = Activity


def services_by_sender(frames: list[bytes], catalogue: Catalogue) -> dict[str, set[str]]:
    """What the switch would count: source MAC → service names (the P4 lookup semantics)."""
    found: dict[str, set[str]] = defaultdict(set)
    for data in frames:
        eth = dpkt.ethernet.Ethernet(data)
        ip = eth.data
        proto = ip.nxt if isinstance(ip, dpkt.ip6.IP6) else ip.p
        sport = dport = 0
        if isinstance(ip.data, dpkt.tcp.TCP | dpkt.udp.UDP):
            sport, dport = ip.data.sport, ip.data.dport
        mac = ":".join(f"{b:02x}" for b in eth.src)
        found[mac].add(catalogue.names[catalogue.tables.lookup(proto, sport, dport)])
    return dict(found)


def test_frames_carry_exactly_the_scheduled_services_per_device(tmp_path: Path) -> None:
    graph = topo.default_topology([("d1", "camera"), ("d2", "plug")])
    schedules = {
        "d1": DeviceSchedule(
            units=(
                (A("udp/53"), A("tcp/443", 2), A("udp/5353")),
                (A("udp/123"), A("icmp"), A("icmpv6"), A("ip/0")),
            ),
            serve=((1, "tcp/80"),),
        ),
        "d2": DeviceSchedule(
            units=(
                (A("udp/1900"), A("tcp/1024-49151")),
                (A("udp/8765"), A("tcp/8767"), A("udp/49152-65535")),
            ),
            serve=((0, "udp/10001"),),
        ),
    }
    frames = synthesize(graph, schedules, unit_seconds=2.0, start=1000.0)
    assert [f.time for f in frames] == sorted(f.time for f in frames)
    assert all(1000.0 <= f.time < 1004.0 for f in frames)
    ports = {f.port for f in frames}
    assert ports == {1, 2, 3, 4, 5}  # dns, ntp, cloud answer; d1 and d2 send
    counted = services_by_sender([f.data for f in frames], Catalogue.default())
    assert counted["02:00:00:00:02:01"] == {
        "udp/53",
        "tcp/443",
        "udp/5353",
        "udp/123",
        "icmp",
        "icmpv6",
        "ip/0",
        "tcp/80",
    }
    # Source-port services come from client ports in their range to a port no entry matches;
    # served services from the device's replies to the prober.
    assert counted["02:00:00:00:02:02"] == {
        "udp/1900",
        "tcp/1024-49151",
        "udp/8765",
        "tcp/8767",
        "udp/49152-65535",
        "udp/10001",
    }
    # One DNS exchange, two TCP sessions of 8 frames, one mDNS frame in d1's unit 0.
    unit0 = [f for f in frames if f.time < 1002.0 and f.port == 4]
    assert len(unit0) == 1 + 2 * 5 + 1

    path = tmp_path / "replay.pcap"
    write_pcap(frames, path)
    with path.open("rb") as handle:
        stored = [(ts, bytes(buf)) for ts, buf in dpkt.pcap.Reader(handle)]
    assert [data for _, data in stored] == [f.data for f in frames]
    assert stored[0][0] == pytest.approx(frames[0].time, abs=1e-6)


def test_frames_need_a_single_switch() -> None:
    graph = topo.default_topology([("d1", "camera")])
    graph.add_node("s2", kind="switch", grpc_port=9999, device_id=9, thrift_port=9999)
    graph.add_edge("s1", "s2", ports={"s1": 9, "s2": 1})
    with pytest.raises(InputError, match="single-switch"):
        synthesize(graph, {}, 1.0, 0.0)
