"""The demo's scenario: which device types play, the references enrolled for the known ones,
and every emulated host's schedule in the network it plays in.

Reference fingerprints of the known types are enrolled from synthetic activity of their
profiles; devices of those types, and of one type the references leave out, then play their
profiles as real traffic in accelerated time (a unit of a second stands for an hour).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import networkx as nx

import p4src
from controller.base.checks import is_decimal
from controller.base.errors import InputError
from controller.engine.catalogue import Catalogue
from controller.engine.exporter import ExporterConfig, export_fingerprints
from controller.engine.identify import References, enroll
from controller.ingest import synth
from controller.web.settings import WebSettings
from topology import graph as topo
from topology.emulation import DeviceSchedule
from topology.launch import free_port
from topology.schedules import schedule_from_uses, synthetic_schedules

# The demo's exporter: short windows, so fingerprints converge within a few dozen units.
DEMO_EXPORTER = ExporterConfig(granularity=4, tau=0.9, k=3, n_min=8, n_max=24)
# The default mix: four known types whose services differ, and a hub the references lack.
DEFAULT_KNOWN = ("camera", "plug", "speaker", "thermostat")
DEFAULT_HELD_OUT = "hub"
# Synthetic reference devices per known type.
REFERENCE_DEVICES = 5
# What a demo may ask for: enough units to converge, few enough to finish in minutes.
UNITS_RANGE = (1, 600)
UNIT_SECONDS_RANGE = (0.2, 10.0)
DEVICES_PER_TYPE_RANGE = (1, 5)


def check_sizes(units: int, unit_seconds: float, devices_per_type: int) -> None:
    """Refuse a demo too short, too long or too large to run (InputError naming the flag)."""
    if not (
        UNITS_RANGE[0] <= units <= UNITS_RANGE[1]
        and UNIT_SECONDS_RANGE[0] <= unit_seconds <= UNIT_SECONDS_RANGE[1]
    ):
        raise InputError("--units must lie in 1..600 and --time-unit in 0.2..10")
    if not DEVICES_PER_TYPE_RANGE[0] <= devices_per_type <= DEVICES_PER_TYPE_RANGE[1]:
        raise InputError("--devices-per-type must lie in 1..5")


@dataclass(frozen=True)
class BehaviourChange:
    """One emulated device that starts behaving as another type part-way (a device re-purposed,
    replaced or compromised): `host` plays `profile` from unit `at_unit` on."""

    host: str
    profile: str
    at_unit: int

    @classmethod
    def parse(cls, text: str) -> BehaviourChange:
        """`HOST=TYPE@UNIT`, e.g. `d2=hub@30`."""
        host, _, rest = text.partition("=")
        profile, _, unit = rest.partition("@")
        if not (host and profile and is_decimal(unit)):
            raise InputError(f"--change {text!r}: expected HOST=TYPE@UNIT, e.g. d2=hub@30")
        return cls(host.strip(), profile.strip(), int(unit))


@dataclass(frozen=True)
class DemoConfig:
    """Everything `svcfp demo` was asked to do.

    `http` serves the dashboard while the demo runs; `change` makes one device change its
    behaviour part-way.
    """

    switch: str = "refswitch"
    out: Path = Path("logs/demo")
    logs: Path = Path("logs")
    units: int = 60
    reference_units: int = 96
    unit_seconds: float = 1.0
    interval: float = 0.25
    seed: int = 7
    devices_per_type: int = 1
    known: tuple[str, ...] = ()
    held_out: str | None = None
    no_network: bool = False
    p4info: Path = p4src.P4INFO
    bmv2_json: Path = p4src.BMV2_JSON
    grpc_port: int = topo.FIRST_GRPC_PORT
    exporter: ExporterConfig = DEMO_EXPORTER
    http: WebSettings | None = None
    change: BehaviourChange | None = None

    def __post_init__(self) -> None:
        check_sizes(self.units, self.unit_seconds, self.devices_per_type)
        if self.change is not None and not 0 < self.change.at_unit < self.units:
            raise InputError(
                f"--change {self.change.host}: the change must come within the demo's "
                f"{self.units} units (1..{self.units - 1})"
            )


@dataclass(frozen=True)
class Scenario:
    """Who plays what: emulated hosts with their true type and schedule, the references, and the
    network they play in."""

    truth: dict[str, str]
    held_out: str
    references: References
    schedules: dict[str, DeviceSchedule]
    graph: nx.Graph[str]
    change: BehaviourChange | None = None


def choose_types(config: DemoConfig, names: Sequence[str]) -> tuple[list[str], str]:
    """The known types and the held-out type (defaults: DEFAULT_KNOWN and DEFAULT_HELD_OUT)."""
    known = list(config.known) or [n for n in DEFAULT_KNOWN if n != config.held_out]
    held_out = config.held_out or DEFAULT_HELD_OUT
    for name in [*known, held_out]:
        if name not in names:
            raise InputError(f"unknown profile {name!r}; profiles: {', '.join(names)}")
    if held_out in known:
        raise InputError(f"the held-out type {held_out!r} is also among the known types")
    return known, held_out


def build_scenario(config: DemoConfig) -> Scenario:
    """Enroll references of the known types from synthetic activity of their profiles, and give
    every emulated host (each known type and the held-out one) a schedule of its own."""
    profiles = synth.load_profiles()
    known, held_out = choose_types(config, sorted(profiles))
    fleet = synth.make_fleet(profiles, REFERENCE_DEVICES * len(known), kinds=known)
    # Synthetic units are hours, so the profiles' daily rhythm applies; each plays as one unit.
    enrolled = synth.activity(
        fleet, config.reference_units, config.seed, Catalogue.default(), unit_seconds=3600.0
    )
    # The same units, each now standing for a unit of emulated time.
    accelerated = replace(enrolled, unit_seconds=config.unit_seconds)
    fingerprints = export_fingerprints(accelerated, config.exporter)
    labels = {device.mac: device.profile.name for device in fleet}
    references = enroll(fingerprints, labels, config=config.exporter)
    kinds = [kind for kind in [*known, held_out] for _ in range(config.devices_per_type)]
    truth = {f"d{i + 1}": kind for i, kind in enumerate(kinds)}
    # Port 0: any free one, so a demo can run beside another switch; BMv2's CLI (Thrift) port
    # is a free one too, so another BMv2 on this machine keeps the usual 9090.
    graph = topo.default_topology(
        sorted(truth.items()), grpc_port=config.grpc_port or free_port(), thrift_port=free_port()
    )
    schedules = synthetic_schedules(graph, config.units, config.seed + 1000, profiles)
    change = config.change
    if change is not None:
        if change.host not in truth:
            raise InputError(f"--change {change.host}: the demo's devices are {', '.join(truth)}")
        if change.profile not in profiles:
            raise InputError(
                f"--change {change.host}: unknown profile {change.profile!r}; profiles: "
                f"{', '.join(sorted(profiles))}"
            )
        schedules[change.host] = changed_schedule(
            schedules[change.host],
            synthetic_schedules_of(profiles[change.profile], config.units, config.seed + 2000),
            change.at_unit,
        )
    return Scenario(truth, held_out, references, schedules, graph, change)


def synthetic_schedules_of(profile: synth.DeviceProfile, n_units: int, seed: int) -> DeviceSchedule:
    """One schedule drawn from `profile` (units are hours, as in `synthetic_schedules`)."""
    return schedule_from_uses(synth.schedule(profile, n_units, seed, unit_seconds=3600.0), n_units)


def changed_schedule(before: DeviceSchedule, after: DeviceSchedule, at_unit: int) -> DeviceSchedule:
    """`before` up to unit `at_unit`, `after` from there on."""
    return DeviceSchedule(
        units=before.units[:at_unit] + after.units[at_unit:],
        serve=tuple(s for s in before.serve if s[0] < at_unit)
        + tuple(s for s in after.serve if s[0] >= at_unit),
    )
