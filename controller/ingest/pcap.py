"""Packet captures (pcap in both byte orders with µs or ns timestamps, and pcapng) → activity.

Frames are parsed exactly as the switch parses them (p4src/README.md): Ethernet, at most one
802.1Q tag, IPv4 with options (L4 only in the first fragment), IPv6 without extension-header
chasing, TCP, UDP, ICMP/ICMPv6 (first four bytes). A header that does not fit is a parser error:
a TCP/UDP packet without its whole header, and any packet with a parser error, is never looked up
and counts as service 0, as in the switch. Frames shorter than an Ethernet header cannot be
attributed to a device and are not counted.

Captures taken on Linux's "any" interface (Linux cooked capture, SLL and SLL2) are read too: the
cooked header of a frame from an Ethernet interface stands for the Ethernet header it replaced,
whose source MAC it keeps (the destination is unknown, and unused: a packet counts for its
sender). Such a frame's bytes are those of that Ethernet frame (the wire length less the cooked
header, plus 14), and a frame of any other interface (loopback, tunnels) names no device and is
not counted.

Each packet counts for its source MAC in the unit of its timestamp, with its original (wire)
length as bytes. Record headers are walked with one `struct` read per frame; every header field
is then read for a whole batch of frames at once with numpy.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt

from controller.base.errors import InputError
from controller.base.pcapfile import (
    BATCH,
    LINKTYPE_ETHERNET,
    LINKTYPE_LINUX_SLL,
    LINKTYPE_LINUX_SLL2,
    Frames,
    frame_batches,
    window,
)
from controller.engine.activity import ActivityTable
from controller.engine.catalogue import Catalogue
from controller.engine.services import ICMP, ICMPV6, TCP, UDP
from controller.ingest.flows import (
    FlowBatch,
    IngestStats,
    PortCounter,
    batches_to_activity,
    implausible,
    plausible_times,
)


def read_pcap(
    path: Path,
    catalogue: Catalogue,
    unit_seconds: float = 3600.0,
    devices: npt.NDArray[np.uint64] | None = None,
    skip_bad_records: bool = False,
    batch_size: int = BATCH,
    ports: PortCounter | None = None,
) -> tuple[ActivityTable, IngestStats]:
    """Activity from one pcap or pcapng file, and what was read and skipped.

    A truncated or corrupt capture raises `InputError` naming the file, frame number and byte
    offset; with `skip_bad_records` the frames before the damage are kept and the damage is
    counted in the returned statistics. `ports`, when given, also collects service-port usage.
    """
    stats = IngestStats()
    frames = frame_batches(path, skip_bad_records, batch_size, on_skip=stats.skip, links=LINKS)
    batches = _packet_batches(path, frames, stats, skip_bad_records)
    return batches_to_activity(batches, catalogue, unit_seconds, devices, ports), stats


def _packet_batches(
    path: Path, frames: Iterable[Frames], stats: IngestStats, skip_bad: bool
) -> Iterator[FlowBatch]:
    """Parsed batches; a frame stamped outside 1970-2100 (a damaged pcapng timestamp) is bad."""
    for batch in frames:
        first = stats.records + 1
        stats.records += len(batch.offset)
        good = plausible_times(batch.time)
        if not bool(good.all()):
            for i in np.flatnonzero(~good).tolist():
                problem = f"{path}: frame {first + i}: " + str(implausible(float(batch.time[i])))
                if not skip_bad:
                    raise InputError(problem)
                stats.skip(problem)
            batch = batch.select(good)
        yield parse_frames(batch)


@dataclass(frozen=True)
class _Cooked:
    """Where a Linux cooked header keeps what an Ethernet header would: the EtherType, the
    sender's address, the interface's ARPHRD type and address length (`wide_length`: 2 bytes,
    else 1); `header` is its length."""

    header: int
    ethertype_at: int
    address_at: int
    hatype_at: int
    halen_at: int
    wide_length: bool


_COOKED = {
    LINKTYPE_LINUX_SLL: _Cooked(16, 14, 6, 2, 4, True),
    LINKTYPE_LINUX_SLL2: _Cooked(20, 0, 12, 8, 11, False),
}
LINKS = frozenset({LINKTYPE_ETHERNET, *_COOKED})
"""Link types read: Ethernet and Linux cooked capture (SLL, SLL2)."""
ARPHRD_ETHER = 1


def parse_frames(frames: Frames) -> FlowBatch:
    """Parse the headers of a batch of Ethernet (or Linux cooked) frames as the switch does (one
    packet each)."""
    data = frames.data
    cooked = _COOKED.get(frames.link)
    header = 14 if cooked is None else cooked.header
    eth = frames.caplen >= header
    if cooked is not None:
        hatype = _u16(data, frames.offset + cooked.hatype_at)
        halen = (
            _u16(data, frames.offset + cooked.halen_at)
            if cooked.wide_length
            else window(data, 1, frames.offset + cooked.halen_at)[:, 0].astype(np.int64)
        )
        eth &= (hatype == ARPHRD_ETHER) & (halen == 6)
    off = frames.offset[eth]
    cap = frames.caplen[eth]
    # Three gathers per frame, each a fixed window read through a strided view (no index
    # arrays): Ethernet + VLAN, the IP header's fixed fields, the L4 ports. Windows may run past
    # a short frame; what they read there is masked by the length checks below.
    if cooked is None:
        head = window(data, 24, off).view(">u8")
        dst_mac = head[:, 0] >> np.uint64(16)
        src_mac = ((head[:, 0] & np.uint64(0xFFFF)) << np.uint64(32)) | (
            head[:, 1] >> np.uint64(32)
        )
        ethertype = ((head[:, 1] >> np.uint64(16)) & np.uint64(0xFFFF)).astype(np.int64)
        inner_type = (head[:, 2] >> np.uint64(48)).astype(np.int64)
    else:
        dst_mac = np.zeros(len(off), dtype=np.uint64)
        src_mac = window(data, 8, off + cooked.address_at).view(">u8")[:, 0] >> np.uint64(16)
        ethertype = _u16(data, off + cooked.ethertype_at)
        inner_type = _u16(data, off + header + 2)
    vlan = ethertype == 0x8100
    error = vlan & (cap < header + 4)
    ethertype = np.where(vlan, inner_type, ethertype)
    l3 = np.where(vlan, header + 4, header)

    ip = window(data, 10, off + l3).astype(np.int64)
    is4 = ~error & (ethertype == 0x0800)
    v4_fit = cap >= l3 + 20
    error |= is4 & ~v4_fit
    is4 &= v4_fit
    ihl = ip[:, 0] & 0x0F
    # fingerprint.p4 verifies the version and that the total length covers IHL × 4 bytes, and
    # stops parsing with an error otherwise.
    contradictory = is4 & (((ip[:, 0] >> 4) != 4) | (((ip[:, 2] << 8) | ip[:, 3]) < ihl * 4))
    error |= contradictory
    short_ihl = is4 & (ihl < 5)
    options_fit = cap >= l3 + ihl * 4
    error |= is4 & ~short_ihl & ~options_fit
    fragment = ((ip[:, 6] & 0x1F) << 8) | ip[:, 7]
    first_fragment = (fragment == 0) & ~short_ihl & options_fit & ~contradictory

    is6 = ~error & (ethertype == 0x86DD)
    v6_fit = cap >= l3 + 40
    error |= is6 & ~v6_fit
    is6 &= v6_fit

    proto = np.where(is4, ip[:, 9], np.where(is6, ip[:, 6], -1))
    l4 = np.where(is4, l3 + ihl * 4, l3 + 40)
    parse_l4 = (is4 & first_fragment) | is6
    is_icmp = (is4 & (proto == ICMP)) | (is6 & (proto == ICMPV6))
    need = np.where(proto == TCP, 20, np.where(proto == UDP, 8, np.where(is_icmp, 4, 0)))
    l4_fit = cap >= l4 + need
    error |= parse_l4 & (need > 0) & ~l4_fit
    transport = (proto == TCP) | (proto == UDP)
    l4_valid = transport & parse_l4 & l4_fit
    # A TCP data offset below 5 is a parser error too (the header itself fits).
    data_offset = window(data, 1, off + l4 + 12)[:, 0] >> 4
    bad_offset = l4_valid & (proto == TCP) & (data_offset < 5)
    error |= bad_offset
    l4_valid &= ~bad_offset
    ports = window(data, 4, off + l4).view(">u2").astype(np.int64)
    sport = np.where(l4_valid, ports[:, 0], 0)
    dport = np.where(l4_valid, ports[:, 1], 0)
    # A parser error stops every lookup; a TCP/UDP packet also needs its own header (l4_valid).
    looked_up = (is4 | is6) & (transport | ~error)
    return FlowBatch(
        start=frames.time[eth],
        src_mac=src_mac,
        dst_mac=dst_mac,
        proto=np.where(looked_up, proto, -1),
        sport=sport,
        dport=dport,
        packets=np.ones(len(off), dtype=np.int64),
        bytes=frames.wirelen[eth] - (header - 14),
        l4_valid=l4_valid,
    )


def _u16(data: npt.NDArray[np.uint8], at: npt.NDArray[np.int64]) -> npt.NDArray[np.int64]:
    """The big-endian 16-bit number at each position of `at`."""
    found: npt.NDArray[np.int64] = window(data, 2, at).view(">u2")[:, 0].astype(np.int64)
    return found
