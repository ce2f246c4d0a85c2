"""Capture files as containers: pcap (both byte orders, µs or ns timestamps) and pcapng in, classic
pcap out. What the frames hold is not looked at here: the offline reader
(`controller.ingest.pcap`) parses them as the switch does, and the reference switch replays them.

Reading is one pass over the file in memory: the record headers are walked with one `struct`
read per frame, and frames come out in batches (offsets into one padded buffer) so that a reader
can take every header field of a batch at once with numpy. A damaged file is reported at the
exact frame and byte offset, after everything before the damage.
"""

from __future__ import annotations

import os
import struct
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import BinaryIO

import numpy as np
import numpy.typing as npt

from controller.base.errors import InputError

PCAP_MAGIC_US = 0xA1B2C3D4
PCAP_MAGIC_NS = 0xA1B23C4D
PCAPNG_SHB = 0x0A0D0D0A
PCAPNG_BYTE_ORDER = 0x1A2B3C4D
LINKTYPE_ETHERNET = 1
LINKTYPE_LINUX_SLL = 113
LINKTYPE_LINUX_SLL2 = 276
LINK_NAMES = {
    LINKTYPE_ETHERNET: "Ethernet",
    LINKTYPE_LINUX_SLL: "Linux cooked",
    LINKTYPE_LINUX_SLL2: "Linux cooked v2",
}
ETHERNET_ONLY = frozenset({LINKTYPE_ETHERNET})
# A file's first four bytes: pcap in either byte order with µs or ns timestamps, or pcapng.
CAPTURE_MAGICS = frozenset(
    struct.pack(order, magic)
    for magic in (PCAP_MAGIC_US, PCAP_MAGIC_NS, PCAPNG_SHB)
    for order in ("<I", ">I")
)
BATCH = 1 << 18
# Zero bytes after the file's contents: header windows of a frame at the very end still fit.
PAD = 128
_GLOBAL = struct.Struct("IHHiIII")
# Block lengths (header and trailer included) below which a pcapng block cannot hold its fixed
# fields: interface description, enhanced packet, simple packet.
_SHORTEST_BLOCK = {1: 20, 6: 32, 3: 16}

I64 = npt.NDArray[np.int64]


class CaptureError(InputError):
    """A capture is truncated or corrupt at a known frame and offset; `unread` is the number
    of bytes from there to the end of the file."""

    def __init__(self, message: str, unread: int = 0) -> None:
        super().__init__(message)
        self.unread = unread


@dataclass(frozen=True, eq=False)
class Frames:
    """A batch of frames of one link type inside `data` (the capture plus `PAD` zero bytes):
    start offset, captured and wire length, timestamp."""

    data: npt.NDArray[np.uint8]
    offset: I64
    caplen: I64
    wirelen: I64
    time: npt.NDArray[np.float64]
    link: int = LINKTYPE_ETHERNET

    def select(self, keep: npt.NDArray[np.bool_]) -> Frames:
        """The frames where `keep` is True."""
        return Frames(
            self.data,
            self.offset[keep],
            self.caplen[keep],
            self.wirelen[keep],
            self.time[keep],
            self.link,
        )


def _link_refusal(link: int, accepted: frozenset[int]) -> str:
    """Why a link type is refused, naming those accepted: "link type 105 is not Ethernet (1)"."""
    named = [f"{LINK_NAMES.get(t, 'link type')} ({t})" for t in sorted(accepted)]
    listed = named[0] if len(named) == 1 else ", ".join(named[:-1]) + " or " + named[-1]
    return f"link type {link} is not {listed}"


@dataclass(frozen=True)
class PcapFrame:
    """One captured frame: its capture time (seconds) and bytes."""

    timestamp: float
    data: bytes


def read_frames(path: Path) -> Iterator[PcapFrame]:
    """The Ethernet frames of a pcap or pcapng file one by one, in order (see `frame_batches`)."""
    for batch in frame_batches(path, batch_size=4096):
        raw = batch.data
        for start, length, stamp in zip(
            batch.offset.tolist(), batch.caplen.tolist(), batch.time.tolist(), strict=True
        ):
            yield PcapFrame(stamp, raw[start : start + length].tobytes())


def _ignore(problem: str, unread_bytes: int) -> None:
    """The default skip report: nothing (the caller did not ask to hear about skips)."""


def frame_batches(
    path: Path,
    skip_bad: bool = False,
    batch_size: int = BATCH,
    on_skip: Callable[[str, int], None] | None = None,
    links: frozenset[int] = ETHERNET_ONLY,
) -> Iterator[Frames]:
    """Batches of frames of a pcap or pcapng file, in file order, each of one link type of
    `links` (a capture of another link type is refused; so is such a frame of a pcapng file).

    Damage (a truncated or corrupt record) raises `CaptureError` naming the file, the frame and
    its byte offset, after every batch before it has been yielded. With `skip_bad` a classic pcap
    resumes at the next intact record after the damage, a pcapng file ends there; `on_skip`
    hears of each skip (what and how many bytes were lost), and of every pcapng frame of a link
    type not in `links`.
    """
    skipped = on_skip if on_skip is not None else _ignore
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
            yield from _pcapng_frames(path, buf, data, skipped, skip_bad, batch_size, links)
        elif PCAP_MAGIC_US in (magic_le, magic_be) or PCAP_MAGIC_NS in (magic_le, magic_be):
            yield from _pcap_frames(
                path, buf, data, batch_size, skipped if skip_bad else None, links
            )
        else:
            raise InputError(f"{path}: not a pcap or pcapng file (magic 0x{magic_be:08x})")
    except CaptureError as exc:
        if not skip_bad:
            raise
        skipped(f"{exc}; the remaining bytes of the file were not read", exc.unread)


def _pcap_frames(
    path: Path,
    buf: memoryview,
    data: npt.NDArray[np.uint8],
    batch_size: int,
    skipped: Callable[[str, int], None] | None,
    links: frozenset[int],
) -> Iterator[Frames]:
    """Batches of a classic pcap. With `skipped`, damage is stepped over: reading resumes at the
    next intact record (`_next_record`) and `skipped` hears what was lost and how many bytes."""
    size = len(buf)
    if size < 24:
        raise InputError(f"{path}: truncated pcap header ({size} of 24 bytes)")
    order = "<" if struct.unpack_from("<I", buf, 0)[0] in (PCAP_MAGIC_US, PCAP_MAGIC_NS) else ">"
    magic, _major, _minor, _zone, _sigfigs, snaplen, linktype = struct.unpack_from(
        order + "IHHiIII", buf, 0
    )
    scale = 1e-6 if magic == PCAP_MAGIC_US else 1e-9
    # The upper 16 bits hold the FCS length and flags (pcap-savefile(5)), not the link type.
    link = linktype & 0xFFFF
    if link not in links:
        raise InputError(f"{path}: {_link_refusal(link, links)}")
    limit = max(snaplen, 262144, 65535)
    layout = _RecordLayout(order, limit, 1_000_000 if magic == PCAP_MAGIC_US else 1_000_000_000)
    incl_at = struct.Struct(order + "I").unpack_from
    dtype = np.dtype(order + "u4")
    pos = 24
    frame = 0
    last_header = size - 16
    last_seconds: int | None = None
    while pos < size:
        headers: list[int] = []
        append = headers.append
        error: CaptureError | None = None
        # The one per-frame Python loop: read the captured length, step to the next record.
        for _ in range(batch_size):
            if pos > last_header:
                if pos < size:
                    error = CaptureError(
                        f"{path}: frame {frame + len(headers) + 1} is truncated at offset {pos}: "
                        f"truncated record header ({size - pos} of 16 bytes)"
                    )
                break
            incl = incl_at(buf, pos + 8)[0]
            following = pos + 16 + incl
            if following > size or incl > limit:
                what = (
                    f"is corrupt at offset {pos}: captured length {incl} exceeds the snapshot "
                    f"length {snaplen}"
                    if incl > limit
                    else f"is truncated at offset {pos}: frame of {incl} bytes runs past the end "
                    "of the file"
                )
                error = CaptureError(f"{path}: frame {frame + len(headers) + 1} {what}")
                break
            append(pos)
            pos = following
        frame += len(headers)
        if headers:
            at = np.array(headers, dtype=np.int64)
            fields = window(data, 16, at).view(dtype).astype(np.int64)
            last_seconds = int(fields[-1, 0])
            yield Frames(
                data=data,
                offset=at + 16,
                caplen=fields[:, 2],
                wirelen=fields[:, 3],
                time=fields[:, 0].astype(np.float64) + fields[:, 1] * scale,
                link=link,
            )
        if error is None:
            continue
        if skipped is None:
            raise error
        resume = _next_record(data, pos + 1, size, layout, last_seconds)
        if resume is None:
            skipped(f"{error}; the remaining {size - pos} bytes hold no intact record", size - pos)
            return
        skipped(
            f"{error}; {resume - pos} bytes skipped to the next intact record at offset {resume}",
            resume - pos,
        )
        frame += 1
        pos = resume


@dataclass(frozen=True)
class _RecordLayout:
    """What makes a pcap record header plausible: byte order, the largest captured length, and
    the sub-second field's range."""

    order: str
    limit: int
    fraction: int


# Record headers looked at per step of the search for the next intact record.
_SEARCH_CHUNK = 1 << 20
# A resumed record's timestamp lies within this many seconds of the last good one.
_SEARCH_SPAN = 30 * 86400
# Records in a row that must look intact (or end the file exactly) to resume at the first.
_CHAIN = 3


def _next_record(
    data: npt.NDArray[np.uint8],
    start: int,
    size: int,
    layout: _RecordLayout,
    last_seconds: int | None,
) -> int | None:
    """The first offset at or after `start` where intact records begin again: `_CHAIN` record
    headers in a row are plausible (sub-second field in range, captured length within the wire
    length and the limit, timestamps near the last good one and not going back), or fewer that
    end the file exactly. Bytes inside a frame rarely pass that by chance."""
    for lo in range(start, size - 15, _SEARCH_CHUNK):
        at = np.arange(lo, min(lo + _SEARCH_CHUNK, size - 15), dtype=np.int64)
        plausible = _plausible(data, at, size, layout, last_seconds)
        for candidate in at[plausible].tolist():
            if _chain_holds(data, candidate, size, layout):
                return int(candidate)
    return None


def _plausible(
    data: npt.NDArray[np.uint8],
    at: I64,
    size: int,
    layout: _RecordLayout,
    after_seconds: int | None,
) -> npt.NDArray[np.bool_]:
    """Which offsets in `at` hold a plausible record header whose frame fits in the file."""
    seconds, fraction, incl, orig = (_u32(data, at + k, layout.order) for k in (0, 4, 8, 12))
    ok = (fraction < layout.fraction) & (incl <= orig) & (orig <= layout.limit)
    ok &= at + 16 + incl <= size
    if after_seconds is not None:
        ok &= (seconds >= after_seconds - 1) & (seconds <= after_seconds + _SEARCH_SPAN)
    return ok


def _chain_holds(data: npt.NDArray[np.uint8], pos: int, size: int, layout: _RecordLayout) -> bool:
    """Whether `_CHAIN` plausible records in a row (or fewer ending the file) start at `pos`."""
    previous: int | None = None
    for _ in range(_CHAIN):
        if pos == size:
            return True
        here = np.array([pos], dtype=np.int64)
        if not bool(_plausible(data, here, size, layout, previous)[0]):
            return False
        previous = int(_u32(data, here, layout.order)[0])
        pos += 16 + int(_u32(data, here + 8, layout.order)[0])
    return True


def _u32(data: npt.NDArray[np.uint8], at: I64, order: str) -> I64:
    """The 32-bit unsigned integers at byte offsets `at` in `order` ("<" or ">")."""
    b = [data[at + k].astype(np.int64) for k in range(4)]
    if order == "<":
        return b[0] | (b[1] << 8) | (b[2] << 16) | (b[3] << 24)
    return (b[0] << 24) | (b[1] << 16) | (b[2] << 8) | b[3]


def _pcapng_frames(
    path: Path,
    buf: memoryview,
    data: npt.NDArray[np.uint8],
    skipped: Callable[[str, int], None],
    skip_bad: bool,
    batch_size: int,
    links: frozenset[int],
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
        # The link type of the frames gathered: a batch holds one, so a change flushes it.
        gathered = LINKTYPE_ETHERNET

        def flush() -> Frames:
            batch = Frames(
                data=data,
                offset=np.array(offsets, dtype=np.int64),
                caplen=np.array(caplens, dtype=np.int64),
                wirelen=np.array(wirelens, dtype=np.int64),
                time=np.array(times, dtype=np.float64),
                link=gathered,
            )
            offsets.clear()
            caplens.clear()
            wirelens.clear()
            times.clear()
            return batch

        def corrupt(what: str) -> CaptureError:
            return CaptureError(
                f"{path}: block at offset {pos} (after frame {frame}): {what}", size - pos
            )

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
            if length < _SHORTEST_BLOCK.get(block_type, 12):
                raise corrupt(f"block of type {block_type} is too short ({length} bytes)")
            if block_type == 1:  # interface description
                linktype, _reserved, snaplen = struct.unpack_from(order + "HHI", buf, body)
                try:
                    unit, ts_offset = _interface_options(buf, order, body + 8, pos + length - 4)
                except ValueError as exc:
                    raise corrupt(f"interface description: {exc}") from None
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
                if linktype not in links:
                    message = f"{path}: frame {frame}: {_link_refusal(linktype, links)}"
                    if not skip_bad:
                        raise InputError(message)
                    skipped(message, 0)
                else:
                    if linktype != gathered and offsets:
                        yield flush()
                    gathered = linktype
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
    """Timestamp unit (seconds per tick) and offset (seconds) from IDB options; ValueError when
    an option runs past the block."""
    unit = 1e-6
    offset = 0
    while pos + 4 <= end:
        code, length = struct.unpack_from(order + "HH", buf, pos)
        if code == 0:
            break
        value = pos + 4
        if value + length > end:
            raise ValueError(f"option {code} of {length} bytes runs past the block")
        if code == 9 and length >= 1:
            resolution = buf[value]
            unit = 2.0 ** -(resolution & 0x7F) if resolution & 0x80 else 10.0**-resolution
        elif code == 14 and length >= 8:
            offset = struct.unpack_from(order + "q", buf, value)[0]
        pos = value + ((length + 3) & ~3)
    return unit, offset


def window(data: npt.NDArray[np.uint8], width: int, at: I64) -> npt.NDArray[np.uint8]:
    """`width` bytes from each position in `at` (an (n, width) array); `data` is padded by
    `PAD` bytes so every window fits."""
    windows = np.lib.stride_tricks.sliding_window_view(data, width)
    found: npt.NDArray[np.uint8] = windows[at]
    return found


class PcapWriter:
    """Writes Ethernet frames to a classic pcap at `path` through a temporary file beside it,
    renamed into place on close: readers never see half a file."""

    def __init__(self, path: Path, snaplen: int = 262144) -> None:
        self.path = path
        self._temp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        try:
            self._handle: BinaryIO = self._temp.open("wb")
        except OSError as exc:
            raise InputError(f"cannot write pcap {path}: {exc.strerror}") from exc
        self._handle.write(_GLOBAL.pack(PCAP_MAGIC_US, 2, 4, 0, 0, snaplen, LINKTYPE_ETHERNET))
        self.frames = 0

    def write(self, frame: bytes, timestamp: float) -> None:
        """Append one frame."""
        seconds = int(timestamp)
        micros = round((timestamp - seconds) * 1e6)
        if micros >= 1_000_000:
            seconds, micros = seconds + 1, micros - 1_000_000
        self._handle.write(struct.pack("IIII", seconds, micros, len(frame), len(frame)))
        self._handle.write(frame)
        self.frames += 1

    def close(self) -> None:
        """Flush and move the file into place."""
        if self._handle.closed:
            return
        self._handle.close()
        os.replace(self._temp, self.path)

    def discard(self) -> None:
        """Close and remove the temporary file: the target is left as it was."""
        if not self._handle.closed:
            self._handle.close()
        self._temp.unlink(missing_ok=True)

    def __enter__(self) -> PcapWriter:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if exc_type is None:
            self.close()
        else:
            self.discard()
