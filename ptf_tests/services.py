"""Service lookup: by destination port, by source port (server role), ranges and priorities,
every encapsulation the parser knows, port-0 protocols, unmatched traffic, the last cell."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from base import (
    PROTO_ICMP,
    PROTO_ICMPV6,
    PROTO_TCP,
    PROTO_UDP,
    FingerprintTest,
    host_device,
    host_ip,
    host_ip6,
    host_mac,
)
from scapy.layers.inet import ICMP, IP, TCP, UDP, IPOption, IPOption_EOL, IPOption_NOP
from scapy.layers.inet6 import ICMPv6EchoRequest, IPv6
from scapy.layers.l2 import Dot1Q, Ether

HTTPS, DNS, HTTP, MDNS, NTP = 5, 6, 7, 8, 9
EPHEMERAL_UDP, ALT_HTTP_RANGE, ALT_HTTP = 10, 11, 12
ICMP_SERVICE, ICMPV6_SERVICE, GRE_SERVICE = 13, 14, 15
PROTO_GRE = 47

# (service id, IP protocol, (first port, last port), priority)
Rule = tuple[int, int, tuple[int, int], int]


@dataclass(frozen=True)
class Send:
    """`count` copies of `frame` from the host behind `port`, each leaving on exactly `out` and
    counted under that host's device and `service`."""

    port: int
    frame: Any
    out: tuple[int, ...]
    service: int
    count: int = 1


def ipv4(src: int, dst: int) -> Ether:
    """Ethernet + IPv4 from the host behind port `src` to the one behind `dst`."""
    return Ether(src=host_mac(src), dst=host_mac(dst)) / IP(src=host_ip(src), dst=host_ip(dst))


def ipv6(src: int, dst: int) -> Ether:
    """Ethernet + IPv6 from the host behind port `src` to the one behind `dst`."""
    return Ether(src=host_mac(src), dst=host_mac(dst)) / IPv6(src=host_ip6(src), dst=host_ip6(dst))


def check_lookups(test: FingerprintTest, rules: Iterable[Rule], sends: Iterable[Send]) -> None:
    """Install the hosts and `rules`, make every send, and require the counters to have moved by
    exactly the packets and bytes of the sends, each in its (device, service) cell."""
    test.install_hosts()
    for service, proto, ports, priority in rules:
        test.add_service(service, proto, ports, priority=priority)
    before = test.read_counters()
    expected: dict[tuple[int, int], tuple[int, int]] = {}
    for send in sends:
        length = test.send_and_expect(send.port, send.frame, send.out, count=send.count)
        cell = (host_device(send.port), send.service)
        packets, octets = expected.get(cell, (0, 0))
        expected[cell] = (packets + send.count, octets + send.count * length)
    test.assert_counted(before, expected)


class TcpUdpByDestinationPort(FingerprintTest):
    """TCP and UDP packets map to the service of their destination port."""

    def runTest(self) -> None:
        rules = [
            (HTTPS, PROTO_TCP, (443, 443), 10),
            (DNS, PROTO_UDP, (53, 53), 10),
            (NTP, PROTO_UDP, (123, 123), 10),
        ]
        sends = [
            Send(0, ipv4(0, 1) / TCP(sport=41000, dport=443), (1,), HTTPS, count=2),
            Send(0, ipv4(0, 2) / UDP(sport=41001, dport=53) / (b"d" * 12), (2,), DNS),
            Send(3, ipv4(3, 2) / UDP(sport=123, dport=123) / (b"n" * 48), (2,), NTP),
        ]
        check_lookups(self, rules, sends)


class ServerRoleBySourcePort(FingerprintTest):
    """A response from a well-known source port maps to that service when the destination port
    has none; when both ports have a service, the destination port wins."""

    def runTest(self) -> None:
        rules = [
            (HTTP, PROTO_TCP, (80, 80), 10),
            (HTTPS, PROTO_TCP, (443, 443), 10),
            (MDNS, PROTO_UDP, (5353, 5353), 10),
        ]
        http_response = ipv4(1, 0) / TCP(sport=80, dport=51515, flags="SA")
        mdns_reply = ipv4(2, 0) / UDP(sport=5353, dport=40404) / (b"m" * 16)
        both = ipv4(1, 0) / TCP(sport=80, dport=443)
        sends = [
            Send(1, http_response, (0,), HTTP, count=2),
            Send(2, mdns_reply, (0,), MDNS),
            Send(1, both, (0,), HTTPS),
        ]
        check_lookups(self, rules, sends)


class PortRangesAndPriorities(FingerprintTest):
    """A port range is one service, bounds included; the higher priority wins an overlap."""

    def runTest(self) -> None:
        rules = [
            (EPHEMERAL_UDP, PROTO_UDP, (49152, 65535), 5),
            (ALT_HTTP_RANGE, PROTO_TCP, (8000, 8999), 10),
            (ALT_HTTP, PROTO_TCP, (8080, 8080), 20),
        ]
        # Source ports below 49152 everywhere, so only the destination can match the range.
        ephemeral = [
            ipv4(0, 1) / UDP(sport=1000, dport=49152),
            ipv4(0, 1) / UDP(sport=1000, dport=50000) / b"abc",
            ipv4(0, 1) / UDP(sport=1000, dport=65535) / b"abcdef",
        ]
        sends = [Send(0, frame, (1,), EPHEMERAL_UDP) for frame in ephemeral] + [
            Send(0, ipv4(0, 1) / UDP(sport=1000, dport=49151), (1,), 0),
            Send(2, ipv4(2, 3) / TCP(sport=30000, dport=8081), (3,), ALT_HTTP_RANGE),
            Send(2, ipv4(2, 3) / TCP(sport=30000, dport=8080), (3,), ALT_HTTP, count=2),
        ]
        check_lookups(self, rules, sends)


class Ipv4WithOptions(FingerprintTest):
    """IPv4 options (IHL 6 and the maximum, 15) are skipped to find the L4 header."""

    def runTest(self) -> None:
        router_alert = Ether(src=host_mac(0), dst=host_mac(1)) / IP(
            src=host_ip(0), dst=host_ip(1), options=[IPOption(b"\x94\x04\x00\x00")]
        )
        longest = Ether(src=host_mac(0), dst=host_mac(1)) / IP(
            src=host_ip(0), dst=host_ip(1), options=[IPOption_NOP()] * 39 + [IPOption_EOL()]
        )
        https = router_alert / TCP(sport=42000, dport=443)
        dns = longest / UDP(sport=42001, dport=53) / b"dns"
        self.assertEqual((IP(bytes(https)[14:]).ihl, IP(bytes(dns)[14:]).ihl), (6, 15))
        rules = [(HTTPS, PROTO_TCP, (443, 443), 10), (DNS, PROTO_UDP, (53, 53), 10)]
        check_lookups(self, rules, [Send(0, https, (1,), HTTPS), Send(0, dns, (1,), DNS)])


class Ipv6Services(FingerprintTest):
    """IPv6 TCP and UDP map to services like IPv4 does."""

    def runTest(self) -> None:
        rules = [(HTTPS, PROTO_TCP, (443, 443), 10), (MDNS, PROTO_UDP, (5353, 5353), 10)]
        https = ipv6(1, 2) / TCP(sport=43000, dport=443)
        mdns = ipv6(1, 2) / UDP(sport=5353, dport=5353) / (b"m" * 10)
        check_lookups(
            self, rules, [Send(1, https, (2,), HTTPS), Send(1, mdns, (2,), MDNS, count=2)]
        )


class VlanTagged(FingerprintTest):
    """One 802.1Q tag is looked through, and the frame leaves with its tag."""

    def runTest(self) -> None:
        rules = [(DNS, PROTO_UDP, (53, 53), 10), (HTTPS, PROTO_TCP, (443, 443), 10)]
        dns = (
            Ether(src=host_mac(3), dst=host_mac(0))
            / Dot1Q(vlan=10, prio=3)
            / IP(src=host_ip(3), dst=host_ip(0))
            / UDP(sport=44000, dport=53)
        )
        https6 = (
            Ether(src=host_mac(3), dst=host_mac(0))
            / Dot1Q(vlan=20)
            / IPv6(src=host_ip6(3), dst=host_ip6(0))
            / TCP(sport=44001, dport=443)
        )
        check_lookups(self, rules, [Send(3, dns, (0,), DNS), Send(3, https6, (0,), HTTPS)])


class PortZeroProtocols(FingerprintTest):
    """ICMP, ICMPv6 and other IP protocols are looked up with port 0."""

    def runTest(self) -> None:
        rules = [
            (ICMP_SERVICE, PROTO_ICMP, (0, 0), 10),
            (ICMPV6_SERVICE, PROTO_ICMPV6, (0, 0), 10),
            (GRE_SERVICE, PROTO_GRE, (0, 0), 10),
        ]
        echo = ipv4(0, 1) / ICMP(type=8, id=7, seq=1) / (b"p" * 32)
        echo6 = ipv6(0, 1) / ICMPv6EchoRequest(id=7, seq=1)
        gre = (
            Ether(src=host_mac(0), dst=host_mac(1))
            / IP(src=host_ip(0), dst=host_ip(1), proto=PROTO_GRE)
            / (b"\x00\x00\x08\x00" + b"g" * 20)
        )
        sends = [
            Send(0, echo, (1,), ICMP_SERVICE, count=2),
            Send(0, echo6, (1,), ICMPV6_SERVICE),
            Send(0, gre, (1,), GRE_SERVICE),
        ]
        check_lookups(self, rules, sends)


class UnmatchedIsServiceZero(FingerprintTest):
    """Traffic no entry matches, and non-IP traffic, count under service 0 ("other")."""

    def runTest(self) -> None:
        unmatched = [
            # UDP/443 must not match the TCP/443 service.
            ipv4(2, 1) / UDP(sport=45000, dport=443),
            ipv4(2, 1) / TCP(sport=45001, dport=12345),
            Ether(src=host_mac(2), dst=host_mac(1), type=0x88B5) / (b"\x00" * 46),
        ]
        rules = [(HTTPS, PROTO_TCP, (443, 443), 10)]
        check_lookups(self, rules, [Send(2, frame, (1,), 0) for frame in unmatched])


class LastCounterCell(FingerprintTest):
    """Device MAX_DEVICES-1 using service MAX_SERVICES-1 lands in the array's last cell."""

    def runTest(self) -> None:
        last_device = self.max_devices - 1
        last_service = self.max_services - 1
        self.assertEqual(self.cell(last_device, last_service), self.counter_size - 1)
        self.install_hosts(ports=(1,))
        self.add_device("00:00:00:00:0f:ff", last_device)
        self.add_service(last_service, PROTO_UDP, (5683, 5683), priority=10)
        coap = (
            Ether(src="00:00:00:00:0f:ff", dst=host_mac(1))
            / IP(src="10.0.0.200", dst=host_ip(1))
            / UDP(sport=5683, dport=5683)
            / b"coap"
        )
        before = self.read_counters()
        length = self.send_and_expect(0, coap, [1], count=2)
        self.assert_counted(before, {(last_device, last_service): (2, 2 * length)})
