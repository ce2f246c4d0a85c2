"""What a MUD profile allows, in the switch's terms: services (protocol and port) with the
direction in which the device uses them.

A MUD file (RFC 8520) allows traffic by access-control entries (RFC 8519): protocol, ports,
endpoints (DNS names, addresses, classes such as `local-networks`) and the direction of the
policy (from-device, to-device). The switch counts a device's packets by protocol and port only,
so a profile here keeps exactly that: one `Rule` per allowed protocol and port range, with the
device's role in it — `client` when the port is the remote end's (the device connects to
tcp/443), `server` when it is the device's own (the device answers on udp/123), None when the
protocol has no ports or the entry names none. Everything else an entry says is dropped, and
counted by kind, so an import can say what it left out.

Roles are kept apart from service names on purpose. The switch and the offline readers name a
service by protocol and port alone (`tcp/443` whether the device connects to it or serves it:
the destination-port table first, then the source-port table), so identification compares
names, and a profile's roles serve the MUD export and direction-aware compliance checks.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from functools import cached_property
from typing import Literal

from controller.base.errors import InputError
from controller.engine.catalogue import Catalogue
from controller.engine.services import ICMP, ICMPV6, PORT_MAX, TCP, UDP, parse_service, service_name

Role = Literal["client", "server"]
ROLES: tuple[Role, ...] = ("client", "server")
OUTSIDE_MUD = frozenset({"other"})
"""Services no MUD entry governs: "other" is what the switch counts for non-IP frames (ARP,
EAPOL) and for packets it does not look up; MUD allows IP traffic only."""


def role_of(text: str) -> Role | None:
    """A role from its name ("client", "server"; "", "-" or "any" for none)."""
    value = text.strip().lower()
    if value in ("", "-", "any", "none"):
        return None
    if value == "client":
        return "client"
    if value == "server":
        return "server"
    raise InputError(f"{text!r} is not a direction: client, server or any")


@dataclass(frozen=True)
class Rule:
    """One protocol and port range a profile allows, and the device's role in it.

    `proto` None allows every IP protocol; protocols other than TCP and UDP have ports 0-0.
    """

    proto: int | None
    port_lo: int
    port_hi: int
    role: Role | None = None

    def __post_init__(self) -> None:
        if not 0 <= self.port_lo <= self.port_hi <= PORT_MAX:
            raise InputError(f"port range {self.port_lo}-{self.port_hi} outside 0..{PORT_MAX}")

    @property
    def service(self) -> str:
        """The service name the switch gives this protocol and port range."""
        if self.proto is None:
            return service_name(None, 0, PORT_MAX)
        return service_name(self.proto, self.port_lo, self.port_hi)

    @property
    def label(self) -> str:
        """The service with its direction: `tcp/443 client`, `udp/123 server`, `icmp`."""
        return self.service if self.role is None else f"{self.service} {self.role}"

    @property
    def fingerprinted(self) -> bool:
        """Whether the rule names one service a fingerprint can hold: one protocol and, for
        TCP and UDP, one port (ranges and any-protocol rules only decide compliance)."""
        if self.proto is None:
            return False
        return self.proto not in (TCP, UDP) or self.port_lo == self.port_hi

    def allows(self, proto: int | None, port_lo: int, port_hi: int, role: Role | None) -> bool:
        """Whether traffic of `proto` on every port of `port_lo..port_hi`, used in `role` (None:
        not known), is allowed by this rule."""
        if self.proto is not None and self.proto != proto:
            return False
        if self.proto is None and proto is None:
            return role is None or self.role in (None, role)
        if not self.port_lo <= port_lo <= port_hi <= self.port_hi:
            return False
        return role is None or self.role is None or self.role == role


def rule_order(rule: Rule) -> tuple[int, int, int, str]:
    """Rules by protocol (any first), ports, then role (none first)."""
    return (-1 if rule.proto is None else rule.proto, rule.port_lo, rule.port_hi, rule.role or "")


def rule_for(service: str, role: Role | None, catalogue: Catalogue | None = None) -> Rule | None:
    """The rule allowing exactly `service` in `role`, or None for a name that is not one
    protocol and port range (`other`, `ip/other`, or a catalogue name that is not in
    `catalogue`)."""
    found = _ports_of(service, catalogue)
    if found is None:
        return None
    proto, lo, hi = found
    if proto is None:
        return None
    return Rule(proto, lo, hi, role if proto in (TCP, UDP) else None)


def _ports_of(service: str, catalogue: Catalogue | None) -> tuple[int | None, int, int] | None:
    if catalogue is not None:
        try:
            s = catalogue.by_name(service)
        except KeyError:
            pass
        else:
            return s.proto, s.port_lo, s.port_hi
    try:
        return parse_service(service)
    except ValueError:
        return None


@dataclass(frozen=True)
class MudProfile:
    """The services one MUD file allows, as the switch can count them.

    `type` is the device type the profile describes (the file's `model-name`, else its
    `systeminfo`, else its file name, unless the import named it); `dropped` counts, by kind,
    what the file says that a protocol-and-port rule cannot (DNS names, addresses, MUD classes,
    ACEs for non-IP frames); `notes` say how the file departs from RFC 8520 when it does.
    """

    type: str
    source: str
    rules: tuple[Rule, ...]
    mud_url: str = ""
    systeminfo: str = ""
    dropped: tuple[tuple[str, int], ...] = ()
    notes: tuple[str, ...] = field(default=(), compare=False)

    @property
    def services(self) -> tuple[str, ...]:
        """The services a fingerprint of this profile holds (sorted, each once)."""
        return tuple(sorted({r.service for r in self.rules if r.fingerprinted}))

    @property
    def compliance_only(self) -> tuple[Rule, ...]:
        """Rules that allow more than one service (port ranges, any port, any protocol)."""
        return tuple(r for r in self.rules if not r.fingerprinted)

    @property
    def dropped_counts(self) -> dict[str, int]:
        """`dropped` as a dict."""
        return dict(self.dropped)

    def roles(self) -> dict[str, frozenset[Role]]:
        """Per fingerprinted service, the roles the profile allows it in."""
        out: dict[str, set[Role]] = {}
        for r in self.rules:
            if r.fingerprinted and r.role is not None:
                out.setdefault(r.service, set()).add(r.role)
        return {s: frozenset(v) for s, v in sorted(out.items())}

    def summary(self) -> dict[str, object]:
        """A JSON-ready account of the import of this file."""
        return {
            "file": self.source,
            "type": self.type,
            "mud_url": self.mud_url,
            "services": list(self.services),
            "rules": [r.label for r in self.rules],
            "compliance_only": [r.label for r in self.compliance_only],
            "dropped": self.dropped_counts,
            "notes": list(self.notes),
        }


@dataclass(frozen=True)
class MudProfiles:
    """The profiles of known types: a type's rules are those of all its profiles together
    (several MUD files of one model, captured in several places, allow what any of them does)."""

    profiles: tuple[MudProfile, ...]

    @property
    def types(self) -> tuple[str, ...]:
        """The types with a profile, sorted."""
        return tuple(sorted({p.type for p in self.profiles}))

    def rules_of(self, type_name: str) -> tuple[Rule, ...]:
        """Every rule any profile of `type_name` has (none for a type without a profile)."""
        return self._rules.get(type_name, ())

    @cached_property
    def _rules(self) -> dict[str, tuple[Rule, ...]]:
        merged: dict[str, set[Rule]] = {}
        for p in self.profiles:
            merged.setdefault(p.type, set()).update(p.rules)
        return {t: tuple(sorted(rules, key=rule_order)) for t, rules in merged.items()}

    def where(self, keep: Iterable[bool]) -> MudProfiles:
        """The profiles for which `keep` is true (one flag per profile, in order)."""
        return MudProfiles(tuple(p for p, k in zip(self.profiles, keep, strict=True) if k))

    def allows(
        self,
        type_name: str,
        service: str,
        role: Role | None = None,
        catalogue: Catalogue | None = None,
    ) -> bool:
        """Whether the profiles of `type_name` allow `service` used in `role` (None: either).

        Services outside MUD (`other`) are always allowed; a name that is not one protocol and
        port range is allowed only by an any-protocol rule."""
        return _allowed(self.rules_of(type_name), service, role, catalogue)


def _allowed(
    rules: Sequence[Rule], service: str, role: Role | None, catalogue: Catalogue | None
) -> bool:
    if service in OUTSIDE_MUD:
        return True
    found = _ports_of(service, catalogue)
    if found is None:
        return any(r.proto is None for r in rules)
    proto, lo, hi = found
    if proto not in (TCP, UDP):
        role = None
    return any(r.allows(proto, lo, hi, role) for r in rules)


def protocol_family(proto: int) -> tuple[bool, bool]:
    """(IPv4, IPv6): which ACL families a protocol belongs in. ICMP is IPv4's, ICMPv6 and
    hop-by-hop options (protocol 0) IPv6's; everything else runs over both."""
    if proto == ICMP:
        return True, False
    if proto in (ICMPV6, 0):
        return False, True
    return True, True
