"""Services: a transport protocol and a port range, with the priority of their table entries.

A service's canonical name (`tcp/443`, `udp/49152-65535`, `icmp`, `ip/<proto>`) is how activity,
fingerprints and reports refer to it. Priorities: P4Runtime gives precedence to the larger value.
The derived priority makes narrower port ranges win, and at equal width a specific protocol beats
a wildcard; a catalogue file may override it.
"""

from __future__ import annotations

from dataclasses import dataclass

from controller.base.checks import is_decimal

# MAX_SERVICES of the default build of p4src/fingerprint.p4. The engine has no P4Info, so this is
# only the default limit: a controller passes its switch's MAX_SERVICES (from the P4Info's
# @svcfp_contract) and checks the catalogue against it.
DEFAULT_MAX_SERVICES = 256
MAX_SERVICE_ID = DEFAULT_MAX_SERVICES - 1
TCP = 6
UDP = 17
ICMP = 1
ICMPV6 = 58
PORT_MAX = 65535
SYSTEM_PORT_MAX = 1023
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
    if label == "ip" and is_decimal(ports) and int(ports) <= 255:
        return int(ports), 0, 0
    if label in ("tcp", "udp") and ports:
        lo_text, _, hi_text = ports.partition("-")
        hi_text = hi_text or lo_text
        if is_decimal(lo_text) and is_decimal(hi_text) and int(lo_text) <= int(hi_text) <= PORT_MAX:
            return (TCP if label == "tcp" else UDP), int(lo_text), int(hi_text)
    raise ValueError(f"not a service name: {name!r}")
