"""Starting a P4 switch process and waiting for its P4Runtime port, with or without Mininet.

The process's PID and start time go into the testbed record before anything waits on it; a
switch that dies or never listens raises `SwitchError` with the last lines of its logs.
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from controller.base.errors import SwitchError
from topology.state import ProcessRecord, TestbedState, stop_process

SWITCH_KINDS = ("refswitch", "bmv2")
START_TIMEOUT = 30.0
_LOG_TAIL_LINES = 15


def log_tail(paths: Sequence[Path], lines: int = _LOG_TAIL_LINES) -> str:
    """The last `lines` lines of each existing file in `paths`, labelled by file."""
    parts = []
    for path in paths:
        if path.is_file():
            text = path.read_text(errors="replace").splitlines()[-lines:]
            parts.append(f"--- {path} ---\n" + "\n".join(text))
    return "\n".join(parts) if parts else "(no log written)"


def wait_for_port(
    port: int, process: subprocess.Popen[bytes], timeout: float, logs: Sequence[Path], what: str
) -> None:
    """Wait until 127.0.0.1:`port` accepts a TCP connection; `SwitchError` if `process` exits."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        status = process.poll()
        if status is not None:
            raise SwitchError(
                f"{what} exited with status {status} while starting:\n{log_tail(logs)}"
            )
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
            probe.settimeout(0.2)
            if probe.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.1)
    raise SwitchError(
        f"{what} did not listen on 127.0.0.1:{port} within {timeout:.0f} s:\n{log_tail(logs)}"
    )


def refswitch_command(
    grpc_addr: str, device_id: int, log_file: Path, ports: Sequence[str]
) -> list[str]:
    """The reference switch's command line (`python -m refswitch`, the same flags as `svcfp
    switch`, run with this interpreter); `ports` are its port flags (`-i 1@s1-eth1`,
    `--pcap-in 0@trace.pcap`, ...)."""
    return [
        sys.executable,
        "-m",
        "refswitch",
        "--grpc-addr",
        grpc_addr,
        "--device-id",
        str(device_id),
        "--log-file",
        str(log_file),
        *ports,
    ]


def bmv2_command(
    binary: str,
    grpc_addr: str,
    device_id: int,
    thrift_port: int,
    log_file: Path,
    interfaces: Sequence[tuple[int, str]],
) -> list[str]:
    """BMv2's command line: no program (the controller pushes it), one `-i N@intf` per port."""
    command = [binary, "--no-p4", "--device-id", str(device_id)]
    for port, intf in interfaces:
        command += ["-i", f"{port}@{intf}"]
    return [
        *command,
        "--log-file",
        str(log_file),
        "--log-flush",
        # Each switch gets its own Thrift port: BMv2 would otherwise bind 0.0.0.0:9090.
        "--thrift-port",
        str(thrift_port),
        "--",
        "--grpc-server-addr",
        grpc_addr,
    ]


def free_port() -> int:
    """A loopback TCP port nothing listens on now (for a switch asked to listen on port 0)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def ensure_port_free(port: int, what: str) -> None:
    """`SwitchError` if something already listens on 127.0.0.1:`port`."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        # Connections of an earlier run lingering in TIME_WAIT must not count as "in use".
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind(("127.0.0.1", port))
        except OSError as exc:
            raise SwitchError(
                f"{what}: 127.0.0.1:{port} is already in use ({exc.strerror}); "
                "is another switch running there? choose another port"
            ) from None


def start_detached(command: Sequence[str], console: Path) -> subprocess.Popen[bytes]:
    """Start `command` in a session of its own, its stdout and stderr going to `console`.

    Its own session keeps a Ctrl-C meant for the caller from reaching it: it is stopped only
    through the PID recorded for it.
    """
    console.parent.mkdir(parents=True, exist_ok=True)
    with console.open("wb") as out:
        return subprocess.Popen(
            command,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )


def launch(
    command: list[str],
    label: str,
    grpc_port: int,
    logs: Sequence[Path],
    console: Path,
    state: TestbedState | None = None,
) -> tuple[subprocess.Popen[bytes], ProcessRecord]:
    """Start a switch process (recorded in `state`) and wait until its gRPC port listens.

    Its stdout and stderr go to `console`; on failure the process is stopped and `SwitchError`
    carries the last lines of `logs` and `console`.
    """
    # Waiting for "the port accepts connections" would be fooled by another switch on that port.
    ensure_port_free(grpc_port, label)
    process = start_detached(command, console)
    if state is not None:
        record = state.add_process(label, process.pid)
    else:
        record = ProcessRecord.of(label, process.pid)
    try:
        wait_for_port(grpc_port, process, START_TIMEOUT, [*logs, console], label)
    except SwitchError:
        stop_process(record)
        process.wait(timeout=5)
        raise
    return process, record


def bmv2_binary() -> str:
    """Where BMv2's `simple_switch_grpc` is; `SwitchError` if it is not on PATH."""
    binary = shutil.which("simple_switch_grpc")
    if binary is None:
        raise SwitchError(
            "--switch bmv2: simple_switch_grpc is not on PATH on this machine "
            "(install BMv2 or use --switch refswitch)"
        )
    return binary


def check_switch_kind(kind: str) -> None:
    """`SwitchError` unless `kind` is a switch this machine can run."""
    if kind not in SWITCH_KINDS:
        raise SwitchError(
            f"unknown switch kind {kind!r}; expected one of {', '.join(SWITCH_KINDS)}"
        )
    if kind == "bmv2":
        bmv2_binary()
