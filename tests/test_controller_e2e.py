"""End to end over real gRPC: the controller programs the switch, frames go through its pipeline,
and exact activity lands in SQLite. Every test runs on the reference switch and on BMv2."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path

import pytest
from finsy.proto import p4i, p4r
from google.protobuf import text_format

from controller.base.errors import InputError, SwitchError
from controller.base.p4info import P4Schema
from controller.control.config import SwitchSpec
from controller.control.controller import Controller
from controller.control.registry import RegisterPolicy
from controller.engine.activity import ActivityTable
from controller.p4rt import entries
from controller.p4rt.session import Session, SwitchTarget, WriteError
from tests.support.switch import (
    CAMERA,
    DEVICE_ID,
    PLUG,
    SERVER,
    TARGETS,
    assert_catalogue_installed,
    config,
    frame,
    mac_params,
    polls,
    read_tables,
    running,
    start_target,
    started,
    totals,
    until,
)
from tests.support.targets import Target


@pytest.fixture(params=TARGETS)
def kind(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def wire(kind: str, tmp_path: Path) -> Iterator[Target]:
    target = start_target(kind, tmp_path / "switch")
    try:
        yield target
    finally:
        target.stop()


def test_frames_to_registry_entries_and_exact_activity(wire: Target, tmp_path: Path) -> None:
    async def scenario() -> Controller:
        async with running(Controller(config(tmp_path, wire))) as controller:
            wire.send(frame(CAMERA, SERVER, 6, 50000, 443, 100), port=1, count=3)
            wire.send(frame(CAMERA, SERVER, 17, 40000, 53, 80), port=1, count=2)
            # The plug is unknown: its first frame raises a digest and registers it.
            wire.send(frame(PLUG, SERVER, 17, 123, 123, 90), port=2)
            await until(lambda: (controller.registry.get(PLUG) or None) is not None)
            await until(lambda: len(wire.devices) >= 3)
            wire.send(frame(PLUG, SERVER, 17, 123, 123, 90), port=2, count=4)
            wire.send(frame(SERVER, PLUG, 17, 123, 123, 90), port=0)
            await asyncio.sleep(0.3)
        return controller

    controller = asyncio.run(scenario())
    plug = controller.registry.get(PLUG)
    assert plug is not None and (plug.device_id, plug.port, plug.source) == (3, 2, "digest")
    assert totals(tmp_path / "svcfp.db") == {
        (CAMERA, "tcp/443"): (3, 300),
        (CAMERA, "udp/53"): (2, 160),
        (PLUG, "udp/123"): (4, 360),
        (SERVER, "udp/123"): (1, 90),
    }
    # The frame to the plug went out of its learned port only; unknown destinations flood.
    assert [port for port, data in wire.sent if data[:6] == bytes.fromhex("02000000000b")] == [2]

    tables = asyncio.run(read_tables(wire.address))
    assert mac_params(tables[entries.DEVICE_TABLE]) == {CAMERA: 1, SERVER: 2, PLUG: 3}
    assert_catalogue_installed(tables)
    assert mac_params(tables[entries.L2_TABLE]) == {CAMERA: 1, SERVER: 0, PLUG: 2}


def test_controller_restart_resumes_without_counting_twice(wire: Target, tmp_path: Path) -> None:
    async def run_once(send: int) -> Controller:
        async with running(Controller(config(tmp_path, wire))) as controller:
            wire.send(frame(CAMERA, SERVER, 6, 50000, 443, 100), port=1, count=send)
            await asyncio.sleep(0.3)
        return controller

    first = asyncio.run(run_once(2))
    assert first.stats.pushes == {"s1": 1}
    second = asyncio.run(run_once(5))
    assert second.stats.pushes == {}, "the switch still runs our pipeline: attach, keep state"
    assert totals(tmp_path / "svcfp.db") == {(CAMERA, "tcp/443"): (7, 700)}


def test_a_run_without_a_device_config_attaches_and_keeps_the_switch_state(
    wire: Target, tmp_path: Path
) -> None:
    async def run_once(send: int, **overrides: object) -> Controller:
        async with running(Controller(config(tmp_path, wire, **overrides))) as controller:
            wire.send(frame(CAMERA, SERVER, 6, 50000, 443, 100), port=1, count=send)
            await asyncio.sleep(0.3)
        return controller

    first = asyncio.run(run_once(2))
    assert first.stats.pushes == {"s1": 1}
    # No --bmv2-json: the running pipeline (BMv2's program with it) is kept, not replaced by the
    # P4Info alone, and the counters go on from where they were.
    second = asyncio.run(run_once(5, bmv2_json=None))
    assert second.stats.pushes == {}
    assert totals(tmp_path / "svcfp.db") == {(CAMERA, "tcp/443"): (7, 700)}


def test_monitor_joins_as_backup_without_disturbing_the_primary(
    wire: Target, tmp_path: Path
) -> None:
    monitoring = config(
        tmp_path,
        wire,
        role="monitor",
        skip_config=True,
        election_id=(0, 1),
        db=tmp_path / "monitor.db",
    )

    async def scenario() -> tuple[Controller, Controller]:
        async with running(Controller(config(tmp_path, wire))) as primary:
            async with running(Controller(monitoring)) as monitor:
                session = monitor.workers[0].session
                assert session is not None and not session.is_primary
                wire.send(frame(CAMERA, SERVER, 17, 40000, 53, 80), port=1, count=6)
                await asyncio.sleep(0.4)
                primary_session = primary.workers[0].session
                assert primary_session is not None and primary_session.is_primary
            await asyncio.sleep(0.2)
        return primary, monitor

    primary, _ = asyncio.run(scenario())
    assert primary.stats.connects == {"s1": 1}, "the primary never lost its session"
    assert totals(tmp_path / "svcfp.db") == {(CAMERA, "udp/53"): (6, 480)}
    assert totals(tmp_path / "monitor.db") == {(CAMERA, "udp/53"): (6, 480)}


def test_wrong_device_id_and_unreachable_switch_name_the_switch(wire: Target) -> None:
    schema = P4Schema.load(wire.p4info)

    async def connect(address: str, device_id: int, timeout: float) -> None:
        # BMv2 arbitrates any device id and refuses the pipeline; the reference switch refuses
        # already at arbitration. Either way the controller cannot program the wrong device.
        target = SwitchTarget("s9", address, device_id)
        async with Session(target, connect_timeout=timeout) as session:
            await session.ensure_pipeline(schema, wire.device_config, skip_config=False)

    with pytest.raises(SwitchError, match=rf"switch s9 at {wire.address} \(device id 7\)"):
        asyncio.run(connect(wire.address, 7, 2.0))
    with pytest.raises(
        SwitchError, match=r"switch s9 at 127.0.0.1:1 \(device id 3\) is unreachable"
    ):
        asyncio.run(connect("127.0.0.1:1", DEVICE_ID, 0.5))


def test_mismatched_p4info_is_refused_naming_the_object(wire: Target, tmp_path: Path) -> None:
    async def push_then_attach(other: Path) -> None:
        # Stopped once set up: a duration would have to cover BMv2's pipeline push.
        async with running(Controller(config(tmp_path, wire))):
            pass
        second = Controller(config(tmp_path, wire, p4info=other, skip_config=True))
        await second.run()

    schema = P4Schema.load(wire.p4info)
    changed = p4i.P4Info()
    changed.CopyFrom(schema.p4info)
    changed.tables[3].size = 2048
    other = tmp_path / "other.p4info.txtpb"
    other.write_text(text_format.MessageToString(changed))
    with pytest.raises(InputError, match=r"table IngressImpl.l2_forward differs"):
        asyncio.run(push_then_attach(other))


def test_per_update_errors_are_listed(wire: Target) -> None:
    schema = P4Schema.load(wire.p4info)

    async def scenario() -> WriteError:
        target = SwitchTarget("s1", wire.address, DEVICE_ID, election_id=(0, 5))
        async with Session(target, connect_timeout=3.0) as session:
            await session.ensure_pipeline(schema, wire.device_config, skip_config=False)
            good = entries.device_entry(schema, CAMERA, 1)
            await session.write(entries.updates(p4r.Update.INSERT, [good]))
            again = entries.updates(
                p4r.Update.INSERT, [entries.device_entry(schema, PLUG, 2), good]
            )
            try:
                await session.write(again, "Write devices")
            except WriteError as exc:
                return exc
        raise AssertionError("the duplicate insert was accepted")

    error = asyncio.run(scenario())
    assert [(f.index, f.code) for f in error.failures] == [(1, "ALREADY_EXISTS")]
    assert "switch s1 at" in str(error) and "Write devices: 1 update(s) refused" in str(error)


def test_idle_eviction_frees_the_id_and_the_next_owner_starts_from_zero(
    wire: Target, tmp_path: Path
) -> None:
    newcomer = "02:00:00:00:00:0c"

    async def scenario() -> Controller:
        async with running(Controller(config(tmp_path, wire, idle_timeout=0.6))) as controller:
            wire.send(frame(PLUG, SERVER, 17, 5000, 53, 64), port=2)
            await until(lambda: controller.registry.get(PLUG) is not None)
            await until(lambda: len(wire.devices) == 3)
            wire.send(frame(PLUG, SERVER, 17, 5000, 53, 64), port=2, count=5)
            # The plug falls silent: its entry goes, then its id 3 is freed.
            await until(lambda: getattr(controller.registry.get(PLUG), "device_id", 0) is None)
            assert len(wire.devices) == 2
            wire.send(frame(newcomer, SERVER, 6, 5000, 443, 70), port=3)
            await until(lambda: controller.registry.get(newcomer) is not None)
            row = controller.registry.get(newcomer)
            assert row is not None and row.device_id == 3
            await until(lambda: len(wire.devices) == 3)
            wire.send(frame(newcomer, SERVER, 6, 5000, 443, 70), port=3, count=2)
            await polls(controller)
        return controller

    asyncio.run(scenario())
    assert totals(tmp_path / "svcfp.db") == {
        (PLUG, "udp/53"): (5, 320),
        (newcomer, "tcp/443"): (2, 140),
    }


def test_closed_units_reach_the_callback(wire: Target, tmp_path: Path) -> None:
    closed: list[ActivityTable] = []

    async def scenario() -> None:
        async with running(
            Controller(config(tmp_path, wire, time_unit=0.5), lambda c: closed.append(c.activity))
        ):
            wire.send(frame(CAMERA, SERVER, 6, 50000, 443, 100), port=1, count=2)
            await until(lambda: len(closed) > 0 and sum(len(t) for t in closed) > 0)

    asyncio.run(scenario())
    rows = [r for table in closed for r in table.records()]
    assert all(table.unit_seconds == 0.5 for table in closed)
    assert [(r.device, r.service, r.packets, r.bytes) for r in rows] == [
        (CAMERA, "tcp/443", 2, 200)
    ]


def test_full_device_table_warns_and_keeps_serving(
    wire: Target, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    async def scenario() -> Controller:
        async with running(Controller(config(tmp_path, wire, capacity=2))) as controller:
            wire.send(frame(PLUG, SERVER, 17, 5000, 53, 64), port=2)
            await until(lambda: "event=registry_full" in caplog.text)
            wire.send(frame(CAMERA, SERVER, 17, 5000, 53, 64), port=1, count=3)
            await polls(controller)
        return controller

    controller = asyncio.run(scenario())
    assert controller.registry.get(PLUG) is None
    assert "device table full: 2 of 2 device ids in use; 02:00:00:00:00:0b" in caplog.text
    assert totals(tmp_path / "svcfp.db") == {(CAMERA, "udp/53"): (3, 192)}
    learned = controller.workers[0].forwarding.table()
    assert learned[PLUG] == 2, "forwarding still learns the unregistered device"


def test_several_switches_from_one_process(kind: str, tmp_path: Path) -> None:
    with started(kind, tmp_path, count=2) as wires:
        specs = tuple(
            SwitchSpec(f"s{i + 1}", w.address, DEVICE_ID, ports=(0, 1)) for i, w in enumerate(wires)
        )

        async def scenario() -> Controller:
            controlling = Controller(config(tmp_path, wires[0], switches=specs))
            async with running(controlling) as controller:
                wires[0].send(frame(CAMERA, SERVER, 6, 50000, 443, 100), port=1, count=2)
                wires[1].send(frame(SERVER, CAMERA, 6, 443, 50000, 60), port=0, count=3)
                wires[1].send(frame(PLUG, SERVER, 17, 5000, 53, 64), port=1)
                await until(lambda: controller.registry.get(PLUG) is not None)
                await polls(controller)
            return controller

        controller = asyncio.run(scenario())
        assert controller.stats.pushes == {"s1": 1, "s2": 1}
        plug = controller.registry.get(PLUG)
        assert plug is not None and plug.switch == "s2"
        # The plug's entry lives on its home switch only.
        assert len(wires[0].devices) == 2
        assert len(wires[1].devices) == 3
        assert totals(tmp_path / "svcfp.db") == {
            (CAMERA, "tcp/443"): (2, 200),
            (SERVER, "tcp/443"): (3, 180),
        }


def test_tap_mode_counts_then_drops_and_policy_filters(wire: Target, tmp_path: Path) -> None:
    allow = tmp_path / "allow.txt"
    allow.write_text(f"{PLUG}\n")
    stranger = "02:00:00:00:00:0d"

    tapping = config(tmp_path, wire, tap=True, policy=RegisterPolicy.parse("allowlist", allow))

    async def scenario() -> Controller:
        async with running(Controller(tapping)) as controller:
            wire.send(frame(stranger, SERVER, 17, 5000, 53, 64), port=3)
            wire.send(frame(PLUG, SERVER, 17, 5000, 53, 64), port=2)
            await until(lambda: controller.registry.get(PLUG) is not None)
            await until(lambda: len(wire.devices) == 3)
            wire.send(frame(PLUG, CAMERA, 17, 5000, 53, 64), port=2, count=2)
            wire.send(frame(CAMERA, PLUG, 6, 443, 5000, 100), port=1)
            await polls(controller)
        return controller

    controller = asyncio.run(scenario())
    assert controller.registry.get(stranger) is None, "not on the allowlist"
    assert wire.sent == [], "tap mode forwards nothing"
    assert wire.multicast_groups() == {}
    assert totals(tmp_path / "svcfp.db") == {
        (PLUG, "udp/53"): (2, 128),
        (CAMERA, "tcp/443"): (1, 100),
    }
