"""Schedules for emulated devices, drawn from the synthetic device profiles
(`controller.ingest.synth`).

Each emulated host plays its profile unit by unit: in every unit it uses exactly the services its
synthetic schedule says are active. Services the profile uses as a client become exchanges the
device starts; services it offers (role `server`) become probes a peer sends to the device, so the
switch sees the device answering from its own port. The fingerprint counts units in which a
service was used, not how much, so each active service is one exchange per unit.
"""

from __future__ import annotations

from collections.abc import Sequence

import networkx as nx

from controller.base.errors import InputError
from controller.ingest import synth
from topology import graph as topo
from topology.devices import Activity
from topology.emulation import DeviceSchedule


def schedule_from_uses(
    uses: Sequence[synth.ScheduledUse], n_units: int, start_unit: int = 0
) -> DeviceSchedule:
    """The emulated schedule for one synthetic device's uses in units start_unit.. (n_units)."""
    if n_units < 1:
        raise InputError(f"a schedule needs at least one unit, got {n_units}")
    units: list[list[Activity]] = [[] for _ in range(n_units)]
    serve: list[tuple[int, str]] = []
    for use in uses:
        unit = use.unit - start_unit
        if not 0 <= unit < n_units:
            continue
        if use.role == "server":
            serve.append((unit, use.service))
        else:
            units[unit].append(Activity(use.service))
    return DeviceSchedule(
        units=tuple(tuple(sorted(u, key=lambda a: a.service)) for u in units),
        serve=tuple(sorted(serve)),
    )


def synthetic_schedules(
    graph: nx.Graph[str],
    n_units: int,
    seed: int,
    profiles: dict[str, synth.DeviceProfile] | None = None,
    start_unit: int = 0,
) -> dict[str, DeviceSchedule]:
    """A schedule for every device host of `graph`, each drawn from its profile with its own seed.

    Synthetic units are hours (so the profiles' daily rhythm applies); the emulation plays each
    as one accelerated unit.
    """
    chosen = profiles if profiles is not None else synth.load_profiles()
    schedules = {}
    for index, host in enumerate(topo.hosts(graph, topo.DEVICE)):
        if host.profile not in chosen:
            raise InputError(f"host {host.name!r} has profile {host.profile!r}, which is not known")
        uses = synth.schedule(
            chosen[host.profile], n_units, seed + index, unit_seconds=3600.0, start_unit=start_unit
        )
        schedules[host.name] = schedule_from_uses(uses, n_units, start_unit)
    return schedules


def default_device_profiles(
    count: int, profiles: Sequence[str] | None = None
) -> list[tuple[str, str]]:
    """`count` device hosts d1, d2, ... with the known profiles assigned in turn."""
    names = list(profiles) if profiles is not None else sorted(synth.load_profiles())
    if not names:
        raise InputError("no device profiles to assign")
    return [(f"d{i + 1}", names[i % len(names)]) for i in range(count)]
