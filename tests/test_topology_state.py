from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from controller.base.errors import InputError
from topology.state import (
    ProcessRecord,
    TestbedState,
    interface_exists,
    is_ours,
    process_start_ticks,
    recorded_run,
    teardown,
)


def sleeper() -> subprocess.Popen[bytes]:
    return subprocess.Popen(["sleep", "30"])


def test_record_survives_reload_and_refuses_a_second_run(tmp_path: Path) -> None:
    state = TestbedState.create(tmp_path)
    child = sleeper()
    try:
        state.add_process("sleeper", child.pid)
        state.add_interfaces(["a-eth0", "b-eth0"])
        state.add_namespace("svcfp-ns")
        loaded = TestbedState.load(tmp_path)
        assert loaded is not None
        assert loaded.pids() == {"sleeper": child.pid}
        assert loaded.processes[0].start_ticks == process_start_ticks(child.pid)
        assert (loaded.interfaces, loaded.namespaces) == (["a-eth0", "b-eth0"], ["svcfp-ns"])
        with pytest.raises(InputError, match="already recorded"):
            TestbedState.create(tmp_path)
    finally:
        child.kill()
        child.wait()


def test_teardown_stops_exactly_the_recorded_processes(tmp_path: Path) -> None:
    state = TestbedState.create(tmp_path)
    ours, bystander = sleeper(), sleeper()
    try:
        state.add_process("ours", ours.pid)
        report = teardown(state)
        assert report.stopped == ("ours",)
        assert ours.wait(timeout=5) == -15
        assert bystander.poll() is None
        assert not state.path.exists()
        assert TestbedState.load(tmp_path) is None
    finally:
        for child in (ours, bystander):
            child.kill()
            child.wait()


def test_a_recorded_run_undoes_what_it_recorded_when_it_fails(tmp_path: Path) -> None:
    ours = sleeper()
    recorded: list[tuple[str, int]] = []
    try:
        with (
            pytest.raises(RuntimeError, match="interrupted"),
            recorded_run(tmp_path, "me") as state,
        ):
            state.add_process("child", ours.pid)
            loaded = TestbedState.load(tmp_path)
            assert loaded is not None
            recorded = [(p.label, p.pid) for p in loaded.processes]
            raise RuntimeError("interrupted")
        assert recorded == [("me", os.getpid()), ("child", ours.pid)]
        assert ours.wait(timeout=5) == -15
        assert TestbedState.load(tmp_path) is None
    finally:
        ours.kill()
        ours.wait()


def test_a_reused_pid_is_not_ours(tmp_path: Path) -> None:
    child = sleeper()
    try:
        ticks = process_start_ticks(child.pid)
        assert ticks is not None
        assert is_ours(ProcessRecord("x", child.pid, ticks))
        stale = ProcessRecord("x", child.pid, ticks - 1)
        assert not is_ours(stale)
        state = TestbedState(path=tmp_path / "testbed.json", processes=[stale])
        state.save()
        assert teardown(state).stopped == ()
        assert child.poll() is None
    finally:
        child.kill()
        child.wait()


def test_unreadable_record_is_an_input_error(tmp_path: Path) -> None:
    (tmp_path / "testbed.json").write_text("{broken")
    with pytest.raises(InputError, match=r"testbed\.json: unreadable testbed record"):
        TestbedState.load(tmp_path)


@pytest.mark.root
def test_teardown_removes_recorded_interfaces_only(tmp_path: Path) -> None:
    created = ["svtst0", "svtst2"]
    subprocess.run(
        ["ip", "link", "add", "svtst0", "type", "veth", "peer", "name", "svtst1"], check=True
    )
    subprocess.run(
        ["ip", "link", "add", "svtst2", "type", "veth", "peer", "name", "svtst3"], check=True
    )
    try:
        state = TestbedState.create(tmp_path)
        state.add_interfaces(["svtst0", "svtst1", "svtst-gone"])
        report = teardown(state)
        # Deleting svtst0 takes its peer svtst1 with it; svtst-gone never existed.
        assert report.interfaces == ("svtst0",)
        assert not interface_exists("svtst0") and not interface_exists("svtst1")
        assert interface_exists("svtst2")
        assert teardown(TestbedState(path=tmp_path / "testbed.json")).interfaces == ()
    finally:
        for name in created:
            if interface_exists(name):
                subprocess.run(["ip", "link", "delete", name], check=True)
