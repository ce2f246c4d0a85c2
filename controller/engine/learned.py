"""Catalogues learned from observed traffic: which ports earn a service of their own.

Granularities (`--granularity` of `svcfp ingest`):
- `catalogue`: the catalogue file as written (the built-in default when no file is given).
- `ephemeral`: every TCP/UDP port below 49152 its own service — the most used ones from observed
  traffic up to the service limit (or the catalogue's single ports when nothing was observed) —
  and the dynamic range 49152–65535 one service per protocol; unlisted ports fall into catch-alls.
- `learned`: the most used TCP/UDP ports of observed traffic (dynamic ones included, ranked by how
  many devices use them, then in how many (device, unit) cells, then packets) each their own
  service up to the limit; the rest fall into catch-alls.
In both learned forms a port must be used in at least two (device, unit) cells.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Literal

import numpy as np
import numpy.typing as npt

from controller.base.errors import InputError
from controller.engine.activity import ActivityTable
from controller.engine.catalogue import Catalogue
from controller.engine.services import (
    EPHEMERAL_LO,
    ICMP,
    ICMPV6,
    MAX_SERVICE_ID,
    PORT_MAX,
    SYSTEM_PORT_MAX,
    TCP,
    UDP,
    ServiceSpec,
)

I64 = npt.NDArray[np.int64]
Granularity = Literal["catalogue", "ephemeral", "learned"]
GRANULARITIES: tuple[Granularity, ...] = ("catalogue", "ephemeral", "learned")


@dataclass(frozen=True)
class PortUsage:
    """Observed use of TCP/UDP service ports: per (protocol, port), the distinct devices, the
    distinct (device, unit) cells in which they used it, and packets.

    A flow's service port is its system port (1–1023) when only one of its two ports is one;
    otherwise the one of its two ports that meets more distinct counterpart ports over the
    observed flows without such a system port — a service port serves many ephemeral ports, an
    ephemeral port meets one service — and the lower port on a tie. (Taking simply the lower
    port fails for clients with low ephemeral ports: a Windows XP client's 1035 → 10000 is a use
    of 10000. Counting the flows to system ports would let an ephemeral port that two devices
    happened to pick, one of them for HTTP, outrank the one service it served for the other.)
    """

    proto: npt.NDArray[np.int64]
    port: npt.NDArray[np.int64]
    devices: npt.NDArray[np.int64]
    cells: npt.NDArray[np.int64]
    packets: npt.NDArray[np.int64]

    @classmethod
    def from_flows(
        cls,
        device: npt.ArrayLike,
        proto: npt.ArrayLike,
        sport: npt.ArrayLike,
        dport: npt.ArrayLike,
        packets: npt.ArrayLike,
        unit: npt.ArrayLike | None = None,
    ) -> PortUsage:
        """Count from per-flow (or per-packet) arrays; non-TCP/UDP rows are ignored. Without
        `unit`, every flow is taken to be in the same unit."""
        p = np.asarray(proto, dtype=np.int64)
        keep = (p == TCP) | (p == UDP)
        dev = np.asarray(device, dtype=np.int64)[keep]
        port = service_ports(
            p[keep],
            np.asarray(sport, dtype=np.int64)[keep],
            np.asarray(dport, dtype=np.int64)[keep],
        )
        pkt = np.asarray(packets, dtype=np.int64)[keep]
        units = (
            np.zeros(len(dev), np.int64) if unit is None else np.asarray(unit, dtype=np.int64)[keep]
        )
        key = p[keep] * (PORT_MAX + 1) + port
        keys, inverse = np.unique(key, return_inverse=True)
        inverse = inverse.reshape(-1).astype(np.int64)
        pkts = np.bincount(inverse, weights=pkt, minlength=len(keys)).astype(np.int64)
        device_pairs = np.unique(np.stack([inverse, dev]), axis=1)
        devs = np.bincount(device_pairs[0], minlength=len(keys)).astype(np.int64)
        cell_triples = np.unique(np.stack([inverse, dev, units]), axis=1)
        cells = np.bincount(cell_triples[0], minlength=len(keys)).astype(np.int64)
        return cls(keys // (PORT_MAX + 1), keys % (PORT_MAX + 1), devs, cells, pkts)

    def ranked(self, max_port: int = PORT_MAX, min_cells: int = 1) -> list[tuple[int, int]]:
        """(proto, port) pairs with port ≤ max_port used in at least `min_cells` (device, unit)
        cells: most devices first, then most cells, then most packets."""
        keep = (self.port <= max_port) & (self.cells >= min_cells)
        order = np.lexsort(
            (
                self.port[keep],
                self.proto[keep],
                -self.packets[keep],
                -self.cells[keep],
                -self.devices[keep],
            )
        )
        return list(
            zip(self.proto[keep][order].tolist(), self.port[keep][order].tolist(), strict=True)
        )


def service_ports(
    proto: npt.NDArray[np.int64], sport: npt.NDArray[np.int64], dport: npt.NDArray[np.int64]
) -> npt.NDArray[np.int64]:
    """Per flow, its service port (see `PortUsage`): its only system port, else the port with
    more distinct counterparts among the flows no system port settles."""
    system_source = _system(sport)
    settled = system_source != _system(dport)
    out = np.where(system_source, sport, dport)
    rest = ~settled
    out[rest] = _most_met(proto[rest], sport[rest], dport[rest])
    return out


def _most_met(
    proto: npt.NDArray[np.int64], sport: npt.NDArray[np.int64], dport: npt.NDArray[np.int64]
) -> npt.NDArray[np.int64]:
    """Per flow, the one of its ports that meets more distinct counterpart ports over these
    flows (the lower on a tie)."""
    if len(proto) == 0:
        return np.zeros(0, np.int64)
    span = PORT_MAX + 1
    own = np.concatenate([proto * span + sport, proto * span + dport])
    other = np.concatenate([dport, sport])
    pairs = np.unique(own * span + other)
    keys, counterparts = np.unique(pairs // span, return_counts=True)

    def popularity(ports: npt.NDArray[np.int64]) -> npt.NDArray[np.int64]:
        found: npt.NDArray[np.int64] = counterparts[np.searchsorted(keys, proto * span + ports)]
        return found

    source, destination = popularity(sport), popularity(dport)
    chosen = np.where(source > destination, sport, dport)
    return np.where(source == destination, np.minimum(sport, dport), chosen)


def _system(ports: npt.NDArray[np.int64]) -> npt.NDArray[np.bool_]:
    """Which ports are system ("well-known") ports, 1–1023."""
    return (ports >= 1) & (ports <= SYSTEM_PORT_MAX)


def catch_alls() -> list[ServiceSpec]:
    """Low-priority services for everything a learned catalogue does not list by port."""
    specs: list[ServiceSpec] = []
    for proto in (TCP, UDP):
        specs.append(ServiceSpec(proto, 1, SYSTEM_PORT_MAX))
        specs.append(ServiceSpec(proto, SYSTEM_PORT_MAX + 1, EPHEMERAL_LO - 1, in_dst_table=False))
        specs.append(ServiceSpec(proto, EPHEMERAL_LO, PORT_MAX, in_dst_table=False))
    specs.append(ServiceSpec(ICMP, 0, 0))
    specs.append(ServiceSpec(ICMPV6, 0, 0))
    specs.append(ServiceSpec(None, 0, 0, name="ip/other", in_dst_table=False))
    return specs


def for_granularity(
    granularity: str,
    path: Path | None = None,
    observed: PortUsage | None = None,
    limit: int = MAX_SERVICE_ID,
    min_cells: int = 2,
) -> Catalogue:
    """Build the catalogue for a granularity (see the module docstring).

    `path` is the catalogue file for `catalogue` (None: the built-in one) and the source of the
    fallback port list for `ephemeral`; `observed` is required for `learned`. A port needs at
    least `min_cells` (device, unit) cells of use to earn its own service: a port seen once is
    noise (a random dynamic port), not a service.
    """
    if not 1 <= limit <= MAX_SERVICE_ID:
        raise InputError(f"service limit must lie in 1..{MAX_SERVICE_ID}, got {limit}")
    if granularity == "catalogue":
        catalogue = Catalogue.load_or_default(path)
        if catalogue.max_id > limit:
            raise InputError(f"{catalogue.source}: {catalogue.max_id} services exceed {limit}")
        return catalogue
    if granularity == "ephemeral":
        if observed is not None:
            ports = observed.ranked(max_port=EPHEMERAL_LO - 1, min_cells=min_cells)
        else:
            ports = [
                (s.proto, s.port_lo)
                for s in Catalogue.load_or_default(path).services
                if s.proto in (TCP, UDP) and s.port_lo == s.port_hi and s.port_lo < EPHEMERAL_LO
            ]
        return _ports_catalogue(ports, limit, f"{granularity} granularity")
    if granularity == "learned":
        if observed is None:
            raise InputError("the learned granularity needs observed traffic to learn from")
        return _ports_catalogue(
            observed.ranked(min_cells=min_cells), limit, f"{granularity} granularity"
        )
    raise InputError(
        f"unknown granularity {granularity!r}; choose one of {', '.join(GRANULARITIES)}"
    )


def _ports_catalogue(ports: Sequence[tuple[int, int]], limit: int, source: str) -> Catalogue:
    """A service for each of the first `ports` that fit under `limit`, then the catch-alls."""
    fixed = catch_alls()
    room = limit - len(fixed)
    if room < 0:
        raise InputError(f"{source}: a limit of {limit} services leaves no room for catch-alls")
    chosen = sorted(set(ports[:room]))
    specs = [ServiceSpec(proto, port, port) for proto, port in chosen]
    return Catalogue.from_specs([*specs, *fixed], source)


@dataclass(frozen=True, eq=False)
class FlowCells:
    """Flow records summed per (track, unit, protocol, source port, destination port, L4
    validity), each direction of a biflow a record of the device that sent it: what attributing
    them with any catalogue needs. An evaluation keeps them to learn a catalogue from the
    training split's traffic alone and to attribute every track's traffic with it.

    `proto` is -1 for non-IP records, as in flow batches.
    """

    tracks: tuple[str, ...]
    unit_seconds: float
    track: I64
    unit: I64
    proto: I64
    sport: I64
    dport: I64
    valid: npt.NDArray[np.bool_]
    packets: I64
    bytes: I64

    def __len__(self) -> int:
        return len(self.track)

    @classmethod
    def from_records(
        cls,
        tracks: Sequence[str],
        unit_seconds: float,
        columns: Sequence[npt.ArrayLike],
    ) -> FlowCells:
        """Sum records given as (track, unit, proto, sport, dport, valid, packets, bytes)
        columns; the track column holds codes into `tracks`."""
        track, unit, proto, sport, dport, valid, packets, octets = (
            np.asarray(c, dtype=np.int64).reshape(-1) for c in columns
        )
        if track.size and (track.min() < 0 or track.max() >= len(tracks)):
            raise InputError(f"flow cells: track codes outside the {len(tracks)} tracks")
        key = np.stack([track, unit, proto, sport, dport, valid])
        if key.shape[1] == 0:
            unique = key
            summed_packets = summed_bytes = np.zeros(0, np.int64)
        else:
            unique, inverse = np.unique(key, axis=1, return_inverse=True)
            inverse = inverse.reshape(-1)
            summed_packets = np.bincount(inverse, weights=packets).astype(np.int64)
            summed_bytes = np.bincount(inverse, weights=octets).astype(np.int64)
        return cls(
            tuple(tracks),
            unit_seconds,
            unique[0],
            unique[1],
            unique[2],
            unique[3],
            unique[4],
            unique[5].astype(bool),
            summed_packets,
            summed_bytes,
        )

    @classmethod
    def concat(cls, parts: Sequence[FlowCells]) -> FlowCells:
        """The records of every part (same unit), tracks of one name merged."""
        if not parts:
            raise InputError("concat needs at least one set of flow cells")
        names: dict[str, int] = {}
        for part in parts:
            for name in part.tracks:
                names.setdefault(name, len(names))
        columns = [
            np.concatenate(
                [np.array([names[n] for n in p.tracks], np.int64)[p.track] for p in parts]
            )
        ]
        for column in ("unit", "proto", "sport", "dport", "valid", "packets", "bytes"):
            columns.append(np.concatenate([getattr(p, column) for p in parts]))
        return cls.from_records(tuple(names), parts[0].unit_seconds, columns)

    def renamed(self, tracks: Iterable[str]) -> FlowCells:
        """The same records under new track keys, one per entry of `tracks` (keys that
        coincide become one track)."""
        names = tuple(tracks)
        if len(names) != len(self.tracks):
            raise InputError(f"renaming {len(self.tracks)} tracks needs as many names")
        return FlowCells.concat([replace(self, tracks=names)])

    def usage(self, keep: npt.NDArray[np.bool_] | None = None) -> PortUsage:
        """Port usage of the records `keep` selects (all by default): valid TCP/UDP only."""
        mask = self.valid & ((self.proto == TCP) | (self.proto == UDP))
        if keep is not None:
            mask &= keep
        return PortUsage.from_flows(
            self.track[mask],
            self.proto[mask],
            self.sport[mask],
            self.dport[mask],
            self.packets[mask],
            self.unit[mask],
        )

    def activity(self, catalogue: Catalogue) -> ActivityTable:
        """Activity per (track, unit, service) with the catalogue's services, attributed as the
        switch would attribute the records."""
        counts = {"packets": self.packets, "bytes": self.bytes}
        return ActivityTable.from_arrays(
            devices=self.tracks,
            services=catalogue.names,
            device=self.track,
            unit=self.unit,
            service=catalogue.tables.lookup_many(self.proto, self.sport, self.dport, self.valid),
            unit_seconds=self.unit_seconds,
            **counts,
        )
