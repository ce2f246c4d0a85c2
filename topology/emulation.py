"""Run emulated devices and service hosts on a running network and collect what they report.

Given per-device schedules (which services each device uses in each unit), this writes a plan
per device and a server config per service host under the run folder, starts
`python -m topology.entry devices|servers` inside the hosts' namespaces (recording every PID),
and after the schedule ends gathers their reports. Services no service host lists are answered
by the default service host (`cloud`), which listens on them too.
"""

from __future__ import annotations

import json
import math
import signal
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import networkx as nx

from controller.base.errors import SvcfpError
from controller.engine.catalogue import Catalogue
from topology import graph as topo
from topology import protocols
from topology.devices import UNPLAYABLE, Activity, DevicePlan
from topology.files import write_json_atomic
from topology.ports import Realization, quiet_ports, realize, served_port
from topology.servers import Probe, ServerConfig
from topology.state import TestbedState

if TYPE_CHECKING:
    # Only for annotations: importing the network module imports Mininet.
    from topology.network import Network

# Services that are not answered by a host: multicast groups and datagrams nobody replies to.
_UNANSWERED = frozenset(protocols.MULTICAST_SERVICES) | protocols.LINK_LOCAL_SERVICES | UNPLAYABLE
# Start a little in the future so every process is up before unit 0 begins.
_LEAD_SECONDS = 1.5
# Extra time allowed for processes to write their reports after the schedule ends.
_REPORT_GRACE = 10.0
# Source ports the prober uses in turn (a new TCP 4-tuple each time, none in TIME_WAIT).
PROBE_PORTS = 64
# Above the quiet port services realised by source port are sent to (topology.ports).
PROBE_PORT_START = 45000


@dataclass(frozen=True)
class DeviceSchedule:
    """What one device host does: client activities per unit and the services it serves."""

    units: tuple[tuple[Activity, ...], ...]
    serve: tuple[tuple[int, str], ...] = ()  # (unit, service) a peer uses on the device

    def uses(self, service: str) -> bool:
        """Whether the device uses `service` as a client in any unit."""
        return any(a.service == service for unit in self.units for a in unit)

    def served_services(self) -> tuple[str, ...]:
        """Every service the device answers, sorted."""
        return tuple(sorted({service for _, service in self.serve}))


@dataclass
class EmulationRun:
    """A started emulation: its processes, plans and where reports appear."""

    folder: Path
    start: float
    end: float
    plans: dict[str, DevicePlan]
    servers: dict[str, ServerConfig]
    processes: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)

    def wait(self) -> None:
        """Wait for the schedule to end and every process to exit (bounded), then reap them."""
        deadline = self.end + _REPORT_GRACE
        for label, process in self.processes.items():
            try:
                process.wait(timeout=max(0.1, deadline - time.time()))
            except subprocess.TimeoutExpired:
                process.send_signal(signal.SIGTERM)
                if _reap(process):
                    raise SvcfpError(f"emulated {label} did not stop; killed it") from None

    def stop(self) -> None:
        """Ask every process still running to finish now; they still write their reports."""
        for process in self.processes.values():
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
        for process in self.processes.values():
            _reap(process)

    def reports(self) -> dict[str, dict[str, Any]]:
        """Host name → its report (`SvcfpError` naming the host and its log if one is missing)."""
        found = {}
        paths = {name: plan.stats_path for name, plan in self.plans.items()}
        paths.update({name: config.stats_path for name, config in self.servers.items()})
        for name, stats_path in paths.items():
            path = Path(stats_path)
            if not path.exists():
                log = self.folder / f"{name}.log"
                tail = log.read_text(errors="replace")[-2000:] if log.exists() else ""
                raise SvcfpError(f"emulated host {name} wrote no report {path}:\n{tail}")
            found[name] = json.loads(path.read_text())
        return found


def _reap(process: subprocess.Popen[bytes]) -> bool:
    """Wait for a process asked to stop; kill it if it takes over 5 s. Whether it was killed."""
    try:
        process.wait(timeout=5)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(timeout=5)
        return True
    return False


def default_service_host(graph: nx.Graph[str]) -> str:
    """The service host that answers services nobody lists: `cloud` if present, else the first."""
    names = [h.name for h in topo.hosts(graph, topo.SERVICE)]
    if not names:
        raise SvcfpError("the topology has no service host to answer devices")
    return "cloud" if "cloud" in names else names[0]


def listeners(graph: nx.Graph[str], services: Sequence[str]) -> dict[str, tuple[str, ...]]:
    """Service host → services it listens on: its own plus the unanswered ones for the default."""
    answers = topo.service_hosts_by_service(graph)
    fallback = default_service_host(graph)
    listen: dict[str, set[str]] = {h.name: set(h.services) for h in topo.hosts(graph, topo.SERVICE)}
    for service in services:
        key = protocols.parse_service(service)
        if service in _UNANSWERED or key.transport is None or service in answers:
            continue
        listen[fallback].add(service)
    return {name: tuple(sorted(found)) for name, found in listen.items()}


def targets(graph: nx.Graph[str], services: Sequence[str]) -> dict[str, str]:
    """Service → IPv4 address of the service host answering it."""
    answers = topo.service_hosts_by_service(graph)
    fallback = default_service_host(graph)
    addresses = {h.name: h.ip for h in topo.hosts(graph)}
    return {
        service: addresses[answers.get(service, fallback)]
        for service in services
        if service not in _UNANSWERED
    }


def realize_schedules(
    schedules: Mapping[str, DeviceSchedule], catalogue: Catalogue
) -> dict[str, DeviceSchedule]:
    """The schedules with every activity's ports chosen so the switch counts the right service."""
    realized: dict[str, Realization] = {}
    done = {}
    for name, schedule in schedules.items():
        units = []
        for unit in schedule.units:
            activities = []
            for activity in unit:
                if activity.service in _UNANSWERED:
                    activities.append(activity)
                    continue
                if activity.service not in realized:
                    realized[activity.service] = realize(activity.service, catalogue)
                how = realized[activity.service]
                activities.append(replace(activity, port=how.dport, sports=how.sports))
            units.append(tuple(activities))
        done[name] = replace(schedule, units=tuple(units))
    return done


def start_emulation(
    network: Network,
    schedules: Mapping[str, DeviceSchedule],
    unit_seconds: float,
    folder: Path,
    state: TestbedState | None = None,
    catalogue: Catalogue | None = None,
    start: float | None = None,
) -> EmulationRun:
    """Write plans and configs under `folder` and start every service host and device.

    Unit u of every schedule starts at `start + u * unit_seconds` (default: in a moment, on a
    unit boundary, so emulated units and the collector's units coincide).
    """
    graph = network.graph
    chosen = catalogue or Catalogue.default()
    devices = {h.name: h for h in topo.hosts(graph, topo.DEVICE)}
    unknown = sorted(set(schedules) - set(devices))
    if unknown:
        raise SvcfpError(f"schedules name hosts that are not devices of the topology: {unknown}")
    folder.mkdir(parents=True, exist_ok=True)
    probe_sports = quiet_ports(chosen, PROBE_PORTS, start=PROBE_PORT_START)
    schedules = realize_schedules(schedules, chosen)
    n_units = max((len(s.units) for s in schedules.values()), default=0)
    if start is None:
        start = next_unit_start(time.time() + _LEAD_SECONDS, unit_seconds)
    end = start + n_units * unit_seconds + 1.0
    used = sorted({a.service for s in schedules.values() for u in s.units for a in u})
    ports = {a.service: a.port for s in schedules.values() for u in s.units for a in u if a.port}
    service_targets = targets(graph, used)
    plans = {
        name: DevicePlan(
            name=name,
            address=devices[name].ip,
            unit_seconds=unit_seconds,
            start=start,
            units=schedule.units,
            targets=service_targets,
            stats_path=str(folder / f"{name}.report.json"),
            interface=devices[name].interface,
            serve=schedule.served_services(),
            serve_ports={
                s: served_port(s, chosen, probe_sports[0]) for s in schedule.served_services()
            },
        )
        for name, schedule in sorted(schedules.items())
    }
    listen = listeners(graph, used)
    prober = default_service_host(graph)
    probes = tuple(
        Probe(unit, devices[name].ip, service, plans[name].serve_ports[service])
        for name, schedule in sorted(schedules.items())
        for unit, service in schedule.serve
    )
    configs = {
        host.name: ServerConfig(
            host=host.name,
            address=host.ip,
            services=listen[host.name],
            duration=end - time.time() + 1.0,
            stats_path=str(folder / f"{host.name}.report.json"),
            start=start,
            unit_seconds=unit_seconds,
            probes=probes if host.name == prober else (),
            probe_sports=probe_sports,
            ports={s: ports[s] for s in listen[host.name] if s in ports},
        )
        for host in topo.hosts(graph, topo.SERVICE)
    }
    run = EmulationRun(folder=folder, start=start, end=end, plans=plans, servers=configs)
    try:
        for name, config in configs.items():
            _launch(network, run, name, "servers", config.to_json(), state)
        for name, plan in plans.items():
            _launch(network, run, name, "devices", plan.to_json(), state)
    except BaseException:
        run.stop()
        raise
    return run


def next_unit_start(after: float, unit_seconds: float) -> float:
    """The first unit boundary at or after `after` (epoch seconds), plus a small margin so
    activity lands inside the unit, not on its edge."""
    return math.ceil(after / unit_seconds) * unit_seconds + 0.02 * unit_seconds


def _launch(
    network: Network,
    run: EmulationRun,
    name: str,
    role: str,
    config: dict[str, Any],
    state: TestbedState | None,
) -> None:
    config_path = run.folder / f"{name}.config.json"
    write_json_atomic(config_path, config)
    with (run.folder / f"{name}.log").open("wb") as log:
        process = network.host(name).popen(
            [sys.executable, "-m", "topology.entry", role, str(config_path)],
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    run.processes[name] = process
    if state is not None:
        state.add_process(f"{role}:{name}", process.pid)
