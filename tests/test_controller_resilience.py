"""Resilience over real gRPC: the switch restarts mid-run, a controller process is stopped by
signal and restarted. Every test runs on the reference switch and on BMv2."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from controller.base import contract
from controller.base.p4info import P4Schema
from controller.control.controller import Controller
from controller.p4rt import entries
from tests.support.paths import ROOT
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
    started,
    totals,
    until,
)
from tests.support.targets import Target

pytestmark = [pytest.mark.slow, pytest.mark.parametrize("kind", TARGETS)]


def test_switch_restart_mid_run(kind: str, tmp_path: Path) -> None:
    with started(kind, tmp_path) as (wire,):

        async def scenario() -> Controller:
            async with running(Controller(config(tmp_path, wire))) as controller:
                wire.send(frame(CAMERA, SERVER, 6, 50000, 443, 100), port=1, count=4)
                await polls(controller)
                # The switch dies and comes back empty on the same address.
                wire.crash()
                await until(lambda: controller.workers[0].session is None)
                wire.restart()
                await until(lambda: controller.stats.connects.get("s1", 0) >= 2, timeout=10.0)
                wire.send(frame(CAMERA, SERVER, 6, 50000, 443, 100), port=1, count=3)
                wire.send(frame(PLUG, SERVER, 17, 5000, 53, 64), port=2)
                await until(lambda: controller.registry.get(PLUG) is not None)
                await polls(controller)
            return controller

        controller = asyncio.run(scenario())
        assert controller.stats.pushes == {"s1": 2}, "pushed again to the restarted switch"
        # 4 packets before the restart, 3 after: the reset counters are not taken as negative.
        assert totals(tmp_path / "svcfp.db") == {(CAMERA, "tcp/443"): (7, 700)}
        tables = asyncio.run(read_tables(wire.address))
        assert len(tables[entries.DEVICE_TABLE]) == 3, "registry re-installed"
        assert_catalogue_installed(tables)
        l2 = mac_params(tables[entries.L2_TABLE])
        assert l2 == {CAMERA: 1, SERVER: 0, PLUG: 2}, "forwarding re-installed"


def test_controller_process_stopped_by_sigterm_flushes_and_resumes(
    kind: str, tmp_path: Path
) -> None:
    with started(kind, tmp_path) as (wire,):
        _sigterm_scenario(wire, tmp_path)


def _sigterm_scenario(wire: Target, tmp_path: Path) -> None:
    devices = tmp_path / "devices.csv"
    devices.write_text(f"{CAMERA},camera,1\n{SERVER},server,0\n")
    db = tmp_path / "svcfp.db"
    command = [
        sys.executable, "-m", "svcfp", "--log-level", "INFO", "run",
        "--grpc-addr", wire.address,
        "--device-id", str(DEVICE_ID), "--p4info", str(wire.p4info), "--db", str(db),
        "--devices", str(devices), "--ports", "0-3",
        # A long interval: only the shutdown flush can have stored the frames.
        "--interval", "60", "--duration", "30", "--log-dir", str(tmp_path / "logs"),
        *(["--bmv2-json", str(wire.bmv2_json)] if wire.bmv2_json else []),
    ]  # fmt: skip
    env = {**os.environ, "PYTHONPATH": str(ROOT)}

    def run_and_stop(count: int, sig: int = signal.SIGTERM) -> subprocess.CompletedProcess[str]:
        process = subprocess.Popen(
            command, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
        )
        lines: list[str] = []
        assert process.stderr is not None
        reader = threading.Thread(target=lambda: lines.extend(process.stderr or ()), daemon=True)
        reader.start()
        try:
            deadline = time.monotonic() + 20
            # The controller logs event=synced once its tables and signal handlers are in place.
            while not any("event=synced" in line for line in list(lines)):
                assert process.poll() is None, "".join(lines)
                assert time.monotonic() < deadline, "controller did not program the switch"
                time.sleep(0.05)
            wire.send(frame(CAMERA, SERVER, 17, 40000, 53, 80), port=1, count=count)
            process.send_signal(sig)
            process.wait(timeout=20)
            reader.join(timeout=5)
        finally:
            if process.poll() is None:
                process.kill()
                process.wait()
        return subprocess.CompletedProcess(command, process.returncode, "", "".join(lines))

    first = run_and_stop(5)
    assert first.returncode == 0, first.stderr
    assert totals(db) == {(CAMERA, "udp/53"): (5, 400)}
    second = run_and_stop(2)
    assert second.returncode == 0, second.stderr
    assert totals(db) == {(CAMERA, "udp/53"): (7, 560)}, "no unit counted twice"
    # Killed outright: nothing is flushed, and the next run counts those frames exactly once.
    killed = run_and_stop(3, signal.SIGKILL)
    assert killed.returncode == -signal.SIGKILL
    assert totals(db) == {(CAMERA, "udp/53"): (7, 560)}
    third = run_and_stop(1)
    assert third.returncode == 0, third.stderr
    assert totals(db) == {(CAMERA, "udp/53"): (11, 880)}
    dump = (tmp_path / "logs" / "p4runtime-requests-s1.txt").read_text()
    counter_id = P4Schema.load(wire.p4info).counter(contract.COUNTER).id
    assert "SetForwardingPipelineConfig" in dump and f"counter_id: {counter_id}" in dump
