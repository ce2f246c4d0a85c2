"""A learned fingerprint as a MUD file (RFC 8520, with the ACLs of RFC 8519).

What was learned is which services a device (or every device of a type) uses and how often: a
service's *support* is its mean weight over the fingerprints exported — for a Service List the
share of windows that used it, for prevalence fingerprints the mean share of units. Services
below the user's `min_support` are left out as rare; the rest become one rule each, in the
role the device uses it (client unless known otherwise: a learned fingerprint carries no
direction, so roles come from `served` or from an existing profile of the type).

Each rule is written as a pair of ACEs, one in the from-device ACL and one in the to-device ACL
(the device's packets and the answers), in the IPv4 ACLs and, for protocols that run over both,
the IPv6 ones too (ICMP is IPv4's; ICMPv6 and hop-by-hop options are IPv6's). A client ACE
names the remote's port (`destination-port` from the device, `source-port` to it), a server
ACE the device's own, and TCP ACEs say who initiates (`ietf-mud:direction-initiated`). No ACE
names an endpoint: the switch learns protocols and ports, not peers. Services that are not one
protocol and port range (`other`, `ip/other`) cannot be written and are left out, by name.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import numpy as np

from controller.base.errors import InputError
from controller.engine.catalogue import Catalogue
from controller.engine.fingerprints import FingerprintSet
from controller.engine.identify import References
from controller.engine.services import TCP, UDP
from controller.mud.mudfile import ACLS, MUD
from controller.mud.profile import OUTSIDE_MUD, Role, Rule, protocol_family, rule_for, rule_order

DEFAULT_CACHE_VALIDITY = 48
"""Hours a MUD manager may keep the file (RFC 8520's example value)."""


@dataclass(frozen=True)
class ExportSettings:
    """How a fingerprint becomes a MUD file.

    `min_support`: services with a lower support are left out (0 keeps every service used).
    `served`: services the device offers (server role); `roles`: roles known per service (e.g.
    from the type's MUD profile), which `served` extends. `mud_url` defaults to a placeholder
    under example.com named after the type.
    """

    min_support: float = 0.0
    served: frozenset[str] = frozenset()
    roles: Mapping[str, frozenset[Role]] = field(default_factory=dict)
    mud_url: str | None = None
    systeminfo: str | None = None
    mfg_name: str | None = None
    cache_validity: int = DEFAULT_CACHE_VALIDITY
    last_update: datetime | None = None

    def __post_init__(self) -> None:
        if not 0.0 <= self.min_support <= 1.0:
            raise InputError(f"minimum support {self.min_support} must lie in [0, 1]")
        if not 1 <= self.cache_validity <= 168:
            raise InputError(f"cache validity {self.cache_validity} h must lie in 1..168")


@dataclass(frozen=True)
class MudExport:
    """An exported MUD document, the rules it holds, and what was left out and why."""

    type: str
    document: dict[str, Any]
    rules: tuple[Rule, ...]
    support: tuple[tuple[str, float], ...]
    rare: tuple[str, ...]
    unwritable: tuple[str, ...]


def type_support(refs: References, type_name: str) -> dict[str, float]:
    """Each service's mean weight over the reference fingerprints of `type_name`."""
    rows = [i for i, label in enumerate(refs.labels) if label == type_name]
    if not rows:
        known = ", ".join(refs.types) or "none"
        raise InputError(f"references hold no fingerprint of type {type_name!r} (types: {known})")
    mean = refs.weights[rows].mean(axis=0)
    return {s: float(mean[j]) for j, s in enumerate(refs.services) if mean[j] > 0}


def device_support(fingerprints: FingerprintSet, device: str) -> dict[str, float]:
    """Each service's mean weight over the exported fingerprints of `device`."""
    if device not in fingerprints.devices:
        raise InputError(f"no fingerprint of device {device}: it has no activity in the input")
    code = fingerprints.devices.index(device)
    rows = np.flatnonzero(fingerprints.device == code)
    if not rows.size:
        raise InputError(f"no fingerprint of device {device}: no window was exported")
    mean = fingerprints.weights[rows].mean(axis=0)
    return {s: float(mean[j]) for j, s in enumerate(fingerprints.services) if mean[j] > 0}


def export_mud(
    type_name: str,
    support: Mapping[str, float],
    settings: ExportSettings,
    catalogue: Catalogue | None = None,
) -> MudExport:
    """The MUD document allowing the services of `support` at or above the minimum support.
    `catalogue` resolves service names that are not `proto/port` names."""
    if not type_name.strip():
        raise InputError("a MUD file needs a type name (model-name)")
    rare = sorted(s for s, v in support.items() if v < settings.min_support)
    rules: list[Rule] = []
    unwritable: list[str] = []
    for service in sorted(s for s, v in support.items() if v >= settings.min_support):
        roles = set(settings.roles.get(service, frozenset()))
        if service in settings.served:
            roles.add("server")
        for role in sorted(roles) or ["client"]:
            rule = None if service in OUTSIDE_MUD else rule_for(service, role, catalogue)
            if rule is None:
                unwritable.append(service)
                break
            rules.append(rule)
    unique = sorted(set(rules), key=rule_order)
    if not unique:
        raise InputError(
            f"{type_name}: no service to write (support ≥ {settings.min_support:g}: "
            f"{len(support) - len(rare)}, of which not one protocol and port: "
            f"{', '.join(unwritable) or 'none'})"
        )
    document = mud_document(type_name, unique, settings)
    return MudExport(
        type=type_name,
        document=document,
        rules=tuple(unique),
        support=tuple(sorted(support.items())),
        rare=tuple(rare),
        unwritable=tuple(sorted(set(unwritable))),
    )


def slug(text: str) -> str:
    """A name for URLs and ACL names: letters, digits, '.', '_' and '-' only."""
    cleaned = re.sub(r"[^A-Za-z0-9._-]+", "-", text.strip()).strip("-")
    return cleaned or "device"


def mud_document(type_name: str, rules: Sequence[Rule], settings: ExportSettings) -> dict[str, Any]:
    """The RFC 8520 JSON document for `rules` (see the module docstring)."""
    name = slug(type_name)
    when = settings.last_update or datetime.now(UTC)
    if when.tzinfo is None:
        raise InputError("last-update needs a time zone (RFC 3339 date-and-time)")
    acls: list[dict[str, Any]] = []
    policies: dict[str, list[dict[str, str]]] = {"from": [], "to": []}
    for family, index in (("ipv4", 0), ("ipv6", 1)):
        mine = [r for r in rules if r.proto is not None and protocol_family(r.proto)[index]]
        if not mine:
            continue
        for side in ("from", "to"):
            acl_name = f"{side}-{family}-{name}"
            aces = [
                {
                    "name": f"{acl_name}-{i}",
                    "matches": _matches(rule, family, side),
                    "actions": {"forwarding": "accept"},
                }
                for i, rule in enumerate(mine)
            ]
            acls.append({"name": acl_name, "type": f"{family}-acl-type", "aces": {"ace": aces}})
            policies[side].append({"name": acl_name})
    mud: dict[str, Any] = {
        "mud-version": 1,
        "mud-url": settings.mud_url or f"https://example.com/mud/{name}.json",
        "last-update": when.isoformat(timespec="seconds"),
        "cache-validity": settings.cache_validity,
        "is-supported": True,
        "systeminfo": settings.systeminfo or f"{type_name}: services learned by svcfp",
        "model-name": type_name,
    }
    if settings.mfg_name:
        mud["mfg-name"] = settings.mfg_name
    mud["from-device-policy"] = {"access-lists": {"access-list": policies["from"]}}
    mud["to-device-policy"] = {"access-lists": {"access-list": policies["to"]}}
    return {MUD: mud, ACLS: {"acl": acls}}


def _matches(rule: Rule, family: str, side: str) -> dict[str, Any]:
    assert rule.proto is not None
    matches: dict[str, Any] = {family: {"protocol": rule.proto}}
    if rule.proto not in (TCP, UDP):
        return matches
    ports = (
        {"operator": "eq", "port": rule.port_lo}
        if rule.port_lo == rule.port_hi
        else {"lower-port": rule.port_lo, "upper-port": rule.port_hi}
    )
    # The remote's port is the destination from the device and the source to it; the device's
    # own port the other way round.
    remote = rule.role != "server"
    key = "destination-port" if (side == "from") == remote else "source-port"
    l4: dict[str, Any] = {key: ports}
    if rule.proto == TCP:
        l4["ietf-mud:direction-initiated"] = "from-device" if remote else "to-device"
    matches["tcp" if rule.proto == TCP else "udp"] = l4
    return matches
