"""The service catalogue: which (protocol, port range) becomes which service id.

A `Catalogue` is what the controller installs in the switch's two service tables and what the
offline ingesters use to attribute flows and packets, so `lookup`/`lookup_many` reproduce the
switch exactly:

1. TCP (6) and UDP (17) packets whose L4 header is missing or truncated are not looked up:
   service 0 ("other"). Non-TCP/UDP IP protocols are looked up with ports 0. Non-IP frames are not
   looked up either (pass a negative protocol).
2. `service_by_dst`: the matching entry with the highest priority on (protocol, destination port).
3. On a miss, `service_by_src`: the same on (protocol, source port).
4. Both miss: service 0.

Every service is installed in `service_by_src`; services with `in_dst_table` (the default) also in
`service_by_dst`. Catch-all ranges that cover client (ephemeral) ports live only in the source
table: in the destination table they would catch every response a device sends from a
well-known port to a client's ephemeral port before the source lookup could attribute it to the
service the device offers (a Hue bridge answering on tcp/80 would count as "tcp/49152-65535").

Priorities: P4Runtime gives precedence to the larger value. The derived priority makes narrower
port ranges win, and at equal width a specific protocol beats a wildcard; a file may override it.

Granularities (`--granularity`):
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

import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from functools import cached_property
from importlib import resources
from pathlib import Path
from typing import Any, Literal

import numpy as np
import numpy.typing as npt

from controller.base.errors import InputError
from controller.base.fileio import listed, parse_json, read_text, write_text_atomically

MAX_SERVICES = 256
MAX_SERVICE_ID = MAX_SERVICES - 1
TCP = 6
UDP = 17
ICMP = 1
ICMPV6 = 58
PORT_MAX = 65535
EPHEMERAL_LO = 49152

PROTOCOL_NUMBERS = {
    "hopopt": 0,
    "icmp": ICMP,
    "igmp": 2,
    "tcp": TCP,
    "udp": UDP,
    "gre": 47,
    "esp": 50,
    "ah": 51,
    "icmpv6": ICMPV6,
    "sctp": 132,
}
PROTOCOL_NAMES = {number: name for name, number in PROTOCOL_NUMBERS.items()}

Granularity = Literal["catalogue", "ephemeral", "learned"]
GRANULARITIES: tuple[Granularity, ...] = ("catalogue", "ephemeral", "learned")

DEFAULT_CATALOGUE = "catalogue.json"


@dataclass(frozen=True)
class Service:
    """One service: a protocol (None = any) and a port range, with its table priority."""

    id: int
    name: str
    proto: int | None
    port_lo: int
    port_hi: int
    priority: int
    in_dst_table: bool = True

    def matches(self, proto: int, port: int) -> bool:
        """Whether a table entry for this service matches (proto, port)."""
        return (self.proto is None or self.proto == proto) and self.port_lo <= port <= self.port_hi


@dataclass(frozen=True)
class ServiceSpec:
    """A service before ids are assigned: what a catalogue file entry says."""

    proto: int | None
    port_lo: int
    port_hi: int
    name: str | None = None
    priority: int | None = None
    in_dst_table: bool = True


def derived_priority(proto: int | None, port_lo: int, port_hi: int) -> int:
    """Priority that makes narrower port ranges win, then a specific protocol over a wildcard."""
    width = port_hi - port_lo + 1
    return 2 * (PORT_MAX + 1 - width) + (1 if proto is not None else 0) + 1


def service_name(proto: int | None, port_lo: int, port_hi: int) -> str:
    """Canonical name: `tcp/443`, `udp/49152-65535`, `icmp`, `icmpv6`, `ip/<proto>`, `ip/any`."""
    if proto in (TCP, UDP):
        label = "tcp" if proto == TCP else "udp"
        return f"{label}/{port_lo}" if port_lo == port_hi else f"{label}/{port_lo}-{port_hi}"
    if proto == ICMP:
        return "icmp"
    if proto == ICMPV6:
        return "icmpv6"
    if proto is None:
        return "ip/any" if (port_lo, port_hi) == (0, PORT_MAX) else f"ip/any/{port_lo}-{port_hi}"
    return f"ip/{proto}"


def parse_service(name: str) -> tuple[int, int, int]:
    """(protocol, port_lo, port_hi) of a service name: `tcp/443`, `udp/49152-65535`, `icmp`,
    `icmpv6`, `ip/<proto>` (the inverse of `service_name`); ValueError for anything else."""
    text = name.strip().lower()
    if text == "icmp":
        return ICMP, 0, 0
    if text == "icmpv6":
        return ICMPV6, 0, 0
    label, _, ports = text.partition("/")
    if label == "ip" and ports.isdigit() and int(ports) <= 255:
        return int(ports), 0, 0
    if label in ("tcp", "udp") and ports:
        lo_text, _, hi_text = ports.partition("-")
        hi_text = hi_text or lo_text
        if lo_text.isdigit() and hi_text.isdigit() and int(lo_text) <= int(hi_text) <= PORT_MAX:
            return (TCP if label == "tcp" else UDP), int(lo_text), int(hi_text)
    raise ValueError(f"not a service name: {name!r}")


@dataclass(frozen=True)
class Catalogue:
    """An ordered list of services with ids 1..n (0 is "other")."""

    services: tuple[Service, ...]
    source: str = field(default="<memory>", compare=False)

    @classmethod
    def from_specs(cls, specs: Sequence[ServiceSpec], source: str = "<memory>") -> Catalogue:
        """Assign ids 1.. in order, derive missing names and priorities, validate."""
        if len(specs) > MAX_SERVICE_ID:
            raise InputError(
                f"{source}: {len(specs)} services, but the switch holds at most "
                f"{MAX_SERVICE_ID} (MAX_SERVICES - 1; id 0 is 'other')"
            )
        services = []
        for index, spec in enumerate(specs):
            where = f"{source}: service {index + 1}"
            _check_spec(spec, where)
            name = spec.name if spec.name else service_name(spec.proto, spec.port_lo, spec.port_hi)
            priority = (
                spec.priority
                if spec.priority is not None
                else derived_priority(spec.proto, spec.port_lo, spec.port_hi)
            )
            services.append(
                Service(
                    id=index + 1,
                    name=name,
                    proto=spec.proto,
                    port_lo=spec.port_lo,
                    port_hi=spec.port_hi,
                    priority=priority,
                    in_dst_table=spec.in_dst_table,
                )
            )
        catalogue = cls(tuple(services), source)
        catalogue._validate()
        return catalogue

    # --- file format --------------------------------------------------------------------------

    @classmethod
    def load(cls, path: Path) -> Catalogue:
        """Read a JSON catalogue; raises `InputError` naming the file and the bad entry."""
        return cls.from_json(read_text(path, "catalogue"), str(path))

    @classmethod
    def from_json(cls, text: str, source: str = "<json>") -> Catalogue:
        """Parse the JSON catalogue format (see `to_json`)."""
        entries = listed(parse_json(text, source), "services", source)
        specs = [
            _spec_from_json(entry, f"{source}: service {i + 1}") for i, entry in enumerate(entries)
        ]
        return cls.from_specs(specs, source)

    def to_json(self) -> str:
        """The catalogue as JSON: `{"services": [{"name", "proto", "ports", "priority",
        "tables"}]}`; priorities and tables are written only where they differ from the defaults."""
        entries: list[dict[str, Any]] = []
        for s in self.services:
            entry: dict[str, Any] = {"name": s.name, "proto": _proto_text(s.proto)}
            if not (
                s.proto not in (TCP, UDP) and (s.port_lo, s.port_hi) == _default_ports(s.proto)
            ):
                entry["ports"] = (
                    str(s.port_lo) if s.port_lo == s.port_hi else f"{s.port_lo}-{s.port_hi}"
                )
            if s.priority != derived_priority(s.proto, s.port_lo, s.port_hi):
                entry["priority"] = s.priority
            if not s.in_dst_table:
                entry["tables"] = "src"
            entries.append(entry)
        lines = ",\n".join(f"  {json.dumps(entry)}" for entry in entries)
        return f'{{\n "services": [\n{lines}\n ]\n}}\n'

    def save(self, path: Path) -> None:
        """Write `to_json` atomically (temporary file, then rename)."""
        write_text_atomically(path, self.to_json())

    @classmethod
    def load_or_default(cls, path: Path | None) -> Catalogue:
        """The catalogue in `path`, or the built-in one when no file is given."""
        return cls.load(path) if path is not None else cls.default()

    @classmethod
    def default(cls) -> Catalogue:
        """The built-in catalogue of services common IoT devices use (controller/data)."""
        resource = resources.files("controller.engine").joinpath("data", DEFAULT_CATALOGUE)
        return cls.from_json(resource.read_text(encoding="utf-8"), f"built-in {DEFAULT_CATALOGUE}")

    # --- views --------------------------------------------------------------------------------

    @property
    def names(self) -> list[str]:
        """Service names indexed by id; index 0 is "other"."""
        return ["other", *(s.name for s in self.services)]

    @property
    def max_id(self) -> int:
        """The largest service id in use."""
        return len(self.services)

    def dst_services(self) -> list[Service]:
        """Services to install in `service_by_dst`."""
        return [s for s in self.services if s.in_dst_table]

    def src_services(self) -> list[Service]:
        """Services to install in `service_by_src` (all of them)."""
        return list(self.services)

    def by_name(self, name: str) -> Service:
        """The service called `name`; KeyError when absent."""
        for s in self.services:
            if s.name == name:
                return s
        raise KeyError(name)

    # --- lookup -------------------------------------------------------------------------------

    def lookup(self, proto: int, sport: int, dport: int, l4_valid: bool = True) -> int:
        """Service id the switch assigns to one packet (see the module docstring)."""
        if proto < 0 or proto > 255:
            return 0
        if proto in (TCP, UDP):
            if not l4_valid:
                return 0
        else:
            sport = dport = 0
        row = int(self._rows[proto])
        found = int(self._dst_map[row, dport])
        return found if found else int(self._src_map[row, sport])

    def lookup_many(
        self,
        proto: npt.ArrayLike,
        sport: npt.ArrayLike,
        dport: npt.ArrayLike,
        l4_valid: npt.ArrayLike | None = None,
    ) -> npt.NDArray[np.int32]:
        """`lookup` over arrays (vectorised); returns int32 service ids."""
        p = np.asarray(proto, dtype=np.int64)
        s = np.asarray(sport, dtype=np.int64)
        d = np.asarray(dport, dtype=np.int64)
        is_ip = (p >= 0) & (p <= 255)
        p_safe = np.where(is_ip, p, 0)
        is_l4 = (p_safe == TCP) | (p_safe == UDP)
        s = np.where(is_l4, s, 0)
        d = np.where(is_l4, d, 0)
        if np.any((s < 0) | (s > PORT_MAX) | (d < 0) | (d > PORT_MAX)):
            raise InputError("port numbers must lie in 0..65535")
        rows = self._rows[p_safe]
        found = self._dst_map[rows, d]
        result = np.where(found != 0, found, self._src_map[rows, s]).astype(np.int32)
        ok = is_ip
        if l4_valid is not None:
            ok = ok & (np.asarray(l4_valid, dtype=bool) | ~is_l4)
        result[~ok] = 0
        return result

    @cached_property
    def _rows(self) -> npt.NDArray[np.intp]:
        # Row 0 is for protocols no service names explicitly; each named protocol has its own.
        rows = np.zeros(256, dtype=np.intp)
        for i, proto in enumerate(self._named_protocols, start=1):
            rows[proto] = i
        return rows

    @cached_property
    def _named_protocols(self) -> list[int]:
        return sorted({s.proto for s in self.services if s.proto is not None})

    @cached_property
    def _dst_map(self) -> npt.NDArray[np.uint8]:
        return self._paint(self.dst_services())

    @cached_property
    def _src_map(self) -> npt.NDArray[np.uint8]:
        return self._paint(self.src_services())

    def _paint(self, services: Iterable[Service]) -> npt.NDArray[np.uint8]:
        """Dense (protocol row × port) → service id map: painting in ascending priority leaves
        the highest-priority match in every cell, as the switch's table lookup picks it."""
        protocols = [-1, *self._named_protocols]
        table = np.zeros((len(protocols), PORT_MAX + 1), dtype=np.uint8)
        for s in sorted(services, key=lambda s: s.priority):
            for row, proto in enumerate(protocols):
                if s.proto is None or s.proto == proto:
                    table[row, s.port_lo : s.port_hi + 1] = s.id
        return table

    def _validate(self) -> None:
        seen: dict[str, int] = {}
        for s in self.services:
            if s.name == "other":
                raise InputError(f"{self.source}: service {s.id}: the name 'other' is reserved")
            if s.name in seen:
                raise InputError(
                    f"{self.source}: service {s.id}: name {s.name!r} already used by service "
                    f"{seen[s.name]}"
                )
            seen[s.name] = s.id
        for table, services in (("dst", self.dst_services()), ("src", self.src_services())):
            for i, a in enumerate(services):
                for b in services[i + 1 :]:
                    if a.priority == b.priority and _overlap(a, b):
                        raise InputError(
                            f"{self.source}: services {a.id} ({a.name}) and {b.id} ({b.name}) "
                            f"overlap in the {table} table with the same priority {a.priority}"
                        )


@dataclass(frozen=True)
class PortUsage:
    """Observed use of TCP/UDP service ports: per (protocol, port), the distinct devices, the
    distinct (device, unit) cells in which they used it, and packets.

    A flow's service port is the one of its two ports that meets more distinct counterpart ports
    over all the observed flows — a service port serves many ephemeral ports, an ephemeral port
    meets one service — and the lower port on a tie. (Taking simply the lower port fails for
    clients with low ephemeral ports: a Windows XP client's 1035 → 10000 is a use of 10000.)
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
    """Per flow, its service port (see `PortUsage`): the port with more distinct counterparts."""
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


def catch_alls() -> list[ServiceSpec]:
    """Low-priority services for everything a learned catalogue does not list by port."""
    specs: list[ServiceSpec] = []
    for proto in (TCP, UDP):
        specs.append(ServiceSpec(proto, 1, 1023))
        specs.append(ServiceSpec(proto, 1024, EPHEMERAL_LO - 1, in_dst_table=False))
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


def _overlap(a: Service, b: Service) -> bool:
    protos_meet = a.proto is None or b.proto is None or a.proto == b.proto
    return protos_meet and a.port_lo <= b.port_hi and b.port_lo <= a.port_hi


def _default_ports(proto: int | None) -> tuple[int, int]:
    if proto is None or proto in (TCP, UDP):
        return 0, PORT_MAX
    return 0, 0


def _proto_text(proto: int | None) -> str | int:
    if proto is None:
        return "any"
    return PROTOCOL_NAMES.get(proto, proto)


def _parse_proto(value: object, where: str) -> int | None:
    if isinstance(value, bool):
        raise InputError(f"{where}: proto must be a name, a number or 'any', got {value!r}")
    if isinstance(value, int):
        number = value
    elif isinstance(value, str):
        text = value.strip().lower()
        if text in ("any", "*", "ip"):
            return None
        if text in PROTOCOL_NUMBERS:
            return PROTOCOL_NUMBERS[text]
        if not text.isdigit():
            raise InputError(f"{where}: unknown protocol {value!r}")
        number = int(text)
    else:
        raise InputError(f"{where}: proto must be a name, a number or 'any', got {value!r}")
    if not 0 <= number <= 255:
        raise InputError(f"{where}: protocol number {number} outside 0..255")
    return number


def _parse_ports(value: object, where: str) -> tuple[int, int]:
    if isinstance(value, bool):
        raise InputError(f"{where}: ports must be 'N' or 'LO-HI', got {value!r}")
    if isinstance(value, int):
        lo = hi = value
    elif isinstance(value, str):
        parts = value.strip().split("-")
        if len(parts) not in (1, 2) or not all(p.strip().isdigit() for p in parts):
            raise InputError(f"{where}: ports must be 'N' or 'LO-HI', got {value!r}")
        lo, hi = int(parts[0]), int(parts[-1])
    else:
        raise InputError(f"{where}: ports must be 'N' or 'LO-HI', got {value!r}")
    return lo, hi


def _spec_from_json(entry: object, where: str) -> ServiceSpec:
    if not isinstance(entry, dict):
        raise InputError(f"{where}: expected an object, got {entry!r}")
    unknown = set(entry) - {"name", "proto", "ports", "priority", "tables"}
    if unknown:
        raise InputError(f"{where}: unknown field(s) {', '.join(sorted(unknown))}")
    if "proto" not in entry:
        raise InputError(f"{where}: missing field 'proto'")
    proto = _parse_proto(entry["proto"], where)
    lo, hi = _parse_ports(entry["ports"], where) if "ports" in entry else _default_ports(proto)
    name = entry.get("name")
    if name is not None and (not isinstance(name, str) or not name.strip()):
        raise InputError(f"{where}: name must be a non-empty string")
    priority = entry.get("priority")
    if priority is not None and (
        isinstance(priority, bool) or not isinstance(priority, int) or not 1 <= priority < 2**31
    ):
        raise InputError(f"{where}: priority must be an integer in 1..2147483647")
    tables = entry.get("tables", "both")
    if tables not in ("both", "src"):
        raise InputError(f"{where}: tables must be 'both' or 'src', got {tables!r}")
    return ServiceSpec(
        proto=proto,
        port_lo=lo,
        port_hi=hi,
        name=name.strip() if isinstance(name, str) else None,
        priority=priority,
        in_dst_table=tables == "both",
    )


def _check_spec(spec: ServiceSpec, where: str) -> None:
    if not 0 <= spec.port_lo <= spec.port_hi <= PORT_MAX:
        raise InputError(
            f"{where}: port range {spec.port_lo}-{spec.port_hi} is not within 0..{PORT_MAX}"
        )
    if spec.proto is not None and spec.proto not in (TCP, UDP) and spec.port_lo != 0:
        raise InputError(
            f"{where}: protocol {spec.proto} is looked up with port 0, so ports "
            f"{spec.port_lo}-{spec.port_hi} can never match"
        )
    if spec.priority is not None and not 1 <= spec.priority < 2**31:
        raise InputError(f"{where}: priority must lie in 1..2147483647")
