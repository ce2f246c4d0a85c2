"""Forwarding: unicast, flooding without hairpin, broadcast, tap mode — each packet also counted."""

from __future__ import annotations

from base import (
    BROADCAST,
    PROTO_TCP,
    PROTO_UDP,
    FingerprintTest,
    host_device,
    host_ip,
    host_mac,
)
from ptf import testutils
from scapy.layers.inet import IP, TCP, UDP
from scapy.layers.l2 import ARP, Ether

HTTPS = 5
DNS = 6
UNKNOWN_MAC = "00:00:00:00:09:09"


class KnownUnicast(FingerprintTest):
    """A known destination leaves on its port only; every packet counted as (device, service)."""

    def runTest(self) -> None:
        self.install_hosts()
        self.add_service(HTTPS, PROTO_TCP, (443, 443), priority=10)
        packet = (
            Ether(src=host_mac(0), dst=host_mac(1))
            / IP(src=host_ip(0), dst=host_ip(1))
            / TCP(sport=40000, dport=443)
            / (b"x" * 30)
        )
        before = self.read_counters()
        length = self.send_and_expect(0, packet, [1], count=3)
        self.assert_counted(before, {(host_device(0), HTTPS): (3, 3 * length)})


class FloodWithoutHairpin(FingerprintTest):
    """An unknown destination floods to every port except the one it came in on."""

    def runTest(self) -> None:
        self.install_hosts()
        self.add_service(DNS, PROTO_UDP, (53, 53), priority=10)
        packet = (
            Ether(src=host_mac(1), dst=UNKNOWN_MAC)
            / IP(src=host_ip(1), dst="10.0.0.99")
            / UDP(sport=33000, dport=53)
            / (b"q" * 20)
        )
        before = self.read_counters()
        length = self.send_and_expect(1, packet, [0, 2, 3], count=2)
        self.assert_counted(before, {(host_device(1), DNS): (2, 2 * length)})


class Broadcast(FingerprintTest):
    """A broadcast ARP request floods (not back to its port) and counts under service 0."""

    def runTest(self) -> None:
        self.install_hosts()
        packet = Ether(src=host_mac(2), dst=BROADCAST) / ARP(
            op=1, hwsrc=host_mac(2), psrc=host_ip(2), pdst=host_ip(0)
        )
        before = self.read_counters()
        length = self.send_and_expect(2, packet, [0, 1, 3])
        self.assert_counted(before, {(host_device(2), 0): (1, length)})


class DropEntry(FingerprintTest):
    """A drop() entry discards frames to one destination, which are still counted; other
    destinations are unaffected."""

    def runTest(self) -> None:
        self.install_hosts()
        self.add_service(HTTPS, PROTO_TCP, (443, 443), priority=10)
        self.add_l2_drop(UNKNOWN_MAC)
        blocked = (
            Ether(src=host_mac(3), dst=UNKNOWN_MAC)
            / IP(src=host_ip(3), dst="10.0.0.99")
            / TCP(sport=40002, dport=443)
        )
        allowed = (
            Ether(src=host_mac(3), dst=host_mac(2))
            / IP(src=host_ip(3), dst=host_ip(2))
            / TCP(sport=40003, dport=443)
        )
        before = self.read_counters()
        blocked_len = self.send_and_expect(3, blocked, [], count=2)
        allowed_len = self.send_and_expect(3, allowed, [2])
        self.assert_counted(before, {(host_device(3), HTTPS): (3, 2 * blocked_len + allowed_len)})


class TapMode(FingerprintTest):
    """With l2_forward's default set to drop, packets are counted and nothing egresses."""

    def runTest(self) -> None:
        for port in (0, 1):
            self.add_device(host_mac(port), host_device(port))
        self.add_flood_group()
        self.add_service(HTTPS, PROTO_TCP, (443, 443), priority=10)
        self.set_tap_mode()
        unicast = (
            Ether(src=host_mac(0), dst=host_mac(1))
            / IP(src=host_ip(0), dst=host_ip(1))
            / TCP(sport=40001, dport=443)
        )
        broadcast = Ether(src=host_mac(1), dst=BROADCAST) / ARP(
            op=1, hwsrc=host_mac(1), psrc=host_ip(1), pdst=host_ip(0)
        )
        before = self.read_counters()
        testutils.send_packet(self, 0, unicast, count=2)
        testutils.send_packet(self, 1, broadcast)
        testutils.verify_no_other_packets(self)
        self.assert_counted(
            before,
            {
                (host_device(0), HTTPS): (2, 2 * len(bytes(unicast))),
                (host_device(1), 0): (1, len(bytes(broadcast))),
            },
        )
