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

import os
import struct
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt

from controller.base.errors import InputError
from controller.engine.activity import ActivityTable
from controller.engine.catalogue import ICMP, ICMPV6, TCP, UDP, Catalogue
from controller.ingest.flows import FlowBatch, IngestStats, PortCounter, batches_to_activity

PCAP_MAGIC_US = 0xA1B2C3D4
PCAP_MAGIC_NS = 0xA1B23C4D
PCAPNG_SHB = 0x0A0D0D0A
PCAPNG_BYTE_ORDER = 0x1A2B3C4D
LINKTYPE_ETHERNET = 1
# A file's first four bytes: pcap in either byte order with µs or ns timestamps, or pcapng.
CAPTURE_MAGICS = frozenset(
    struct.pack(order, magic)
    for magic in (PCAP_MAGIC_US, PCAP_MAGIC_NS, PCAPNG_SHB)
    for order in ("<I", ">I")
)
BATCH = 1 << 18
# Zero bytes after the file's contents: header windows of a frame at the very end still fit.
PAD = 128

I64 = npt.NDArray[np.int64]


class CaptureError(InputError):
    """A capture is truncated or corrupt at a known frame and offset."""


@dataclass(frozen=True, eq=False)
class Frames:
    """A batch of frames inside `data` (the capture plus `PAD` zero bytes): start offset,
    captured and wire length, timestamp."""

    data: npt.NDArray[np.uint8]
    offset: I64
    caplen: I64
    wirelen: I64
    time: npt.NDArray[np.float64]


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
    batches = _packet_batches(iter_frames(path, stats, skip_bad_records, batch_size), stats)
    return batches_to_activity(batches, catalogue, unit_seconds, devices, ports), stats


def _packet_batches(frames: Iterable[Frames], stats: IngestStats) -> Iterator[FlowBatch]:
    for batch in frames:
        stats.records += len(batch.offset)
        yield parse_frames(batch)


def iter_frames(
    path: Path, stats: IngestStats, skip_bad: bool = False, batch_size: int = BATCH
) -> Iterator[Frames]:
    """Batches of frames of a pcap or pcapng file."""
    path = Path(path)
    try:
        # One read into a buffer padded with PAD zero bytes: captures are walked frame by frame,
        # and numpy reads header fields of a whole batch from the same buffer.
        with path.open("rb") as handle:
            size = os.fstat(handle.fileno()).st_size
            raw = bytearray(size + PAD)
            got = handle.readinto(memoryview(raw)[:size])
    except OSError as exc:
        raise InputError(f"{path}: cannot read capture: {exc.strerror}") from exc
    buf = memoryview(raw)[:got]
    data = np.frombuffer(raw, dtype=np.uint8)
    if len(buf) < 4:
        raise InputError(f"{path}: not a pcap or pcapng file (only {len(buf)} bytes)")
    magic_le = struct.unpack_from("<I", buf, 0)[0]
    magic_be = struct.unpack_from(">I", buf, 0)[0]
    try:
        if magic_le == PCAPNG_SHB:
            yield from _pcapng_frames(path, buf, data, stats, skip_bad, batch_size)
        elif PCAP_MAGIC_US in (magic_le, magic_be) or PCAP_MAGIC_NS in (magic_le, magic_be):
            yield from _pcap_frames(path, buf, data, batch_size)
        else:
            raise InputError(f"{path}: not a pcap or pcapng file (magic 0x{magic_be:08x})")
    except CaptureError as exc:
        if not skip_bad:
            raise
        stats.skip(str(exc))


def _pcap_frames(
    path: Path, buf: memoryview, data: npt.NDArray[np.uint8], batch_size: int
) -> Iterator[Frames]:
    size = len(buf)
    if size < 24:
        raise InputError(f"{path}: truncated pcap header ({size} of 24 bytes)")
    order = "<" if struct.unpack_from("<I", buf, 0)[0] in (PCAP_MAGIC_US, PCAP_MAGIC_NS) else ">"
    magic, _major, _minor, _zone, _sigfigs, snaplen, linktype = struct.unpack_from(
        order + "IHHiIII", buf, 0
    )
    scale = 1e-6 if magic == PCAP_MAGIC_US else 1e-9
    if linktype & 0xFFFF != LINKTYPE_ETHERNET:
        raise InputError(f"{path}: link type {linktype} is not Ethernet (1)")
    limit = max(snaplen, 262144, 65535)
    incl_at = struct.Struct(order + "I").unpack_from
    dtype = np.dtype(order + "u4")
    pos = 24
    frame = 0
    last_header = size - 16
    while pos < size:
        headers: list[int] = []
        append = headers.append
        error: CaptureError | None = None
        # The one per-frame Python loop: read the captured length, step to the next record.
        for _ in range(batch_size):
            if pos > last_header:
                if pos < size:
                    error = CaptureError(
                        f"{path}: frame {frame + len(headers) + 1} at offset {pos}: truncated "
                        f"record header ({size - pos} of 16 bytes)"
                    )
                break
            incl = incl_at(buf, pos + 8)[0]
            following = pos + 16 + incl
            if following > size or incl > limit:
                what = (
                    f"captured length {incl} exceeds the snapshot length {snaplen}"
                    if incl > limit
                    else f"frame of {incl} bytes runs past the end of the file"
                )
                error = CaptureError(
                    f"{path}: frame {frame + len(headers) + 1} at offset {pos}: {what} "
                    "(truncated or corrupt)"
                )
                break
            append(pos)
            pos = following
        frame += len(headers)
        if headers:
            at = np.array(headers, dtype=np.int64)
            fields = _window(data, 16, at).view(dtype).astype(np.int64)
            yield Frames(
                data=data,
                offset=at + 16,
                caplen=fields[:, 2],
                wirelen=fields[:, 3],
                time=fields[:, 0].astype(np.float64) + fields[:, 1] * scale,
            )
        if error is not None:
            raise error


def _pcapng_frames(
    path: Path,
    buf: memoryview,
    data: npt.NDArray[np.uint8],
    stats: IngestStats,
    skip_bad: bool,
    batch_size: int,
) -> Iterator[Frames]:
    size = len(buf)
    try:
        pos = 0
        frame = 0
        order = "<"
        interfaces: list[tuple[int, float, int, int]] = []  # linktype, ts unit, offset, snaplen
        offsets: list[int] = []
        caplens: list[int] = []
        wirelens: list[int] = []
        times: list[float] = []

        def flush() -> Frames:
            batch = Frames(
                data=data,
                offset=np.array(offsets, dtype=np.int64),
                caplen=np.array(caplens, dtype=np.int64),
                wirelen=np.array(wirelens, dtype=np.int64),
                time=np.array(times, dtype=np.float64),
            )
            offsets.clear()
            caplens.clear()
            wirelens.clear()
            times.clear()
            return batch

        def corrupt(what: str) -> CaptureError:
            return CaptureError(f"{path}: block at offset {pos} (after frame {frame}): {what}")

        while pos < size:
            if pos + 12 > size:
                raise corrupt(f"truncated block header ({size - pos} bytes left)")
            block_type = struct.unpack_from(order + "I", buf, pos)[0]
            if block_type == PCAPNG_SHB:
                bom = struct.unpack_from("<I", buf, pos + 8)[0]
                if bom == PCAPNG_BYTE_ORDER:
                    order = "<"
                elif bom == 0x4D3C2B1A:
                    order = ">"
                else:
                    raise corrupt(f"section header with bad byte-order magic 0x{bom:08x}")
                interfaces = []
            length = struct.unpack_from(order + "I", buf, pos + 4)[0]
            if length < 12 or length % 4 or pos + length > size:
                raise corrupt(f"block length {length} is invalid or runs past the end")
            trailer = struct.unpack_from(order + "I", buf, pos + length - 4)[0]
            if trailer != length:
                raise corrupt(f"block length {length} does not match its trailer {trailer}")
            body = pos + 8
            if block_type == 1:  # interface description
                linktype, _reserved, snaplen = struct.unpack_from(order + "HHI", buf, body)
                unit, ts_offset = _interface_options(buf, order, body + 8, pos + length - 4)
                interfaces.append((linktype, unit, ts_offset, snaplen))
            elif block_type in (6, 3):  # enhanced / simple packet
                if block_type == 6:
                    iface, ts_hi, ts_lo, caplen, wirelen = struct.unpack_from(
                        order + "IIIII", buf, body
                    )
                    start = body + 20
                else:
                    iface, ts_hi, ts_lo = 0, 0, 0
                    wirelen = struct.unpack_from(order + "I", buf, body)[0]
                    start = body + 4
                    caplen = min(wirelen, length - 16)
                    if interfaces and interfaces[0][3]:
                        caplen = min(caplen, interfaces[0][3])
                if iface >= len(interfaces):
                    raise corrupt(f"packet on undeclared interface {iface}")
                if start + caplen > pos + length - 4:
                    raise corrupt(f"captured length {caplen} exceeds its block")
                linktype, unit, ts_offset, _snap = interfaces[iface]
                frame += 1
                if linktype != LINKTYPE_ETHERNET:
                    message = f"{path}: frame {frame}: link type {linktype} is not Ethernet (1)"
                    if not skip_bad:
                        raise InputError(message)
                    stats.skip(message)
                else:
                    offsets.append(start)
                    caplens.append(caplen)
                    wirelens.append(wirelen)
                    times.append(((ts_hi << 32) | ts_lo) * unit + ts_offset)
                    if len(offsets) >= batch_size:
                        yield flush()
            pos += length
        if offsets:
            yield flush()
    except CaptureError:
        if offsets:
            yield flush()
        raise


def _interface_options(buf: memoryview, order: str, pos: int, end: int) -> tuple[float, int]:
    """Timestamp unit (seconds per tick) and offset (seconds) from IDB options."""
    unit = 1e-6
    offset = 0
    while pos + 4 <= end:
        code, length = struct.unpack_from(order + "HH", buf, pos)
        if code == 0:
            break
        value = pos + 4
        if code == 9 and length >= 1:
            resolution = buf[value]
            unit = 2.0 ** -(resolution & 0x7F) if resolution & 0x80 else 10.0**-resolution
        elif code == 14 and length >= 8:
            offset = struct.unpack_from(order + "q", buf, value)[0]
        pos = value + ((length + 3) & ~3)
    return unit, offset


def parse_frames(frames: Frames) -> FlowBatch:
    """Parse the headers of a batch of Ethernet frames as the switch does (one packet each)."""
    data = frames.data
    eth = frames.caplen >= 14
    off = frames.offset[eth]
    cap = frames.caplen[eth]
    # Three gathers per frame, each a fixed window read through a strided view (no index
    # arrays): Ethernet + VLAN, the IP header's fixed fields, the L4 ports. Windows may run past
    # a short frame; what they read there is masked by the length checks below.
    head = _window(data, 24, off).view(">u8")
    dst_mac = head[:, 0] >> np.uint64(16)
    src_mac = ((head[:, 0] & np.uint64(0xFFFF)) << np.uint64(32)) | (head[:, 1] >> np.uint64(32))
    ethertype = ((head[:, 1] >> np.uint64(16)) & np.uint64(0xFFFF)).astype(np.int64)
    vlan = ethertype == 0x8100
    error = vlan & (cap < 18)
    inner_type = (head[:, 2] >> np.uint64(48)).astype(np.int64)
    ethertype = np.where(vlan, inner_type, ethertype)
    l3 = np.where(vlan, 18, 14)

    ip = _window(data, 10, off + l3).astype(np.int64)
    is4 = ~error & (ethertype == 0x0800)
    v4_fit = cap >= l3 + 20
    error |= is4 & ~v4_fit
    is4 &= v4_fit
    ihl = ip[:, 0] & 0x0F
    short_ihl = is4 & (ihl < 5)
    options_fit = cap >= l3 + ihl * 4
    error |= is4 & ~short_ihl & ~options_fit
    fragment = ((ip[:, 6] & 0x1F) << 8) | ip[:, 7]
    first_fragment = (fragment == 0) & ~short_ihl & options_fit

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
    ports = _window(data, 4, off + l4).view(">u2").astype(np.int64)
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


def _window(data: npt.NDArray[np.uint8], width: int, at: I64) -> npt.NDArray[np.uint8]:
    """`width` bytes from each position in `at` (an (n, width) array); `data` is padded by
    `PAD` bytes so every window fits."""
    windows = np.lib.stride_tricks.sliding_window_view(data, width)
    found: npt.NDArray[np.uint8] = windows[at]
    return found
