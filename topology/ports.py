"""Which ports emulated traffic must use so the switch counts it as the intended service.

The switch looks a packet up by destination port first and by source port only on a miss
(`controller.engine.catalogue`). A service in the destination table is produced by sending *to*
one of its ports; a service only in the source table (a catch-all range of client ports, say) by
sending *from* one of its ports to a port no destination entry matches; a service a device serves
is produced by its replies, which go to a prober's port no destination entry matches.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from controller.base.errors import InputError
from controller.engine.catalogue import Catalogue
from topology import protocols

# Client ports for source-port services: several, used in turn, so a new TCP connection never
# reuses a 4-tuple still in TIME_WAIT from the previous unit.
SOURCE_PORT_CHOICES = 128
_QUIET_START = 40000


@dataclass(frozen=True)
class Realization:
    """How to produce a service: destination port, and source ports to rotate through (empty:
    any port the kernel picks)."""

    service: str
    proto: int | None
    dport: int
    sports: tuple[int, ...] = ()


def _service_id(catalogue: Catalogue, service: str) -> int | None:
    try:
        return catalogue.by_name(service).id
    except KeyError:
        return None


def _dst_covered(catalogue: Catalogue, proto: int) -> np.ndarray:
    covered = np.zeros(65536, dtype=bool)
    for entry in catalogue.dst_services():
        if entry.proto is None or entry.proto == proto:
            covered[entry.port_lo : entry.port_hi + 1] = True
    return covered


def quiet_ports(catalogue: Catalogue, count: int, start: int = _QUIET_START) -> tuple[int, ...]:
    """`count` ports ≥ `start` that no destination-table entry matches, for TCP nor UDP."""
    covered = _dst_covered(catalogue, 6) | _dst_covered(catalogue, 17)
    found = np.flatnonzero(~covered[start:])[:count] + start
    if found.size < count:
        raise InputError(f"catalogue {catalogue.source}: fewer than {count} quiet ports")
    return tuple(int(p) for p in found)


def realize(service: str, catalogue: Catalogue) -> Realization:
    """The ports that make the switch count a packet of `service` as `service`.

    Services the catalogue does not name are sent to their first port (the switch will count
    them as whatever the catalogue maps that port to).
    """
    key = protocols.parse_service(service)
    if key.transport is None:
        return Realization(service, key.proto, 0)
    assert key.proto is not None
    wanted = _service_id(catalogue, service)
    if wanted is None:
        return Realization(service, key.proto, key.port_lo)
    ports = np.arange(key.port_lo, key.port_hi + 1)
    proto = np.full_like(ports, key.proto)
    # Where the destination table matches, the source port does not matter.
    covered = _dst_covered(catalogue, key.proto)[ports]
    by_dst = np.flatnonzero(covered & (catalogue.tables.lookup_many(proto, ports, ports) == wanted))
    if by_dst.size:
        return Realization(service, key.proto, int(ports[by_dst[0]]))
    dport = quiet_ports(catalogue, 1)[0]
    by_src = catalogue.tables.lookup_many(proto, ports, np.full_like(ports, dport)) == wanted
    # Source ports below 1024 are left to servers: clients never use them.
    usable = ports[by_src & (ports >= 1024)]
    if usable.size == 0:
        raise InputError(
            f"catalogue {catalogue.source}: no port pair makes the switch count {service}"
        )
    step = max(1, usable.size // SOURCE_PORT_CHOICES)
    return Realization(
        service, key.proto, dport, tuple(int(p) for p in usable[::step][:SOURCE_PORT_CHOICES])
    )


def served_port(service: str, catalogue: Catalogue, prober_port: int) -> int:
    """The port a device serving `service` listens on, so its replies to `prober_port` (a quiet
    port) are counted as `service` by their source port."""
    key = protocols.parse_service(service)
    wanted = _service_id(catalogue, service)
    if key.transport is None or key.proto is None or wanted is None:
        return key.port_lo
    ports = np.arange(key.port_lo, key.port_hi + 1)
    proto = np.full_like(ports, key.proto)
    found = ports[
        catalogue.tables.lookup_many(proto, ports, np.full_like(ports, prober_port)) == wanted
    ]
    if found.size == 0:
        raise InputError(
            f"catalogue {catalogue.source}: replies from {service} are not counted as it"
        )
    return int(found[0])
