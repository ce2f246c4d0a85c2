"""Binary IPFIX (RFC 7011) and NetFlow v9 (RFC 3954) export messages → activity.

The input is a file of export messages back to back, as a collector writes the UDP datagrams it
receives (RFC 5655's file format is the same sequence of messages), or a pcap/pcapng capture of
the exporter's traffic, whose UDP payloads are the messages; IPFIX and NetFlow v9 messages may be
mixed. Templates and options templates are kept per observation domain; data sets whose
template has not been seen are skipped and counted; variable-length fields and enterprise-specific
fields are decoded or stepped over by their length. RFC 5103 biflows carry their reverse counters
as enterprise fields of PEN 29305.

Start time, first found: flowStartMilliseconds, flowStartSeconds, flowStartMicroseconds or
flowStartNanoseconds (NTP format), flowStartSysUpTime plus systemInitTimeMilliseconds (from the
same record or the domain's options data); NetFlow v9 FIRST_SWITCHED against the header's uptime;
otherwise the message's export time.
"""

from __future__ import annotations

import struct
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt

from controller.base.errors import InputError
from controller.base.pcapfile import CAPTURE_MAGICS, frame_batches
from controller.engine.activity import ActivityTable
from controller.engine.catalogue import Catalogue
from controller.ingest.flows import (
    FlowBatch,
    IngestStats,
    PortCounter,
    batches_to_activity,
    implausible,
)

REVERSE_PEN = 29305
NTP_EPOCH_OFFSET = 2208988800
VARIABLE = 65535
BATCH = 200_000

# Information elements (IANA numbers; NetFlow v9 uses the same numbers for these).
OCTETS = (1, 85)
PACKETS = (2, 86)
PROTO = 4
SPORT = 7
DPORT = 11
SRC_MAC = (56, 81)
DST_MAC = (80, 57)
START_SYSUPTIME = 22
START_SECONDS = 150
START_MILLIS = 152
START_MICROS = 154
START_NANOS = 156
SYSTEM_INIT_MILLIS = 160

Field = tuple[int, int, int]  # (element id, enterprise number or 0, length)


# What each flow key holds at most: a record encoding more in a field (a 16-byte MAC address,
# an 8-byte port) is damaged, whatever its template says.
_KEY_LIMITS = (
    ("source MAC address", (1 << 48) - 1),
    ("destination MAC address", (1 << 48) - 1),
    ("protocol", 255),
    ("source port", 65535),
    ("destination port", 65535),
)


def _too_wide(keys: tuple[int, ...]) -> str | None:
    """Why a record's MAC addresses, protocol and ports cannot be real, or None when they can."""
    for (what, limit), value in zip(_KEY_LIMITS, keys, strict=True):
        if value > limit:
            return f"{what} {value:#x} is wider than its field allows (at most {limit:#x})"
    return None


class _Corrupt(Exception):
    """A structural error inside one message."""


@dataclass(frozen=True)
class _Template:
    fields: tuple[Field, ...]
    scope_count: int
    record: struct.Struct | None  # fixed-length templates decode with one struct

    @classmethod
    def build(cls, fields: list[Field], scope_count: int) -> _Template:
        if any(length == VARIABLE for _ie, _pen, length in fields):
            return cls(tuple(fields), scope_count, None)
        codes = {1: "B", 2: "H", 4: "I", 8: "Q"}
        fmt = ">" + "".join(codes.get(length, f"{length}s") for _ie, _pen, length in fields)
        return cls(tuple(fields), scope_count, struct.Struct(fmt))

    def index(self, elements: tuple[int, ...] | int, pen: int = 0) -> int | None:
        wanted = (elements,) if isinstance(elements, int) else elements
        for element in wanted:
            for i, (ie, field_pen, _length) in enumerate(self.fields):
                if ie == element and field_pen == pen:
                    return i
        return None


class _Columns:
    """Growing per-record columns of one file."""

    def __init__(self) -> None:
        self.start: list[float] = []
        self.src: list[int] = []
        self.dst: list[int] = []
        self.proto: list[int] = []
        self.sport: list[int] = []
        self.dport: list[int] = []
        self.packets: list[int] = []
        self.octets: list[int] = []
        self.rev_packets: list[int] = []
        self.rev_octets: list[int] = []

    def __len__(self) -> int:
        return len(self.start)

    def batch(self) -> FlowBatch:
        batch = FlowBatch(
            start=np.array(self.start, dtype=np.float64),
            src_mac=np.array(self.src, dtype=np.uint64),
            dst_mac=np.array(self.dst, dtype=np.uint64),
            proto=np.array(self.proto, dtype=np.int64),
            sport=np.array(self.sport, dtype=np.int64),
            dport=np.array(self.dport, dtype=np.int64),
            packets=np.array(self.packets, dtype=np.int64),
            bytes=np.array(self.octets, dtype=np.int64),
            rev_packets=np.array(self.rev_packets, dtype=np.int64),
            rev_bytes=np.array(self.rev_octets, dtype=np.int64),
        )
        for column in vars(self).values():
            column.clear()
        return batch


def read_ipfix(
    path: Path,
    catalogue: Catalogue,
    unit_seconds: float = 3600.0,
    devices: npt.NDArray[np.uint64] | None = None,
    skip_bad_records: bool = False,
    ports: PortCounter | None = None,
) -> tuple[ActivityTable, IngestStats]:
    """Activity from a file of IPFIX / NetFlow v9 messages, and what was read and skipped.

    Flow records without a source MAC address cannot be attributed to a device and are skipped
    (counted). A corrupt message raises `InputError` naming the file, message and offset; with
    `skip_bad_records` it is skipped and counted and the rest of the file is read. `ports`,
    when given, also collects service-port usage.
    """
    stats = IngestStats()
    batches = _batches(Path(path), stats, skip_bad_records)
    return batches_to_activity(batches, catalogue, unit_seconds, devices, ports), stats


def _batches(path: Path, stats: IngestStats, skip_bad: bool) -> Iterator[FlowBatch]:
    try:
        with path.open("rb") as handle:
            magic = handle.read(4)
    except OSError as exc:
        raise InputError(f"{path}: cannot read: {exc.strerror}") from exc
    if not magic:
        raise InputError(f"{path}: empty file, expected IPFIX or NetFlow v9 messages")
    decoder = _Decoder(path, stats, skip_bad)
    for where, data in _streams(path, magic, stats, skip_bad):
        yield from _messages(decoder, where, data, stats, skip_bad)
    if len(decoder.columns):
        yield decoder.columns.batch()


def _streams(
    path: Path, magic: bytes, stats: IngestStats, skip_bad: bool
) -> Iterator[tuple[str, bytes]]:
    """The byte streams holding messages: the whole file, or — for a capture of an exporter's
    traffic — the payload of every UDP datagram in it."""
    if magic not in CAPTURE_MAGICS:
        try:
            yield str(path), path.read_bytes()
        except OSError as exc:
            raise InputError(f"{path}: cannot read: {exc.strerror}") from exc
        return
    import dpkt

    number = 0
    for frames in frame_batches(path, skip_bad, on_skip=stats.skip):
        for offset, caplen in zip(frames.offset.tolist(), frames.caplen.tolist(), strict=True):
            number += 1
            frame = frames.data[offset : offset + caplen].tobytes()
            try:
                ip = dpkt.ethernet.Ethernet(frame).data
            except (dpkt.UnpackError, ValueError):
                continue
            udp = ip.data if isinstance(ip, dpkt.ip.IP | dpkt.ip6.IP6) else None
            if isinstance(udp, dpkt.udp.UDP) and isinstance(udp.data, bytes) and udp.data:
                yield f"{path}: frame {number}", udp.data


def _messages(
    decoder: _Decoder, source: str, data: bytes, stats: IngestStats, skip_bad: bool
) -> Iterator[FlowBatch]:
    pos = 0
    number = 0
    while pos < len(data):
        number += 1
        where = f"{source}: message {number} at offset {pos}"
        if len(data) - pos < 4:
            problem = f"{where}: truncated message header"
            if not skip_bad:
                raise InputError(problem)
            stats.skip(problem)
            break
        version = struct.unpack_from(">H", data, pos)[0]
        try:
            if version == 10:
                pos = decoder.ipfix(data, pos)
            elif version == 9:
                pos = decoder.netflow9(data, pos)
            else:
                raise _Corrupt(f"version {version} is neither IPFIX (10) nor NetFlow v9")
        except _Corrupt as exc:
            problem = f"{where}: {exc}"
            if not skip_bad or decoder.resume is None:
                if skip_bad:
                    stats.skip(problem)
                    break
                raise InputError(problem) from None
            stats.skip(problem)
            pos = decoder.resume
        if len(decoder.columns) >= BATCH:
            yield decoder.columns.batch()


class _Decoder:
    def __init__(self, path: Path, stats: IngestStats, skip_bad: bool = False) -> None:
        self.skip_bad = skip_bad
        self.path = path
        self.stats = stats
        self.templates: dict[tuple[int, int, int], _Template] = {}
        self.init_millis: dict[tuple[int, int], int] = {}
        self.columns = _Columns()
        self.resume: int | None = None

    # --- message framing ----------------------------------------------------------------------

    def ipfix(self, data: bytes, pos: int) -> int:
        if len(data) - pos < 16:
            self.resume = None
            raise _Corrupt("truncated IPFIX message header")
        _version, length, export_time, _seq, domain = struct.unpack_from(">HHIII", data, pos)
        if length < 16 or pos + length > len(data):
            self.resume = None
            raise _Corrupt(f"message length {length} is invalid or runs past the end of the file")
        self.resume = pos + length
        end = pos + int(length)
        at = pos + 16
        while at < end:
            if end - at < 4:
                raise _Corrupt(f"truncated set header at offset {at}")
            set_id, set_length = struct.unpack_from(">HH", data, at)
            if set_length < 4 or at + set_length > end:
                raise _Corrupt(f"set at offset {at} has invalid length {set_length}")
            self._set(data[at + 4 : at + set_length], set_id, 10, domain, export_time, 0, at)
            at += set_length
        return end

    def netflow9(self, data: bytes, pos: int) -> int:
        if len(data) - pos < 20:
            self.resume = None
            raise _Corrupt("truncated NetFlow v9 header")
        _version, _count, uptime, unix_secs, _seq, source = struct.unpack_from(">HHIIII", data, pos)
        # v9 has no message length and exporters fill `count` inconsistently: a message ends where
        # the next header starts (flowset ids 9 and 10 are reserved) or at the end of the file.
        self.resume = None
        at = pos + 20
        while len(data) - at >= 4:
            set_id, set_length = struct.unpack_from(">HH", data, at)
            if set_id in (9, 10):
                break
            if set_length < 4 or at + set_length > len(data):
                raise _Corrupt(f"flowset at offset {at} has invalid length {set_length}")
            self._set(data[at + 4 : at + set_length], set_id, 9, source, unix_secs, uptime, at)
            at += set_length
        if 0 < len(data) - at < 4:
            raise _Corrupt(f"{len(data) - at} stray bytes at offset {at}")
        return at

    def _set(
        self,
        body: bytes,
        set_id: int,
        version: int,
        domain: int,
        export_secs: int,
        uptime: int,
        at: int,
    ) -> None:
        """Decode one set; template sets are 2 and 3 (options) in IPFIX, 0 and 1 in v9."""
        templates = 2 if version == 10 else 0
        if set_id in (templates, templates + 1):
            self._templates(body, version, domain, options=set_id == templates + 1, at=at)
        elif set_id >= 256:
            self._data(body, version, domain, set_id, export_secs, uptime, at)

    # --- templates ----------------------------------------------------------------------------

    def _templates(self, body: bytes, version: int, domain: int, options: bool, at: int) -> int:
        pos = 0
        count = 0
        while len(body) - pos >= 4:
            template_id, field_count = struct.unpack_from(">HH", body, pos)
            pos += 4
            scope_count = 0
            if options and version == 10:
                if len(body) - pos < 2:
                    raise _Corrupt(f"truncated options template in set at offset {at}")
                scope_count = struct.unpack_from(">H", body, pos)[0]
                pos += 2
            elif options:
                # NetFlow v9 gives the scope and option lengths in bytes, 4 bytes per field.
                if len(body) - pos < 2:
                    raise _Corrupt(f"truncated options template in flowset at offset {at}")
                scope_bytes = field_count
                option_bytes = struct.unpack_from(">H", body, pos)[0]
                pos += 2
                scope_count = scope_bytes // 4
                field_count = (scope_bytes + option_bytes) // 4
            if template_id < 256:
                if template_id == 0 and field_count == 0:
                    break  # padding
                raise _Corrupt(f"template id {template_id} below 256 in set at offset {at}")
            fields: list[Field] = []
            for _ in range(field_count):
                if len(body) - pos < 4:
                    raise _Corrupt(f"template {template_id} runs past its set at offset {at}")
                element, length = struct.unpack_from(">HH", body, pos)
                pos += 4
                pen = 0
                if version == 10 and element & 0x8000:
                    if len(body) - pos < 4:
                        raise _Corrupt(f"template {template_id} runs past its set at offset {at}")
                    pen = struct.unpack_from(">I", body, pos)[0]
                    pos += 4
                    element &= 0x7FFF
                fields.append((element, pen, length))
            key = (version, domain, template_id)
            if field_count == 0:
                self.templates.pop(key, None)  # withdrawal
            else:
                self.templates[key] = _Template.build(fields, scope_count)
            count += 1
            if options and version == 9:
                pos += (-pos) % 4
        return count

    # --- data ---------------------------------------------------------------------------------

    def _data(
        self,
        body: bytes,
        version: int,
        domain: int,
        template_id: int,
        export_secs: int,
        uptime_ms: int,
        at: int,
    ) -> int:
        template = self.templates.get((version, domain, template_id))
        if template is None:
            self.stats.skip(
                f"{self.path}: data set at offset {at} uses unknown template {template_id}"
            )
            return 1
        rows = self._rows(template, body, at)
        if template.scope_count:
            init = template.index(SYSTEM_INIT_MILLIS)
            if init is not None:
                for row in rows:
                    self.init_millis[(version, domain)] = int(_number(row[init]))
            return len(rows)
        self._flows(template, rows, version, domain, export_secs, uptime_ms)
        return len(rows)

    def _rows(self, template: _Template, body: bytes, at: int) -> list[tuple[object, ...]]:
        if template.record is not None:
            size = template.record.size
            if size == 0:
                return []
            usable = len(body) - len(body) % size
            return list(template.record.iter_unpack(body[:usable]))
        rows: list[tuple[object, ...]] = []
        pos = 0
        minimum = sum(1 if length == VARIABLE else length for _ie, _pen, length in template.fields)
        while len(body) - pos >= max(minimum, 1):
            values: list[object] = []
            for _ie, _pen, length in template.fields:
                if length == VARIABLE:
                    if pos >= len(body):
                        raise _Corrupt(f"variable-length field runs past its set at {at}")
                    length = body[pos]
                    pos += 1
                    if length == 255:
                        if len(body) - pos < 2:
                            raise _Corrupt(f"variable-length field runs past its set at {at}")
                        length = struct.unpack_from(">H", body, pos)[0]
                        pos += 2
                if pos + length > len(body):
                    raise _Corrupt(f"record runs past the end of its data set at offset {at}")
                values.append(body[pos : pos + length])
                pos += length
            rows.append(tuple(values))
        return rows

    def _flows(
        self,
        template: _Template,
        rows: list[tuple[object, ...]],
        version: int,
        domain: int,
        export_secs: int,
        uptime_ms: int,
    ) -> None:
        src = template.index(SRC_MAC)
        if src is None:
            for _ in rows:
                self.stats.skip(f"{self.path}: flow record without a source MAC address")
            return
        dst = template.index(DST_MAC)
        proto = template.index(PROTO)
        sport = template.index(SPORT)
        dport = template.index(DPORT)
        packets = template.index(PACKETS)
        octets = template.index(OCTETS)
        rev_packets = template.index(PACKETS, REVERSE_PEN)
        rev_octets = template.index(OCTETS, REVERSE_PEN)
        start = self._start_time(template, version, domain, export_secs, uptime_ms)
        cols = self.columns

        def count(i: int | None, absent: int, row: tuple[object, ...]) -> int:
            return int(_number(row[i])) if i is not None else absent

        for row in rows:
            self.stats.records += 1
            values = (
                ("packet count", count(packets, 1, row)),
                ("octet count", count(octets, 0, row)),
                ("reverse packet count", count(rev_packets, 0, row)),
                ("reverse octet count", count(rev_octets, 0, row)),
            )
            keys = (
                count(src, 0, row),
                count(dst, 0, row),
                count(proto, -1, row),
                count(sport, 0, row),
                count(dport, 0, row),
            )
            begins = start(row)
            why = implausible(begins, values) or _too_wide(keys)
            if why is not None:
                problem = f"{self.path}: flow record {self.stats.records}: {why}"
                if not self.skip_bad:
                    raise InputError(problem)
                self.stats.skip(problem)
                continue
            cols.start.append(begins)
            cols.src.append(keys[0])
            cols.dst.append(keys[1])
            cols.proto.append(keys[2])
            cols.sport.append(keys[3])
            cols.dport.append(keys[4])
            cols.packets.append(values[0][1])
            cols.octets.append(values[1][1])
            cols.rev_packets.append(values[2][1])
            cols.rev_octets.append(values[3][1])

    def _start_time(
        self, template: _Template, version: int, domain: int, export_secs: int, uptime_ms: int
    ) -> _StartTime:
        for element, scale in ((START_MILLIS, 1e-3), (START_SECONDS, 1.0)):
            i = template.index(element)
            if i is not None:
                return _StartTime(i, scale, 0.0, ntp=False)
        for element in (START_MICROS, START_NANOS):
            i = template.index(element)
            if i is not None:
                return _StartTime(i, 1.0, 0.0, ntp=True)
        i = template.index(START_SYSUPTIME)
        if i is not None:
            if version == 9:
                return _StartTime(i, 1e-3, export_secs - uptime_ms / 1000.0, ntp=False)
            init_field = template.index(SYSTEM_INIT_MILLIS)
            if init_field is not None:
                return _StartTime(i, 1e-3, 0.0, ntp=False, init_field=init_field)
            init = self.init_millis.get((version, domain))
            if init is not None:
                return _StartTime(i, 1e-3, init / 1000.0, ntp=False)
        return _StartTime(None, 1.0, float(export_secs), ntp=False)


@dataclass(frozen=True)
class _StartTime:
    """How one template's records give their start time in epoch seconds."""

    index: int | None
    scale: float
    offset: float
    ntp: bool
    init_field: int | None = None

    def __call__(self, row: tuple[object, ...]) -> float:
        if self.index is None:
            return self.offset
        value = _number(row[self.index])
        if self.ntp:
            return (value >> 32) - NTP_EPOCH_OFFSET + (value & 0xFFFFFFFF) / 2**32
        seconds = value * self.scale + self.offset
        if self.init_field is not None:
            seconds += _number(row[self.init_field]) / 1000.0
        return seconds


def _number(value: object) -> int:
    if isinstance(value, int):
        return value
    if isinstance(value, bytes | bytearray):
        return int.from_bytes(value, "big")
    raise _Corrupt(f"unexpected field value {value!r}")
