"""What a testbed run started and created, recorded on disk so it can always be undone.

Every process the project starts is recorded with its PID and kernel start time (so a reused PID
is never mistaken for ours), every interface and network namespace by the name we gave it. The
record is rewritten atomically after each change, before the thing it describes exists, so an
interrupted run still leaves a complete list behind. `teardown` stops exactly those processes and
removes exactly those names, and is safe to repeat.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from controller.base.errors import InputError, SvcfpError
from topology.files import write_json_atomic

STATE_FILE = "testbed.json"


@dataclass(frozen=True)
class ProcessRecord:
    """A process we started: its PID and the kernel's start time for it (clock ticks)."""

    label: str
    pid: int
    start_ticks: int

    @classmethod
    def of(cls, label: str, pid: int) -> ProcessRecord:
        """The record of a process we just started (looked up now, while it surely is ours)."""
        return cls(label, pid, process_start_ticks(pid) or 0)


@dataclass
class TestbedState:
    """The on-disk record of one testbed run (`<logs>/testbed.json`)."""

    __test__ = False  # a name starting with "Test", but not a pytest test class

    path: Path
    processes: list[ProcessRecord] = field(default_factory=list)
    interfaces: list[str] = field(default_factory=list)
    namespaces: list[str] = field(default_factory=list)
    info: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def create(cls, logs: Path) -> TestbedState:
        """A new record in `logs`; refuses to overwrite the record of a run still present."""
        path = logs / STATE_FILE
        if path.exists():
            raise InputError(
                f"{path}: a testbed run is already recorded here; stop it first "
                "(`svcfp testbed stop` / `make stop`)"
            )
        state = cls(path=path)
        state.save()
        return state

    @classmethod
    def load(cls, logs: Path) -> TestbedState | None:
        """The record in `logs`, or None when there is none."""
        path = logs / STATE_FILE
        try:
            data = json.loads(path.read_text())
        except FileNotFoundError:
            return None
        except (OSError, json.JSONDecodeError) as exc:
            raise InputError(f"{path}: unreadable testbed record: {exc}") from exc
        try:
            return cls(
                path=path,
                processes=[ProcessRecord(**p) for p in data.get("processes", [])],
                interfaces=list(data.get("interfaces", [])),
                namespaces=list(data.get("namespaces", [])),
                info=dict(data.get("info", {})),
            )
        except TypeError as exc:
            raise InputError(f"{path}: malformed testbed record: {exc}") from exc

    def save(self) -> None:
        """Rewrite the record atomically."""
        write_json_atomic(
            self.path,
            {
                "processes": [p.__dict__ for p in self.processes],
                "interfaces": self.interfaces,
                "namespaces": self.namespaces,
                "info": self.info,
            },
        )

    def add_process(self, label: str, pid: int) -> ProcessRecord:
        """Record a process we just started and return its record."""
        record = ProcessRecord.of(label, pid)
        self.processes.append(record)
        self.save()
        return record

    def add_interfaces(self, names: Iterable[str]) -> None:
        """Record interfaces we are about to create."""
        self.interfaces.extend(n for n in names if n not in self.interfaces)
        self.save()

    def add_namespace(self, name: str) -> None:
        """Record a named network namespace we are about to create."""
        if name not in self.namespaces:
            self.namespaces.append(name)
        self.save()

    def pids(self) -> dict[str, int]:
        """Label → PID of every recorded process."""
        return {p.label: p.pid for p in self.processes}


@dataclass(frozen=True)
class TeardownReport:
    """What `teardown` stopped and removed."""

    stopped: tuple[str, ...]
    interfaces: tuple[str, ...]
    namespaces: tuple[str, ...]


def _stat_fields(pid: int) -> list[str] | None:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return None
    # The command name may contain spaces and parentheses: fields restart after the last ')'.
    return stat[stat.rindex(")") + 2 :].split()


def process_start_ticks(pid: int) -> int | None:
    """The process's start time in clock ticks since boot, or None if it does not exist."""
    fields = _stat_fields(pid)
    return None if fields is None else int(fields[19])


def is_ours(record: ProcessRecord) -> bool:
    """Whether the recorded process still runs: same PID, same start time, not a zombie."""
    fields = _stat_fields(record.pid)
    return fields is not None and fields[0] != "Z" and int(fields[19]) == record.start_ticks


def stop_process(record: ProcessRecord, timeout: float = 5.0) -> bool:
    """SIGTERM, then SIGKILL after `timeout`, the recorded process if it is still ours."""
    if not is_ours(record):
        return False
    try:
        os.kill(record.pid, signal.SIGTERM)
    except ProcessLookupError:
        return False
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not is_ours(record):
            return True
        time.sleep(0.05)
    if is_ours(record):
        with contextlib.suppress(ProcessLookupError):
            os.kill(record.pid, signal.SIGKILL)
    return True


def interface_exists(name: str) -> bool:
    """Whether an interface of that name exists in the root namespace."""
    return Path("/sys/class/net", name).exists()


def namespace_exists(name: str) -> bool:
    """Whether a named network namespace (`ip netns`) of that name exists."""
    return Path("/run/netns", name).exists()


def teardown(state: TestbedState, timeout: float = 5.0) -> TeardownReport:
    """Stop the recorded processes (newest first), remove the recorded names, delete the record.

    If a name cannot be removed, everything else is still undone, the record is kept (so the
    teardown can be repeated) and `SvcfpError` lists what is left.
    """
    stopped = []
    for record in reversed(state.processes):
        # The process tearing down may itself be recorded (the testbed supervisor).
        if record.pid != os.getpid() and stop_process(record, timeout):
            stopped.append(record.label)
    failures = []
    removed: dict[str, list[str]] = {"link": [], "netns": []}
    for kind, names, exists in (
        ("link", state.interfaces, interface_exists),
        ("netns", state.namespaces, namespace_exists),
    ):
        for name in names:
            # Deleting one end of a veth pair removes its peer too: check before each deletion.
            if not exists(name):
                continue
            result = subprocess.run(["ip", kind, "delete", name], capture_output=True, text=True)
            if result.returncode == 0 or not exists(name):
                removed[kind].append(name)
            else:
                failures.append(f"ip {kind} delete {name}: {result.stderr.strip()}")
    if failures:
        raise SvcfpError(f"{state.path}: could not remove: " + "; ".join(failures))
    state.path.unlink(missing_ok=True)
    return TeardownReport(tuple(stopped), tuple(removed["link"]), tuple(removed["netns"]))


@contextmanager
def recorded_run(logs: Path, label: str) -> Iterator[TestbedState]:
    """A new run record in `logs` that lists this process as `label`; however the run ends,
    everything recorded in it is torn down."""
    state = TestbedState.create(logs)
    try:
        state.add_process(label, os.getpid())
        yield state
    finally:
        teardown(state)
