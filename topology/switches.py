"""Mininet switches that are P4 switch processes: the reference switch and BMv2.

Each switch is one process in the root namespace (Mininet's default for switches) bound to the
veth ends Mininet created for it (`<switch>-eth<port>` is port `<port>`), with its own gRPC port,
device id and log under `logs/`. Starting records the PID in the testbed record and waits until
the gRPC port accepts connections; a switch that dies or never listens raises `SwitchError` with
the last lines of its log. Stopping signals exactly that PID.
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from mininet.node import Switch

from controller.errors import SwitchError
from topology.state import ProcessRecord, TestbedState, process_start_ticks, stop_process

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
    """The reference switch's command line (`svcfp switch`, run with this interpreter); `ports`
    are its port flags (`-i 1@s1-eth1`, `--pcap-in 0@trace.pcap`, ...)."""
    return [
        sys.executable,
        "-m",
        "controller.cli",
        "switch",
        "--grpc-addr",
        grpc_addr,
        "--device-id",
        str(device_id),
        "--log-file",
        str(log_file),
        *ports,
    ]


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
    console.parent.mkdir(parents=True, exist_ok=True)
    with console.open("wb") as out:
        process = subprocess.Popen(
            command,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    record = ProcessRecord(label, process.pid, process_start_ticks(process.pid) or 0)
    if state is not None:
        state.add_process(label, process.pid)
    try:
        wait_for_port(grpc_port, process, START_TIMEOUT, [*logs, console], label)
    except SwitchError:
        stop_process(record)
        process.wait(timeout=5)
        raise
    return process, record


class P4Switch(Switch):  # type: ignore[misc]
    """A Mininet switch backed by one P4 switch process; subclasses give its command line."""

    kind = ""

    def __init__(
        self,
        name: str,
        *,
        grpc_port: int,
        device_id: int,
        thrift_port: int,
        logs: Path,
        state: TestbedState | None = None,
        **params: Any,
    ) -> None:
        super().__init__(name, **params)
        self.grpc_port = grpc_port
        self.device_id = device_id
        self.thrift_port = thrift_port
        self.logs = logs
        self.state = state
        self.process: subprocess.Popen[bytes] | None = None
        self.record: ProcessRecord | None = None

    @property
    def grpc_addr(self) -> str:
        """The switch's P4Runtime address."""
        return f"127.0.0.1:{self.grpc_port}"

    @property
    def log_file(self) -> Path:
        """The switch's own log."""
        return self.logs / f"{self.name}.log"

    @property
    def console_file(self) -> Path:
        """Where the process's stdout and stderr go."""
        return self.logs / f"{self.name}.console.log"

    def port_interfaces(self) -> list[tuple[int, str]]:
        """(port number, interface name) of every data port, in port order."""
        return sorted(
            (int(port), intf.name) for intf, port in self.ports.items() if intf.name != "lo"
        )

    def command(self) -> list[str]:
        """The switch process's command line."""
        raise NotImplementedError

    def start(self, controllers: Sequence[Any]) -> None:
        """Start the switch process on this switch's interfaces and wait for its gRPC port."""
        for _, intf in self.port_interfaces():
            # Router solicitations and MLD reports from the kernel would be counted as traffic.
            subprocess.run(
                ["sysctl", "-q", "-w", f"net.ipv6.conf.{intf}.disable_ipv6=1"],
                check=True,
                capture_output=True,
            )
        self.process, self.record = launch(
            self.command(),
            f"switch:{self.name}",
            self.grpc_port,
            [self.log_file, Path(f"{self.log_file}.txt")],
            self.console_file,
            self.state,
        )

    def stop_process(self) -> None:
        """Stop the switch process we started (by its recorded PID) and reap it."""
        if self.record is not None and self.process is not None:
            stop_process(self.record)
            self.process.wait(timeout=5)
            self.record = None

    def stop(self, deleteIntfs: bool = True) -> None:
        """Stop the process, then let Mininet remove the interfaces."""
        self.stop_process()
        super().stop(deleteIntfs)


class RefSwitch(P4Switch):
    """The project's reference switch (`svcfp switch`), run with this interpreter."""

    kind = "refswitch"

    def command(self) -> list[str]:
        """`python -m controller.cli switch --grpc-addr ... --device-id ... -i N@intf ...`."""
        return refswitch_command(
            self.grpc_addr,
            self.device_id,
            self.log_file,
            [arg for port, intf in self.port_interfaces() for arg in ("-i", f"{port}@{intf}")],
        )


class Bmv2Switch(P4Switch):
    """BMv2 `simple_switch_grpc`, started without a program (the controller pushes it)."""

    kind = "bmv2"

    def command(self) -> list[str]:
        """`simple_switch_grpc --no-p4 ... --thrift-port T -- --grpc-server-addr ...`."""
        binary = shutil.which("simple_switch_grpc")
        if binary is None:
            raise SwitchError("BMv2 simple_switch_grpc is not on PATH (use --switch refswitch)")
        command = [binary, "--no-p4", "--device-id", str(self.device_id)]
        for port, intf in self.port_interfaces():
            command += ["-i", f"{port}@{intf}"]
        command += [
            "--log-file",
            str(self.log_file),
            "--log-flush",
            # Each switch gets its own Thrift port: BMv2 would otherwise bind 0.0.0.0:9090.
            "--thrift-port",
            str(self.thrift_port),
            "--",
            "--grpc-server-addr",
            self.grpc_addr,
        ]
        return command


def switch_class(kind: str) -> type[P4Switch]:
    """The switch class for `kind` ("refswitch" or "bmv2"); `SwitchError` if BMv2 is absent."""
    if kind == "refswitch":
        return RefSwitch
    if kind == "bmv2":
        if shutil.which("simple_switch_grpc") is None:
            raise SwitchError("--switch bmv2: simple_switch_grpc is not on PATH on this machine")
        return Bmv2Switch
    raise SwitchError(f"unknown switch kind {kind!r}; expected one of {', '.join(SWITCH_KINDS)}")
