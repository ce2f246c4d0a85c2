"""MUDgee's per-device flow rules with their counters (`<mac>_ipflows.csv`) as activity.

MUDgee learns a device's MUD profile from a capture through a table of flow rules (source and
destination MAC, EtherType, IP protocol, ports; `*` for any) and writes each rule's packet and
byte counters. A rule from the device with a destination port means the device used that port
as a client, one with a source port that it served it; rules to the device repeat the same
exchanges seen from the other side. The switch counts what a device sends, so the rules *from*
the device are its activity: each names one service (protocol and the port it gives; the lower
one when it gives both), and a TCP or UDP rule with no port (MUDgee's fallbacks for ports it
made no rule for) counts as the whole port range, `tcp/0-65535` — traffic the profile cannot
name. Rules for non-IP frames (ARP, EAPOL), rules to the device and rules of other devices are
counted and left out. The file has no timestamps: all of it is one time unit.
"""

from __future__ import annotations

import csv
import re
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from controller.base.checks import is_decimal
from controller.base.errors import InputError
from controller.base.macs import NotAMac, mac_key
from controller.engine.activity import MAX_ROW_COUNT, ActivityTable
from controller.engine.services import PORT_MAX, TCP, UDP, service_name
from controller.mud.profile import Role

COLUMNS = (
    "srcMac",
    "dstMac",
    "ethType",
    "ipProto",
    "srcPort",
    "dstPort",
    "volumeTransmitted",
    "packetCount",
)
FLOWS_SUFFIX = "_ipflows.csv"
_IP_ETHERTYPES = ("0x0800", "0x86dd", "*")
_MAC_STEM = re.compile(r"^[0-9a-fA-F]{12}$")


@dataclass(frozen=True)
class FlowUse:
    """One service a device used, in one role, with what it sent."""

    service: str
    role: Role | None
    packets: int
    bytes: int


@dataclass(frozen=True)
class DeviceFlows:
    """A device's activity from one flows file: its uses, and the packets left out by reason
    (`non-ip`, `to-device`, `other-device`)."""

    source: str
    device: str
    uses: tuple[FlowUse, ...]
    left_out: tuple[tuple[str, int], ...]
    rows: int = 0

    @property
    def services(self) -> tuple[str, ...]:
        """The services used, sorted, each once."""
        return tuple(sorted({u.service for u in self.uses}))

    def activity(
        self, key: str | None = None, unit: int = 0, unit_seconds: float = 3600.0
    ) -> ActivityTable:
        """The uses as one unit of activity of device `key` (default: the device's MAC)."""
        return ActivityTable.from_records(
            ((key or self.device, unit, u.service, u.packets, u.bytes) for u in self.uses),
            unit_seconds=unit_seconds,
        )


def is_flows_header(line: str) -> bool:
    """Whether a CSV header line is that of a MUDgee flows file."""
    names = {name.strip() for name in line.split(",")}
    return all(column in names for column in COLUMNS)


def flows_device(path: Path) -> str:
    """The MAC device key a flows file is named after (`<12 hex digits>_ipflows.csv`)."""
    stem = path.name[: -len(FLOWS_SUFFIX)] if path.name.endswith(FLOWS_SUFFIX) else ""
    if not _MAC_STEM.match(stem):
        raise InputError(f"{path}: not a MUDgee flows file: expected <mac>{FLOWS_SUFFIX}")
    return mac_key(stem)


def flows_files(folder: Path) -> list[Path]:
    """The MUDgee flows files in `folder`, sorted."""
    return sorted(p for p in folder.glob(f"*{FLOWS_SUFFIX}") if p.is_file())


def read_flows(path: Path) -> DeviceFlows:
    """The activity of the device a MUDgee flows file is named after; an `InputError` naming
    the file, line and column for anything unreadable."""
    device = flows_device(path)
    used: Counter[tuple[str, Role | None]] = Counter()
    sent: Counter[tuple[str, Role | None]] = Counter()
    left_out: Counter[str] = Counter()
    rows = 0
    for line, row in _rows(path):
        rows += 1
        packets = _count(row["packetCount"], path, line, "packetCount")
        octets = _count(row["volumeTransmitted"], path, line, "volumeTransmitted")
        if packets == 0:
            continue
        source = _mac(row["srcMac"], path, line, "srcMac")
        if source != device:
            to_device = _mac(row["dstMac"], path, line, "dstMac") == device
            left_out["to-device" if to_device else "other-device"] += packets
            continue
        use = _service(row, path, line)
        if use is None:
            left_out["no-port" if _is_tcp_udp(row) else "non-ip"] += packets
            continue
        used[use] += packets
        sent[use] += octets
    uses = tuple(
        FlowUse(service, role, used[(service, role)], sent[(service, role)])
        for service, role in sorted(used, key=lambda k: (k[0], k[1] or ""))
    )
    return DeviceFlows(str(path), device, uses, tuple(sorted(left_out.items())), rows)


def _rows(path: Path) -> Iterator[tuple[int, dict[str, str]]]:
    try:
        with path.open(encoding="utf-8", newline="") as handle:
            reader = csv.DictReader(handle)
            header = [name.strip() for name in reader.fieldnames or ()]
            missing = [c for c in COLUMNS if c not in header]
            if missing:
                raise InputError(
                    f"{path}: not a MUDgee flows file: missing column(s) {', '.join(missing)}"
                )
            reader.fieldnames = header
            for row in reader:
                if None in row.values():
                    raise InputError(f"{path}:{reader.line_num}: fewer fields than the header")
                yield reader.line_num, {k: (v or "").strip() for k, v in row.items()}
    except OSError as exc:
        raise InputError(f"{path}: cannot read flows: {exc.strerror}") from exc
    except UnicodeDecodeError as exc:
        raise InputError(f"{path}: not UTF-8 text: {exc.reason}") from None
    except csv.Error as exc:
        raise InputError(f"{path}: not CSV: {exc}") from None


def _count(text: str, path: Path, line: int, column: str) -> int:
    if not is_decimal(text):
        raise InputError(f"{path}:{line}: {column} {text!r} is not a count")
    if int(text) > MAX_ROW_COUNT:
        raise InputError(f"{path}:{line}: {column} {text} is out of range (0..2^56)")
    return int(text)


def _mac(text: str, path: Path, line: int, column: str) -> str | None:
    if text == "*":
        return None
    try:
        return mac_key(text)
    except NotAMac:
        raise InputError(f"{path}:{line}: {column} {text!r} is not a MAC address or *") from None


def _number(text: str, path: Path, line: int, column: str, top: int) -> int | None:
    if text == "*":
        return None
    if not is_decimal(text) or int(text) > top:
        raise InputError(f"{path}:{line}: {column} {text!r} is not a number in 0..{top} or *")
    return int(text)


def _is_tcp_udp(row: dict[str, str]) -> bool:
    return row["ipProto"] in (str(TCP), str(UDP))


def _service(row: dict[str, str], path: Path, line: int) -> tuple[str, Role | None] | None:
    """The service and role of a rule from the device, or None for a non-IP rule."""
    proto = _number(row["ipProto"], path, line, "ipProto", 255)
    if proto is None or row["ethType"].lower() not in _IP_ETHERTYPES:
        return None
    if proto not in (TCP, UDP):
        return service_name(proto, 0, 0), None
    sport = _number(row["srcPort"], path, line, "srcPort", PORT_MAX)
    dport = _number(row["dstPort"], path, line, "dstPort", PORT_MAX)
    if sport is None and dport is None:
        return None
    # From the device: its destination port is the remote end's, its source port its own.
    if dport is not None and (sport is None or dport <= sport):
        return service_name(proto, dport, dport), "client"
    assert sport is not None
    return service_name(proto, sport, sport), "server"
