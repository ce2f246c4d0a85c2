from __future__ import annotations

import socket
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from controller.base.errors import SwitchError
from topology.launch import (
    bmv2_command,
    check_switch_kind,
    launch,
    refswitch_command,
    wait_for_port,
)
from topology.state import TestbedState, is_ours


def test_refswitch_command_line() -> None:
    assert refswitch_command("127.0.0.1:9600", 3, Path("logs/s2.log"), ["-i", "1@s2-eth1"]) == [
        sys.executable, "-m", "refswitch", "--grpc-addr", "127.0.0.1:9600",
        "--device-id", "3", "--log-file", "logs/s2.log", "-i", "1@s2-eth1",
    ]  # fmt: skip


def test_bmv2_command_line_has_its_own_thrift_port_and_no_program() -> None:
    command = bmv2_command(
        "/usr/bin/simple_switch_grpc", "127.0.0.1:9560", 2, 9091, Path("logs/s2.log"),
        [(1, "s2-eth1"), (2, "s2-eth2")],
    )  # fmt: skip
    assert command == [
        "/usr/bin/simple_switch_grpc", "--no-p4", "--device-id", "2",
        "-i", "1@s2-eth1", "-i", "2@s2-eth2", "--log-file", "logs/s2.log", "--log-flush",
        "--thrift-port", "9091", "--", "--grpc-server-addr", "127.0.0.1:9560",
    ]  # fmt: skip


def test_unknown_switch_kind_is_refused() -> None:
    with pytest.raises(SwitchError, match="unknown switch kind 'ovs'"):
        check_switch_kind("ovs")
    check_switch_kind("refswitch")


def test_a_switch_that_dies_reports_its_log(tmp_path: Path, free_port: Callable[[], int]) -> None:
    port = free_port()
    log_file = tmp_path / "s1.log"
    command = refswitch_command(
        f"127.0.0.1:{port}", 1, log_file, ["--pcap-in", f"0@{tmp_path / 'missing.pcap'}"]
    )
    state = TestbedState.create(tmp_path)
    with pytest.raises(SwitchError, match=r"(?s)exited with status [1-9].*missing\.pcap"):
        launch(command, "switch:s1", port, [log_file], tmp_path / "s1.console.log", state)
    assert [p.label for p in state.processes] == ["switch:s1"]
    assert not is_ours(state.processes[0])


def test_a_switch_that_never_listens_times_out_with_its_log(
    tmp_path: Path, free_port: Callable[[], int]
) -> None:
    console = tmp_path / "console.log"
    console.write_text("starting\nstill starting\n")
    process = subprocess.Popen(["sleep", "30"])
    try:
        with pytest.raises(SwitchError, match=r"(?s)did not listen on 127\.0\.0\.1:\d+.*still"):
            wait_for_port(free_port(), process, 0.5, [console], "switch s9")
    finally:
        process.kill()
        process.wait()


def test_a_started_switch_is_recorded_and_listening(
    tmp_path: Path, free_port: Callable[[], int]
) -> None:
    port = free_port()
    log_file = tmp_path / "s1.log"
    state = TestbedState.create(tmp_path)
    process, record = launch(
        refswitch_command(f"127.0.0.1:{port}", 1, log_file, []),
        "switch:s1",
        port,
        [log_file],
        tmp_path / "s1.console.log",
        state,
    )
    try:
        assert is_ours(record) and state.pids() == {"switch:s1": process.pid}
        with socket.create_connection(("127.0.0.1", port), timeout=2):
            pass
    finally:
        process.terminate()
        process.wait(timeout=10)


def test_a_port_already_in_use_is_refused_before_starting(tmp_path: Path) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        state = TestbedState.create(tmp_path)
        command = refswitch_command(f"127.0.0.1:{port}", 1, tmp_path / "s1.log", [])
        with pytest.raises(SwitchError, match=rf"127\.0\.0\.1:{port} is already in use"):
            launch(command, "switch:s1", port, [], tmp_path / "console.log", state)
        assert state.processes == []
