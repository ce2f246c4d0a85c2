"""Frames for emulated devices without a network: what their sockets would have put on the wire.

For machines where Mininet cannot run (no root), the same schedules the emulated devices play
are turned into Ethernet frames — a DNS query and its answer, a TCP handshake, request, reply and
close, an mDNS announcement, an ICMP echo and its reply — each stamped with the time it would
have been sent and the switch port it would have arrived on. They are written as a pcap and
replayed into a switch's ports.
"""

from __future__ import annotations

import socket
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import dpkt
import networkx as nx

from controller.base.errors import InputError
from controller.base.pcapfile import PcapWriter
from controller.engine.catalogue import Catalogue
from topology import graph as topo
from topology import protocols
from topology.devices import MAX_EXCHANGES_PER_UNIT, UNPLAYABLE, Activity
from topology.emulation import (
    PROBE_PORT_START,
    PROBE_PORTS,
    DeviceSchedule,
    default_service_host,
    realize_schedules,
)
from topology.ports import quiet_ports, served_port

# Client ports the synthesised exchanges use: below the IANA dynamic range on purpose, like
# Linux's ephemeral ports, and not used as a service port in the default catalogue.
_CLIENT_PORTS = (41000, 42000)
# Spacing of the frames of one exchange, and of successive exchanges in a unit.
_FRAME_GAP = 0.002
_EXCHANGE_GAP = 0.01


# Slots: a long demo (600 units, 25 devices) synthesises a quarter of a million frames.
@dataclass(frozen=True, slots=True)
class Frame:
    """One frame: when it is sent, the switch port it arrives on, and its bytes."""

    time: float
    port: int
    data: bytes


@dataclass(frozen=True)
class _Endpoint:
    mac: bytes
    ip: bytes
    port: int  # switch port the host is attached to


def synthesize(
    graph: nx.Graph[str],
    schedules: Mapping[str, DeviceSchedule],
    unit_seconds: float,
    start: float,
    catalogue: Catalogue | None = None,
) -> list[Frame]:
    """Frames for every device's schedule, unit u starting at `start + u * unit_seconds`.

    Ports are chosen as the emulated devices choose them (`topology.ports`). The topology must
    have one switch (frames carry the port they arrive on at that switch).
    """
    if len(topo.switches(graph)) != 1:
        raise InputError("frames can be synthesised for a single-switch topology only")
    chosen = catalogue or Catalogue.default()
    schedules = realize_schedules(schedules, chosen)
    probe_sports = quiet_ports(chosen, PROBE_PORTS, start=PROBE_PORT_START)
    switch = topo.switches(graph)[0].name
    ends = {h.name: _endpoint(graph, switch, h) for h in topo.hosts(graph)}
    answers = topo.service_hosts_by_service(graph)
    fallback = default_service_host(graph)
    frames: list[Frame] = []
    for name, schedule in sorted(schedules.items()):
        device = ends[name]
        sequence = 0
        for unit, activities in enumerate(schedule.units):
            at = start + unit * unit_seconds + 0.05 * unit_seconds
            for activity in activities:
                if activity.service in UNPLAYABLE:
                    continue
                server = ends[answers.get(activity.service, fallback)]
                for _ in range(max(1, min(activity.count, MAX_EXCHANGES_PER_UNIT))):
                    frames.extend(_exchange(activity, device, server, at, sequence))
                    sequence += 1
                    at += _EXCHANGE_GAP
        prober = ends[fallback]
        for index, (unit, service) in enumerate(schedule.serve):
            at = start + (unit + 0.5) * unit_seconds
            port = served_port(service, chosen, probe_sports[0])
            sport = probe_sports[index % len(probe_sports)]
            frames.extend(_served(service, port, device, prober, at, sport))
    frames.sort(key=lambda frame: frame.time)
    return frames


def write_pcap(frames: list[Frame], path: Path) -> None:
    """Write the frames as an Ethernet pcap (the switch port is not stored), atomically."""

    path.parent.mkdir(parents=True, exist_ok=True)
    with PcapWriter(path) as writer:
        for frame in frames:
            writer.write(frame.data, frame.time)


def _endpoint(graph: nx.Graph[str], switch: str, host: topo.Host) -> _Endpoint:
    port = int(graph.edges[host.name, switch]["ports"][switch])
    return _Endpoint(bytes.fromhex(host.mac.replace(":", "")), socket.inet_aton(host.ip), port)


def _ip(src: _Endpoint, dst_ip: bytes, proto: int, payload: dpkt.Packet | bytes) -> dpkt.ip.IP:
    return dpkt.ip.IP(src=src.ip, dst=dst_ip, p=proto, ttl=64, data=payload)


def _eth(src: _Endpoint, dst_mac: bytes, packet: dpkt.ip.IP) -> bytes:
    return bytes(dpkt.ethernet.Ethernet(src=src.mac, dst=dst_mac, data=packet))


def _udp(a: _Endpoint, b: _Endpoint, sport: int, dport: int, payload: bytes) -> bytes:
    segment = dpkt.udp.UDP(sport=sport, dport=dport, data=payload)
    return _eth(a, b.mac, _ip(a, b.ip, dpkt.ip.IP_PROTO_UDP, segment))


def _tcp(a: _Endpoint, b: _Endpoint, sport: int, dport: int, flags: int, payload: bytes) -> bytes:
    segment = dpkt.tcp.TCP(sport=sport, dport=dport, flags=flags, win=64240, data=payload)
    return _eth(a, b.mac, _ip(a, b.ip, dpkt.ip.IP_PROTO_TCP, segment))


def _tcp_session(
    client: _Endpoint, server: _Endpoint, sport: int, dport: int, request: bytes, reply: bytes
) -> list[tuple[_Endpoint, bytes]]:
    syn, ack, psh, fin = dpkt.tcp.TH_SYN, dpkt.tcp.TH_ACK, dpkt.tcp.TH_PUSH, dpkt.tcp.TH_FIN
    return [
        (client, _tcp(client, server, sport, dport, syn, b"")),
        (server, _tcp(server, client, dport, sport, syn | ack, b"")),
        (client, _tcp(client, server, sport, dport, ack, b"")),
        (client, _tcp(client, server, sport, dport, psh | ack, request)),
        (server, _tcp(server, client, dport, sport, psh | ack, reply)),
        (client, _tcp(client, server, sport, dport, fin | ack, b"")),
        (server, _tcp(server, client, dport, sport, fin | ack, b"")),
        (client, _tcp(client, server, sport, dport, ack, b"")),
    ]


def _exchange(
    activity: Activity, device: _Endpoint, server: _Endpoint, at: float, sequence: int
) -> list[Frame]:
    service = activity.service
    key = protocols.parse_service(service)
    port = activity.port or key.port_lo
    if activity.sports:
        sport = activity.sports[sequence % len(activity.sports)]
    else:
        sport = _CLIENT_PORTS[0] + sequence % (_CLIENT_PORTS[1] - _CLIENT_PORTS[0])
    frames: list[tuple[_Endpoint, bytes]]
    if service in protocols.MULTICAST_SERVICES:
        group, port = protocols.MULTICAST_SERVICES[service]
        group_ip = socket.inet_aton(group)
        group_mac = b"\x01\x00\x5e" + bytes([group_ip[1] & 0x7F]) + group_ip[2:]
        payload = protocols.mdns_query() if port == 5353 else protocols.ssdp_search()
        segment = dpkt.udp.UDP(sport=port if port == 5353 else sport, dport=port, data=payload)
        frame = _eth(device, group_mac, _ip(device, group_ip, dpkt.ip.IP_PROTO_UDP, segment))
        frames = [(device, frame)]
    elif service in protocols.LINK_LOCAL_SERVICES:
        frames = [(device, _icmpv6_all_nodes(device, sequence))]
    elif key.proto == 1:
        echo = dpkt.icmp.ICMP.Echo(id=sequence & 0xFFFF, seq=1, data=b"svcfp")
        request = dpkt.icmp.ICMP(type=dpkt.icmp.ICMP_ECHO, data=echo)
        reply = dpkt.icmp.ICMP(type=dpkt.icmp.ICMP_ECHOREPLY, data=echo)
        frames = [
            (device, _eth(device, server.mac, _ip(device, server.ip, 1, request))),
            (server, _eth(server, device.mac, _ip(server, device.ip, 1, reply))),
        ]
    elif key.transport is None:
        assert key.proto is not None
        frames = [(device, _eth(device, server.mac, _ip(device, server.ip, key.proto, b"svcfp")))]
    elif key.transport == "tcp":
        request = protocols.tcp_request(port, "cloud.svcfp.test")
        reply = protocols.tcp_response(port, request)
        frames = _tcp_session(device, server, sport, port, request, reply)
    else:
        if port == 53:
            query = protocols.dns_query("device.cloud.svcfp.test", sequence)
        elif port == 123:
            query = protocols.ntp_request(at)
        else:
            query = b"svcfp"
        answer = protocols.udp_response(port, query, "10.0.0.3", at)
        frames = [
            (device, _udp(device, server, sport, port, query)),
            (server, _udp(server, device, port, sport, answer)),
        ]
    return [Frame(at + i * _FRAME_GAP, who.port, data) for i, (who, data) in enumerate(frames)]


def _icmpv6_all_nodes(device: _Endpoint, sequence: int) -> bytes:
    # The device's link-local address (EUI-64 from its MAC) to all nodes, as the kernel sends it.
    eui = bytes([device.mac[0] ^ 0x02]) + device.mac[1:3] + b"\xff\xfe" + device.mac[3:]
    source = b"\xfe\x80" + bytes(6) + eui
    echo = dpkt.icmp6.ICMP6.Echo(id=sequence & 0xFFFF, seq=1, data=b"svcfp")
    message = dpkt.icmp6.ICMP6(type=dpkt.icmp6.ICMP6_ECHO_REQUEST, data=echo)
    packet = dpkt.ip6.IP6(
        src=source, dst=socket.inet_pton(socket.AF_INET6, protocols.ALL_NODES), nxt=58, hlim=1
    )
    packet.data = message
    packet.plen = len(bytes(message))
    return bytes(
        dpkt.ethernet.Ethernet(
            src=device.mac, dst=b"\x33\x33\x00\x00\x00\x01", type=0x86DD, data=packet
        )
    )


def _served(
    service: str, port: int, device: _Endpoint, prober: _Endpoint, at: float, probe_sport: int
) -> list[Frame]:
    key = protocols.parse_service(service)
    if key.transport == "tcp":
        request = protocols.tcp_request(port, "device.svcfp.test")
        reply = protocols.tcp_response(port, request)
        frames = _tcp_session(prober, device, probe_sport, port, request, reply)
    else:
        frames = [
            (prober, _udp(prober, device, probe_sport, port, b"svcfp probe")),
            (device, _udp(device, prober, port, probe_sport, b"svcfp probe")),
        ]
    return [Frame(at + i * _FRAME_GAP, who.port, data) for i, (who, data) in enumerate(frames)]
