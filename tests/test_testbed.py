"""`svcfp testbed start|stop` removes exactly what it created, even after an interrupted run."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from topology.state import TestbedState, is_ours

ROOT = Path(__file__).resolve().parent.parent
pytestmark = [pytest.mark.root, pytest.mark.mininet, pytest.mark.slow]


def svcfp(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "svcfp", "--log-level", "WARNING", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=180,
    )


def interfaces() -> set[str]:
    return set(os.listdir("/sys/class/net"))


def start(logs: Path, port: int) -> TestbedState:
    result = svcfp(
        "testbed", "start", "--logs", str(logs), "--devices", "2", "--units", "30",
        "--grpc-addr", f"127.0.0.1:{port}",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr + result.stdout
    assert "testbed running" in result.stdout
    state = TestbedState.load(logs)
    assert state is not None
    return state


def assert_stopped_and_removed(
    stop: subprocess.CompletedProcess[str], state: TestbedState, before: set[str]
) -> None:
    """`testbed stop` succeeded, no recorded process runs, the interfaces are as they were before
    the start, and the record is gone."""
    assert stop.returncode == 0, stop.stderr
    assert not any(is_ours(p) for p in state.processes)
    assert interfaces() == before
    assert not state.path.exists()


def test_stop_removes_exactly_what_start_created(
    tmp_path: Path, free_port: Callable[[], int]
) -> None:
    before = interfaces()
    bystander = subprocess.Popen(["sleep", "60"])
    try:
        state = start(tmp_path, free_port())
        try:
            labels = {p.label for p in state.processes}
            assert {"testbed", "switch:s1", "host:d1", "host:d2", "host:dns", "host:ntp"} <= labels
            assert {"devices:d1", "devices:d2", "servers:cloud"} <= labels
            assert all(is_ours(p) for p in state.processes)
            # The root-namespace ends of the veth pairs exist; the host ends live in the hosts.
            assert {f"s1-eth{n}" for n in range(1, 6)} <= interfaces() - before
            assert interfaces() - before <= set(state.interfaces)
            assert svcfp("testbed", "start", "--logs", str(tmp_path)).returncode != 0
        finally:
            result = svcfp("testbed", "stop", "--logs", str(tmp_path))
        assert_stopped_and_removed(result, state, before)
        assert bystander.poll() is None
    finally:
        bystander.kill()
        bystander.wait()
    again = svcfp("testbed", "stop", "--logs", str(tmp_path))
    assert again.returncode == 0 and "nothing to stop" in again.stdout


def test_stop_cleans_up_after_a_killed_supervisor(
    tmp_path: Path, free_port: Callable[[], int]
) -> None:
    before = interfaces()
    state = start(tmp_path, free_port())
    supervisor = next(p for p in state.processes if p.label == "testbed")
    switch = next(p for p in state.processes if p.label == "switch:s1")
    try:
        os.kill(supervisor.pid, signal.SIGKILL)
        deadline = time.monotonic() + 10
        while is_ours(supervisor) and time.monotonic() < deadline:
            time.sleep(0.1)
        # The switch runs in its own session: it outlives the supervisor until stopped.
        assert is_ours(switch)
    finally:
        result = svcfp("testbed", "stop", "--logs", str(tmp_path))
    assert_stopped_and_removed(result, state, before)
