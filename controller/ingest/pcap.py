"""Packet captures (pcap in both byte orders with µs or ns timestamps, and pcapng) → activity.

Frames are parsed exactly as the switch parses them (p4src/README.md): Ethernet, at most one
802.1Q tag, IPv4 with options (L4 only in the first fragment), IPv6 without extension-header
chasing, TCP, UDP, ICMP/ICMPv6 (first four bytes). A header that does not fit is a parser error:
a TCP/UDP packet without its whole header, and any packet with a parser error, is never looked up
and counts as service 0, as in the switch. Frames shorter than an Ethernet header cannot be
attributed to a device and are not counted.

Each packet counts for its source MAC in the unit of its timestamp, with its original (wire)
length as bytes. Record headers are walked with one `struct` read per frame; every header field
is then read for a whole batch of frames at once with numpy.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from pathlib import Path

import numpy as np
import numpy.typing as npt

from controller.base.errors import InputError
from controller.base.pcapfile import BATCH, Frames, frame_batches, window
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
    frames = frame_batches(path, skip_bad_records, batch_size, on_skip=stats.skip)
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


def parse_frames(frames: Frames) -> FlowBatch:
    """Parse the headers of a batch of Ethernet frames as the switch does (one packet each)."""
    data = frames.data
    eth = frames.caplen >= 14
    off = frames.offset[eth]
    cap = frames.caplen[eth]
    # Three gathers per frame, each a fixed window read through a strided view (no index
    # arrays): Ethernet + VLAN, the IP header's fixed fields, the L4 ports. Windows may run past
    # a short frame; what they read there is masked by the length checks below.
    head = window(data, 24, off).view(">u8")
    dst_mac = head[:, 0] >> np.uint64(16)
    src_mac = ((head[:, 0] & np.uint64(0xFFFF)) << np.uint64(32)) | (head[:, 1] >> np.uint64(32))
    ethertype = ((head[:, 1] >> np.uint64(16)) & np.uint64(0xFFFF)).astype(np.int64)
    vlan = ethertype == 0x8100
    error = vlan & (cap < 18)
    inner_type = (head[:, 2] >> np.uint64(48)).astype(np.int64)
    ethertype = np.where(vlan, inner_type, ethertype)
    l3 = np.where(vlan, 18, 14)

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
        bytes=frames.wirelen[eth],
        l4_valid=l4_valid,
    )
