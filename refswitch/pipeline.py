"""The fingerprint.p4 pipeline, modelled bit for bit in Python.

Read this side by side with p4src/fingerprint.p4: the parser states, tables, actions and the
ingress/egress logic carry the same names and run in the same order. Behaviour follows BMv2
`simple_switch`: a header that does not fit stays invalid with `parser_error = PacketTooShort` and
the packet still goes through ingress; fields of headers never extracted read as zero; the
frame leaves unchanged.
"""

from __future__ import annotations

import array
import logging
import struct
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt

from refswitch.program import Program

log = logging.getLogger(__name__)

ETHERTYPE_IPV4 = 0x0800
ETHERTYPE_ARP = 0x0806
ETHERTYPE_VLAN = 0x8100
ETHERTYPE_IPV6 = 0x86DD

PROTO_ICMP = 1
PROTO_TCP = 6
PROTO_UDP = 17
PROTO_ICMPV6 = 58

NO_ERROR = "NoError"
PACKET_TOO_SHORT = "PacketTooShort"
# fingerprint.p4's own parser errors (its `verify` statements).
IPV4_BAD_VERSION = "Ipv4BadVersion"
IPV4_BAD_TOTAL_LENGTH = "Ipv4BadTotalLength"
TCP_BAD_DATA_OFFSET = "TcpBadDataOffset"

# v1model's mark_to_drop() port on BMv2.
DROP_PORT = 511

# l2_forward results other than a port number.
FLOOD = -1
DROP = -2

_TIMESTAMP_MASK = (1 << 48) - 1
_ZERO_MAC = bytes(6)
# Service lookups memoised per (proto, sport, dport); a port scan must not grow this unbounded.
_MEMO_LIMIT = 1 << 16


def _crc16_table() -> tuple[int, ...]:
    table = []
    for byte in range(256):
        crc = byte
        for _ in range(8):
            crc = (crc >> 1) ^ 0xA001 if crc & 1 else crc >> 1
        table.append(crc)
    return tuple(table)


_CRC16_TABLE = _crc16_table()


def crc16(data: bytes) -> int:
    """BMv2's `HashAlgorithm.crc16`: CRC-16/ARC (poly 0x8005 reflected, init 0, no final xor)."""
    crc = 0
    table = _CRC16_TABLE
    for byte in data:
        crc = (crc >> 8) ^ table[(crc ^ byte) & 0xFF]
    return crc


@dataclass(frozen=True)
class ServiceRule:
    """One entry of service_by_dst / service_by_src: ternary proto, range port → set_service."""

    priority: int
    proto_value: int
    proto_mask: int
    port_lo: int
    port_hi: int
    service_id: int


@dataclass(frozen=True)
class TableState:
    """Everything the control plane installed, as the pipeline consults it.

    Replaced as a whole after every write, so packets always see one consistent state.
    """

    devices: Mapping[bytes, int] = field(default_factory=dict)
    # None: the default action is unregistered(); otherwise set_device(id).
    device_default: int | None = None
    # Rules in match order: highest priority first.
    by_dst: tuple[ServiceRule, ...] = ()
    # None: NoAction; otherwise set_service(id).
    by_dst_default: int | None = None
    by_src: tuple[ServiceRule, ...] = ()
    by_src_default: int | None = None
    # Destination MAC → port, FLOOD or DROP.
    l2: Mapping[bytes, int] = field(default_factory=dict)
    l2_default: int = FLOOD
    # Multicast group → egress port of every replica.
    groups: Mapping[int, tuple[int, ...]] = field(default_factory=dict)


class ParsedHeaders:
    """The parser's output: which headers are valid and the fields ingress uses.

    One instance per pipeline, reset for every packet.
    """

    __slots__ = (
        "arp",
        "dport",
        "dst",
        "ethernet",
        "icmp",
        "ipv4",
        "ipv4_options",
        "ipv6",
        "l3_proto",
        "parser_error",
        "sport",
        "src",
        "tcp",
        "udp",
        "vlan",
    )

    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        """Every header invalid, every field zero, no error."""
        self.ethernet = self.vlan = self.arp = False
        self.ipv4 = self.ipv4_options = self.ipv6 = False
        self.tcp = self.udp = self.icmp = False
        self.dst = self.src = _ZERO_MAC
        self.l3_proto = self.sport = self.dport = 0
        self.parser_error = NO_ERROR

    def valid_headers(self) -> tuple[str, ...]:
        """Names of the valid headers, in parse order (for logs and tests)."""
        names = ("ethernet", "vlan", "arp", "ipv4", "ipv4_options", "ipv6", "tcp", "udp", "icmp")
        return tuple(name for name in names if getattr(self, name))


# A parser state: extracts its header at the given offset and transitions on.
_State = Callable[[int], None]


class ParserImpl:
    """The P4 parser: one method per parser state."""

    def __init__(self) -> None:
        self.hdr = ParsedHeaders()
        self._frame = b""
        # The transition selects of fingerprint.p4's parser: selected value → next state; a
        # value missing from a select is its `default: accept`.
        after_vlan: dict[int, _State] = {
            ETHERTYPE_IPV4: self.parse_ipv4,
            ETHERTYPE_IPV6: self.parse_ipv6,
            ETHERTYPE_ARP: self.parse_arp,
        }
        self._after_vlan = after_vlan
        self._after_ethernet = {**after_vlan, ETHERTYPE_VLAN: self.parse_vlan}
        transport: dict[int, _State] = {PROTO_TCP: self.parse_tcp, PROTO_UDP: self.parse_udp}
        self._after_ipv4 = {**transport, PROTO_ICMP: self.parse_icmp}
        self._after_ipv6 = {**transport, PROTO_ICMPV6: self.parse_icmp}

    def parse(self, frame: bytes) -> ParsedHeaders:
        """Parse `frame` into `self.hdr` (reused; valid until the next call)."""
        self.hdr.reset()
        self._frame = frame
        self.start()
        return self.hdr

    def _fits(self, offset: int, length: int) -> bool:
        if offset + length <= len(self._frame):
            return True
        self.hdr.parser_error = PACKET_TOO_SHORT
        return False

    def start(self) -> None:
        """Extract Ethernet, select on its EtherType."""
        frame, hdr = self._frame, self.hdr
        if not self._fits(0, 14):
            return
        hdr.ethernet = True
        hdr.dst = frame[0:6]
        hdr.src = frame[6:12]
        state = self._after_ethernet.get((frame[12] << 8) | frame[13])
        if state is not None:
            state(14)

    def parse_vlan(self, offset: int) -> None:
        """At most one tag: a second 0x8100 is left unparsed."""
        if not self._fits(offset, 4):
            return
        self.hdr.vlan = True
        frame = self._frame
        state = self._after_vlan.get((frame[offset + 2] << 8) | frame[offset + 3])
        if state is not None:
            state(offset + 4)

    def parse_arp(self, offset: int) -> None:
        """ARP for Ethernet/IPv4: 28 bytes."""
        if self._fits(offset, 28):
            self.hdr.arp = True

    def parse_ipv4(self, offset: int) -> None:
        """IPv4: a version other than 4 or a total length below IHL × 4 is a parser error;
        IHL 0–4 stops parsing, IHL 6–15 goes through the options."""
        if not self._fits(offset, 20):
            return
        frame, hdr = self._frame, self.hdr
        hdr.ipv4 = True
        ihl = frame[offset] & 0x0F
        hdr.l3_proto = frame[offset + 9]
        frag_offset = ((frame[offset + 6] & 0x1F) << 8) | frame[offset + 7]
        if frame[offset] >> 4 != 4:
            hdr.parser_error = IPV4_BAD_VERSION
            return
        if ((frame[offset + 2] << 8) | frame[offset + 3]) < ihl * 4:
            hdr.parser_error = IPV4_BAD_TOTAL_LENGTH
            return
        if ihl < 5:
            return
        if ihl > 5:
            self.parse_ipv4_options(offset + 20, (ihl - 5) * 4, frag_offset)
        else:
            self.parse_ipv4_l4(offset + 20, frag_offset)

    def parse_ipv4_options(self, offset: int, length: int, frag_offset: int) -> None:
        """The varbit options, (IHL-5)*32 bits."""
        if not self._fits(offset, length):
            return
        self.hdr.ipv4_options = True
        self.parse_ipv4_l4(offset + length, frag_offset)

    def parse_ipv4_l4(self, offset: int, frag_offset: int) -> None:
        """Only the first fragment carries the L4 header."""
        if frag_offset != 0:
            return
        state = self._after_ipv4.get(self.hdr.l3_proto)
        if state is not None:
            state(offset)

    def parse_ipv6(self, offset: int) -> None:
        """IPv6: 40 bytes, no extension-header chasing."""
        if not self._fits(offset, 40):
            return
        hdr = self.hdr
        hdr.ipv6 = True
        hdr.l3_proto = self._frame[offset + 6]
        state = self._after_ipv6.get(hdr.l3_proto)
        if state is not None:
            state(offset + 40)

    def parse_tcp(self, offset: int) -> None:
        """TCP: the 20-byte fixed header; a data offset below 5 is a parser error (the header
        stays valid, as after P4's `verify`)."""
        self.hdr.tcp = self._extract_ports(offset, 20)
        if self.hdr.tcp and self._frame[offset + 12] >> 4 < 5:
            self.hdr.parser_error = TCP_BAD_DATA_OFFSET

    def parse_udp(self, offset: int) -> None:
        """UDP: 8 bytes."""
        self.hdr.udp = self._extract_ports(offset, 8)

    def _extract_ports(self, offset: int, length: int) -> bool:
        # TCP and UDP both open with the source and destination port.
        if not self._fits(offset, length):
            return False
        self.hdr.sport, self.hdr.dport = _PORTS.unpack_from(self._frame, offset)
        return True

    def parse_icmp(self, offset: int) -> None:
        """ICMP and ICMPv6: type, code, checksum (4 bytes)."""
        if self._fits(offset, 4):
            self.hdr.icmp = True


_PORTS = struct.Struct("!HH")


@dataclass(frozen=True)
class Verdict:
    """What the pipeline decided for one packet (returned by `Pipeline.trace`)."""

    device_id: int
    service_id: int
    counter_index: int
    egress_ports: tuple[int, ...]
    digest: tuple[int, int] | None
    parser_error: str
    valid_headers: tuple[str, ...]


class _Record:
    __slots__ = ("counter_index", "device_id", "digest", "service_id")

    def __init__(self) -> None:
        self.device_id = self.service_id = self.counter_index = 0
        self.digest: tuple[int, int] | None = None


DigestSink = Callable[[int, int], None]


def _monotonic_us() -> Callable[[], int]:
    start = time.monotonic_ns()
    return lambda: (time.monotonic_ns() - start) // 1000


class Pipeline:
    """fingerprint.p4's ingress and egress, with its counter and registers.

    Thread-safe: frames from several ports and counter reads from the P4Runtime server may arrive
    concurrently; one short lock orders them.
    """

    def __init__(
        self,
        program: Program,
        *,
        clock: Callable[[], int] | None = None,
        digest_sink: DigestSink | None = None,
        digest_repeat_us: int | None = None,
    ) -> None:
        self.program = program
        self.max_services = program.max_services
        self.max_devices = program.max_devices
        self._flood_group = program.contract.flood_group
        self._counter_size = program.service_hits.size
        # array('q') increments fast in pure Python and exposes its buffer to numpy for reads.
        self._packets = array.array("q", bytes(8 * self._counter_size))
        self._bytes = array.array("q", bytes(8 * self._counter_size))
        cache = program.digest_cache_size
        self.digest_mac = [0] * cache
        self.digest_time = [0] * cache
        # The build's DIGEST_REPEAT_US unless a test or the command line models another.
        self.digest_repeat_us = (
            program.contract.digest_repeat_us if digest_repeat_us is None else digest_repeat_us
        )
        self._clock = clock or _monotonic_us()
        self._digest_sink = digest_sink
        self._parser = ParserImpl()
        self._lock = threading.Lock()
        self._tables = TableState()
        self._service_memo: dict[tuple[int, int, int], int] = {}
        self.parser_errors = 0

    # Control plane side -------------------------------------------------------------------------

    def install(self, tables: TableState) -> None:
        """Make `tables` what every following packet sees."""
        with self._lock:
            if (tables.by_dst, tables.by_dst_default, tables.by_src, tables.by_src_default) != (
                self._tables.by_dst,
                self._tables.by_dst_default,
                self._tables.by_src,
                self._tables.by_src_default,
            ):
                self._service_memo = {}
            self._tables = tables

    @property
    def tables(self) -> TableState:
        """The state packets currently see."""
        return self._tables

    def read_counters(self) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.int64]]:
        """Copies of service_hits (packets, bytes), taken atomically."""
        with self._lock:
            packets = np.frombuffer(self._packets, dtype=np.int64).copy()
            byte_counts = np.frombuffer(self._bytes, dtype=np.int64).copy()
        return packets, byte_counts

    def read_counter(self, index: int) -> tuple[int, int]:
        """One cell of service_hits: (packets, bytes)."""
        with self._lock:
            return self._packets[index], self._bytes[index]

    # Data plane side ----------------------------------------------------------------------------

    def process(self, frame: bytes, ingress_port: int) -> tuple[int, ...]:
        """Run one frame through the pipeline; the ports its (unchanged) copies leave by."""
        with self._lock:
            return self._run(frame, ingress_port, None)

    def trace(self, frame: bytes, ingress_port: int) -> Verdict:
        """Like `process`, also reporting every decision (for tests and debugging)."""
        record = _Record()
        with self._lock:
            ports = self._run(frame, ingress_port, record)
            hdr = self._parser.hdr
            return Verdict(
                device_id=record.device_id,
                service_id=record.service_id,
                counter_index=record.counter_index,
                egress_ports=ports,
                digest=record.digest,
                parser_error=hdr.parser_error,
                valid_headers=hdr.valid_headers(),
            )

    def _run(self, frame: bytes, ingress_port: int, record: _Record | None) -> tuple[int, ...]:
        hdr = self._parser.parse(frame)
        if hdr.parser_error != NO_ERROR:
            self._log_parser_error(frame, ingress_port)
        tables = self._tables

        # device_table; an id beyond the counter's layout is treated as a miss, as in the P4.
        found = tables.devices.get(hdr.src, tables.device_default)
        registered = found is not None and found < self.max_devices
        device_id = found if found is not None and registered else 0
        digest = None
        if not registered:
            digest = self._new_device_digest(hdr.src, ingress_port)

        # The service key, only after a parse without error: a TCP/UDP packet without its
        # header, or with one that contradicts itself, is never looked up.
        service_id = 0
        proto = hdr.l3_proto
        if hdr.parser_error == NO_ERROR:
            if hdr.tcp or hdr.udp:
                service_id = self._service(proto, hdr.sport, hdr.dport)
            elif (hdr.ipv4 or hdr.ipv6) and proto != PROTO_TCP and proto != PROTO_UDP:
                service_id = self._service(proto, 0, 0)

        # service_hits: a service id beyond the layout counts as "other", as in the P4.
        if service_id >= self.max_services:
            service_id = 0
        index = device_id * self.max_services + service_id
        self._packets[index] += 1
        self._bytes[index] += len(frame)

        # l2_forward, then the v1model traffic manager and EgressImpl.
        action = tables.l2.get(hdr.dst, tables.l2_default)
        if action == FLOOD:
            replicas = tables.groups.get(self._flood_group, ())
            ports = tuple(port for port in replicas if port != ingress_port)
        elif action in (DROP, DROP_PORT):
            ports = ()
        else:
            ports = (action,)

        if record is not None:
            record.device_id, record.service_id = device_id, service_id
            record.counter_index, record.digest = index, digest
        return ports

    def _log_parser_error(self, frame: bytes, ingress_port: int) -> None:
        self.parser_errors += 1
        count = self.parser_errors
        # Every error would flood the log under a malformed-traffic test; the first ones and a
        # running count are what an operator needs.
        if count <= 100 or count % 1000 == 0:
            log.info(
                "parser error %s on port %d: %d-byte frame, valid headers %s (%d errors so far)",
                self._parser.hdr.parser_error,
                ingress_port,
                len(frame),
                ",".join(self._parser.hdr.valid_headers()) or "none",
                count,
            )

    def _new_device_digest(self, src: bytes, ingress_port: int) -> tuple[int, int] | None:
        """digest_mac/digest_time de-duplication, then digest<new_device_t>."""
        # Only unregistered sources need ingress_global_timestamp: registered ones skip the clock.
        timestamp = self._clock() & _TIMESTAMP_MASK
        slot = crc16(src) % len(self.digest_mac)
        mac = int.from_bytes(src, "big")
        cached_mac = self.digest_mac[slot]
        cached_time = self.digest_time[slot]
        if (
            cached_mac != mac
            or ((timestamp - cached_time) & _TIMESTAMP_MASK) >= self.digest_repeat_us
        ):
            self.digest_mac[slot] = mac
            self.digest_time[slot] = timestamp
            if self._digest_sink is not None:
                self._digest_sink(mac, ingress_port)
            return mac, ingress_port
        return None

    def _service(self, proto: int, sport: int, dport: int) -> int:
        key = (proto, sport, dport)
        memo = self._service_memo
        found = memo.get(key)
        if found is not None:
            return found
        tables = self._tables
        service_id = _match(tables.by_dst, proto, dport)
        if service_id is None:
            # A miss runs the default action; `hit` stays false, so service_by_src is applied.
            default = tables.by_dst_default
            service_id = _match(tables.by_src, proto, sport)
            if service_id is None:
                by_src_default = tables.by_src_default
                if by_src_default is not None:
                    service_id = by_src_default
                elif default is not None:
                    service_id = default
                else:
                    service_id = 0
        if len(memo) >= _MEMO_LIMIT:
            memo.clear()
        memo[key] = service_id
        return service_id


def _match(rules: tuple[ServiceRule, ...], proto: int, port: int) -> int | None:
    for rule in rules:
        if proto & rule.proto_mask == rule.proto_value and rule.port_lo <= port <= rule.port_hi:
            return rule.service_id
    return None
