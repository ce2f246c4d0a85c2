"""What the dashboard's pages show, read from a controller's database.

The dashboard opens the database read-only on a thread of its own (sqlite connections are
confined to the thread that made them), so page loads never wait behind the controller's writes
and never hold up its event loop; SQLite's WAL lets this reader see each committed poll. The
same reader serves `svcfp run --http` beside the controller and `svcfp dashboard` on a stored
run.

A database that goes away after the dashboard started (a server restarted or stopped, its
session ended, the network cut, a file that fails to read) does not end the dashboard: each
query that cannot be answered raises `DatabaseUnavailable`, which the pages show, and a fresh
connection is tried at once, then no more often than the back-off below, each attempt bounded by
`--db-timeout`. The log says once that the database was lost and once that it is back.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import dataclasses
import functools
import logging
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ParamSpec, TypeVar

from controller.base.errors import InputError
from controller.control.live import answering, verdict
from controller.engine.identify import UNKNOWN
from controller.store.records import (
    AlertRecord,
    DecisionRecord,
    DecisionSummary,
    DeviceRow,
    SwitchStatusRecord,
)
from controller.store.storage import DEFAULT_DB_TIMEOUT, open_reader, redacted
from controller.store.store import Store

T = TypeVar("T")
P = ParamSpec("P")

log = logging.getLogger(__name__)

# Units the device page's heat map shows by default, and at most.
HEATMAP_UNITS = 96
HEATMAP_MAX_UNITS = 1000
# Alerts listed on the devices page.
RECENT_ALERTS = 12
# Once the database is lost, a new connection is tried at once, then RETRY_FIRST seconds after a
# failed attempt, the wait doubling up to RETRY_MOST: a server that is down is asked that
# often however many pages and event streams are open, and one that is back is found within
# RETRY_MOST seconds.
RETRY_FIRST = 1.0
RETRY_MOST = 5.0


@dataclass(frozen=True)
class Outage:
    """The database cannot be read: which one (a URL without its password), why, since when
    (epoch seconds), and when the next connection may be tried (`time.monotonic()`)."""

    database: str
    reason: str
    since: float
    retry_at: float

    def retry_in(self) -> float:
        """Seconds until the next connection may be tried."""
        return max(0.0, self.retry_at - time.monotonic())


class DatabaseUnavailable(Exception):
    """A query the database could not answer (see `Outage`)."""

    def __init__(self, outage: Outage) -> None:
        super().__init__(outage.reason)
        self.outage = outage


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
    """The database, read on its own thread; every query is awaited from the event loop.

    The first connection is made here, so a database that cannot be opened at start is an
    InputError; one lost later is reconnected to (see the module)."""

    def __init__(self, location: Path | str, db_timeout: float = DEFAULT_DB_TIMEOUT) -> None:
        self.location = location
        self.name = redacted(location)
        self.timeout = db_timeout
        # Written by the reader's thread only; the event loop reads them.
        self._reader: Store | None = None
        self.outage: Outage | None = None
        self._wait = RETRY_FIRST
        # Whether a call that will try to reconnect is under way (event loop only).
        self._trying = False
        self._executor = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="dashboard")
        try:
            reader = self._executor.submit(open_reader, location, db_timeout).result()
            self._reader = reader
            # A damaged time unit is named now, not as every page failing.
            self._executor.submit(reader.unit_seconds).result()
        except BaseException:
            with contextlib.suppress(Exception):
                self._executor.submit(self._drop).result()
            self._executor.shutdown()
            raise

    async def call(self, func: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> T:
        """`func(*args)` in the reader's thread, awaited. While the database is lost, only one
        call at a time tries to reconnect, once it is due; every other one raises
        DatabaseUnavailable at once instead of waiting behind it."""
        outage = self.outage
        if outage is None:
            return await self._submit(func, *args, **kwargs)
        if self._trying or outage.retry_in() > 0:
            raise DatabaseUnavailable(outage)
        self._trying = True
        try:
            return await self._submit(func, *args, **kwargs)
        finally:
            self._trying = False

    async def _submit(self, func: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> T:
        return await asyncio.wrap_future(
            self._executor.submit(self._answer, functools.partial(func, *args, **kwargs))
        )

    def close(self) -> None:
        """Close the connection and end the thread."""
        try:
            self._executor.submit(self._drop).result()
        finally:
            self._executor.shutdown()

    # -- connection (in the reader's thread) ----------------------------------------------------

    @property
    def _storage(self) -> Store:
        """The open connection (queries run only while there is one, see `_answer`)."""
        if self._reader is None:
            assert self.outage is not None
            raise DatabaseUnavailable(self.outage)
        return self._reader

    def _answer(self, query: Callable[[], T]) -> T:
        """`query()`, on a fresh connection if the last one was lost and a new one is due.
        A connection that worked and fails at once is replaced at once and the query asked
        again: a restarted server, or one that ended only this session, answers it. One that
        failed only after the bound is not (a server that does not answer would keep the page
        waiting as long again), nor are the calls queued behind it."""
        if self._reader is None:
            self._connect()
            return self._asked(query)
        started = time.monotonic()
        try:
            return self._asked(query)
        except DatabaseUnavailable:
            if time.monotonic() - started >= self.timeout:
                self._postpone()
                raise
            self._connect()
            return self._asked(query)

    def _asked(self, query: Callable[[], T]) -> T:
        """`query()` on the connection there is; the database is back once one answers."""
        storage = self._storage
        try:
            answer = query()
        except (InputError, storage.read_error) as exc:
            said = str(exc) if isinstance(exc, InputError) else f"database {self.name}: {exc}"
            self._lose(said)
            assert self.outage is not None
            raise DatabaseUnavailable(self.outage) from exc
        if self.outage is not None:
            log.info(
                "event=dashboard_db_back db=%s after=%.1fs",
                self.name,
                time.time() - self.outage.since,
            )
            self.outage = None
            self._wait = RETRY_FIRST
        return answer

    def _lose(self, reason: str) -> None:
        """The connection failed and is closed. A connection that worked begins the outage
        (said once; a new connection is due at once); a new one that failed too postpones the
        next."""
        self._drop()
        reason = " ".join(reason.split())
        if self.outage is None:
            log.warning("event=dashboard_db_lost db=%s error=%s", self.name, reason)
            self.outage = Outage(self.name, reason, time.time(), time.monotonic())
        else:
            self.outage = dataclasses.replace(self.outage, reason=reason)
            self._postpone()

    def _postpone(self) -> None:
        """The next connection is due after the current wait, which then doubles (to at most
        RETRY_MOST)."""
        assert self.outage is not None
        self.outage = dataclasses.replace(self.outage, retry_at=time.monotonic() + self._wait)
        self._wait = min(2 * self._wait, RETRY_MOST)

    def _connect(self) -> None:
        """A new connection, if one is due; on failure, the next is postponed."""
        assert self.outage is not None
        if self.outage.retry_in() > 0:
            raise DatabaseUnavailable(self.outage)
        try:
            self._reader = open_reader(self.location, self.timeout)
        except InputError as exc:
            self.outage = dataclasses.replace(self.outage, reason=" ".join(str(exc).split()))
            self._postpone()
            raise DatabaseUnavailable(self.outage) from exc

    def _drop(self) -> None:
        reader, self._reader = self._reader, None
        if reader is not None:
            # A connection already lost may fail to close; it is gone either way.
            with contextlib.suppress(Exception):
                reader.close()

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
