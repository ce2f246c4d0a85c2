"""The project's commands as child processes of a test: the reference switch on an ephemeral port
(its PID the test's to signal) and `svcfp` with its log lines collected as they come."""

from __future__ import annotations

import os
import select
import signal
import subprocess
import sys
import threading
import time

from tests.support.paths import ROOT


class SwitchProcess:
    """`python -m refswitch …` in a subprocess, its gRPC address read from its first line."""

    def __init__(self, *args: str) -> None:
        self.process = subprocess.Popen(
            [sys.executable, "-m", "refswitch", "--grpc-addr", "127.0.0.1:0", *args],
            cwd=ROOT,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        assert self.process.stdout is not None
        ready, _, _ = select.select([self.process.stdout], [], [], 30)
        assert ready, "switch did not start"
        line = self.process.stdout.readline()
        assert "serving P4Runtime on" in line, line + self.process.stderr.read()  # type: ignore[union-attr]
        self.address = line.rsplit(" ", 1)[1].strip()

    @property
    def pid(self) -> int:
        return self.process.pid

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        self.process.wait(30)


class SvcfpProcess:
    """`svcfp …` in a subprocess; what it writes to stderr (its log and errors) kept by line."""

    def __init__(self, *args: str) -> None:
        env = {**os.environ, "PYTHONPATH": str(ROOT)}
        self.process = subprocess.Popen(
            [sys.executable, "-m", "svcfp", *args],
            cwd=ROOT,
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        self.lines: list[str] = []
        self._reader = threading.Thread(
            target=lambda: self.lines.extend(self.process.stderr or ()), daemon=True
        )
        self._reader.start()

    @property
    def stderr(self) -> str:
        return "".join(self.lines)

    def wait_for(self, text: str, timeout: float = 30.0) -> None:
        """Until a line holds `text`; fails if the command ends or `timeout` passes first."""
        deadline = time.monotonic() + timeout
        while not any(text in line for line in list(self.lines)):
            assert self.process.poll() is None, self.stderr
            assert time.monotonic() < deadline, f"no {text!r} in {timeout:g} s:\n{self.stderr}"
            time.sleep(0.05)

    def stop(self, sig: int) -> int:
        """Its exit status after `sig`."""
        self.process.send_signal(sig)
        return self.wait()

    def wait(self, timeout: float = 30.0) -> int:
        """Its exit status, once every line it wrote is read."""
        code = self.process.wait(timeout=timeout)
        self._reader.join(timeout=5)
        return code

    def kill_if_running(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait(timeout=10)
