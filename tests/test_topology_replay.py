"""Replaying captures through an emulated device host, as that device."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import dpkt
import pytest

from controller.base.errors import InputError
from controller.base.p4info import P4Schema
from controller.control.config import RunConfig, SwitchSpec
from controller.control.controller import Controller
from controller.engine.catalogue import Catalogue
from controller.ingest.pcap import read_pcap
from controller.p4rt import entries
from controller.p4rt.session import Session, SwitchTarget
from controller.store.storage import Storage
from topology import graph as topo
from topology.devices import Activity
from topology.emulation import DeviceSchedule
from topology.frames import synthesize, write_pcap
from topology.replay import Prepared, device_mac_of, prepare, replay
from topology.testbed import wait_programmed, write_devices_file

ROOT = Path(__file__).resolve().parent.parent
P4INFO = ROOT / "p4src" / "fingerprint.p4info.txtpb"


def sources(path: Path) -> list[bytes]:
    with path.open("rb") as handle:
        return [bytes(buf[6:12]) for _, buf in dpkt.pcap.Reader(handle)]


def test_prepare_keeps_only_the_devices_frames_with_the_new_mac(tmp_path: Path) -> None:
    graph = topo.default_topology([("d1", "camera"), ("d2", "plug")])
    schedules = {
        "d1": DeviceSchedule(units=((Activity("udp/53"), Activity("tcp/443")),)),
        "d2": DeviceSchedule(units=((Activity("udp/123"),),)),
    }
    capture = tmp_path / "capture.pcap"
    write_pcap(synthesize(graph, schedules, 1.0, 100.0), capture)
    before = sources(capture)
    d1 = bytes.fromhex("020000000201")
    prepared = prepare(capture, "02:00:00:00:02:01", "aa:bb:cc:dd:ee:01", tmp_path / "out.pcap")
    # d1 sends 1 DNS query and 5 TCP segments; the rest comes from dns, cloud, d2, ntp.
    assert prepared.frames == before.count(d1) == 6
    assert prepared.skipped == len(before) - 6
    assert set(sources(prepared.path)) == {bytes.fromhex("aabbccddee01")}
    with pytest.raises(InputError, match="no frame was sent by 02:00:00:00:09:09"):
        prepare(capture, "02:00:00:00:09:09", "aa:bb:cc:dd:ee:01", tmp_path / "none.pcap")
    with pytest.raises(InputError, match="is not a MAC address"):
        prepare(capture, "02:00", "aa:bb:cc:dd:ee:01", tmp_path / "bad.pcap")
    assert not (tmp_path / "none.pcap").exists()


async def replayed_services(graph: Any, prepared: Prepared, tmp: Path, port: int) -> set[str]:
    """Program the switch, replay through d1, and read d1's counters over P4Runtime."""
    from topology.network import Network

    assert isinstance(graph, Network)
    switch = topo.switches(graph.graph)[0]
    spec = SwitchSpec(
        "s1", f"127.0.0.1:{port}", switch.device_id,
        tuple(topo.flood_ports(graph.graph)["s1"]), topo.forwarding(graph.graph)["s1"],
    )  # fmt: skip
    config = RunConfig(
        switches=(spec,),
        p4info=P4INFO,
        interval=0.5,
        time_unit=3600.0,
        db=tmp / "replay.db",
        devices=write_devices_file(graph.graph, tmp / "devices.csv"),
    )
    controller = Controller(config)
    task = asyncio.create_task(controller.run())
    await wait_programmed(controller, task, 30.0)
    loop = asyncio.get_running_loop()
    await loop.run_in_executor(None, lambda: replay(graph.host("d1"), prepared, 20.0, 30.0))
    await asyncio.sleep(1.0)
    controller.stop.set()
    await task
    schema = P4Schema.load(P4INFO)
    max_services = entries.max_services(schema)
    with Storage(tmp / "replay.db") as storage:
        ids = {row.mac: row.device_id for row in storage.devices()}
    d1 = topo.hosts(graph.graph)[1]
    assert d1.name == "d1"
    target = SwitchTarget("s1", f"127.0.0.1:{port}", switch.device_id, election_id=(0, 9))
    async with Session(target) as session:
        values = await session.read_counter(schema.counter(entries.COUNTER))
    device_id = ids[d1.mac]
    assert device_id is not None
    cells = values.packets[device_id * max_services : (device_id + 1) * max_services]
    names = Catalogue.default().names
    return {names[i] for i in cells.nonzero()[0].tolist()}


@pytest.mark.root
@pytest.mark.mininet
@pytest.mark.tcpreplay
@pytest.mark.slow
@pytest.mark.data
def test_real_capture_replayed_through_a_device_host_is_counted_as_offline(
    tmp_path: Path, shared_data: Path, free_port: Callable[[], int]
) -> None:
    from topology.network import running_network

    capture = shared_data / "iot-sentinel" / "captures" / "HueBridge" / "Setup-A-1-STA.pcap"
    graph = topo.default_topology([("d1", "HueBridge")])
    port = free_port()
    graph.nodes["s1"]["grpc_port"] = port
    d1 = topo.hosts(graph)[1]
    prepared = prepare(capture, device_mac_of(capture), d1.mac, tmp_path / "d1.pcap", limit=400)
    assert prepared.frames > 20
    offline, _ = read_pcap(prepared.path, Catalogue.default())
    expected = {offline.services[s] for s in offline.service.tolist()}
    started = time.monotonic()
    with running_network(graph, "refswitch", tmp_path / "logs") as network:
        counted = asyncio.run(replayed_services(network, prepared, tmp_path, port))
    assert counted == expected
    assert {"udp/53", "tcp/80"} <= counted
    assert time.monotonic() - started < 120
