"""The values storage keeps: input files, devices, fingerprints and decisions, counter baselines.

Every backend (`controller.store.storage` for SQLite, `controller.store.postgres`) stores and
returns exactly these.
"""

from __future__ import annotations

import hashlib
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from controller.base.errors import InputError
from controller.base.wire import CounterValues

# The last raw counter values read from one switch, one entry per counter cell.
Baseline = CounterValues

# The one time unit of every activity row in the database, in seconds.
TIME_UNIT_KEY = "time_unit_seconds"

# The label of a host the switch counts but nothing identifies: a gateway, a server, a testbed's
# service host. Its activity is stored; it gets no fingerprint, decision or alert.
INFRASTRUCTURE = "infrastructure"

EXPORTABLE = ("activity", "fingerprints", "decisions", "devices", "services", "alerts")


@dataclass(frozen=True)
class SourceFile:
    """An input file as the database knows it: by its content (SHA-256), so the same capture is
    recognised whatever it is called or wherever it lies now."""

    digest: str
    name: str

    @classmethod
    def of(cls, path: Path) -> SourceFile:
        """The digest of the file at `path`, read in 1 MiB blocks."""
        digest = hashlib.sha256()
        try:
            with path.open("rb") as handle:
                for block in iter(lambda: handle.read(1 << 20), b""):
                    digest.update(block)
        except OSError as exc:
            raise InputError(f"{path}: cannot read: {exc.strerror}") from exc
        return cls(digest.hexdigest(), str(path))


@dataclass(frozen=True)
class DeviceRow:
    """One device as stored: `device_id` is None once the device was evicted from the switch."""

    mac: str
    device_id: int | None
    label: str
    switch: str | None
    port: int | None
    source: str
    first_seen: float
    last_seen: float

    @property
    def infrastructure(self) -> bool:
        """Whether it is labelled `infrastructure`: counted, never identified."""
        return self.label == INFRASTRUCTURE


@dataclass(frozen=True)
class FingerprintRecord:
    """An exported fingerprint of one device over one window."""

    device: str
    window_start_unit: int
    window_end_unit: int
    representation: str
    fingerprint: dict[str, float]
    converged: bool


@dataclass(frozen=True)
class DecisionRecord:
    """An identification decision with its explanation."""

    device: str
    window_start_unit: int
    window_end_unit: int
    representation: str
    label: str
    similarity: float
    explanation: dict[str, Any]
    decided_at: float

    @property
    def accumulated(self) -> str | None:
        """The device's accumulated answer after this decision (None: decided without one)."""
        return accumulated_label(self.explanation)


@dataclass(frozen=True)
class AlertRecord:
    """An alert as stored: what happened (`kind`), to which device or switch, and why.

    `id` is None until stored; `details` holds what the alert's kind measured (labels,
    similarities, counts)."""

    kind: str
    severity: str
    device: str | None
    switch: str | None
    message: str
    details: dict[str, Any]
    raised_at: float
    id: int | None = None

    def to_json(self) -> dict[str, Any]:
        """A JSON-ready dict."""
        return asdict(self)


@dataclass(frozen=True)
class SwitchStatusRecord:
    """A switch's latest state as the controller saw it (connection, last poll, tables)."""

    switch: str
    status: dict[str, Any]
    updated_at: float


@dataclass(frozen=True)
class DecisionSummary:
    """A decision without its explanation: what lists of many devices need, the device's
    accumulated answer after it included (None: decided without one)."""

    id: int
    device: str
    window_end_unit: int
    label: str
    similarity: float
    decided_at: float
    accumulated: str | None = None


def accumulated_label(explanation: dict[str, Any]) -> str | None:
    """The accumulated answer a decision's explanation stores (None when it has none)."""
    accumulated = explanation.get("accumulated")
    label = accumulated.get("label") if isinstance(accumulated, dict) else None
    return label if isinstance(label, str) else None
