"""What the commands do when what they talk to stops answering: a PostgreSQL server that is
stopped or keeps a lock, a switch that is stopped mid-run or before its set-up is done, or stops
answering one step of it. Each ends in bounded time with an error naming it (and the step) and a
non-zero exit status, and what was stored before stays; and the P4Runtime channel's keepalive
pings are accepted by both switches."""

from __future__ import annotations

import asyncio
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest
from finsy.proto import p4r

from controller.base.errors import SwitchError
from controller.base.p4info import P4Schema
from controller.base.pcapfile import PcapWriter
from controller.control.controller import FLUSH_TIMEOUT
from controller.p4rt import entries
from controller.p4rt.session import (
    KEEPALIVE_TIME_MS,
    KEEPALIVE_TIMEOUT_MS,
    Deadline,
    Session,
    SwitchTarget,
    channel_options,
)
from controller.store.storage import DeviceRow, open_store
from refswitch.server import MIN_PING_INTERVAL_MS
from tests.support.paths import P4INFO, ROOT
from tests.support.postgres import PostgresServer, with_password
from tests.support.processes import SvcfpProcess, SwitchProcess
from tests.support.slow import unanswered
from tests.support.switch import CAMERA, DEVICE_ID, SERVER, Wire, frame, totals

pytest_plugins = ["tests.support.storage"]

# How long a command may take to start and to report, beyond the wait it is bounded by.
SLACK = 10.0


def wait_for_totals(location: str | Path, expected: dict[tuple[str, str], tuple[int, int]]) -> None:
    deadline = time.monotonic() + 20
    while totals(location) != expected:
        assert time.monotonic() < deadline, f"{totals(location)} != {expected}"
        time.sleep(0.1)


def camera_registered(location: str | Path) -> None:
    with open_store(location) as store:
        store.put_devices([DeviceRow(CAMERA, 1, "camera", "s1", 1, "static", 1.0, 1.0)])


def purge_camera(location: str, db_timeout: int) -> subprocess.CompletedProcess[str]:
    """`svcfp devices purge` of the camera, which must end within `db_timeout` (and start-up)."""
    started = time.monotonic()
    done = subprocess.run(
        [sys.executable, "-m", "svcfp", "devices", "purge", "--mac", CAMERA,
         "--db", location, "--db-timeout", str(db_timeout)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )  # fmt: skip
    assert time.monotonic() - started < db_timeout + SLACK, done.stderr
    assert done.returncode == 2, done.stderr
    assert "Traceback" not in done.stderr
    return done


def still_registered(location: str | Path) -> None:
    with open_store(location) as store:
        assert [row.mac for row in store.devices()] == [CAMERA], "nothing purged"


@pytest.mark.postgres
def test_a_lock_another_session_holds_ends_a_command_naming_the_database(
    postgres: PostgresServer,
) -> None:
    import psycopg

    plain = postgres.new_database()
    camera_registered(plain)
    with psycopg.connect(plain) as other:
        other.execute("LOCK TABLE devices IN ACCESS EXCLUSIVE MODE")
        done = purge_camera(with_password(plain), 2)
    assert (
        f"svcfp devices: error: database {plain} waited 2 s (--db-timeout) for a lock another "
        "session holds"
    ) in done.stderr
    assert "secret" not in done.stderr
    still_registered(plain)


def test_a_sqlite_lock_another_connection_keeps_ends_a_command_naming_the_file(
    tmp_path: Path,
) -> None:
    path = tmp_path / "svcfp.db"
    camera_registered(path)
    other = sqlite3.connect(path, isolation_level=None)
    try:
        other.execute("BEGIN IMMEDIATE")
        done = purge_camera(str(path), 1)
    finally:
        other.close()
    assert (
        f"svcfp devices: error: database {path} stayed locked by another connection for 1 s "
        "(--db-timeout)"
    ) in done.stderr
    still_registered(path)


@pytest.mark.postgres
@pytest.mark.slow
def test_a_database_server_stopped_mid_run_ends_the_run_naming_it(
    postgres: PostgresServer, tmp_path: Path
) -> None:
    plain = postgres.new_database()
    devices = tmp_path / "devices.csv"
    devices.write_text(f"{CAMERA},camera,1\n{SERVER},server,0\n")
    wire = Wire()
    controller = SvcfpProcess(
        "--log-level", "INFO", "run",
        "--grpc-addr", wire.address, "--device-id", str(DEVICE_ID), "--p4info", str(P4INFO),
        "--db", with_password(plain), "--db-timeout", "2", "--devices", str(devices),
        "--ports", "0-3", "--interval", "0.2", "--duration", "120",
    )  # fmt: skip
    try:
        controller.wait_for("event=synced")
        wire.send(frame(CAMERA, SERVER, 17, 40000, 53, 80), port=1, count=5)
        wait_for_totals(plain, {(CAMERA, "udp/53"): (5, 400)})
        with postgres.frozen():
            frozen = time.monotonic()
            code = controller.wait(timeout=120)
            elapsed = time.monotonic() - frozen
        assert code == 2, controller.stderr
        assert (
            f"svcfp run: error: database {plain} did not answer within 2 s (--db-timeout)"
        ) in controller.stderr
        assert "secret" not in controller.stderr
        # 2 s, the server's own limits' margins, and the client's cut-off.
        assert elapsed < 2 + 2 + SLACK
        assert totals(plain) == {(CAMERA, "udp/53"): (5, 400)}, "the polls stored before stay"
    finally:
        controller.kill_if_running()
        wire.stop()


# Each switch test runs on the reference switch and, where it is installed, on BMv2.
ON_BOTH_SWITCHES = pytest.mark.parametrize(
    "kind",
    [
        pytest.param("refswitch", id="refswitch"),
        pytest.param("bmv2", id="bmv2", marks=[pytest.mark.bmv2, pytest.mark.root]),
    ],
)


class StoppableSwitch:
    """A switch in a process of its own, stopped and continued by its PID: the reference switch,
    replaying the camera's frames once told to, or BMv2 in a namespace of the test's own, sent
    them on a veth."""

    FRAMES = 5

    def __init__(self, kind: str, folder: Path) -> None:
        self.kind = kind
        self.camera = camera = frame(CAMERA, SERVER, 6, 50000, 443, 100)
        if kind == "refswitch":
            pcap = folder / "camera.pcap"
            with PcapWriter(pcap) as writer:
                for second in range(self.FRAMES):
                    writer.write(camera, 1_700_000_000.0 + second)
            self.switch = SwitchProcess(
                "--device-id", str(DEVICE_ID), "--pcap-in", f"1@{pcap}", "--replay-start", "signal"
            )  # fmt: skip
            self.address, self.pid = self.switch.address, self.switch.pid
            self.program = ["--p4info", str(P4INFO)]
        else:
            from tests.support.bmv2 import Bmv2Target

            self.bmv2 = Bmv2Target(folder / "bmv2", DEVICE_ID)
            assert self.bmv2.process is not None and self.bmv2.bmv2_json is not None
            self.address, self.pid = self.bmv2.address, self.bmv2.process.pid
            self.program = ["--p4info", str(self.bmv2.p4info)]
            self.program += ["--bmv2-json", str(self.bmv2.bmv2_json)]

    def send(self) -> None:
        """The camera's frames arrive on port 1 (returns once BMv2 counted them)."""
        if self.kind == "refswitch":
            self.switch.process.send_signal(signal.SIGUSR1)
        else:
            self.bmv2.send(self.camera, port=1, count=self.FRAMES)

    def stop(self) -> None:
        """Continued first: a stopped process takes no signal to end."""
        os.kill(self.pid, signal.SIGCONT)
        if self.kind == "refswitch":
            self.switch.stop()
        else:
            self.bmv2.stop()


@pytest.mark.slow
@ON_BOTH_SWITCHES
def test_a_switch_stopped_mid_run_ends_the_run_after_its_duration_naming_it(
    kind: str, tmp_path: Path
) -> None:
    devices = tmp_path / "devices.csv"
    devices.write_text(f"{CAMERA},camera,1\n{SERVER},server,0\n")
    db = tmp_path / "svcfp.db"
    duration = 15.0
    switch = StoppableSwitch(kind, tmp_path)
    started = time.monotonic()
    controller = SvcfpProcess(
        "--log-level", "INFO", "run",
        "--grpc-addr", switch.address, "--device-id", str(DEVICE_ID), *switch.program,
        "--db", str(db), "--devices", str(devices), "--ports", "0-3",
        "--interval", "0.2", "--duration", f"{duration:g}",
    )  # fmt: skip
    try:
        controller.wait_for("event=synced")
        # The frames arrive once the controller's tables are written; a poll stores them.
        switch.send()
        wait_for_totals(db, {(CAMERA, "tcp/443"): (5, 500)})
        os.kill(switch.pid, signal.SIGSTOP)
        frozen = time.monotonic()
        code = controller.wait(timeout=120)
        ended = time.monotonic()
    finally:
        controller.kill_if_running()
        switch.stop()
    assert code == 3, controller.stderr
    assert (
        f"svcfp run: error: switch s1 at {switch.address} (device id {DEVICE_ID}) did not answer "
        "the last poll"
    ) in controller.stderr
    # The duration, then the last poll's bound: no poll waits for a switch that is stopped.
    took = f"{ended - frozen:.1f} s after the freeze, {ended - started - duration:.1f} s after D"
    assert ended - started < duration + FLUSH_TIMEOUT + SLACK, took
    assert totals(db) == {(CAMERA, "tcp/443"): (5, 500)}, "the polls stored before stay"


def frozen_setup_run(
    address: str, program: list[str], folder: Path, duration: float
) -> tuple[SvcfpProcess, int, float]:
    """`svcfp run --duration` on a switch that will not complete its set-up: the controller,
    its exit status and how long it took from its start."""
    started = time.monotonic()
    controller = SvcfpProcess(
        "--log-level", "INFO", "run",
        "--grpc-addr", address, "--device-id", str(DEVICE_ID), *program,
        "--db", str(folder / "svcfp.db"), "--ports", "0-3", "--interval", "0.2",
        "--duration", f"{duration:g}",
    )  # fmt: skip
    try:
        code = controller.wait(timeout=120)
    finally:
        controller.kill_if_running()
    return controller, code, time.monotonic() - started


def ended_by_its_duration(
    controller: SvcfpProcess, code: int, took: float, duration: float, said: str
) -> None:
    """The run ended with exit 3 by its duration and the last poll's bound, saying `said`."""
    assert code == 3, controller.stderr
    assert "Traceback" not in controller.stderr
    assert said in controller.stderr
    assert took < duration + FLUSH_TIMEOUT + SLACK, f"{took:.1f} s"


@pytest.mark.slow
@ON_BOTH_SWITCHES
def test_a_switch_stopped_before_its_set_up_ends_the_run_by_its_duration_naming_it(
    kind: str, tmp_path: Path
) -> None:
    duration = 6.0
    switch = StoppableSwitch(kind, tmp_path)
    os.kill(switch.pid, signal.SIGSTOP)
    try:
        controller, code, took = frozen_setup_run(
            switch.address, switch.program, tmp_path, duration
        )
    finally:
        switch.stop()
    # It accepts the TCP connection (the kernel does) and then says nothing at all.
    ended_by_its_duration(
        controller, code, took, duration,
        f"svcfp run: error: switch s1 at {switch.address} (device id {DEVICE_ID}) is unreachable "
        "after ",
    )  # fmt: skip
    assert "s: connecting: no connection within " in controller.stderr
    assert "that was all the time left until the end of the run (--duration 6 s)" in (
        controller.stderr
    )


@pytest.mark.slow
@pytest.mark.parametrize(
    ("rpc", "step"),
    [
        ("set_forwarding_pipeline_config", "pushing the pipeline (SetForwardingPipelineConfig)"),
        ("read", "reading table entries"),
        ("write", "writing table entries"),
    ],
)
def test_a_switch_that_stops_answering_in_its_set_up_ends_the_run_by_its_duration_naming_the_step(
    rpc: str, step: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    duration = 6.0
    with unanswered(monkeypatch, rpc) as held:
        wire = Wire()
        try:
            controller, code, took = frozen_setup_run(
                wire.address, ["--p4info", str(P4INFO)], tmp_path, duration
            )
        finally:
            wire.stop()
    assert held.is_set()
    # Without the bound, the step's own deadline (30 s) would end it.
    ended_by_its_duration(
        controller, code, took, duration,
        f"svcfp run: error: switch s1 at {wire.address} (device id {DEVICE_ID}) did not answer "
        f"{step} before the end of the run (--duration 6 s)",
    )  # fmt: skip


def test_a_set_up_step_without_an_answer_is_named_after_its_own_deadline(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Without a run's end, each RPC has its own deadline, and its failure names the step."""

    async def push(address: str) -> None:
        target = SwitchTarget("s1", address, DEVICE_ID, election_id=(0, 10))
        async with Session(target, connect_timeout=3.0, rpc_timeout=1.0) as session:
            await session.ensure_pipeline(P4Schema.load(P4INFO), b"", skip_config=False)

    with unanswered(monkeypatch, "set_forwarding_pipeline_config"):
        wire = Wire()
        try:
            started = time.monotonic()
            with pytest.raises(SwitchError) as failed:
                asyncio.run(push(wire.address))
            took = time.monotonic() - started
        finally:
            wire.stop()
    assert str(failed.value) == (
        f"switch s1 at {wire.address} (device id {DEVICE_ID}) did not answer pushing the "
        "pipeline (SetForwardingPipelineConfig) within 1 s"
    )
    assert took < 1.0 + 2.0, f"{took:.1f} s"


def test_the_end_of_a_bounded_run_cuts_each_set_up_deadline(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A session given the run's end: its RPCs before that end answer, the first one left
    unanswered fails at the end, not 30 s later."""
    schema = P4Schema.load(P4INFO)
    digests = entries.updates(p4r.Update.INSERT, [entries.digest_entry(schema)])

    async def set_up(address: str, until: Deadline) -> None:
        target = SwitchTarget("s1", address, DEVICE_ID, election_id=(0, 10))
        async with Session(target, connect_timeout=3.0, until=until) as session:
            await session.ensure_pipeline(schema, b"", skip_config=False)
            await session.write(digests, "digest config", "writing the digest config")

    with unanswered(monkeypatch, "write"):
        wire = Wire()
        try:
            until = Deadline(time.monotonic() + 2.0, "the end of the run (--duration 2 s)")
            with pytest.raises(SwitchError) as failed:
                asyncio.run(set_up(wire.address, until))
            late = time.monotonic() - until.at
        finally:
            wire.stop()
    assert str(failed.value) == (
        f"switch s1 at {wire.address} (device id {DEVICE_ID}) did not answer writing the digest "
        "config before the end of the run (--duration 2 s)"
    )
    assert late < 0.5, f"{late:.2f} s after the end"


def test_the_p4runtime_channel_sends_keepalive_pings() -> None:
    options = dict(channel_options())
    assert options["grpc.keepalive_time_ms"] == KEEPALIVE_TIME_MS == 10_000
    assert options["grpc.keepalive_timeout_ms"] == KEEPALIVE_TIMEOUT_MS == 5_000
    assert options["grpc.http2.ping_timeout_ms"] == KEEPALIVE_TIMEOUT_MS
    assert options["grpc.keepalive_permit_without_calls"] == 1
    # BMv2 keeps gRPC's default ping policy: a third ping with nothing sent between is GOAWAY.
    assert options["grpc.http2.max_pings_without_data"] == 2
    # The reference switch accepts pings at that rate whatever the controller is doing.
    assert KEEPALIVE_TIME_MS >= MIN_PING_INTERVAL_MS


@pytest.mark.slow
def test_a_switch_stopped_with_a_session_open_is_found_out_by_keepalive() -> None:
    """No RPC under way: the unacknowledged keepalive ping ends the session."""
    switch = SwitchProcess("--device-id", str(DEVICE_ID))
    target = SwitchTarget("s1", switch.address, DEVICE_ID, election_id=(0, 10))

    async def session_lost_after_freeze() -> tuple[float, str | None]:
        async with Session(target, connect_timeout=3.0) as session:
            os.kill(switch.pid, signal.SIGSTOP)
            frozen = time.monotonic()
            bound = (KEEPALIVE_TIME_MS + KEEPALIVE_TIMEOUT_MS) / 1000 + SLACK
            await asyncio.wait_for(session.disconnected.wait(), bound)
            return time.monotonic() - frozen, session.disconnect_reason

    try:
        took, reason = asyncio.run(session_lost_after_freeze())
    finally:
        os.kill(switch.pid, signal.SIGCONT)
        switch.stop()
    assert reason is not None and "ping timeout" in reason, reason
    assert took < (KEEPALIVE_TIME_MS + KEEPALIVE_TIMEOUT_MS) / 1000 + 2.0, f"{took:.1f} s"


@pytest.mark.slow
@ON_BOTH_SWITCHES
def test_a_run_with_keepalive_pings_stays_connected_and_counts(kind: str, tmp_path: Path) -> None:
    """Long enough for a keepalive ping (one every 10 s) between polls 6 s apart."""
    devices = tmp_path / "devices.csv"
    devices.write_text(f"{CAMERA},camera,1\n{SERVER},server,0\n")
    db = tmp_path / "svcfp.db"
    switch = StoppableSwitch(kind, tmp_path)
    controller = SvcfpProcess(
        "--log-level", "INFO", "run",
        "--grpc-addr", switch.address, "--device-id", str(DEVICE_ID), *switch.program,
        "--db", str(db), "--devices", str(devices), "--ports", "0-3",
        "--interval", "6", "--duration", "12",
    )  # fmt: skip
    try:
        controller.wait_for("event=synced")
        switch.send()
        code = controller.wait(timeout=120)
    finally:
        controller.kill_if_running()
        switch.stop()
    assert code == 0, controller.stderr
    assert "event=disconnected" not in controller.stderr
    assert "session_failed" not in controller.stderr
    assert totals(db) == {(CAMERA, "tcp/443"): (5, 500)}
