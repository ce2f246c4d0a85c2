"""Unregistered devices, malformed packets and out-of-layout ids: counted safely, forwarded, never
misattributed."""

from __future__ import annotations

import time

from base import PROTO_ICMP, PROTO_TCP, PROTO_UDP, FingerprintTest, host_device, host_ip, host_mac
from ptf import testutils
from scapy.layers.inet import IP, TCP, UDP
from scapy.layers.inet6 import IPv6
from scapy.layers.l2 import Ether
from scapy.packet import Raw

TCP_ANY, UDP_ANY, ICMP_SERVICE, HTTPS = 20, 21, 22, 5
NEW_MAC, OTHER_NEW_MAC, LATE_MAC = "02:00:00:00:aa:01", "02:00:00:00:aa:02", "02:00:00:00:aa:03"
BEYOND_MAC = "02:00:00:00:aa:04"
DIGEST_PACKETS = 10


def mac_value(mac: str) -> int:
    """A MAC as the 48-bit integer a digest carries."""
    return int(mac.replace(":", ""), 16)


class UnregisteredDeviceDigest(FingerprintTest):
    """An unknown source MAC counts under device 0 and is announced once, however chatty; each
    unknown MAC is announced with the port it arrived on."""

    def runTest(self) -> None:
        self.install_hosts()
        self.add_service(HTTPS, PROTO_TCP, (443, 443), priority=10)
        self.enable_digests()
        chatty = (
            Ether(src=NEW_MAC, dst=host_mac(1))
            / IP(src="10.0.0.77", dst=host_ip(1))
            / TCP(sport=46000, dport=443)
        )
        other = Ether(src=OTHER_NEW_MAC, dst=host_mac(0)) / IP(src="10.0.0.78", dst=host_ip(0))
        before = self.read_counters()
        chatty_len = self.send_and_expect(2, chatty, [1], count=DIGEST_PACKETS)
        other_len = self.send_and_expect(3, other, [0], count=3)
        digests = self.collect_digests(seconds=2.0)
        self.assertEqual(
            sorted(digests), sorted([(mac_value(NEW_MAC), 2), (mac_value(OTHER_NEW_MAC), 3)])
        )
        self.assert_counted(
            before,
            {
                (0, HTTPS): (DIGEST_PACKETS, DIGEST_PACKETS * chatty_len),
                (0, 0): (3, 3 * other_len),
            },
        )


class DigestRepeatsAfterInterval(FingerprintTest):
    """A device still unregistered after DIGEST_REPEAT_US is announced again (the controller may
    have missed the first digest); registering it stops both the digests and the device-0
    count. DIGEST_REPEAT_US is the P4Info's; test parameter `digest_repeat_us` overrides it."""

    def runTest(self) -> None:
        default = self.contract.digest_repeat_us
        repeat_s = int(testutils.test_param_get("digest_repeat_us", default)) / 1e6
        self.install_hosts()
        self.enable_digests()
        packet = Ether(src=LATE_MAC, dst=host_mac(0)) / IP(src="10.0.0.79", dst=host_ip(0))
        before = self.read_counters()
        length = self.send_and_expect(1, packet, [0])
        self.assertEqual(self.collect_digests(seconds=1.0), [(mac_value(LATE_MAC), 1)])
        self.send_and_expect(1, packet, [0])
        self.assertEqual(self.collect_digests(seconds=0.5), [])
        time.sleep(max(0.0, repeat_s - 1.5) + 0.5)
        self.send_and_expect(1, packet, [0])
        self.assertEqual(self.collect_digests(seconds=1.0), [(mac_value(LATE_MAC), 1)])
        self.add_device(LATE_MAC, 9)
        self.send_and_expect(1, packet, [0])
        self.assertEqual(self.collect_digests(seconds=0.5), [])
        self.assert_counted(before, {(0, 0): (3, 3 * length), (9, 0): (1, length)})


class TruncatedAndMissingL4(FingerprintTest):
    """TCP/UDP packets whose header is truncated or absent (a later fragment) count under service
    0 even where a whole-protocol service exists; so does a truncated ICMP header. All are
    forwarded unchanged, and the switch goes on counting well-formed packets."""

    def runTest(self) -> None:
        self.install_hosts()
        self.add_service(TCP_ANY, PROTO_TCP, None, priority=1)
        self.add_service(UDP_ANY, PROTO_UDP, None, priority=1)
        self.add_service(ICMP_SERVICE, PROTO_ICMP, (0, 0), priority=1)
        eth = Ether(src=host_mac(0), dst=host_mac(3))
        malformed = [
            eth / IP(src=host_ip(0), dst=host_ip(3), proto=PROTO_TCP) / Raw(b"\x01"),
            eth / IP(src=host_ip(0), dst=host_ip(3), proto=PROTO_UDP) / Raw(b"\x00\x35\x00"),
            eth / IPv6(src="fd00::1", dst="fd00::4", nh=PROTO_TCP) / Raw(b"\x01\xbb" * 5),
            eth / IP(src=host_ip(0), dst=host_ip(3), proto=PROTO_ICMP) / Raw(b"\x08"),
            # A later fragment: its first bytes are payload, not a TCP header.
            eth
            / IP(src=host_ip(0), dst=host_ip(3), proto=PROTO_TCP, frag=100)
            / Raw(bytes(TCP(sport=1, dport=443))),
        ]
        well_formed = eth / IP(src=host_ip(0), dst=host_ip(3)) / TCP(sport=47000, dport=22)
        before = self.read_counters()
        malformed_bytes = sum(self.send_and_expect(0, packet, [3]) for packet in malformed)
        good_len = self.send_and_expect(0, well_formed, [3])
        self.assert_counted(
            before,
            {
                (host_device(0), 0): (len(malformed), malformed_bytes),
                (host_device(0), TCP_ANY): (1, good_len),
            },
        )


class SelfContradictoryHeaders(FingerprintTest):
    """Headers whose own fields say they are not what they claim: an IPv4 version other than 4,
    an IPv4 total length below IHL x 4, a TCP data offset below 5. Each is a parser error, so the
    packet counts under service 0 however many services would match its ports or protocol, and
    is forwarded unchanged."""

    def runTest(self) -> None:
        self.install_hosts()
        self.add_service(HTTPS, PROTO_TCP, (443, 443), priority=10)
        self.add_service(TCP_ANY, PROTO_TCP, None, priority=1)
        self.add_service(ICMP_SERVICE, PROTO_ICMP, (0, 0), priority=1)
        eth = Ether(src=host_mac(1), dst=host_mac(2))
        ip = IP(src=host_ip(1), dst=host_ip(2))
        contradictory = [
            eth / IP(src=host_ip(1), dst=host_ip(2), version=6) / TCP(sport=48000, dport=443),
            eth / IP(src=host_ip(1), dst=host_ip(2), version=5, proto=PROTO_ICMP) / (b"\x08" * 8),
            eth / IP(src=host_ip(1), dst=host_ip(2), len=19) / TCP(sport=48001, dport=443),
            eth / ip / TCP(sport=48002, dport=443, dataofs=4),
        ]
        well_formed = eth / ip / TCP(sport=48003, dport=443)
        before = self.read_counters()
        sizes = sum(self.send_and_expect(1, packet, [2]) for packet in contradictory)
        good_len = self.send_and_expect(1, well_formed, [2])
        self.assert_counted(
            before,
            {
                (host_device(1), 0): (len(contradictory), sizes),
                (host_device(1), HTTPS): (1, good_len),
            },
        )


class IdsBeyondTheCounterLayout(FingerprintTest):
    """A set_device id >= MAX_DEVICES or a set_service id >= MAX_SERVICES can never count in
    another device's cells: a target either refuses the entry, or guards the counter index (the
    device is then unregistered: device 0 and a digest; the service is 0). Both leave the same
    counts and digests, which is what this test requires."""

    def runTest(self) -> None:
        self.install_hosts()
        self.add_service(HTTPS, PROTO_TCP, (443, 443), priority=10)
        self.enable_digests()
        self.add_device(BEYOND_MAC, self.max_devices, may_refuse=True)
        self.add_service(self.max_services, PROTO_UDP, (5683, 5683), 10, may_refuse=True)
        # Unguarded, device 1's service MAX_SERVICES would be device 2's service 0, and device
        # MAX_DEVICES's cells would lie past the end of the array.
        beyond = (
            Ether(src=BEYOND_MAC, dst=host_mac(2))
            / IP(src="10.0.0.90", dst=host_ip(2))
            / TCP(sport=49000, dport=443)
        )
        coap = (
            Ether(src=host_mac(1), dst=host_mac(2))
            / IP(src=host_ip(1), dst=host_ip(2))
            / UDP(sport=5683, dport=5683)
            / b"coap"
        )
        before = self.read_counters()
        beyond_len = self.send_and_expect(3, beyond, [2])
        coap_len = self.send_and_expect(1, coap, [2], count=2)
        self.assertEqual(self.collect_digests(seconds=1.0), [(mac_value(BEYOND_MAC), 3)])
        self.assert_counted(
            before,
            {(0, HTTPS): (1, beyond_len), (host_device(1), 0): (2, 2 * coap_len)},
        )
