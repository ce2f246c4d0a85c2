"""The service catalogue: which (protocol, port range) becomes which service id, and its file
format.

A `Catalogue` is what the controller installs in the switch's two service tables and what the
offline ingesters use to attribute flows and packets; its `tables` reproduce the switch's
lookup exactly (`controller.engine.lookup`). Every service is installed in `service_by_src`;
services with `in_dst_table` (the default) also in `service_by_dst`. Catch-all ranges that cover
client (ephemeral) ports live only in the source table: in the destination table they would
catch every response a device sends from a well-known port to a client's ephemeral port before
the source lookup could attribute it to the service the device offers (a Hue bridge answering on
tcp/80 would count as "tcp/49152-65535"). Catalogues learned from observed traffic are built in
`controller.engine.learned`.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import cached_property
from importlib import resources
from pathlib import Path
from typing import Any

from controller.base.checks import is_decimal
from controller.base.errors import InputError
from controller.base.fileio import listed, parse_json, read_text, write_text_atomically
from controller.engine.lookup import ServiceLookup
from controller.engine.services import (
    DEFAULT_MAX_SERVICES,
    PORT_MAX,
    PROTOCOL_NAMES,
    PROTOCOL_NUMBERS,
    TCP,
    UDP,
    Service,
    ServiceSpec,
    derived_priority,
    service_name,
)

DEFAULT_CATALOGUE = "catalogue.json"


@dataclass(frozen=True)
class Catalogue:
    """An ordered list of services with ids 1..n (0 is "other")."""

    services: tuple[Service, ...]
    source: str = field(default="<memory>", compare=False)

    @classmethod
    def from_specs(
        cls,
        specs: Sequence[ServiceSpec],
        source: str = "<memory>",
        max_services: int = DEFAULT_MAX_SERVICES,
    ) -> Catalogue:
        """Assign ids 1.. in order, derive missing names and priorities, validate; a switch
        built with `max_services` (MAX_SERVICES) holds at most max_services - 1 of them."""
        if len(specs) > max_services - 1:
            raise InputError(
                f"{source}: {len(specs)} services, but the switch holds at most "
                f"{max_services - 1} (MAX_SERVICES - 1; id 0 is 'other')"
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
    def load(cls, path: Path, max_services: int = DEFAULT_MAX_SERVICES) -> Catalogue:
        """Read a JSON catalogue; raises `InputError` naming the file and the bad entry."""
        return cls.from_json(read_text(path, "catalogue"), str(path), max_services)

    @classmethod
    def from_json(
        cls, text: str, source: str = "<json>", max_services: int = DEFAULT_MAX_SERVICES
    ) -> Catalogue:
        """Parse the JSON catalogue format (see `to_json`)."""
        entries = listed(parse_json(text, source), "services", source)
        specs = [
            _spec_from_json(entry, f"{source}: service {i + 1}") for i, entry in enumerate(entries)
        ]
        return cls.from_specs(specs, source, max_services)

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
    def load_or_default(
        cls, path: Path | None, max_services: int = DEFAULT_MAX_SERVICES
    ) -> Catalogue:
        """The catalogue in `path`, or the built-in one when no file is given."""
        return cls.load(path, max_services) if path is not None else cls.default()

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

    @cached_property
    def tables(self) -> ServiceLookup:
        """The switch's two service tables for this catalogue, as dense lookup maps: the lookup
        of every packet or flow (`tables.lookup`, `tables.lookup_many`)."""
        return ServiceLookup(self.dst_services(), self.src_services())

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
        if not is_decimal(text):
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
        if len(parts) not in (1, 2) or not all(is_decimal(p.strip()) for p in parts):
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
