"""`svcfp testbed start|stop`: a Mininet testbed with a P4 switch and the controller.

`start_testbed` launches one detached supervisor process (`svcfp testbed start --foreground`)
and waits until it reports ready. The supervisor records itself, every switch and host process
and every interface name in `<logs>/testbed.json` before creating them, builds the topology with
the chosen switch, optionally plays emulated devices, and runs the controller until it receives
SIGTERM; then it stops everything and removes the record. `stop_testbed` signals the recorded
supervisor and then stops any recorded process and removes any recorded interface that is still
there, so an interrupted run leaves nothing behind. Both are idempotent.
"""

from __future__ import annotations

import asyncio
import csv
import logging
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import networkx as nx

from controller.base.checks import is_decimal
from controller.base.errors import InputError, SvcfpError
from controller.base.fileio import open_atomically
from controller.control.config import RunConfig, SwitchSpec
from controller.control.controller import Controller
from controller.control.live import LiveSettings
from controller.engine.identify import UNKNOWN
from controller.ingest import synth
from controller.store.records import INFRASTRUCTURE
from topology import graph as topo
from topology.entry import stop_on_termination
from topology.launch import start_detached
from topology.schedules import default_device_profiles, synthetic_schedules
from topology.state import TestbedState, recorded_run, stop_process, teardown
from topology.tools import missing_for_mininet, why_missing

log = logging.getLogger(__name__)

READY_TIMEOUT = 120.0
STOP_TIMEOUT = 30.0


@dataclass(frozen=True)
class TestbedConfig:
    """What `svcfp testbed start` was asked to run."""

    __test__ = False  # a name starting with "Test", but not a pytest test class

    switch: str
    grpc_addr: str
    device_id: int
    logs: Path
    p4info: Path
    bmv2_json: Path | None
    topology: Path | None
    devices: int
    units: int
    time_unit: float
    interval: float


def _grpc_port(addr: str) -> int:
    host, _, port = addr.rpartition(":")
    if host not in ("127.0.0.1", "localhost") or not is_decimal(port):
        raise InputError(f"--grpc-addr {addr!r}: the testbed's switch listens on 127.0.0.1:PORT")
    return int(port)


def testbed_graph(config: TestbedConfig) -> nx.Graph[str]:
    """The topology to build: the given file, or the default one with the chosen switch address.

    When devices will play traffic, every device host must name a known profile.
    """
    if config.topology is not None:
        profiles = set(synth.load_profiles()) if config.units > 0 else None
        return topo.load(config.topology, profiles)
    return topo.default_topology(
        default_device_profiles(config.devices),
        grpc_port=_grpc_port(config.grpc_addr),
        device_id=config.device_id,
    )


def switch_specs(graph: nx.Graph[str]) -> tuple[SwitchSpec, ...]:
    """What the controller needs of each switch of a topology: address, flood ports, MAC table."""
    flood = topo.flood_ports(graph)
    forwarding = topo.forwarding(graph)
    return tuple(
        SwitchSpec(
            name=switch.name,
            grpc_addr=switch.grpc_addr,
            device_id=switch.device_id,
            ports=tuple(flood[switch.name]),
            l2=forwarding[switch.name],
        )
        for switch in topo.switches(graph)
    )


def controller_config(
    graph: nx.Graph[str],
    db: Path,
    logs: Path,
    *,
    p4info: Path,
    bmv2_json: Path | None,
    interval: float,
    time_unit: float,
    live: LiveSettings | None = None,
) -> RunConfig:
    """The controller's configuration for a topology's switches and hosts.

    Its database is `db`, with every host registered in `devices.csv` beside it; P4Runtime
    logs go under `logs`.
    """
    return RunConfig(
        switches=switch_specs(graph),
        p4info=p4info,
        bmv2_json=bmv2_json,
        interval=interval,
        time_unit=time_unit,
        db=db,
        devices=write_devices_file(graph, db.parent / "devices.csv"),
        log_dir=logs / "p4runtime",
        live=live,
    )


def write_devices_file(graph: nx.Graph[str], path: Path) -> Path:
    """Every host as a static device (`mac,label,port,switch`), so counting starts at packet one;
    service hosts are labelled `infrastructure`: counted, not identified."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open_atomically(path, newline="") as out:
        writer = csv.writer(out, lineterminator="\n")
        writer.writerow(["mac", "label", "port", "switch"])
        for host in topo.hosts(graph):
            switch = next(iter(graph.neighbors(host.name)))
            port = graph.edges[host.name, switch]["ports"][switch]
            label = INFRASTRUCTURE if host.role == topo.SERVICE else UNKNOWN
            writer.writerow([host.mac, label, port, switch])
    return path


async def wait_programmed(controller: Controller, task: asyncio.Task[Any], timeout: float) -> None:
    """Wait until `controller` (running as `task`) has programmed every switch.

    `SvcfpError` if it stops first (its own error is raised instead when it failed) or takes
    longer than `timeout` seconds; in that case it is stopped.
    """

    async def programmed() -> None:
        await asyncio.gather(*(worker.ready.wait() for worker in controller.workers))

    ready = asyncio.create_task(programmed())
    watched: set[asyncio.Task[Any]] = {task, ready}
    done, _ = await asyncio.wait(watched, timeout=timeout, return_when="FIRST_COMPLETED")
    if ready in done and not task.done():
        return
    ready.cancel()
    controller.stop.set()
    await task
    if task in done:
        raise SvcfpError("the controller stopped before the switches were programmed")
    raise SvcfpError(f"the controller did not program the switches within {timeout:.0f} s")


async def _control(run_config: RunConfig, started: Callable[[], None]) -> None:
    controller = Controller(run_config)
    stop_on_termination(controller.stop.set)
    task = asyncio.create_task(controller.run())
    await wait_programmed(controller, task, READY_TIMEOUT)
    started()
    stats = await task
    log.info("controller stopped after %d polls", stats.polls)


def supervise(config: TestbedConfig) -> int:
    """Run the testbed in this process until SIGTERM/SIGINT; always undo everything it did."""
    # Mininet is imported only here: every other `svcfp` command works where it is not installed.
    from topology.emulation import EmulationRun, start_emulation
    from topology.network import running_network

    graph = testbed_graph(config)
    run_config = controller_config(
        graph,
        config.logs / "svcfp.db",
        config.logs,
        p4info=config.p4info,
        bmv2_json=config.bmv2_json,
        interval=config.interval,
        time_unit=config.time_unit,
    )
    schedules = synthetic_schedules(graph, config.units, seed=1) if config.units > 0 else {}
    ipv6 = {host for host, plan in schedules.items() if plan.uses("icmpv6")}
    with (
        recorded_run(config.logs, "testbed") as state,
        running_network(graph, config.switch, config.logs, state, ipv6) as net,
    ):
        runs: list[EmulationRun] = []

        def started() -> None:
            # Devices start once the switch is programmed, so their first unit is counted.
            if schedules:
                runs.append(
                    start_emulation(
                        net, schedules, config.time_unit, config.logs / "devices", state
                    )
                )
            state.info.update({"ready": True, "hosts": [h.name for h in topo.hosts(graph)]})
            state.save()

        try:
            asyncio.run(_control(run_config, started))
        finally:
            for run in runs:
                run.stop()
    return 0


def start_testbed(config: TestbedConfig, supervisor: list[str]) -> str:
    """Start `supervisor` (the command that runs `supervise(config)`) detached, wait until it
    reports ready; returns what to tell the user. Refused without root or over a recorded run."""
    if os.geteuid() != 0:
        raise SvcfpError("testbed start builds a Mininet network and needs root")
    missing = missing_for_mininet()
    if missing:
        raise SvcfpError(f"testbed start builds a Mininet network: {why_missing(missing)}")
    if config.switch == "bmv2" and (config.bmv2_json is None or not config.bmv2_json.exists()):
        raise InputError(f"{config.bmv2_json}: BMv2 needs the compiled program; run `make build`")
    existing = TestbedState.load(config.logs)
    if existing is not None:
        raise InputError(
            f"{existing.path}: a testbed is already recorded; run `svcfp testbed stop` first"
        )
    console = config.logs / "testbed.log"
    process = start_detached(supervisor, console)
    deadline = time.monotonic() + READY_TIMEOUT
    while time.monotonic() < deadline:
        state = TestbedState.load(config.logs)
        if state is not None and state.info.get("ready"):
            return (
                f"testbed running: {config.switch} switch at {state.info.get('grpc_addrs')}, "
                f"hosts {', '.join(state.info.get('hosts', []))}; logs in {config.logs}/; "
                "stop with `svcfp testbed stop` (make stop)"
            )
        if process.poll() is not None:
            tail = console.read_text(errors="replace")[-3000:]
            raise SvcfpError(f"the testbed failed to start (status {process.returncode}):\n{tail}")
        time.sleep(0.2)
    process.terminate()
    raise SvcfpError(f"the testbed was not ready within {READY_TIMEOUT:.0f} s; see {console}")


def stop_testbed(logs: Path) -> str:
    """End the run recorded in `logs` and remove exactly what it created; returns what to tell
    the user. Idempotent."""
    state = TestbedState.load(logs)
    if state is None:
        return f"no testbed recorded in {logs}/: nothing to stop"
    supervisor = next((p for p in state.processes if p.label == "testbed"), None)
    # A supervisor that ends on SIGTERM undoes everything itself and removes the record.
    clean = (
        supervisor is not None
        and stop_process(supervisor, STOP_TIMEOUT)
        and not state.path.exists()
    )
    # Whatever the supervisor could not undo (killed, crashed, timed out) is undone here.
    report = teardown(state)
    return (
        f"testbed stopped: {len(state.processes)} recorded processes, "
        f"{len(state.interfaces)} interfaces; "
        + (
            "the supervisor undid everything"
            if clean
            else f"{len(report.stopped)} processes stopped and {len(report.interfaces)} "
            "interfaces removed here"
        )
    )
