"""Switches under test and the controller around them: frames, a target switch on an ephemeral
port (the reference switch in the test's own process, or BMv2 in a network namespace of the
test's own), a run configuration, bounded waits, and table reads.

A `Target` is what the controller tests drive, whichever switch it is: its P4Runtime address,
the device config to push, frames injected on a port, the frames it sent out, its device_table
and multicast groups as P4Runtime reads them, and a crash and restart on the same address.
"""

from __future__ import annotations

import asyncio
import contextlib
import struct
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
from finsy.proto import p4r

from controller.base.p4info import P4Schema, decode_int, decode_mac
from controller.control.config import RunConfig, SwitchSpec
from controller.control.controller import Controller
from controller.engine.catalogue import Catalogue
from controller.p4rt import entries
from controller.p4rt.session import Session, SwitchTarget
from controller.store.storage import open_store
from refswitch.server import P4RuntimeServer
from refswitch.switch import Switch
from tests.support.paths import P4INFO, TNA_P4INFO
from tests.support.targets import Target

CAMERA = "02:00:00:00:00:0a"
PLUG = "02:00:00:00:00:0b"
SERVER = "02:00:00:00:00:fe"
DEVICE_ID = 3


def frame(src: str, dst: str, proto: int, sport: int, dport: int, size: int) -> bytes:
    """An Ethernet/IPv4/TCP-or-UDP frame of exactly `size` bytes."""
    l4 = (
        struct.pack("!HHIIBBHHH", sport, dport, 0, 0, 0x50, 0x02, 1024, 0, 0)
        if proto == 6
        else struct.pack("!HHHH", sport, dport, size - 34, 0)
    )
    ip = struct.pack(
        "!BBHHHBBH4s4s",
        0x45,
        0,
        size - 14,
        1,
        0,
        64,
        proto,
        0,
        bytes([10, 0, 0, 2]),
        bytes([10, 0, 0, 1]),
    )
    head = bytes.fromhex(dst.replace(":", "")) + bytes.fromhex(src.replace(":", "")) + b"\x08\x00"
    packet = head + ip + l4
    return packet + bytes(size - len(packet))


class Wire(Target):
    """A reference switch with a P4Runtime server on an ephemeral port, capturing egress."""

    kind = "refswitch"

    def __init__(self, device_id: int = DEVICE_ID, address: str = "127.0.0.1:0") -> None:
        self.device_id = device_id
        self._sent: list[tuple[int, bytes]] = []
        self._start(address)
        super().__init__(self.server.address)

    def _start(self, address: str) -> None:
        self.switch = Switch(self.device_id)
        self.switch.set_transmit(lambda port, data: self._sent.append((port, data)))
        self.server = P4RuntimeServer(self.switch, address).start()

    @property
    def sent(self) -> list[tuple[int, bytes]]:
        """(port, frame) of every frame the switch sent out, in order."""
        return list(self._sent)

    def send(self, data: bytes, port: int, count: int = 1) -> None:
        for _ in range(count):
            self.switch.receive(data, port)

    def crash(self) -> None:
        self.server.stop(0)
        self.switch.close()

    def restart(self) -> None:
        self._start(self.address)

    def stop(self) -> None:
        super().stop()
        self.crash()


class TnaWire(Wire):
    """The reference switch programmed with the TNA program's P4Info."""

    kind = "refswitch-tna"
    p4info = TNA_P4INFO


def config(tmp_path: Path, target: str | Target, **overrides: object) -> RunConfig:
    """A run on the switch at `target` (an address, or a target: its address and device
    config), with the camera and the service host known."""
    devices = tmp_path / "devices.csv"
    devices.write_text(f"mac,label,port\n{CAMERA},camera,1\n{SERVER},service-host,0\n")
    address = target if isinstance(target, str) else target.address
    values: dict[str, object] = {
        "switches": (SwitchSpec("s1", address, DEVICE_ID, ports=(0, 1, 2, 3)),),
        "p4info": P4INFO if isinstance(target, str) else target.p4info,
        "bmv2_json": None if isinstance(target, str) else target.bmv2_json,
        "interval": 0.1,
        "time_unit": 3600.0,
        "db": tmp_path / "svcfp.db",
        "devices": devices,
        "connect_timeout": 3.0,
        "reconnect_delay": 0.1,
    }
    values.update(overrides)
    return RunConfig(**values)  # type: ignore[arg-type]


async def until(condition: object, timeout: float = 5.0) -> None:
    """Wait (bounded) until `condition()` is true."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not condition():  # type: ignore[operator]
        if loop.time() > deadline:
            raise AssertionError("condition not reached in time")
        await asyncio.sleep(0.02)


@contextlib.asynccontextmanager
async def running(controller: Controller) -> AsyncIterator[Controller]:
    """Run `controller` for the block, from when every switch has a session; stop it after."""
    task = asyncio.create_task(controller.run())
    try:
        await until(lambda: all(w.session is not None for w in controller.workers))
        yield controller
    finally:
        controller.stop.set()
        await task


async def polls(controller: Controller, count: int = 2) -> None:
    """Wait (bounded) for `count` more polls of every switch."""
    polled = controller.cycle
    await until(lambda: controller.cycle >= polled + count)


def mac_params(table: list[p4r.TableEntry]) -> dict[str, int]:
    """MAC key → the action's first parameter, for a table keyed by one MAC."""
    return {
        decode_mac(e.match[0].exact.value): decode_int(e.action.action.params[0].value)
        for e in table
    }


def assert_catalogue_installed(tables: dict[str, list[p4r.TableEntry]]) -> None:
    """Both service tables hold exactly the built-in catalogue's entries."""
    catalogue = Catalogue.default()
    assert len(tables[entries.SERVICE_TABLES[0]]) == len(catalogue.dst_services())
    assert len(tables[entries.SERVICE_TABLES[1]]) == len(catalogue.src_services())


async def read_tables(address: str) -> dict[str, list[p4r.TableEntry]]:
    """Every entry of the four tables, read by a backup (read-only) session."""
    schema = P4Schema.load(P4INFO)
    target = SwitchTarget("reader", address, DEVICE_ID, election_id=(0, 1), role="monitor")
    async with Session(target, connect_timeout=3.0) as session:
        found: dict[str, list[p4r.TableEntry]] = {}
        for name in (entries.DEVICE_TABLE, *entries.SERVICE_TABLES, entries.L2_TABLE):
            read = await session.read([entries.table_wildcard(schema, name)])
            found[name] = [e.table_entry for e in read]
        return found


def totals(db: Path | str) -> dict[tuple[str, str], tuple[int, int]]:
    """Packets and bytes per (device, service) over every unit stored in `db`."""
    with open_store(db) as store:
        summed: dict[tuple[str, str], tuple[int, int]] = {}
        for row in store.activity():
            p, b = summed.get((row.device, row.service), (0, 0))
            summed[(row.device, row.service)] = (p + row.packets, b + row.bytes)
        return summed


# Every target the controller tests run on: the same test, parametrised by target.
TARGETS = [
    pytest.param("refswitch", id="refswitch"),
    pytest.param("refswitch-tna", id="refswitch-tna"),
    pytest.param("bmv2", id="bmv2", marks=[pytest.mark.bmv2, pytest.mark.root]),
]


def start_target(kind: str, logs: Path, device_id: int = DEVICE_ID) -> Target:
    """A switch of `kind` ('refswitch', 'refswitch-tna' or 'bmv2') with four ports, ready for a
    pipeline."""
    if kind == "refswitch":
        return Wire(device_id)
    if kind == "refswitch-tna":
        return TnaWire(device_id)
    from tests.support.bmv2 import Bmv2Target

    return Bmv2Target(logs, device_id)


@contextlib.contextmanager
def started(kind: str, logs: Path, count: int = 1) -> Iterator[list[Target]]:
    """`count` targets of `kind`, stopped (and everything they created removed) on exit."""
    targets: list[Target] = []
    try:
        for number in range(count):
            targets.append(start_target(kind, logs / f"switch{number}"))
        yield targets
    finally:
        for target in targets:
            target.stop()
