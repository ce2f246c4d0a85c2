"""Compliance: every service a device of a known type uses that its type's MUD profile does not
allow, with when it was first and last seen and how much.

Two inputs, one answer. Activity (from the switch, flow records or captures) names services by
protocol and port, so a service is allowed when a rule of the type allows its whole port range
in either role. Uses with a role (MUDgee's flow rules) are checked in that role too: a device
serving udp/123 is not allowed by a profile that lets it only query udp/123. Services outside
MUD (`other`: non-IP frames) are never findings.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, replace
from datetime import UTC, datetime
from typing import Any

import numpy as np

from controller.engine.activity import ActivityTable
from controller.engine.catalogue import Catalogue
from controller.engine.identify import Decision
from controller.mud.flows import FlowUse
from controller.mud.profile import MudProfiles, Role


@dataclass(frozen=True)
class Finding:
    """A service a device used that the MUD profile of its type does not allow.

    Units are the activity's time units; `last_unit` is the last unit with such use (inclusive)
    and `units` the number of units with any."""

    device: str
    type: str
    service: str
    role: Role | None
    first_unit: int
    last_unit: int
    units: int
    packets: int
    bytes: int

    @property
    def key(self) -> tuple[str, str, str, str]:
        """What identifies a finding across checks: device, type, service and role."""
        return self.device, self.type, self.service, self.role or ""

    @property
    def label(self) -> str:
        """The service with its role when known: `udp/123 server`."""
        return self.service if self.role is None else f"{self.service} {self.role}"

    def merged(self, other: Finding) -> Finding:
        """This finding and a later check's of the same key as one (units counted apart)."""
        return replace(
            self,
            first_unit=min(self.first_unit, other.first_unit),
            last_unit=max(self.last_unit, other.last_unit),
            units=self.units + other.units,
            packets=self.packets + other.packets,
            bytes=self.bytes + other.bytes,
        )

    def to_json(self, unit_seconds: float | None = None) -> dict[str, Any]:
        """A JSON-ready dict; with `unit_seconds`, first and last seen also in epoch seconds
        (start of the first unit, end of the last)."""
        out: dict[str, Any] = asdict(self)
        if unit_seconds is not None:
            out["first_seen"] = self.first_unit * unit_seconds
            out["last_seen"] = (self.last_unit + 1) * unit_seconds
        return out


def merge_findings(findings: Iterable[Finding]) -> list[Finding]:
    """Findings with the same key merged (see `Finding.merged`), sorted by key."""
    merged: dict[tuple[str, str, str, str], Finding] = {}
    for f in findings:
        merged[f.key] = merged[f.key].merged(f) if f.key in merged else f
    return [merged[k] for k in sorted(merged)]


def check_activity(
    activity: ActivityTable,
    types: Mapping[str, str],
    profiles: MudProfiles,
    catalogue: Catalogue | None = None,
    threshold: int = 1,
) -> list[Finding]:
    """The findings of the devices of `activity` whose type (`types`: device key → type) has a
    profile: per (device, service) not allowed, its first and last unit with at least
    `threshold` packets, those units' count and their packets and bytes. `catalogue` resolves
    service names that are not `proto/port` names."""
    known = set(profiles.types)
    checked = [i for i, d in enumerate(activity.devices) if types.get(d) in known]
    if not checked or not len(activity):
        return []
    allowed = np.ones((len(activity.devices), len(activity.services)), dtype=bool)
    for i in checked:
        type_name = types[activity.devices[i]]
        allowed[i] = [profiles.allows(type_name, s, None, catalogue) for s in activity.services]
    rows = (activity.packets >= threshold) & ~allowed[activity.device, activity.service]
    if not rows.any():
        return []
    pairs, inverse = np.unique(
        np.stack([activity.device[rows], activity.service[rows]]), axis=1, return_inverse=True
    )
    inverse = inverse.reshape(-1)
    n = pairs.shape[1]
    first = np.full(n, np.iinfo(np.int64).max)
    last = np.full(n, np.iinfo(np.int64).min)
    np.minimum.at(first, inverse, activity.unit[rows])
    np.maximum.at(last, inverse, activity.unit[rows])
    units = np.bincount(inverse, minlength=n)
    packets = np.bincount(inverse, weights=activity.packets[rows], minlength=n)
    octets = np.bincount(inverse, weights=activity.bytes[rows], minlength=n)
    findings = []
    for j in range(n):
        device = activity.devices[int(pairs[0, j])]
        findings.append(
            Finding(
                device=device,
                type=types[device],
                service=activity.services[int(pairs[1, j])],
                role=None,
                first_unit=int(first[j]),
                last_unit=int(last[j]),
                units=int(units[j]),
                packets=int(packets[j]),
                bytes=int(octets[j]),
            )
        )
    return sorted(findings, key=lambda f: f.key)


def check_uses(
    device: str,
    type_name: str,
    uses: Sequence[FlowUse],
    profiles: MudProfiles,
    unit: int = 0,
) -> list[Finding]:
    """The findings of one unit of a device's uses with roles (MUDgee flow rules): each use the
    profiles of `type_name` do not allow in its role."""
    if type_name not in profiles.types:
        return []
    return merge_findings(
        Finding(device, type_name, u.service, u.role, unit, unit, 1, u.packets, u.bytes)
        for u in uses
        if not profiles.allows(type_name, u.service, u.role)
    )


def decision_findings(
    activity: ActivityTable,
    decisions: Sequence[Decision],
    profiles: MudProfiles,
    catalogue: Catalogue | None = None,
    threshold: int = 1,
) -> list[list[Finding]]:
    """Per decision, the findings of its device's activity in its window against the profile
    of the type it was identified as (none for "unknown" or a type without a profile)."""
    known = set(profiles.types)
    out: list[list[Finding]] = []
    for d in decisions:
        if d.label not in known:
            out.append([])
            continue
        window = activity.select(devices=[d.device], units=(d.start_unit, d.end_unit))
        out.append(check_activity(window, {d.device: d.label}, profiles, catalogue, threshold))
    return out


def findings_table(findings: Sequence[Finding], unit_seconds: float | None = None) -> list[str]:
    """Findings as Markdown table rows (header first); first and last seen as UTC times when
    `unit_seconds` is given, as units otherwise."""
    lines = [
        "| device | type | service | direction | first seen | last seen | units | packets "
        "| bytes |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for f in findings:
        first, last = seen(f, unit_seconds)
        lines.append(
            f"| {f.device} | {f.type} | {f.service} | {f.role or '–'} | {first} | {last} | "
            f"{f.units} | {f.packets} | {f.bytes} |"
        )
    return lines


def seen(finding: Finding, unit_seconds: float | None) -> tuple[str, str]:
    """First and last seen: the start of the first unit and the end of the last as UTC times
    (`unit_seconds` given), or the unit numbers."""
    if unit_seconds is None:
        return f"unit {finding.first_unit}", f"unit {finding.last_unit}"

    def when(seconds: float) -> str:
        return datetime.fromtimestamp(seconds, UTC).strftime("%Y-%m-%d %H:%M:%S")

    return when(finding.first_unit * unit_seconds), when((finding.last_unit + 1) * unit_seconds)
