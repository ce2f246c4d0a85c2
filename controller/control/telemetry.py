"""What the controller counts about itself, per switch: polls and their latency, counter read
sizes, digests, refusals, write failures and errors, decisions and alerts.

Plain numbers kept on the event loop, so counting costs nothing and needs no library; the web
layer (controller/web/metrics.py) turns them into Prometheus metrics when scraped, and each
switch's latest state is also stored (`switch_status`) for dashboards of stored runs.
"""

from __future__ import annotations

import bisect
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

# Poll latency buckets, seconds: a loopback poll of a small counter takes milliseconds, a
# 65,536-cell read over a network tens of milliseconds, a struggling switch seconds.
POLL_BUCKETS = (0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
# Label of counts that belong to no switch (a device registered without one).
NO_SWITCH = "none"


@dataclass
class Histogram:
    """Observations counted into fixed buckets (upper bounds), with their sum."""

    bounds: tuple[float, ...] = POLL_BUCKETS
    counts: list[int] = field(default_factory=list)
    total: float = 0.0
    count: int = 0

    def __post_init__(self) -> None:
        if not self.counts:
            self.counts = [0] * len(self.bounds)

    def observe(self, value: float) -> None:
        """Count one observation in the first bucket whose bound it does not exceed."""
        index = bisect.bisect_left(self.bounds, value)
        if index < len(self.counts):
            self.counts[index] += 1
        self.total += value
        self.count += 1

    def cumulative(self) -> list[tuple[float, int]]:
        """(bound, observations ≤ bound) for every bucket, then (+inf, all)."""
        running = 0
        out: list[tuple[float, int]] = []
        for bound, n in zip(self.bounds, self.counts, strict=True):
            running += n
            out.append((bound, running))
        out.append((float("inf"), self.count))
        return out


@dataclass
class SwitchTelemetry:
    """One switch's counts since the controller started."""

    name: str
    grpc_addr: str
    connected: bool = False
    connects: int = 0
    polls: int = 0
    poll_failures: int = 0
    poll_seconds: Histogram = field(default_factory=Histogram)
    last_poll_seconds: float | None = None
    last_poll_at: float | None = None
    last_read_bytes: int = 0
    read_bytes: int = 0
    activity_rows: int = 0
    activity_packets: int = 0
    unregistered_packets: int = 0
    digests: int = 0
    registered: int = 0
    refusals: Counter[str] = field(default_factory=Counter)
    write_failures: int = 0
    errors: Counter[str] = field(default_factory=Counter)
    # What the switch's tables hold and can hold, set at every poll: table → (entries, size).
    tables: dict[str, tuple[int, int]] = field(default_factory=dict)

    def polled(self, seconds: float, read_bytes: int, rows: int, packets: int, when: float) -> None:
        """A poll read `read_bytes` in `seconds` and stored `rows` activity rows holding
        `packets` packets."""
        self.polls += 1
        self.poll_seconds.observe(seconds)
        self.last_poll_seconds = seconds
        self.last_poll_at = when
        self.last_read_bytes = read_bytes
        self.read_bytes += read_bytes
        self.activity_rows += rows
        self.activity_packets += packets

    def status(self) -> dict[str, Any]:
        """What a dashboard shows of this switch (stored as its `switch_status`)."""
        histogram = self.poll_seconds
        return {
            "grpc_addr": self.grpc_addr,
            "connected": self.connected,
            "connects": self.connects,
            "polls": self.polls,
            "poll_failures": self.poll_failures,
            "last_poll_seconds": self.last_poll_seconds,
            "mean_poll_seconds": histogram.total / histogram.count if histogram.count else None,
            "last_poll_at": self.last_poll_at,
            "last_read_bytes": self.last_read_bytes,
            "read_bytes": self.read_bytes,
            "activity_rows": self.activity_rows,
            "activity_packets": self.activity_packets,
            "unregistered_packets": self.unregistered_packets,
            "digests": self.digests,
            "registered": self.registered,
            "refusals": dict(self.refusals),
            "write_failures": self.write_failures,
            "errors": dict(self.errors),
            "tables": {name: list(pair) for name, pair in self.tables.items()},
        }


@dataclass
class Telemetry:
    """Everything the controller counts: per switch, and decisions and alerts by switch."""

    switches: dict[str, SwitchTelemetry] = field(default_factory=dict)
    # (switch, label) → decisions; (switch, kind) → alerts.
    decisions: Counter[tuple[str, str]] = field(default_factory=Counter)
    alerts: Counter[tuple[str, str]] = field(default_factory=Counter)
    fingerprints: Counter[str] = field(default_factory=Counter)

    def switch(self, name: str, grpc_addr: str = "") -> SwitchTelemetry:
        """The counts of switch `name` (created on first use)."""
        found = self.switches.get(name)
        if found is None:
            found = self.switches[name] = SwitchTelemetry(name, grpc_addr)
        return found
