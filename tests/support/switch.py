"""The reference switch in the test's own process and the controller around it: frames, a
switch on an ephemeral port, a run configuration, bounded waits, and table reads."""

from __future__ import annotations

import asyncio
import contextlib
import struct
from collections.abc import AsyncIterator
from pathlib import Path

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
from tests.support.paths import P4INFO

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


class Wire:
    """A reference switch with a P4Runtime server on an ephemeral port, capturing egress."""

    def __init__(self, device_id: int = DEVICE_ID, address: str = "127.0.0.1:0") -> None:
        self.switch = Switch(device_id)
        self.sent: list[tuple[int, bytes]] = []
        self.switch.set_transmit(lambda port, data: self.sent.append((port, data)))
        self.server = P4RuntimeServer(self.switch, address).start()
        self.address = self.server.address

    @property
    def devices(self) -> dict[bytes, int]:
        """The device_table entries the switch holds now (empty before a pipeline is pushed)."""
        pipeline = self.switch.pipeline
        return {} if pipeline is None else dict(pipeline.tables.devices)

    def send(self, data: bytes, port: int, count: int = 1) -> None:
        for _ in range(count):
            self.switch.receive(data, port)

    def stop(self) -> None:
        self.server.stop(0)
        self.switch.close()


def config(tmp_path: Path, address: str, **overrides: object) -> RunConfig:
    devices = tmp_path / "devices.csv"
    devices.write_text(f"mac,label,port\n{CAMERA},camera,1\n{SERVER},service-host,0\n")
    values: dict[str, object] = {
        "switches": (SwitchSpec("s1", address, DEVICE_ID, ports=(0, 1, 2, 3)),),
        "p4info": P4INFO,
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
