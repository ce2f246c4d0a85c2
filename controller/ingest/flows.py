"""Flow records → per-unit activity, attributed as the switch attributes packets.

A flow counts for its source MAC (the device sends it; a group or all-zero address is none), with
the service the catalogue assigns to (protocol, source port, destination port). An RFC 5103
biflow's reverse direction counts for the destination MAC, with the ports swapped. A flow's
packets all land in the unit of the flow start. Every reader (IPFIX CSV, binary IPFIX / NetFlow
v9, pcap) produces `FlowBatch`es — a packet is a one-packet flow — so attribution and aggregation
are this module's alone; `PortCounter` watches the same batches to learn which service ports
devices use.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass, field, fields
from typing import Any

import numpy as np
import numpy.typing as npt

from controller.base.macs import host_macs, macs_to_keys
from controller.engine.activity import MAX_EPOCH_SECONDS, ActivityTable, units_of
from controller.engine.catalogue import Catalogue
from controller.engine.learned import FlowCells, PortUsage

I64 = npt.NDArray[np.int64]
U64 = npt.NDArray[np.uint64]

# A record outside these bounds is not a measurement but damage or garbage: its unit would be
# meaningless (a 1e30 s start time, see `MAX_EPOCH_SECONDS`) or its counts would overflow the
# activity's 64-bit sums.
MAX_COUNT = 1 << 48


def plausible_times(seconds: npt.NDArray[np.float64]) -> npt.NDArray[np.bool_]:
    """Which start times (epoch seconds) lie between 1970 and 2100."""
    with np.errstate(invalid="ignore"):
        ok: npt.NDArray[np.bool_] = np.isfinite(seconds) & (seconds >= 0.0)
        ok &= seconds < MAX_EPOCH_SECONDS
    return ok


def implausible(start: float, counts: Iterable[tuple[str, int]] = ()) -> str | None:
    """Why one flow record's start time or counters cannot be real, or None when they can."""
    if not (math.isfinite(start) and 0.0 <= start < MAX_EPOCH_SECONDS):
        return f"start time {start!r} s is not between 1970 and 2100"
    for what, value in counts:
        if not 0 <= value <= MAX_COUNT:
            return f"{what} {value} is out of range (0..2^48)"
    return None


@dataclass(frozen=True, eq=False)
class FlowBatch:
    """Columnar flow (or packet) records.

    `proto` is the IP protocol, or -1 for non-IP records (never looked up: service 0);
    `l4_valid` False marks TCP/UDP records whose L4 header was missing or truncated.
    """

    start: npt.NDArray[np.float64]
    src_mac: U64
    dst_mac: U64
    proto: I64
    sport: I64
    dport: I64
    packets: I64
    bytes: I64
    rev_packets: I64 | None = None
    rev_bytes: I64 | None = None
    l4_valid: npt.NDArray[np.bool_] | None = None

    def __len__(self) -> int:
        return len(self.start)

    def take(self, index: npt.NDArray[np.bool_] | npt.NDArray[np.int64] | slice) -> FlowBatch:
        """The records a mask, an index array or a slice selects."""
        columns: dict[str, Any] = {
            f.name: None if (column := getattr(self, f.name)) is None else column[index]
            for f in fields(self)
        }
        return FlowBatch(**columns)


@dataclass
class IngestStats:
    """What an ingestion read and skipped; `problems` keeps the first few skip reasons."""

    records: int = 0
    skipped: int = 0
    unread_bytes: int = 0
    problems: list[str] = field(default_factory=list)

    def skip(self, problem: str, unread_bytes: int = 0) -> None:
        """Count one skipped record (or damaged stretch of `unread_bytes` bytes) and remember
        why (the first 20 reasons)."""
        self.skipped += 1
        self.unread_bytes += unread_bytes
        if len(self.problems) < 20:
            self.problems.append(problem)

    def add(self, other: IngestStats) -> None:
        """Fold another file's counts into these."""
        self.records += other.records
        self.skipped += other.skipped
        self.unread_bytes += other.unread_bytes
        self.problems.extend(other.problems[: max(0, 20 - len(self.problems))])


def batch_to_activity(
    batch: FlowBatch,
    catalogue: Catalogue,
    unit_seconds: float,
    devices: U64 | None = None,
) -> ActivityTable:
    """Activity of one batch; `devices` (48-bit MAC integers) restricts which devices count."""
    unit = units_of(batch.start, unit_seconds)
    fwd_service = catalogue.tables.lookup_many(
        batch.proto, batch.sport, batch.dport, batch.l4_valid
    )
    macs = [batch.src_mac]
    units = [unit]
    services = [fwd_service]
    packets = [batch.packets]
    octets = [batch.bytes]
    if batch.rev_packets is not None:
        has_reverse = batch.rev_packets > 0
        if bool(has_reverse.any()):
            valid = None if batch.l4_valid is None else batch.l4_valid[has_reverse]
            rev_service = catalogue.tables.lookup_many(
                batch.proto[has_reverse],
                batch.dport[has_reverse],
                batch.sport[has_reverse],
                valid,
            )
            rev_bytes = (
                batch.rev_bytes[has_reverse]
                if batch.rev_bytes is not None
                else np.zeros(int(has_reverse.sum()), np.int64)
            )
            macs.append(batch.dst_mac[has_reverse])
            units.append(unit[has_reverse])
            services.append(rev_service)
            packets.append(batch.rev_packets[has_reverse])
            octets.append(rev_bytes)
    mac = np.concatenate(macs)
    # As the controller admits devices: a group or all-zero source address is never one.
    keep = host_macs(mac) if devices is None else np.isin(mac, devices)
    vocabulary, codes = np.unique(mac[keep], return_inverse=True)
    return ActivityTable.from_arrays(
        devices=macs_to_keys(vocabulary),
        services=catalogue.names,
        device=codes.reshape(-1),
        unit=np.concatenate(units)[keep],
        service=np.concatenate(services)[keep],
        packets=np.concatenate(packets)[keep],
        bytes=np.concatenate(octets)[keep],
        unit_seconds=unit_seconds,
    )


def batches_to_activity(
    batches: Iterable[FlowBatch],
    catalogue: Catalogue,
    unit_seconds: float,
    devices: U64 | None = None,
    ports: PortCounter | None = None,
) -> ActivityTable:
    """Activity of a reader's batches (an empty table when there are none); `ports`, when
    given, also watches every batch."""
    tables = []
    for batch in batches:
        if ports is not None:
            ports.add(batch)
        tables.append(batch_to_activity(batch, catalogue, unit_seconds, devices))
    if not tables:
        return ActivityTable.empty(unit_seconds, services=catalogue.names)
    return ActivityTable.concat(tables)


class PortCounter:
    """Collects the counted devices' flow records, batch by batch, summed per (device, unit,
    protocol, ports, L4 validity): which TCP/UDP service ports they use, for the `learned` and
    `ephemeral` granularities (see `controller.engine.learned.PortUsage`), and the records an
    evaluation attributes anew with a catalogue learned from its training split (`cells`)."""

    def __init__(self, devices: U64 | None = None, unit_seconds: float = 3600.0) -> None:
        self.devices = devices
        self.unit_seconds = unit_seconds
        self._parts: list[tuple[I64, ...]] = []

    def add(self, batch: FlowBatch) -> None:
        """Count one batch (both directions of biflows)."""
        unit = units_of(batch.start, self.unit_seconds)
        valid = np.ones(len(batch), dtype=bool) if batch.l4_valid is None else batch.l4_valid
        macs = [batch.src_mac]
        protos = [batch.proto]
        sports = [batch.sport]
        dports = [batch.dport]
        units = [unit]
        valids = [valid]
        packets = [batch.packets]
        octets = [batch.bytes]
        if batch.rev_packets is not None:
            back = batch.rev_packets > 0
            macs.append(batch.dst_mac[back])
            protos.append(batch.proto[back])
            sports.append(batch.dport[back])
            dports.append(batch.sport[back])
            units.append(unit[back])
            valids.append(valid[back])
            packets.append(batch.rev_packets[back])
            octets.append(
                batch.rev_bytes[back]
                if batch.rev_bytes is not None
                else np.zeros(int(back.sum()), np.int64)
            )
        mac = np.concatenate(macs)
        keep = np.ones(len(mac), dtype=bool)
        if self.devices is not None:
            keep &= np.isin(mac, self.devices)
        key = np.stack(
            [
                mac[keep].astype(np.int64),
                np.concatenate(protos)[keep],
                np.concatenate(sports)[keep],
                np.concatenate(dports)[keep],
                np.concatenate(units)[keep],
                np.concatenate(valids)[keep].astype(np.int64),
            ]
        )
        if key.shape[1] == 0:
            return
        unique, inverse = np.unique(key, axis=1, return_inverse=True)
        inverse = inverse.reshape(-1)
        summed = np.bincount(inverse, weights=np.concatenate(packets)[keep])
        summed_bytes = np.bincount(inverse, weights=np.concatenate(octets)[keep])
        self._parts.append((*unique, summed.astype(np.int64), summed_bytes.astype(np.int64)))

    def extend(self, other: PortCounter) -> None:
        """Take over what another counter collected."""
        self._parts.extend(other._parts)

    def _columns(self) -> tuple[I64, ...]:
        if not self._parts:
            return tuple(np.zeros(0, np.int64) for _ in range(8))
        return tuple(np.concatenate(c) for c in zip(*self._parts, strict=True))

    def usage(self) -> PortUsage:
        """Distinct devices, (device, unit) cells and packets per (protocol, service port)."""
        mac, proto, sport, dport, unit, valid, packets, _ = self._columns()
        keep = (valid == 1) & ((proto == 6) | (proto == 17))
        return PortUsage.from_flows(
            mac[keep], proto[keep], sport[keep], dport[keep], packets[keep], unit[keep]
        )

    def cells(self) -> FlowCells:
        """The collected records by device (keyed by MAC, as activity is)."""
        mac, proto, sport, dport, unit, valid, packets, octets = self._columns()
        vocabulary, codes = np.unique(mac.astype(np.uint64), return_inverse=True)
        return FlowCells.from_records(
            macs_to_keys(vocabulary),
            self.unit_seconds,
            (codes.reshape(-1), unit, proto, sport, dport, valid, packets, octets),
        )
