"""MUD profiles as reference fingerprints, and the catalogue the switch needs to count them.

A MUD file says which services a device type may use, not how regularly: its fingerprint is a
Service List (granularity G = 1) holding every service the file allows one port of. So a device
can be identified against manufacturers' profiles with no training traffic at all, with the
same `References` (and the same nearest-reference or prototype matching) as enrolled ones. A
profile that allows no single service (only port ranges or any port) has no fingerprint and is
left out of the references, not of compliance.

The switch names a service by the catalogue entry that matches it, so the references only meet
live activity when the catalogue gives each of their services its own entry: `catalogue_for`
adds to a base catalogue every service of the profiles it lacks.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from controller.base.errors import InputError
from controller.engine.catalogue import Catalogue
from controller.engine.exporter import ExporterConfig
from controller.engine.identify import (
    DEFAULT_MODE,
    DEFAULT_NEIGHBOURS,
    DEFAULT_PERCENTILE,
    Mode,
    References,
    choose_theta,
)
from controller.engine.representation import DEFAULT_UNIT_SECONDS
from controller.engine.services import MAX_SERVICE_ID, ServiceSpec, parse_service
from controller.mud.mudfile import MudFile, read_muds
from controller.mud.profile import MudProfile

SERVICE_LIST = 1


def references_of(
    profiles: Sequence[MudProfile],
    unit_seconds: float = DEFAULT_UNIT_SECONDS,
    mode: Mode = DEFAULT_MODE,
    theta: float | None = None,
    percentile: float = DEFAULT_PERCENTILE,
    neighbours: int = DEFAULT_NEIGHBOURS,
) -> References:
    """One Service List reference per profile with a service (origin: its file). θ is chosen
    at `percentile` of the references' leave-one-out own-type similarity unless given; where no
    type has two profiles to choose it from, it is 0 (every decision known)."""
    usable = [p for p in profiles if p.services]
    if not usable:
        raise InputError("no MUD file allows a single service: nothing to identify against")
    services = tuple(sorted({s for p in usable for s in p.services}))
    column = {s: j for j, s in enumerate(services)}
    weights = np.zeros((len(usable), len(services)))
    for i, profile in enumerate(usable):
        weights[i, [column[s] for s in profile.services]] = 1.0
    refs = References(
        services=services,
        weights=weights,
        labels=tuple(p.type for p in usable),
        origins=tuple(p.source for p in usable),
        granularity=SERVICE_LIST,
        unit_seconds=unit_seconds,
        mode=mode,
        neighbours=neighbours,
        config=ExporterConfig(granularity=SERVICE_LIST),
    )
    if theta is None:
        several = len(refs.labels) > len(refs.types)
        theta = choose_theta(refs, percentile) if several else 0.0
    return refs.with_settings(theta=theta)


def catalogue_for(profiles: Sequence[MudProfile], base: Catalogue) -> Catalogue:
    """`base` with an entry for each service of `profiles` it does not name yet (added in
    name order after its own). An `InputError` when they do not fit the switch."""
    named = set(base.names)
    added = sorted({s for p in profiles for s in p.services} - named)
    if base.max_id + len(added) > MAX_SERVICE_ID:
        raise InputError(
            f"{base.source}: its {base.max_id} services and the {len(added)} the MUD files add "
            f"exceed the switch's {MAX_SERVICE_ID}"
        )
    specs = [
        ServiceSpec(s.proto, s.port_lo, s.port_hi, s.name, s.priority, s.in_dst_table)
        for s in base.services
    ]
    for name in added:
        proto, lo, hi = parse_service(name)
        specs.append(ServiceSpec(proto, lo, hi, name))
    return Catalogue.from_specs(specs, f"{base.source} with the services of the MUD files")


@dataclass(frozen=True)
class MudImport:
    """What `svcfp mud import` makes of MUD files: their profiles (with what each dropped),
    the reference fingerprints, the catalogue the switch needs, and the JSON files passed over
    as not MUD documents."""

    profiles: tuple[MudProfile, ...]
    references: References
    catalogue: Catalogue
    skipped: tuple[str, ...]

    @property
    def unfingerprinted(self) -> tuple[MudProfile, ...]:
        """Profiles left out of the references: they allow no single service."""
        return tuple(p for p in self.profiles if not p.services)


def import_muds(
    paths: Sequence[Path | MudFile],
    type_name: str | None = None,
    unit_seconds: float = DEFAULT_UNIT_SECONDS,
    base: Catalogue | None = None,
    mode: Mode = DEFAULT_MODE,
    theta: float | None = None,
    percentile: float = DEFAULT_PERCENTILE,
) -> MudImport:
    """Read the MUD files among `paths` and turn them into references and a catalogue (`base`
    with the services it lacks; the built-in catalogue by default)."""
    profiles, skipped = read_muds(paths, type_name)
    refs = references_of(profiles, unit_seconds, mode=mode, theta=theta, percentile=percentile)
    catalogue = catalogue_for(profiles, base if base is not None else Catalogue.default())
    return MudImport(tuple(profiles), refs, catalogue, tuple(skipped))
