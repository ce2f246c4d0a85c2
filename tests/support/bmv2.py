"""BMv2 (`simple_switch_grpc`) as a test target, in a network namespace of the test's own.

The namespace `svcfp-t<pid>-<n>` holds four veth pairs (switch port N on veth(2N), the test's end
on veth(2N+1)) and its own loopback, where BMv2 listens for P4Runtime and Thrift on ports of its
own. The test process reaches P4Runtime through a loopback port forwarded into the namespace,
injects frames and captures egress with raw sockets on the veths. BMv2's PID is recorded and it
is stopped by that PID; the namespace is deleted by name, which removes the veths with it.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import shutil
import subprocess
import time
from collections.abc import Sequence
from pathlib import Path

import grpc
from finsy.proto import p4r

import p4src
from controller.base import contract
from controller.base.wire import decode_counter_read
from ptf_tests.runner import in_namespace, namespace
from tests.support.netns import Capture, Forwarder, connect, raw_socket
from tests.support.targets import SCHEMA, Target
from topology.launch import bmv2_command

PORTS = 4
GRPC_PORT = 9559
THRIFT_PORT = 9090
START_TIMEOUT_S = 30.0
COUNT_TIMEOUT_S = 10.0
# Frames sent before waiting for BMv2 to count them, and the pause after each.
BATCH_FRAMES = 500
PACE_S = 0.001
_numbers = itertools.count()


class Bmv2Target(Target):
    """simple_switch_grpc with four ports in its own namespace; see the module docstring."""

    kind = "bmv2"
    bmv2_json: Path | None = p4src.BMV2_JSON

    def __init__(self, logs: Path, device_id: int, ports: int = PORTS, *, log: bool = True) -> None:
        self.log = log
        self.device_id = device_id
        self.ports = ports
        self.logs = logs
        logs.mkdir(parents=True, exist_ok=True)
        self.netns = f"svcfp-t{os.getpid()}-{next(_numbers)}"
        self._stack = contextlib.ExitStack()
        self.process: subprocess.Popen[bytes] | None = None
        self._counted = 0
        self._counter = SCHEMA.counter(contract.COUNTER)
        try:
            self._stack.enter_context(namespace(self.netns, ports))
            self._sockets = {
                port: raw_socket(self.netns, f"veth{2 * port + 1}") for port in range(ports)
            }
            for sock in self._sockets.values():
                self._stack.callback(sock.close)
            self._capture = Capture(self._sockets)
            self._stack.callback(self._capture.close)
            self._forwarder = Forwarder(self.netns, GRPC_PORT)
            self._stack.callback(self._forwarder.close)
            self._start()
        except BaseException:
            self._stack.close()
            raise
        super().__init__(self._forwarder.address)

    def command(self) -> list[str]:
        """The switch's command line inside the namespace: switch port N on veth(2N)."""
        binary = shutil.which("simple_switch_grpc")
        if binary is None:
            raise RuntimeError("simple_switch_grpc is not on PATH")
        interfaces = [(port, f"veth{2 * port}") for port in range(self.ports)]
        command = bmv2_command(
            binary,
            f"127.0.0.1:{GRPC_PORT}",
            self.device_id,
            THRIFT_PORT,
            self.logs / "bmv2.log",
            interfaces,
        )
        if not self.log:
            # No per-packet log (what a benchmark measures): drop --log-file and --log-flush.
            at = command.index("--log-file")
            del command[at : at + 3]
        return command

    def _start(self) -> None:
        command = self.command()
        output = (self.logs / "bmv2.out").open("ab")
        self.process = subprocess.Popen(
            in_namespace(self.netns, command), stdout=output, stderr=subprocess.STDOUT
        )
        output.close()
        self._counted = 0
        deadline = time.monotonic() + START_TIMEOUT_S
        while True:
            if self.process.poll() is not None:
                tail = (self.logs / "bmv2.out").read_text(errors="replace")[-2000:]
                raise RuntimeError(f"{command[0]} exited with {self.process.returncode}:\n{tail}")
            with contextlib.suppress(OSError):
                connect(self.netns, GRPC_PORT).close()
                return
            if time.monotonic() > deadline:
                raise RuntimeError(f"{command[0]} did not listen within {START_TIMEOUT_S} s")
            time.sleep(0.1)

    @property
    def sent(self) -> list[tuple[int, bytes]]:
        return self._capture.frames()

    def send(self, data: bytes, port: int, count: int = 1) -> None:
        self.send_frames([data] * count, port)

    def send_frames(self, frames: Sequence[bytes], port: int) -> None:
        # BMv2 reads its ports through a small capture buffer: a burst of a few dozen frames
        # already overflows it, so frames are paced. Every frame is counted exactly once in
        # service_hits: after each batch, wait for the total to catch up. The frames have then
        # gone through the pipeline when this returns, as with the reference switch.
        sock = self._sockets[port]
        for start in range(0, len(frames), BATCH_FRAMES):
            batch = frames[start : start + BATCH_FRAMES]
            for data in batch:
                sock.send(data)
                if len(frames) > 1:
                    time.sleep(PACE_S)
            self._counted += len(batch)
            deadline = time.monotonic() + COUNT_TIMEOUT_S
            while (total := self._total()) < self._counted:
                if time.monotonic() > deadline:
                    raise AssertionError(f"BMv2 counted {total} of {self._counted} frames")
                time.sleep(0.02)

    def _total(self) -> int:
        request = p4r.ReadRequest(device_id=self.device_id)
        request.entities.add().counter_entry.counter_id = self._counter.id
        read: grpc.UnaryStreamMultiCallable[p4r.ReadRequest, bytes] = self._channel.unary_stream(
            "/p4.v1.P4Runtime/Read",
            request_serializer=p4r.ReadRequest.SerializeToString,
            response_deserializer=None,
        )
        values = decode_counter_read(
            list(read(request, timeout=10)), self._counter.id, self._counter.size
        )
        return int(values.packets.sum())

    def crash(self) -> None:
        self._stop_process()
        self._forwarder.drop_connections()

    def restart(self) -> None:
        self._start()

    def _stop_process(self) -> None:
        process = self.process
        if process is not None and process.poll() is None:
            process.terminate()
            try:
                process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()

    def stop(self) -> None:
        super().stop()
        try:
            self._stop_process()
        finally:
            self._stack.close()
