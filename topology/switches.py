"""Mininet switches that are P4 switch processes: the reference switch and BMv2.

Each switch is one process in the root namespace (Mininet's default for switches) bound to the
veth ends Mininet created for it (`<switch>-eth<port>` is port `<port>`), with its own gRPC port,
device id and log under `logs/`. Starting records the PID in the testbed record and waits until
the gRPC port accepts connections; a switch that dies or never listens raises `SwitchError` with
the last lines of its log. Stopping signals exactly that PID.
"""

from __future__ import annotations

import subprocess
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from mininet.node import Switch

from topology.launch import (
    bmv2_binary,
    bmv2_command,
    check_switch_kind,
    launch,
    refswitch_command,
)
from topology.state import ProcessRecord, TestbedState, stop_process


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
        """`python -m refswitch --grpc-addr ... --device-id ... -i N@intf ...`."""
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
        return bmv2_command(
            bmv2_binary(),
            self.grpc_addr,
            self.device_id,
            self.thrift_port,
            self.log_file,
            self.port_interfaces(),
        )


def switch_class(kind: str) -> type[P4Switch]:
    """The switch class for `kind` ("refswitch" or "bmv2"); `SwitchError` if BMv2 is absent."""
    check_switch_kind(kind)
    return RefSwitch if kind == "refswitch" else Bmv2Switch
