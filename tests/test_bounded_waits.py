"""What the commands do when what they talk to stops answering: a PostgreSQL server that is
stopped or keeps a lock, a switch that is stopped mid-run. Each ends in bounded time with an
error naming it and a non-zero exit status, and what was stored before stays."""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

from controller.base.pcapfile import PcapWriter
from controller.control.controller import FLUSH_TIMEOUT
from controller.store.storage import DeviceRow, open_store
from tests.support.paths import P4INFO, ROOT
from tests.support.postgres import PostgresServer, with_password
from tests.support.processes import SvcfpProcess, SwitchProcess
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
@pytest.mark.parametrize(
    "kind",
    [
        pytest.param("refswitch", id="refswitch"),
        pytest.param("bmv2", id="bmv2", marks=[pytest.mark.bmv2, pytest.mark.root]),
    ],
)
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
