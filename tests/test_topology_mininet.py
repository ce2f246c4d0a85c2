"""Mininet with the reference switch: emulated devices, their counters, their identification."""

from __future__ import annotations

import asyncio
import io
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from controller.base.p4info import P4Schema
from controller.engine.catalogue import Catalogue
from controller.engine.identify import UNKNOWN
from controller.p4rt import entries
from controller.p4rt.session import Session, SwitchTarget
from controller.store.storage import Storage, open_store
from topology import graph as topo
from topology.demo import run_network
from topology.live_table import LiveView
from topology.protocols import LINK_LOCAL_SERVICES, MULTICAST_SERVICES
from topology.scenario import DemoConfig, build_scenario
from topology.state import STATE_FILE, interface_exists

ROOT = Path(__file__).resolve().parent.parent
P4INFO = ROOT / "p4src" / "fingerprint.p4info.txtpb"
# Services whose exchanges expect no reply: multicast, link-local, bare IP protocols.
NO_REPLY = set(MULTICAST_SERVICES) | set(LINK_LOCAL_SERVICES)

pytestmark = [pytest.mark.root, pytest.mark.mininet, pytest.mark.slow]


async def counted_services(grpc_addr: str, db: Path) -> dict[str, set[str]]:
    """MAC → services with a non-zero counter, read from the switch over P4Runtime."""
    schema = P4Schema.load(P4INFO)
    max_services = entries.max_services(schema)
    names = Catalogue.default().names
    with Storage(db) as storage:
        ids = {row.mac: row.device_id for row in storage.devices() if row.device_id is not None}
    target = SwitchTarget("s1", grpc_addr, device_id=1, election_id=(0, 9))
    async with Session(target) as session:
        values = await session.read_counter(schema.counter(entries.COUNTER))
    found = {}
    for mac, device_id in ids.items():
        cells = values.packets[device_id * max_services : (device_id + 1) * max_services]
        found[mac] = {names[i] for i in cells.nonzero()[0].tolist()}
    return found


def test_devices_reach_services_are_counted_exactly_and_identified(
    tmp_path: Path, free_port: Callable[[], int]
) -> None:
    config = DemoConfig(
        out=tmp_path / "out",
        logs=tmp_path / "logs",
        units=36,
        known=("camera", "plug", "speaker"),
        held_out="hub",
        grpc_port=free_port(),
        p4info=P4INFO,
    )
    scenario = build_scenario(config)
    graph = scenario.graph
    created = topo.interfaces(graph)
    assert not any(interface_exists(name) for name in created)
    macs = {h.name: h.mac for h in topo.hosts(graph, topo.DEVICE)}
    view = LiveView(scenario, io.StringIO())
    counted: dict[str, set[str]] = {}

    def inspect(network: Any) -> None:
        addr = network.switch("s1").grpc_addr
        counted.update(asyncio.run(counted_services(addr, config.out / "demo.db")))

    reports = run_network(config, scenario, view, inspect)

    # Every device reached the hosts answering its services, and they heard from it.
    ips = {h.name: h.ip for h in topo.hosts(graph)}
    for host, schedule in scenario.schedules.items():
        sent = reports[host]["sent"]
        used = {a.service for unit in schedule.units for a in unit}
        assert set(sent) == used
        for service, counts in sent.items():
            if service in NO_REPLY or service.startswith("ip/"):
                assert counts["failed"] == 0, (host, service, counts)
            else:
                assert counts["ok"] >= 1 and counts["failed"] <= counts["ok"] // 5, (
                    host, service, counts
                )  # fmt: skip
        for service in ("udp/53", "udp/123"):
            server = "dns" if service == "udp/53" else "ntp"
            if service in used:
                assert ips[host] in reports[server]["received"][service]["peers"]
        served = reports[host]["served"]
        assert set(served) == set(schedule.served_services())
        assert all(c["ok"] >= 1 for c in served.values())

    # The switch counted, for each device, exactly the services its schedule used.
    for host, schedule in scenario.schedules.items():
        expected = {a.service for unit in schedule.units for a in unit}
        expected |= set(schedule.served_services())
        assert counted[macs[host]] == expected, host

    # Known types are identified as themselves, the held-out hub as unknown.
    answers = view.final()
    for host, truth in scenario.truth.items():
        expected_label = UNKNOWN if truth == "hub" else truth
        assert answers[host].label == expected_label, (host, answers[host].similarity)

    # Nothing the network created is left behind.
    assert not any(interface_exists(name) for name in created)
    assert not (config.logs / STATE_FILE).exists()


TRIANGLE = {
    "hosts": {
        "dns": {"ip": "10.0.0.1/24", "mac": "02:00:00:00:01:01", "services": ["udp/53"]},
        "cloud": {"ip": "10.0.0.3/24", "mac": "02:00:00:00:01:03", "services": ["tcp/443"]},
        "d1": {"ip": "10.0.0.101/24", "mac": "02:00:00:00:02:01", "profile": "camera"},
        "d2": {"ip": "10.0.0.102/24", "mac": "02:00:00:00:02:02", "profile": "plug"},
    },
    "switches": {"s1": {}, "s2": {}, "s3": {}},
    "links": [
        ["dns", "s1-p1"], ["d1", "s1-p2"], ["cloud", "s2-p1"], ["d2", "s3-p1"],
        ["s1-p3", "s2-p2"], ["s2-p3", "s3-p2"], ["s3-p3", "s1-p4"],
    ],
}  # fmt: skip


def test_three_switches_in_a_loop_forward_by_shortest_path_and_flood_without_looping(
    tmp_path: Path, free_port: Callable[[], int]
) -> None:
    import json

    from controller.control.controller import Controller
    from topology.devices import Activity
    from topology.emulation import DeviceSchedule, start_emulation
    from topology.network import running_network
    from topology.testbed import controller_config, wait_programmed

    data = json.loads(json.dumps(TRIANGLE))
    for name in ("s1", "s2", "s3"):
        data["switches"][name]["grpc_port"] = free_port()
    path = tmp_path / "topology.json"
    path.write_text(json.dumps(data))
    graph = topo.load(path, profiles={"camera", "plug"})
    units = 4
    a = Activity
    schedules = {
        "d1": DeviceSchedule(units=((a("udp/53"), a("tcp/443"), a("udp/5353")),) * units),
        "d2": DeviceSchedule(units=((a("udp/53"), a("tcp/443")),) * units),
    }
    config = controller_config(
        graph, tmp_path / "triangle.db", tmp_path,
        p4info=P4INFO, bmv2_json=None, interval=0.5, time_unit=1.0,
    )  # fmt: skip

    async def run(network: Any) -> tuple[dict[str, Any], int]:
        controller = Controller(config)
        task = asyncio.create_task(controller.run())
        await wait_programmed(controller, task, 30.0)
        emulation = start_emulation(network, schedules, 1.0, tmp_path / "run")
        await asyncio.get_running_loop().run_in_executor(None, emulation.wait)
        controller.stop.set()
        await task
        schema = P4Schema.load(P4INFO)
        with open_store(config.db) as storage:
            d1 = next(r.device_id for r in storage.devices() if r.mac == "02:00:00:00:02:01")
        assert d1 is not None
        s1 = topo.switches(graph)[0]
        target = SwitchTarget("s1", s1.grpc_addr, s1.device_id, (0, 9))
        async with Session(target) as session:
            values = await session.read_counter(schema.counter(entries.COUNTER))
        mdns = Catalogue.default().by_name("udp/5353").id
        cell = d1 * entries.max_services(schema) + mdns
        return emulation.reports(), int(values.packets[cell])

    with running_network(graph, "refswitch", tmp_path / "logs") as network:
        reports, mdns_at_s1 = asyncio.run(run(network))
    for host in ("d1", "d2"):
        for service, counts in reports[host]["sent"].items():
            assert counts["ok"] == units and counts["failed"] == 0, (host, service)
    assert reports["dns"]["received"]["udp/53"]["ok"] == 2 * units
    assert reports["cloud"]["received"]["tcp/443"]["ok"] == 2 * units
    # One mDNS packet per unit: a flood that looped around the triangle would come back to s1.
    assert mdns_at_s1 == units
