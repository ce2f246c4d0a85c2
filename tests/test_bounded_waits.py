"""What the commands do when what they talk to stops answering: a PostgreSQL server that is
stopped or keeps a lock, a switch that is stopped mid-run. Each ends in bounded time with an
error naming it and a non-zero exit status, and what was stored before stays."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pytest

from controller.store.storage import DeviceRow, open_store
from tests.support.paths import P4INFO, ROOT
from tests.support.postgres import PostgresServer
from tests.support.processes import SvcfpProcess
from tests.support.switch import CAMERA, DEVICE_ID, SERVER, Wire, frame, totals

pytest_plugins = ["tests.support.storage"]

# How long a command may take to start and to report, beyond the wait it is bounded by.
SLACK = 10.0


def with_password(url: str) -> str:
    """The URL with a password in it (the tests' server trusts local users and ignores it)."""
    return url.replace("://svcfp@", "://svcfp:secret@")


def wait_for_totals(location: str | Path, expected: dict[tuple[str, str], tuple[int, int]]) -> None:
    deadline = time.monotonic() + 20
    while totals(location) != expected:
        assert time.monotonic() < deadline, f"{totals(location)} != {expected}"
        time.sleep(0.1)


@pytest.mark.postgres
def test_a_lock_another_session_holds_ends_a_command_naming_the_database(
    postgres: PostgresServer,
) -> None:
    import psycopg

    plain = postgres.new_database()
    with open_store(plain) as store:
        store.put_devices([DeviceRow(CAMERA, 1, "camera", "s1", 1, "static", 1.0, 1.0)])
    command = [sys.executable, "-m", "svcfp", "devices", "purge", "--mac", CAMERA]
    with psycopg.connect(plain) as other:
        other.execute("LOCK TABLE devices IN ACCESS EXCLUSIVE MODE")
        started = time.monotonic()
        done = subprocess.run(
            [*command, "--db", with_password(plain), "--db-timeout", "2"],
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=120,
        )
        elapsed = time.monotonic() - started
    assert done.returncode == 2, done.stderr
    assert (
        f"svcfp devices: error: database {plain} waited 2 s (--db-timeout) for a lock another "
        "session holds"
    ) in done.stderr
    assert "secret" not in done.stderr
    assert elapsed < 2 + SLACK
    with open_store(plain) as store:
        assert [row.mac for row in store.devices()] == [CAMERA], "nothing purged"


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
