"""The controller loop over real gRPC: nothing blocking the event loop, polls at unit
boundaries, a session torn down under a read, failures and stops that end the run."""

from __future__ import annotations

import asyncio
import math
import time
from pathlib import Path

import pytest

from controller.base.errors import SvcfpError, SwitchError
from controller.base.p4info import P4Schema, encode_mac
from controller.control.controller import FLUSH_TIMEOUT, Controller
from controller.control.schedule import Poll, PollSchedule
from controller.control.worker import SwitchWorker
from controller.p4rt import entries
from controller.p4rt.session import Session, SwitchTarget
from controller.store.storage import Storage
from tests.support.paths import P4INFO
from tests.support.slow import Gate, slow_reads, stalled_reads
from tests.support.switch import (
    CAMERA,
    DEVICE_ID,
    PLUG,
    SERVER,
    Wire,
    config,
    frame,
    polls,
    running,
    totals,
    until,
)

pytestmark = pytest.mark.slow


def test_a_digest_is_served_while_a_poll_is_being_stored(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    gate = Gate(timeout=3.0)
    monkeypatch.setattr(Storage, "record_poll", gate.wrap(Storage.record_poll))
    wire = Wire()
    served_while_held: list[bool] = []

    async def scenario() -> None:
        async with running(Controller(config(tmp_path, wire.address))) as controller:
            wire.send(frame(CAMERA, SERVER, 6, 50000, 443, 100), port=1, count=2)
            await until(gate.held.is_set)
            # The poll's transaction is held in the storage thread; a new device arrives.
            wire.send(frame(PLUG, SERVER, 17, 5000, 53, 64), port=2)
            await until(lambda: encode_mac(PLUG) in wire.devices, timeout=2.0)
            served_while_held.append(not gate.released.is_set())
            gate.released.set()
            # Registered now: the plug's next frame counts as its own.
            wire.send(frame(PLUG, SERVER, 17, 5000, 53, 64), port=2)
            await polls(controller)

    try:
        asyncio.run(scenario())
    finally:
        gate.released.set()
        wire.stop()
    assert served_while_held == [True] and not gate.timed_out
    assert gate.thread is not None and gate.thread.startswith("storage")
    # The held poll was stored in full once released, and the plug's frame after it.
    assert totals(tmp_path / "svcfp.db") == {
        (CAMERA, "tcp/443"): (2, 200),
        (PLUG, "udp/53"): (1, 64),
    }


def test_a_read_cut_short_by_teardown_is_a_switch_error(monkeypatch: pytest.MonkeyPatch) -> None:
    schema = P4Schema.load(P4INFO)
    with slow_reads(monkeypatch, 1.0) as reading:
        wire = Wire()

    async def scenario() -> None:
        target = SwitchTarget("s1", wire.address, DEVICE_ID)
        async with Session(target, connect_timeout=3.0) as session:
            await session.ensure_pipeline(schema, b"", skip_config=False)
            read = asyncio.create_task(session.read_counter(schema.counter(entries.COUNTER)))
            await until(reading.is_set)
            await session.close()
            with pytest.raises(SwitchError, match=r"reading counter .* was cut short"):
                await read

    try:
        asyncio.run(scenario())
    finally:
        wire.stop()


def test_a_poll_during_teardown_reports_no_rows_and_the_run_goes_on(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with slow_reads(monkeypatch, 0.5) as reading:
        wire = Wire()

    async def scenario() -> list[int]:
        async with running(Controller(config(tmp_path, wire.address, interval=60.0))) as ctl:
            worker = ctl.workers[0]
            session = worker.session
            assert session is not None
            reading.clear()
            poll = asyncio.create_task(worker.poll(1))
            await until(reading.is_set)
            await session.close()
            rows = [await poll]
            await until(lambda: ctl.stats.connects.get("s1", 0) >= 2, timeout=10.0)
            rows.append(await worker.poll(2))
            return rows

    try:
        assert asyncio.run(scenario()) == [-1, 0]
    finally:
        wire.stop()


def test_a_switch_that_stops_answering_ends_a_bounded_run_on_time(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    duration = 3.0
    with stalled_reads(monkeypatch) as stalled:
        wire = Wire()
        try:
            controller = Controller(config(tmp_path, wire.address, duration=duration))

            async def scenario() -> float:
                started = time.monotonic()
                run = asyncio.create_task(controller.run())
                await until(lambda: controller.workers[0].session is not None)
                wire.send(frame(CAMERA, SERVER, 6, 50000, 443, 100), port=1, count=3)
                await until(lambda: totals(tmp_path / "svcfp.db") != {})
                # Every read from now on waits for the RPC deadline (30 s), far past the end.
                stalled.set()
                with pytest.raises(SwitchError) as caught:
                    await run
                assert str(caught.value) == (
                    f"switch s1 at {wire.address} (device id {DEVICE_ID}) did not answer the "
                    f"last poll within {FLUSH_TIMEOUT:g} s: what it counted since the last poll "
                    "it answered is not stored"
                )
                return time.monotonic() - started

            took = asyncio.run(scenario())
        finally:
            wire.stop()
    assert took < duration + FLUSH_TIMEOUT + 1.5
    assert totals(tmp_path / "svcfp.db") == {(CAMERA, "tcp/443"): (3, 300)}


def test_poll_schedule_stops_at_every_unit_boundary() -> None:
    schedule = PollSchedule(unit_seconds=10.0, interval=4.0, start=101.0)
    made = []
    for _ in range(5):
        poll = schedule.next()
        made.append((poll, schedule.done(poll, poll.when + 0.01)))
    assert made == [
        (Poll(105.0, 10, closes=False), None),
        (Poll(109.0, 10, closes=False), None),
        (Poll(110.0, 10, closes=True), (10, 10)),
        (Poll(114.0, 11, closes=False), None),
        (Poll(118.0, 11, closes=False), None),
    ]
    # A poll made long after its time (a suspended machine) closes every unit it passed.
    late = schedule.next()
    assert late == Poll(120.0, 11, closes=True)
    assert schedule.done(late, 143.0) == (11, 13)
    assert schedule.next() == Poll(147.0, 14, closes=False)


def test_counts_land_in_the_unit_they_were_counted_in(tmp_path: Path) -> None:
    unit = 1.0
    wire = Wire()

    async def scenario() -> list[int]:
        # Polls every 60 s: only the boundary polls can split the counts by unit.
        chosen = config(tmp_path, wire.address, time_unit=unit, interval=60.0)
        sent: list[int] = []
        async with running(Controller(chosen)) as controller:

            async def next_boundary_poll() -> None:
                made = controller.stats.polls
                await until(lambda: controller.stats.polls > made, timeout=3 * unit)

            for count in (3, 5):
                # Sent just after a boundary poll: counted in the unit that poll opened.
                await next_boundary_poll()
                sent.append(math.floor(time.time() / unit))
                wire.send(frame(CAMERA, SERVER, 17, 40000, 53, 80), port=1, count=count)
            await next_boundary_poll()
        return sent

    try:
        first, second = asyncio.run(scenario())
    finally:
        wire.stop()
    with Storage(tmp_path / "svcfp.db") as store:
        by_unit = {(r.unit, r.packets) for r in store.activity()}
    assert second == first + 1
    assert by_unit == {(first, 3), (second, 5)}


def test_a_worker_that_fails_unexpectedly_ends_the_run(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    async def broken(self: SwitchWorker, session: Session) -> None:
        raise ValueError("Value out of range: -1")

    monkeypatch.setattr(SwitchWorker, "_setup", broken)
    wire = Wire()

    async def scenario() -> None:
        controller = Controller(config(tmp_path, wire.address))
        await asyncio.wait_for(controller.run(), 5.0)

    try:
        with pytest.raises(SvcfpError, match=r"switch s1 \(.*\): ValueError: Value out of range"):
            asyncio.run(scenario())
    finally:
        wire.stop()


def test_a_stop_while_connecting_ends_the_run_at_once(tmp_path: Path) -> None:
    async def scenario() -> float:
        # Nothing listens there; the controller would keep trying for a minute.
        controller = Controller(config(tmp_path, "127.0.0.1:1", connect_timeout=60.0))
        task = asyncio.create_task(controller.run())
        await asyncio.sleep(0.5)
        stopped = time.monotonic()
        controller.stop.set()
        stats = await asyncio.wait_for(task, 5.0)
        assert stats.polls == 0
        return time.monotonic() - stopped

    assert asyncio.run(scenario()) < 1.0
