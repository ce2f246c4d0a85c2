"""Offline attribution agrees with the reference switch, frame by frame.

Every frame goes through refswitch's pipeline (with the catalogue installed as the controller
installs it) and through the pcap ingester plus `Catalogue.lookup_many`; device and service must
match — for well-formed frames and for truncated and mutated ones.
"""

from __future__ import annotations

import struct
from pathlib import Path

import numpy as np
import pytest
from scapy.layers.inet import ICMP, IP, TCP, UDP
from scapy.layers.inet6 import IPv6
from scapy.layers.l2 import ARP, Dot1Q, Ether
from scapy.packet import Raw

from controller.base.p4info import P4Schema
from controller.base.pcapfile import frame_batches
from controller.engine.catalogue import Catalogue
from controller.engine.services import Service
from controller.ingest.pcap import parse_frames
from refswitch.pipeline import Pipeline, ServiceRule, TableState
from refswitch.program import Program

ROOT = Path(__file__).resolve().parent.parent
P4INFO = ROOT / "p4src" / "fingerprint.p4info.txtpb"
A = "aa:bb:cc:dd:ee:01"
B = "aa:bb:cc:dd:ee:02"


def _rules(services: list[Service]) -> tuple[ServiceRule, ...]:
    ordered = sorted(services, key=lambda s: -s.priority)
    return tuple(
        ServiceRule(
            s.priority,
            0 if s.proto is None else s.proto,
            0 if s.proto is None else 0xFF,
            s.port_lo,
            s.port_hi,
            s.id,
        )
        for s in ordered
    )


def _frames() -> list[bytes]:
    ab = Ether(src=A, dst=B)
    base = [
        ab / IP() / TCP(sport=51000, dport=443),
        ab / IP() / TCP(sport=80, dport=40000),
        ab / IP() / TCP(sport=40000, dport=12345),
        ab / IP() / UDP(sport=5353, dport=5353),
        ab / IP() / UDP(sport=55000, dport=33333),
        ab / IP() / ICMP(),
        ab / IPv6() / UDP(sport=40000, dport=123),
        ab / IPv6() / TCP(sport=8883, dport=50000),
        ab / IPv6(nh=58) / Raw(b"\x80\x00\x00\x00"),
        ab / IPv6(nh=0) / Raw(b"h" * 8),
        ab / Dot1Q(vlan=7) / IP() / UDP(sport=40000, dport=53),
        ab / Dot1Q(vlan=7) / IPv6() / TCP(dport=80),
        ab / Dot1Q(vlan=7) / Dot1Q(vlan=8) / IP() / UDP(dport=53),
        ab / IP(options=b"\x01\x01\x01\x00") / TCP(dport=8883),
        ab / IP(frag=10, proto=17) / Raw(b"y" * 20),
        ab / IP(frag=10, proto=1) / Raw(b"y" * 20),
        ab / IP(proto=47) / Raw(b"g" * 8),
        ab / IP(proto=2) / Raw(b"g" * 8),
        ab / ARP(),
        Ether(src=B, dst=A, type=0x88CC) / Raw(b"l" * 30),
    ]
    return [bytes(f) for f in base]


def _mutations(frames: list[bytes], seed: int, count: int) -> list[bytes]:
    """Truncations at every interesting length, and random bytes in the header region."""
    rng = np.random.default_rng(seed)
    out: list[bytes] = []
    for frame in frames:
        out.extend(frame[:cut] for cut in range(14, min(len(frame), 90)))
    for _ in range(count):
        mutated = bytearray(frames[int(rng.integers(len(frames)))])
        for _ in range(int(rng.integers(1, 4))):
            position = int(rng.integers(12, min(len(mutated), 70)))
            mutated[position] = int(rng.integers(0, 256))
        cut = int(rng.integers(14, len(mutated) + 1))
        out.append(bytes(mutated[:cut]))
    return out


def _write_pcap(path: Path, frames: list[bytes]) -> None:
    parts = [struct.pack("<IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, 65535, 1)]
    for i, frame in enumerate(frames):
        parts.append(struct.pack("<IIII", 1000 + i, 0, len(frame), len(frame)) + frame)
    path.write_bytes(b"".join(parts))


@pytest.mark.parametrize("seed", [1, 2])
def test_pcap_attribution_matches_the_reference_switch(tmp_path: Path, seed: int) -> None:
    catalogue = Catalogue.default()
    pipeline = Pipeline(Program.from_p4info(P4Schema.load(P4INFO).p4info))
    pipeline.install(
        TableState(by_dst=_rules(catalogue.dst_services()), by_src=_rules(catalogue.src_services()))
    )
    frames = _mutations(_frames(), seed, 3000)
    path = tmp_path / "fuzz.pcap"
    _write_pcap(path, frames)
    (batch,) = list(frame_batches(path))
    parsed = parse_frames(batch)
    ours = catalogue.tables.lookup_many(parsed.proto, parsed.sport, parsed.dport, parsed.l4_valid)
    assert len(ours) == len(frames)  # every frame here has an Ethernet header
    theirs = [pipeline.trace(frame, 0).service_id for frame in frames]
    mismatches = [
        (i, frames[i].hex(), int(ours[i]), theirs[i])
        for i in range(len(frames))
        if int(ours[i]) != theirs[i]
    ]
    assert mismatches == []
    sources = [int.from_bytes(frame[6:12], "big") for frame in frames]
    assert parsed.src_mac.tolist() == sources
    # The fuzzing reached every outcome class, not just the well-formed one.
    names = {catalogue.names[i] for i in ours.tolist()}
    assert {"other", "tcp/443", "tcp/80", "udp/53", "icmp", "icmpv6", "ip/0", "ip/other"} <= names
