"""Two controllers on two reference switches writing to one database (SQLite, PostgreSQL): each
keeps its own devices and switch baseline, and when one is killed outright and restarted no
frame is lost or counted twice."""

from __future__ import annotations

import json
import signal
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from controller.store.storage import open_store
from tests.support.paths import P4INFO
from tests.support.processes import SvcfpProcess
from tests.support.switch import CAMERA, DEVICE_ID, PLUG, SERVER, Wire, frame, totals

pytest_plugins = ["tests.support.storage"]
pytestmark = pytest.mark.slow

OTHER_SERVER = "02:00:00:00:00:fd"


def wait_for(location: str | Path, expected: dict[tuple[str, str], tuple[int, int]]) -> None:
    deadline = time.monotonic() + 20
    while totals(location) != expected:
        assert time.monotonic() < deadline, f"{totals(location)} != {expected}"
        time.sleep(0.1)


def test_two_controllers_share_a_database_through_a_kill_and_restart(
    tmp_path: Path, db_location: str | Path
) -> None:
    wires = {"a": Wire(), "b": Wire()}
    hosts = {"a": (CAMERA, SERVER), "b": (PLUG, OTHER_SERVER)}
    commands = {}
    for scope, wire in wires.items():
        device, server = hosts[scope]
        devices = tmp_path / f"devices-{scope}.csv"
        devices.write_text(f"{device},{scope}-device,1\n{server},server,0\n")
        switches = tmp_path / f"switches-{scope}.json"
        spec = {"name": f"sw-{scope}", "grpc_addr": wire.address, "device_id": DEVICE_ID}
        switches.write_text(json.dumps([{**spec, "ports": [0, 1, 2, 3]}]))
        commands[scope] = [
            "--log-level", "INFO", "run",
            "--switches", str(switches), "--p4info", str(P4INFO), "--db", str(db_location),
            "--devices", str(devices), "--interval", "0.2", "--duration", "60",
        ]  # fmt: skip

    def send(scope: str, count: int) -> None:
        device, server = hosts[scope]
        wires[scope].send(frame(device, server, 17, 40000, 53, 80), port=1, count=count)

    @contextmanager
    def started(scope: str) -> Iterator[SvcfpProcess]:
        controller = SvcfpProcess(*commands[scope], "--scope", scope)
        try:
            controller.wait_for("event=synced")
            yield controller
        finally:
            controller.kill_if_running()

    try:
        with started("a") as a, started("b") as b:
            send("a", 5)
            send("b", 4)
            wait_for(db_location, {(CAMERA, "udp/53"): (5, 400), (PLUG, "udp/53"): (4, 320)})
            send("a", 3)
            # Killed outright, perhaps between a poll's read and its commit.
            assert a.stop(signal.SIGKILL) == -signal.SIGKILL
            send("b", 2)
            with started("a") as again:
                send("a", 1)
                wait_for(db_location, {(CAMERA, "udp/53"): (9, 720), (PLUG, "udp/53"): (6, 480)})
                assert again.stop(signal.SIGTERM) == 0, again.stderr
            assert b.stop(signal.SIGTERM) == 0, b.stderr
        assert totals(db_location) == {
            (CAMERA, "udp/53"): (9, 720),
            (PLUG, "udp/53"): (6, 480),
        }, "no frame lost or counted twice"
        for scope, (device, server) in hosts.items():
            with open_store(db_location, scope=scope) as store:
                rows = store.devices()
            assert sorted(r.mac for r in rows) == sorted((device, server))
            assert {r.switch for r in rows} <= {None, f"sw-{scope}"}
            assert sorted(r.device_id for r in rows if r.device_id is not None) == [1, 2]
        # A third controller may not take over another scope's switch name.
        clash = SvcfpProcess(*commands["b"], "--scope", "c")
        assert clash.wait() == 2
        assert "switch sw-b" in clash.stderr and "scope 'b'" in clash.stderr
    finally:
        for wire in wires.values():
            wire.stop()
