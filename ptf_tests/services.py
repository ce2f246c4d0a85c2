"""Service lookup: by destination port, by source port (server role), ranges and priorities,
every encapsulation the parser knows, port-0 protocols, unmatched traffic, the last cell."""

from __future__ import annotations

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
from scapy.all import (
    ICMP,
    IP,
    TCP,
    UDP,
    Dot1Q,
    Ether,
    ICMPv6EchoRequest,
    IPOption,
    IPOption_EOL,
    IPOption_NOP,
    IPv6,
)

HTTPS, DNS, HTTP, MDNS, NTP = 5, 6, 7, 8, 9
EPHEMERAL_UDP, ALT_HTTP_RANGE, ALT_HTTP = 10, 11, 12
ICMP_SERVICE, ICMPV6_SERVICE, GRE_SERVICE = 13, 14, 15
PROTO_GRE = 47


def ipv4(src: int, dst: int) -> Ether:
    return Ether(src=host_mac(src), dst=host_mac(dst)) / IP(src=host_ip(src), dst=host_ip(dst))


def ipv6(src: int, dst: int) -> Ether:
    return Ether(src=host_mac(src), dst=host_mac(dst)) / IPv6(src=host_ip6(src), dst=host_ip6(dst))


class TcpUdpByDestinationPort(FingerprintTest):
    """TCP and UDP packets map to the service of their destination port."""

    def runTest(self) -> None:
        self.install_hosts()
        self.add_service(HTTPS, PROTO_TCP, (443, 443), priority=10)
        self.add_service(DNS, PROTO_UDP, (53, 53), priority=10)
        self.add_service(NTP, PROTO_UDP, (123, 123), priority=10)
        https = ipv4(0, 1) / TCP(sport=41000, dport=443)
        dns = ipv4(0, 2) / UDP(sport=41001, dport=53) / (b"d" * 12)
        ntp = ipv4(3, 2) / UDP(sport=123, dport=123) / (b"n" * 48)
        before = self.read_counters()
        https_len = self.send_and_expect(0, https, [1], count=2)
        dns_len = self.send_and_expect(0, dns, [2])
        ntp_len = self.send_and_expect(3, ntp, [2])
        self.assert_counted(
            before,
            {
                (host_device(0), HTTPS): (2, 2 * https_len),
                (host_device(0), DNS): (1, dns_len),
                (host_device(3), NTP): (1, ntp_len),
            },
        )


class ServerRoleBySourcePort(FingerprintTest):
    """A response from a well-known source port maps to that service when the destination port
    has none; when both ports have a service, the destination port wins."""

    def runTest(self) -> None:
        self.install_hosts()
        self.add_service(HTTP, PROTO_TCP, (80, 80), priority=10)
        self.add_service(HTTPS, PROTO_TCP, (443, 443), priority=10)
        self.add_service(MDNS, PROTO_UDP, (5353, 5353), priority=10)
        http_response = ipv4(1, 0) / TCP(sport=80, dport=51515, flags="SA")
        mdns_reply = ipv4(2, 0) / UDP(sport=5353, dport=40404) / (b"m" * 16)
        both = ipv4(1, 0) / TCP(sport=80, dport=443)
        before = self.read_counters()
        http_len = self.send_and_expect(1, http_response, [0], count=2)
        mdns_len = self.send_and_expect(2, mdns_reply, [0])
        both_len = self.send_and_expect(1, both, [0])
        self.assert_counted(
            before,
            {
                (host_device(1), HTTP): (2, 2 * http_len),
                (host_device(2), MDNS): (1, mdns_len),
                (host_device(1), HTTPS): (1, both_len),
            },
        )


class PortRangesAndPriorities(FingerprintTest):
    """A port range is one service, bounds included; the higher priority wins an overlap."""

    def runTest(self) -> None:
        self.install_hosts()
        self.add_service(EPHEMERAL_UDP, PROTO_UDP, (49152, 65535), priority=5)
        self.add_service(ALT_HTTP_RANGE, PROTO_TCP, (8000, 8999), priority=10)
        self.add_service(ALT_HTTP, PROTO_TCP, (8080, 8080), priority=20)
        # Source ports below 49152 everywhere, so only the destination can match the range.
        lowest = ipv4(0, 1) / UDP(sport=1000, dport=49152)
        middle = ipv4(0, 1) / UDP(sport=1000, dport=50000) / b"abc"
        highest = ipv4(0, 1) / UDP(sport=1000, dport=65535) / b"abcdef"
        below = ipv4(0, 1) / UDP(sport=1000, dport=49151)
        alt_range = ipv4(2, 3) / TCP(sport=30000, dport=8081)
        alt_exact = ipv4(2, 3) / TCP(sport=30000, dport=8080)
        before = self.read_counters()
        ephemeral_bytes = sum(
            self.send_and_expect(0, packet, [1]) for packet in (lowest, middle, highest)
        )
        below_len = self.send_and_expect(0, below, [1])
        range_len = self.send_and_expect(2, alt_range, [3])
        exact_len = self.send_and_expect(2, alt_exact, [3], count=2)
        self.assert_counted(
            before,
            {
                (host_device(0), EPHEMERAL_UDP): (3, ephemeral_bytes),
                (host_device(0), 0): (1, below_len),
                (host_device(2), ALT_HTTP_RANGE): (1, range_len),
                (host_device(2), ALT_HTTP): (2, 2 * exact_len),
            },
        )


class Ipv4WithOptions(FingerprintTest):
    """IPv4 options (IHL 6 and the maximum, 15) are skipped to find the L4 header."""

    def runTest(self) -> None:
        self.install_hosts()
        self.add_service(HTTPS, PROTO_TCP, (443, 443), priority=10)
        self.add_service(DNS, PROTO_UDP, (53, 53), priority=10)
        router_alert = Ether(src=host_mac(0), dst=host_mac(1)) / IP(
            src=host_ip(0), dst=host_ip(1), options=[IPOption(b"\x94\x04\x00\x00")]
        )
        longest = Ether(src=host_mac(0), dst=host_mac(1)) / IP(
            src=host_ip(0), dst=host_ip(1), options=[IPOption_NOP()] * 39 + [IPOption_EOL()]
        )
        https = router_alert / TCP(sport=42000, dport=443)
        dns = longest / UDP(sport=42001, dport=53) / b"dns"
        self.assertEqual((IP(bytes(https)[14:]).ihl, IP(bytes(dns)[14:]).ihl), (6, 15))
        before = self.read_counters()
        https_len = self.send_and_expect(0, https, [1])
        dns_len = self.send_and_expect(0, dns, [1])
        self.assert_counted(
            before,
            {(host_device(0), HTTPS): (1, https_len), (host_device(0), DNS): (1, dns_len)},
        )


class Ipv6Services(FingerprintTest):
    """IPv6 TCP and UDP map to services like IPv4 does."""

    def runTest(self) -> None:
        self.install_hosts()
        self.add_service(HTTPS, PROTO_TCP, (443, 443), priority=10)
        self.add_service(MDNS, PROTO_UDP, (5353, 5353), priority=10)
        https = ipv6(1, 2) / TCP(sport=43000, dport=443)
        mdns = ipv6(1, 2) / UDP(sport=5353, dport=5353) / (b"m" * 10)
        before = self.read_counters()
        https_len = self.send_and_expect(1, https, [2])
        mdns_len = self.send_and_expect(1, mdns, [2], count=2)
        self.assert_counted(
            before,
            {(host_device(1), HTTPS): (1, https_len), (host_device(1), MDNS): (2, 2 * mdns_len)},
        )


class VlanTagged(FingerprintTest):
    """One 802.1Q tag is looked through, and the frame leaves with its tag."""

    def runTest(self) -> None:
        self.install_hosts()
        self.add_service(DNS, PROTO_UDP, (53, 53), priority=10)
        self.add_service(HTTPS, PROTO_TCP, (443, 443), priority=10)
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
        before = self.read_counters()
        dns_len = self.send_and_expect(3, dns, [0])
        https_len = self.send_and_expect(3, https6, [0])
        self.assert_counted(
            before,
            {(host_device(3), DNS): (1, dns_len), (host_device(3), HTTPS): (1, https_len)},
        )


class PortZeroProtocols(FingerprintTest):
    """ICMP, ICMPv6 and other IP protocols are looked up with port 0."""

    def runTest(self) -> None:
        self.install_hosts()
        self.add_service(ICMP_SERVICE, PROTO_ICMP, (0, 0), priority=10)
        self.add_service(ICMPV6_SERVICE, PROTO_ICMPV6, (0, 0), priority=10)
        self.add_service(GRE_SERVICE, PROTO_GRE, (0, 0), priority=10)
        echo = ipv4(0, 1) / ICMP(type=8, id=7, seq=1) / (b"p" * 32)
        echo6 = ipv6(0, 1) / ICMPv6EchoRequest(id=7, seq=1)
        gre = (
            Ether(src=host_mac(0), dst=host_mac(1))
            / IP(src=host_ip(0), dst=host_ip(1), proto=PROTO_GRE)
            / (b"\x00\x00\x08\x00" + b"g" * 20)
        )
        before = self.read_counters()
        echo_len = self.send_and_expect(0, echo, [1], count=2)
        echo6_len = self.send_and_expect(0, echo6, [1])
        gre_len = self.send_and_expect(0, gre, [1])
        self.assert_counted(
            before,
            {
                (host_device(0), ICMP_SERVICE): (2, 2 * echo_len),
                (host_device(0), ICMPV6_SERVICE): (1, echo6_len),
                (host_device(0), GRE_SERVICE): (1, gre_len),
            },
        )


class UnmatchedIsServiceZero(FingerprintTest):
    """Traffic no entry matches, and non-IP traffic, count under service 0 ("other")."""

    def runTest(self) -> None:
        self.install_hosts()
        self.add_service(HTTPS, PROTO_TCP, (443, 443), priority=10)
        # UDP/443 must not match the TCP/443 service.
        quic = ipv4(2, 1) / UDP(sport=45000, dport=443)
        odd_tcp = ipv4(2, 1) / TCP(sport=45001, dport=12345)
        lldp_like = Ether(src=host_mac(2), dst=host_mac(1), type=0x88B5) / (b"\x00" * 46)
        before = self.read_counters()
        total = self.send_and_expect(2, quic, [1])
        total += self.send_and_expect(2, odd_tcp, [1])
        total += self.send_and_expect(2, lldp_like, [1])
        self.assert_counted(before, {(host_device(2), 0): (3, total)})


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
