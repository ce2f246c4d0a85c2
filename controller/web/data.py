"""What the dashboard's pages show, read from a controller's database.

The dashboard opens the database read-only on a thread of its own (sqlite connections are
confined to the thread that made them), so page loads never wait behind the controller's writes
and never hold up its event loop; SQLite's WAL lets this reader see each committed poll. The
same reader serves `svcfp run --http` beside the controller and `svcfp dashboard` on a stored
run.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ParamSpec, TypeVar

from controller.control.live import answering, verdict
from controller.engine.identify import UNKNOWN
from controller.store.records import (
    AlertRecord,
    DecisionRecord,
    DecisionSummary,
    DeviceRow,
    SwitchStatusRecord,
)
from controller.store.storage import DEFAULT_DB_TIMEOUT, open_reader
from controller.store.store import Store

T = TypeVar("T")
P = ParamSpec("P")

# Units the device page's heat map shows by default, and at most.
HEATMAP_UNITS = 96
HEATMAP_MAX_UNITS = 1000
# Alerts listed on the devices page.
RECENT_ALERTS = 12


@dataclass(frozen=True)
class DeviceSummary:
    """One row of the devices page."""

    row: DeviceRow
    label: str | None
    similarity: float | None
    decisions: int
    alerts: int
    last_label: str | None

    @property
    def state(self) -> str:
        """`active` while it holds a device id, `evicted` after."""
        return "active" if self.row.device_id is not None else "evicted"

    @property
    def unknown(self) -> bool:
        """Whether the controller's verdict on it is "unknown"."""
        return self.label == UNKNOWN

    @property
    def attention(self) -> bool:
        """Listed first: unknown, or with alerts."""
        return self.unknown or self.alerts > 0


@dataclass(frozen=True)
class Overview:
    """The devices page: every device (unknown and alerted first), the latest alerts, totals."""

    devices: tuple[DeviceSummary, ...]
    alerts: tuple[AlertRecord, ...]
    alert_total: int
    switches: tuple[SwitchStatusRecord, ...]
    unit_seconds: float | None
    current_unit: int | None

    @property
    def identified(self) -> int:
        """Devices with a known type as verdict."""
        return sum(1 for d in self.devices if d.label not in (None, UNKNOWN))

    @property
    def unknown(self) -> int:
        """Devices the controller could not identify."""
        return sum(1 for d in self.devices if d.unknown)

    @property
    def pending(self) -> int:
        """Devices without a decision yet (hosts labelled `infrastructure` get none)."""
        return sum(1 for d in self.devices if d.label is None and not d.row.infrastructure)

    @property
    def connected(self) -> int:
        """Switches whose session is up."""
        return sum(1 for s in self.switches if s.status.get("connected"))


@dataclass(frozen=True)
class HeatRow:
    """One service's packets per unit on the heat map (None: not used in that unit)."""

    service: str
    cells: tuple[int | None, ...]
    active_units: int


@dataclass(frozen=True)
class HeatMap:
    """Services × units of one device: packets per cell, and the scale of the colours."""

    first_unit: int
    units: int
    rows: tuple[HeatRow, ...]
    max_packets: int
    unit_seconds: float

    def level(self, packets: int | None) -> int:
        """A colour level 1..8 on a log scale (0: unused)."""
        if not packets:
            return 0
        top = math.log1p(max(self.max_packets, 1))
        return max(1, min(8, math.ceil(8 * math.log1p(packets) / top)))

    def unit_start(self, offset: int) -> float:
        """Epoch seconds at which the unit `offset` columns in starts."""
        return (self.first_unit + offset) * self.unit_seconds


@dataclass(frozen=True)
class ServiceBar:
    """One service of a fingerprint beside the matched reference."""

    service: str
    group: str
    observed: float
    reference: float
    share: float


@dataclass(frozen=True)
class DecisionView:
    """A decision with its explanation, as the device page lists it."""

    record: DecisionRecord
    bars: tuple[ServiceBar, ...]

    @property
    def why(self) -> dict[str, Any]:
        """The stored explanation."""
        return self.record.explanation


@dataclass(frozen=True)
class DeviceDetail:
    """The device page: its row, heat map, latest decision beside its reference, history."""

    summary: DeviceSummary
    heatmap: HeatMap | None
    decisions: tuple[DecisionView, ...]
    alerts: tuple[AlertRecord, ...]
    fingerprints: int
    unit_seconds: float | None = None

    @property
    def latest(self) -> DecisionView | None:
        """The newest decision, if any."""
        return self.decisions[-1] if self.decisions else None

    @property
    def answer(self) -> DecisionView | None:
        """The decision that answers for the device (its verdict)."""
        if not self.decisions:
            return None
        labels = [d.record.label for d in self.decisions]
        return self.decisions[verdict(labels, self.decisions[-1].record.accumulated)]


def bars(explanation: dict[str, Any]) -> tuple[ServiceBar, ...]:
    """Every service of a decision's explanation, matched first, by share then weight."""
    out: list[ServiceBar] = []
    for group in ("matched", "unexpected", "missing"):
        for c in explanation.get(group, ()):
            out.append(
                ServiceBar(
                    str(c["service"]),
                    group,
                    float(c["observed"]),
                    float(c["reference"]),
                    float(c["share"]),
                )
            )
    return tuple(out)


def summarize(
    rows: Sequence[DeviceRow],
    decided: Sequence[DecisionSummary],
    alert_counts: dict[str, int],
) -> list[DeviceSummary]:
    """Each device with its verdict, unknown and alerted ones first, then by MAC."""
    mine: dict[str, list[DecisionSummary]] = {}
    for d in decided:
        mine.setdefault(d.device, []).append(d)
    out = []
    for row in rows:
        own = mine.get(row.mac, [])
        chosen = answering(own)
        out.append(
            DeviceSummary(
                row,
                None if chosen is None else chosen.label,
                None if chosen is None else chosen.similarity,
                len(own),
                alert_counts.get(row.mac, 0),
                own[-1].label if own else None,
            )
        )
    return sorted(out, key=lambda d: (not d.attention, d.row.mac))


class DashboardData:
    """The database, read on its own thread; every query is awaited from the event loop."""

    def __init__(self, location: Path | str, db_timeout: float = DEFAULT_DB_TIMEOUT) -> None:
        self.location = location
        self._executor = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="dashboard")
        try:
            self._storage: Store = self._executor.submit(open_reader, location, db_timeout).result()
            # A damaged time unit is named now, not as every page failing.
            self._executor.submit(self._storage.unit_seconds).result()
        except BaseException:
            self._executor.shutdown()
            raise

    async def call(self, func: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> T:
        """`func(*args)` in the reader's thread, awaited."""
        return await asyncio.wrap_future(self._executor.submit(func, *args, **kwargs))

    def close(self) -> None:
        """Close the connection and end the thread."""
        try:
            self._executor.submit(self._storage.close).result()
        finally:
            self._executor.shutdown()

    # -- queries (each runs in the reader's thread) ---------------------------------------------

    def _unit_seconds(self) -> float | None:
        return self._storage.unit_seconds()

    def marks(self) -> dict[str, float]:
        """What moves when a page's content changes (storage.change_marks)."""
        return self._storage.change_marks()

    def overview(self) -> Overview:
        """The devices page."""
        storage = self._storage
        devices = summarize(
            storage.devices(every_scope=True), storage.decision_summaries(), storage.alert_counts()
        )
        recent = storage.alerts(limit=RECENT_ALERTS)
        return Overview(
            devices=tuple(devices),
            alerts=tuple(recent),
            alert_total=(recent[0].id or 0) if recent else 0,
            switches=tuple(storage.switch_status()),
            unit_seconds=self._unit_seconds(),
            current_unit=storage.last_unit(),
        )

    def device(self, mac: str, units: int = HEATMAP_UNITS) -> DeviceDetail | None:
        """The device page of `mac`, None when the registry has no such device."""
        storage = self._storage
        row = next((r for r in storage.devices(every_scope=True) if r.mac == mac), None)
        if row is None:
            return None
        records = storage.device_decisions(mac)
        summaries = [
            DecisionSummary(
                0, r.device, r.window_end_unit, r.label, r.similarity, r.decided_at, r.accumulated
            )
            for r in records
        ]
        alerts = storage.alerts(device=mac)
        summary = summarize([row], summaries, {mac: len(alerts)})[0]
        return DeviceDetail(
            summary=summary,
            heatmap=self._heatmap(mac, units),
            decisions=tuple(DecisionView(r, bars(r.explanation)) for r in records),
            alerts=tuple(alerts),
            fingerprints=len(storage.device_fingerprints(mac)),
            unit_seconds=self._unit_seconds(),
        )

    def _heatmap(self, mac: str, units: int) -> HeatMap | None:
        unit_seconds = self._unit_seconds()
        last = self._storage.last_unit()
        if unit_seconds is None or last is None:
            return None
        count = max(1, min(units, HEATMAP_MAX_UNITS))
        first = last - count + 1
        cells: dict[str, list[int | None]] = {}
        for record in self._storage.device_activity(mac, first):
            row = cells.setdefault(record.service, [None] * count)
            row[record.unit - first] = (row[record.unit - first] or 0) + record.packets
        rows = sorted(
            (
                HeatRow(service, tuple(values), sum(1 for v in values if v))
                for service, values in cells.items()
            ),
            key=lambda r: (-r.active_units, r.service),
        )
        top = max((v or 0 for r in rows for v in r.cells), default=0)
        return HeatMap(first, count, tuple(rows), top, unit_seconds)

    def switches(self) -> list[SwitchStatusRecord]:
        """The switches page."""
        return self._storage.switch_status()

    def alerts(self, kind: str | None = None, limit: int = 500) -> list[AlertRecord]:
        """The alerts page: the newest `limit` alerts (of one kind if given)."""
        found = self._storage.alerts(limit=None if kind else limit)
        if kind:
            found = [a for a in found if a.kind == kind][:limit]
        return found


@dataclass
class ChangeWatch:
    """Which topics changed between two looks at the database's marks."""

    last: dict[str, float] = field(default_factory=dict)
    looked_at: float = field(default_factory=time.time)

    def changed(self, marks: dict[str, float]) -> set[str]:
        """Topics whose mark moved since the previous look (every one on the first)."""
        topics = {t for t, v in marks.items() if self.last.get(t) != v}
        self.last = dict(marks)
        self.looked_at = time.time()
        return topics
