"""The storage interface every backend implements: registry, catalogue snapshot, per-unit
activity, counter baselines, input files and engine results, with the SQL written once.

A backend (`controller.store.storage` for SQLite, `controller.store.postgres` for PostgreSQL)
supplies a connection, its transactions and its spelling of types; the SQL here uses `?`
placeholders and upserts (`INSERT ... ON CONFLICT ... DO UPDATE`) that both understand.

Every write is one transaction, so a crash or bad input never leaves half a poll behind: the
activity a poll produced and the counter baseline it moved to commit together, which is what
stops a restarted controller from counting a unit twice. Several controllers may share one
database when each has its own `scope` (its devices and switches) and its own switch names.
"""

from __future__ import annotations

import csv
import json
import math
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import AbstractContextManager, contextmanager
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from controller.base.errors import InputError
from controller.base.fileio import open_atomically, replace_atomically
from controller.engine.activity import (
    MAX_UNIT_SECONDS,
    MIN_UNIT_SECONDS,
    ActivityRecord,
    ActivityTable,
)
from controller.engine.services import Service
from controller.store.records import (
    EXPORTABLE,
    TIME_UNIT_KEY,
    AlertRecord,
    Baseline,
    DecisionRecord,
    DecisionSummary,
    DeviceRow,
    FingerprintRecord,
    SourceFile,
    SwitchStatusRecord,
)
from controller.store.schema import LATEST, MIGRATIONS, VERSION_TABLE, Dialect

# How long a database may take to answer (a server connecting or running a statement, a lock
# another session or connection holds) before the command ends naming it: `--db-timeout`.
DEFAULT_DB_TIMEOUT = 30.0

# Activity adds up: a row already stored for (device, unit, service) grows by the new counts.
_ADD_ACTIVITY = (
    "INSERT INTO activity (device, unit, service, packets, bytes) VALUES (?, ?, ?, ?, ?) "
    "ON CONFLICT (device, unit, service) DO UPDATE SET "
    "packets = activity.packets + excluded.packets, bytes = activity.bytes + excluded.bytes"
)
_DEVICE_COLUMNS = "mac, device_id, label, switch, port, source, first_seen, last_seen"
_SERVICE_COLUMNS = "id, name, proto, port_lo, port_hi, priority, in_dst_table"
_FINGERPRINT_COLUMNS = (
    "device, window_start_unit, window_end_unit, representation, fingerprint, converged"
)
_DECISION_COLUMNS = (
    "device, window_start_unit, window_end_unit, representation, label, similarity, "
    "explanation, decided_at"
)
_SET_META = (
    "INSERT INTO meta (key, value) VALUES (?, ?) "
    "ON CONFLICT (key) DO UPDATE SET value = excluded.value"
)


class Sql(Protocol):
    """The statements of one transaction (or of autocommit reads), `?` placeholders."""

    def run(self, sql: str, params: Sequence[Any] = ()) -> None:
        """Execute one statement."""

    def run_many(self, sql: str, rows: Iterable[Sequence[Any]]) -> None:
        """Execute one statement per row."""

    def rows(self, sql: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        """Execute a query and fetch every row."""

    def columns(self, sql: str) -> tuple[list[str], list[tuple[Any, ...]]]:
        """Execute a query: its column names and every row."""


class NamedErrors:
    """An `Sql` whose failures `words` can describe (damage, a lost connection) become an
    `InputError` naming the database, wherever in a run they are met; others pass unchanged."""

    def __init__(
        self,
        inner: Sql,
        name: str,
        caught: type[Exception],
        words: Callable[[Exception], str | None],
    ) -> None:
        self._inner = inner
        self._name = name
        self._caught = caught
        self._words = words

    @contextmanager
    def named(self) -> Iterator[None]:
        """Failures inside the block, described (see the class)."""
        try:
            yield
        except self._caught as exc:
            said = self._words(exc)
            if said is None:
                raise
            raise InputError(f"database {self._name} {said}") from exc

    def run(self, sql: str, params: Sequence[Any] = ()) -> None:
        with self.named():
            self._inner.run(sql, params)

    def run_many(self, sql: str, rows: Iterable[Sequence[Any]]) -> None:
        with self.named():
            self._inner.run_many(sql, rows)

    def rows(self, sql: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        with self.named():
            return self._inner.rows(sql, params)

    def columns(self, sql: str) -> tuple[list[str], list[tuple[Any, ...]]]:
        with self.named():
            return self._inner.columns(sql)


class Store(ABC):
    """One database; one instance per process, used from one thread at a time.

    `name` is how messages name the database (a path, or a URL without its password); `scope`
    the controller whose devices and switches this instance reads and writes ("" by default).
    """

    dialect: Dialect
    # The backend's exception for a broken constraint (NOT NULL, UNIQUE, ...).
    integrity_error: type[Exception] = Exception
    # The backend's exception for a database that cannot be read at the moment (a connection
    # lost, a file that fails to read), where `NamedErrors` has not already made it an
    # InputError.
    read_error: type[Exception]

    def __init__(self, name: str, scope: str = "") -> None:
        self.name = name
        self.scope = scope

    # -- what a backend supplies --------------------------------------------------------------

    @abstractmethod
    def close(self) -> None:
        """Close the connection."""

    @abstractmethod
    def transaction(self) -> AbstractContextManager[Sql]:
        """One write transaction: everything inside commits together or not at all."""

    @abstractmethod
    def _sql(self) -> Sql:
        """Statements outside a transaction (each commits by itself): reads."""

    def _text_order(self) -> str:
        """How ORDER BY compares text columns: byte order, whatever the database's locale."""
        return ""

    @abstractmethod
    def _lock_schema(self, sql: Sql) -> None:
        """Keep other processes from migrating the same database at the same time."""

    # -- schema -------------------------------------------------------------------------------

    def _set_up(
        self,
        failures: type[Exception],
        prepare: Callable[[], object] = lambda: None,
        migrate: bool = True,
    ) -> None:
        """Prepare the fresh connection and migrate the schema (unless it is only read); on any
        failure the connection is closed, and a database error becomes an InputError naming the
        database."""
        try:
            prepare()
            if migrate:
                self._migrate()
        except failures as exc:
            self.close()
            raise InputError(f"cannot open database {self.name}: {exc}") from exc
        except BaseException:
            self.close()
            raise

    def _migrate(self) -> None:
        """Apply the migrations this database lacks, each in its own transaction."""
        with self.transaction() as sql:
            self._lock_schema(sql)
            sql.run(self.dialect.render(VERSION_TABLE))
        version = self.schema_version()
        if version > LATEST:
            raise InputError(
                f"database {self.name} has schema version {version}; this svcfp knows up to "
                f"{LATEST}: upgrade svcfp to use it"
            )
        for migration in MIGRATIONS:
            with self.transaction() as sql:
                self._lock_schema(sql)
                done = sql.rows(
                    "SELECT 1 FROM schema_version WHERE version = ?", (migration.version,)
                )
                if done:
                    continue
                self._before_migration(sql, migration.version)
                for statement in migration.statements:
                    sql.run(self.dialect.render(statement))
                sql.run(
                    "INSERT INTO schema_version (version, description, applied_at) "
                    "VALUES (?, ?, ?)",
                    (migration.version, migration.description, time.time()),
                )

    @abstractmethod
    def _before_migration(self, sql: Sql, version: int) -> None:
        """Backend-specific repairs, before migration `version`, of databases written before
        schema versions existed."""

    def schema_version(self) -> int:
        """The newest migration this database has (0 for none)."""
        rows = self._sql().rows("SELECT max(version) FROM schema_version")
        return int(rows[0][0] or 0)

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- meta ---------------------------------------------------------------------------------

    def meta(self, key: str) -> str | None:
        """A stored setting, or None."""
        rows = self._sql().rows("SELECT value FROM meta WHERE key = ?", (key,))
        return None if not rows else str(rows[0][0])

    def check_meta(self, key: str, value: str) -> None:
        """Record `value` for `key`, or refuse if the database already holds a different one.

        Activity counted with one time unit cannot be added to activity counted with another.
        """
        with self.transaction() as sql:
            self._check_setting(sql, key, value)

    def check_time_unit(self, unit_seconds: float) -> None:
        """Record the database's time unit, or refuse one other than the stored one."""
        self.check_meta(TIME_UNIT_KEY, repr(float(unit_seconds)))

    def _check_setting(self, sql: Sql, key: str, value: str) -> None:
        # DO NOTHING: another controller may record the same setting at the same moment.
        sql.run(
            "INSERT INTO meta (key, value) VALUES (?, ?) ON CONFLICT (key) DO NOTHING",
            (key, value),
        )
        stored = sql.rows("SELECT value FROM meta WHERE key = ?", (key,))[0][0]
        if stored != value:
            raise InputError(f"database {self.name} was written with {key}={stored}, not {value}")

    # -- devices and switches -----------------------------------------------------------------

    def devices(self, every_scope: bool = False) -> list[DeviceRow]:
        """Every device of this scope ever registered, evicted ones included; with
        `every_scope`, those of every controller writing to this database (what a dashboard of a
        shared database shows)."""
        where, params = ("", ()) if every_scope else ("WHERE scope = ? ", (self.scope,))
        rows = self._sql().rows(
            f"SELECT {_DEVICE_COLUMNS} FROM devices {where}ORDER BY mac{self._text_order()}",
            params,
        )
        return [DeviceRow(*row) for row in rows]

    def put_devices(self, rows: Iterable[DeviceRow]) -> None:
        """Insert or replace devices of this scope in one transaction."""
        with self.transaction() as sql:
            sql.run_many(
                f"INSERT INTO devices ({_DEVICE_COLUMNS}, scope) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?) "
                "ON CONFLICT (scope, mac) DO UPDATE SET device_id = excluded.device_id, "
                "label = excluded.label, switch = excluded.switch, port = excluded.port, "
                "source = excluded.source, first_seen = excluded.first_seen, "
                "last_seen = excluded.last_seen",
                [
                    (
                        r.mac,
                        r.device_id,
                        r.label,
                        r.switch,
                        r.port,
                        r.source,
                        r.first_seen,
                        r.last_seen,
                        self.scope,
                    )
                    for r in rows
                ],
            )

    def delete_devices(self, macs: Iterable[str]) -> int:
        """Forget these devices of this scope (their activity stays) in one transaction; how
        many were stored."""
        chosen = sorted(set(macs))
        with self.transaction() as sql:
            held = {
                row[0]
                for mac in chosen
                for row in sql.rows(
                    "SELECT mac FROM devices WHERE scope = ? AND mac = ?", (self.scope, mac)
                )
            }
            sql.run_many(
                "DELETE FROM devices WHERE scope = ? AND mac = ?",
                [(self.scope, mac) for mac in sorted(held)],
            )
        return len(held)

    def claim_switches(self, switches: Mapping[str, str]) -> None:
        """Record that this scope polls the switches (name → address), or refuse a name another
        scope polls: two controllers moving one baseline row would count its deltas twice."""
        with self.transaction() as sql:
            for name, address in sorted(switches.items()):
                held = sql.rows("SELECT scope, address FROM switches WHERE name = ?", (name,))
                if held and held[0][0] != self.scope:
                    raise InputError(
                        f"database {self.name}: switch {name} ({held[0][1]}) is polled by the "
                        f"controller of scope {held[0][0]!r}, not {self.scope!r}; give every "
                        "switch a name of its own"
                    )
                sql.run(
                    "INSERT INTO switches (name, scope, address, claimed_at) VALUES (?, ?, ?, ?) "
                    "ON CONFLICT (name) DO UPDATE SET address = excluded.address, "
                    "claimed_at = excluded.claimed_at",
                    (name, self.scope, address, time.time()),
                )

    # -- services -----------------------------------------------------------------------------

    def put_services(self, services: Iterable[Service]) -> None:
        """Replace the catalogue snapshot (what the switch was given)."""
        with self.transaction() as sql:
            sql.run("DELETE FROM services")
            sql.run_many(
                f"INSERT INTO services ({_SERVICE_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?)",
                [
                    (s.id, s.name, s.proto, s.port_lo, s.port_hi, s.priority, int(s.in_dst_table))
                    for s in services
                ],
            )

    def services(self) -> list[Service]:
        """The catalogue snapshot, by id."""
        rows = self._sql().rows(f"SELECT {_SERVICE_COLUMNS} FROM services ORDER BY id")
        return [Service(r[0], r[1], r[2], r[3], r[4], r[5], bool(r[6])) for r in rows]

    # -- activity and baselines ---------------------------------------------------------------

    def baseline(self, switch: str, cells: int) -> Baseline | None:
        """The stored baseline of `switch`, or None if there is none for a counter of this size."""
        rows = self._sql().rows(
            "SELECT cells, nonzero, packets, bytes FROM baselines WHERE switch = ?", (switch,)
        )
        if not rows or rows[0][0] != cells:
            return None
        row = rows[0]
        index = np.frombuffer(row[1], dtype=np.int64)
        packets = np.zeros(cells, np.int64)
        counted = np.zeros(cells, np.int64)
        packets[index] = np.frombuffer(row[2], dtype=np.int64)
        counted[index] = np.frombuffer(row[3], dtype=np.int64)
        return Baseline(packets, counted)

    def record_poll(
        self,
        switch: str,
        baseline: Baseline,
        activity: Sequence[ActivityRecord],
        when: float,
    ) -> None:
        """Add one poll's activity and move the switch's baseline, in one transaction."""
        nonzero = np.flatnonzero((baseline.packets != 0) | (baseline.bytes != 0)).astype(np.int64)
        with self.transaction() as sql:
            sql.run_many(_ADD_ACTIVITY, sorted(activity, key=_lock_order))
            sql.run(
                "INSERT INTO baselines (switch, cells, nonzero, packets, bytes, updated_at) "
                "VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT (switch) DO UPDATE SET "
                "cells = excluded.cells, nonzero = excluded.nonzero, "
                "packets = excluded.packets, bytes = excluded.bytes, "
                "updated_at = excluded.updated_at",
                (
                    switch,
                    len(baseline.packets),
                    nonzero.tobytes(),
                    baseline.packets[nonzero].tobytes(),
                    baseline.bytes[nonzero].tobytes(),
                    when,
                ),
            )
            if activity:
                sql.run_many(
                    "UPDATE devices SET last_seen = ? "
                    "WHERE scope = ? AND mac = ? AND last_seen < ?",
                    [(when, self.scope, mac, when) for mac in sorted({a.device for a in activity})],
                )

    def activity(
        self, unit_from: int | None = None, unit_to: int | None = None
    ) -> list[ActivityRecord]:
        """Activity rows with `unit_from <= unit <= unit_to`, ordered by device, unit, service."""
        lo = -(2**62) if unit_from is None else unit_from
        hi = 2**62 if unit_to is None else unit_to
        text = self._text_order()
        rows = self._sql().rows(
            "SELECT device, unit, service, packets, bytes FROM activity "
            f"WHERE unit BETWEEN ? AND ? ORDER BY device{text}, unit, service{text}",
            (lo, hi),
        )
        return [ActivityRecord(*row) for row in rows]

    def add_activity(self, table: ActivityTable) -> None:
        """Add activity in one transaction: rows already stored grow by the new counts.

        The database keeps one time unit: activity counted with another is refused whole.
        """
        with self.transaction() as sql:
            self._check_setting(sql, TIME_UNIT_KEY, repr(float(table.unit_seconds)))
            sql.run_many(_ADD_ACTIVITY, table.records())

    def add_sources(
        self, parts: Sequence[tuple[SourceFile, ActivityTable]], replace: bool = False
    ) -> None:
        """Add the activity of input files, each once: a file added before (by its content) is
        refused whole, or with `replace` what it added then is taken back first. One
        transaction for all of them: on any refusal nothing is stored."""
        with self.transaction() as sql:
            for source, table in parts:
                self._check_setting(sql, TIME_UNIT_KEY, repr(float(table.unit_seconds)))
                before = sql.rows(
                    "SELECT name, added_at FROM sources WHERE digest = ?", (source.digest,)
                )
                if before:
                    if not replace:
                        when = time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(before[0][1]))
                        raise InputError(
                            f"{source.name} was already added to {self.name} on {when} UTC (as "
                            f"{before[0][0]}): its activity is stored; pass --replace to "
                            "replace it"
                        )
                    _take_back(sql, source.digest)
                records = list(table.records())
                sql.run_many(_ADD_ACTIVITY, records)
                sql.run_many(
                    "INSERT INTO source_activity (digest, device, unit, service, packets, bytes) "
                    "VALUES (?, ?, ?, ?, ?, ?)",
                    [(source.digest, *r) for r in records],
                )
                sql.run(
                    "INSERT INTO sources (digest, name, rows, packets, added_at) "
                    "VALUES (?, ?, ?, ?, ?)",
                    (
                        source.digest,
                        source.name,
                        len(records),
                        int(table.packets.sum()),
                        time.time(),
                    ),
                )

    def activity_table(
        self,
        unit_from: int | None = None,
        unit_to: int | None = None,
        unit_seconds: float | None = None,
    ) -> ActivityTable:
        """The stored activity of units `unit_from..unit_to` (inclusive) as the engine takes it.

        Units are the database's `time_unit_seconds` unless `unit_seconds` is given.
        """
        if unit_seconds is None:
            unit_seconds = self.unit_seconds()
            if unit_seconds is None:
                raise InputError(
                    f"database {self.name} has no time unit: no activity was ever stored"
                )
        rows = self.activity(unit_from, unit_to)
        try:
            return ActivityTable.from_records(rows, unit_seconds=unit_seconds)
        except (TypeError, ValueError) as exc:
            raise InputError(
                f"database {self.name} is damaged: an activity row is not a device, a whole unit, "
                f"a service and whole packet and byte counts ({exc})"
            ) from None

    def unit_seconds(self) -> float | None:
        """The time unit of the stored activity, in seconds (None before any was stored)."""
        stored = self.meta(TIME_UNIT_KEY)
        if stored is None:
            return None
        try:
            value = float(stored)
        except ValueError:
            value = math.nan
        if not MIN_UNIT_SECONDS <= value <= MAX_UNIT_SECONDS:
            raise InputError(
                f"database {self.name} is damaged: its time unit {stored!r} is not a number of "
                f"seconds in [{MIN_UNIT_SECONDS:g}, {MAX_UNIT_SECONDS:g}]"
            )
        return value

    # -- engine results -----------------------------------------------------------------------

    def add_results(
        self,
        fingerprints: Iterable[FingerprintRecord],
        decisions: Iterable[DecisionRecord],
        meta: Mapping[str, str] | None = None,
        when: float | None = None,
    ) -> None:
        """Store fingerprints, decisions and settings (`meta`) together in one transaction."""
        stamp = time.time() if when is None else when
        with self.transaction() as sql:
            sql.run_many(
                f"INSERT INTO fingerprints ({_FINGERPRINT_COLUMNS}, created_at) "
                "VALUES (?, ?, ?, ?, ?, ?, ?)",
                [
                    (
                        *_window(r),
                        json.dumps(r.fingerprint, sort_keys=True),
                        int(r.converged),
                        stamp,
                    )
                    for r in fingerprints
                ],
            )
            sql.run_many(
                f"INSERT INTO decisions ({_DECISION_COLUMNS}, accumulated) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                [
                    (
                        *_window(r),
                        r.label,
                        r.similarity,
                        json.dumps(r.explanation, sort_keys=True),
                        r.decided_at,
                        r.accumulated,
                    )
                    for r in decisions
                ],
            )
            sql.run_many(_SET_META, sorted((meta or {}).items()))

    def fingerprints(self) -> list[FingerprintRecord]:
        """Every stored fingerprint, oldest first."""
        rows = self._sql().rows(f"SELECT {_FINGERPRINT_COLUMNS} FROM fingerprints ORDER BY id")
        return [_fingerprint(r) for r in rows]

    def decisions(self) -> list[DecisionRecord]:
        """Every stored decision, oldest first."""
        rows = self._sql().rows(f"SELECT {_DECISION_COLUMNS} FROM decisions ORDER BY id")
        return [_decision(r) for r in rows]

    # -- what operators watch: alerts, switch status, one device's history --------------------

    def _has_table(self, name: str) -> bool:
        """Whether the database has table `name` (a migrated one has every table)."""
        return True

    def _has_column(self, table: str, column: str) -> bool:
        """Whether `table` has `column` (a migrated database has every column)."""
        return True

    def add_alerts(self, alerts: Sequence[AlertRecord]) -> list[int]:
        """Store alerts of this scope in one transaction; their ids, in order."""
        ids: list[int] = []
        with self.transaction() as sql:
            for a in alerts:
                (row,) = sql.rows(
                    "INSERT INTO alerts (kind, severity, device, switch, message, details, "
                    "raised_at, scope) VALUES (?, ?, ?, ?, ?, ?, ?, ?) RETURNING id",
                    (
                        a.kind,
                        a.severity,
                        a.device,
                        a.switch,
                        a.message,
                        json.dumps(a.details, sort_keys=True),
                        a.raised_at,
                        self.scope,
                    ),
                )
                ids.append(int(row[0]))
        return ids

    def alerts(
        self, after_id: int = 0, device: str | None = None, limit: int | None = None
    ) -> list[AlertRecord]:
        """Stored alerts (of every scope) with ids above `after_id`, of one device if given,
        newest first."""
        if not self._has_table("alerts"):
            return []
        where, params = "id > ?", list[Any]([after_id])
        if device is not None:
            where += " AND device = ?"
            params.append(device)
        bound = "" if limit is None else f" LIMIT {int(limit)}"
        rows = self._sql().rows(
            "SELECT kind, severity, device, switch, message, details, raised_at, id FROM alerts "
            f"WHERE {where} ORDER BY id DESC{bound}",
            params,
        )
        return [
            AlertRecord(r[0], r[1], r[2], r[3], r[4], json.loads(r[5]), r[6], r[7]) for r in rows
        ]

    def alert_counts(self) -> dict[str, int]:
        """How many alerts each device has had."""
        if not self._has_table("alerts"):
            return {}
        rows = self._sql().rows(
            "SELECT device, count(*) FROM alerts WHERE device IS NOT NULL GROUP BY device"
        )
        return {str(device): int(n) for device, n in rows}

    def put_switch_status(self, record: SwitchStatusRecord) -> None:
        """Replace one switch's latest state."""
        with self.transaction() as sql:
            sql.run(
                "INSERT INTO switch_status (switch, status, updated_at) VALUES (?, ?, ?) "
                "ON CONFLICT (switch) DO UPDATE SET status = excluded.status, "
                "updated_at = excluded.updated_at",
                (record.switch, json.dumps(record.status, sort_keys=True), record.updated_at),
            )

    def switch_status(self) -> list[SwitchStatusRecord]:
        """Every switch's latest state, by name."""
        if not self._has_table("switch_status"):
            return []
        rows = self._sql().rows(
            "SELECT switch, status, updated_at FROM switch_status "
            f"ORDER BY switch{self._text_order()}"
        )
        return [SwitchStatusRecord(r[0], json.loads(r[1]), r[2]) for r in rows]

    def decision_summaries(self) -> list[DecisionSummary]:
        """Every decision without its explanation (but with the accumulated answer after it),
        oldest first."""
        # A database opened read-only before migration 5 has the answers in the explanations.
        accumulated = (
            "accumulated"
            if self._has_column("decisions", "accumulated")
            else self.dialect.render("{accumulated_label}")
        )
        rows = self._sql().rows(
            f"SELECT id, device, window_end_unit, label, similarity, decided_at, {accumulated} "
            "FROM decisions ORDER BY id"
        )
        return [DecisionSummary(*r) for r in rows]

    def device_decisions(self, mac: str) -> list[DecisionRecord]:
        """One device's decisions, oldest first."""
        rows = self._sql().rows(
            f"SELECT {_DECISION_COLUMNS} FROM decisions WHERE device = ? ORDER BY id", (mac,)
        )
        return [_decision(r) for r in rows]

    def device_fingerprints(self, mac: str) -> list[FingerprintRecord]:
        """One device's exported fingerprints, oldest first."""
        rows = self._sql().rows(
            f"SELECT {_FINGERPRINT_COLUMNS} FROM fingerprints WHERE device = ? ORDER BY id",
            (mac,),
        )
        return [_fingerprint(r) for r in rows]

    def device_activity(self, mac: str, unit_from: int | None = None) -> list[ActivityRecord]:
        """One device's activity rows from `unit_from` on, by unit and service."""
        rows = self._sql().rows(
            "SELECT device, unit, service, packets, bytes FROM activity "
            f"WHERE device = ? AND unit >= ? ORDER BY unit, service{self._text_order()}",
            (mac, -(2**62) if unit_from is None else unit_from),
        )
        return [ActivityRecord(*row) for row in rows]

    def last_unit(self) -> int | None:
        """The latest unit any activity was stored in."""
        rows = self._sql().rows("SELECT max(unit) FROM activity")
        return None if not rows or rows[0][0] is None else int(rows[0][0])

    def change_marks(self) -> dict[str, float]:
        """Cheap marks that move when something a dashboard shows was written: the newest
        decision, fingerprint and alert, the devices' latest sighting, the latest poll."""
        marks = {
            "decisions": "SELECT max(id) FROM decisions",
            "fingerprints": "SELECT max(id) FROM fingerprints",
            "devices": "SELECT count(*) + coalesce(max(last_seen), 0) FROM devices",
        }
        if self._has_table("alerts"):
            marks["alerts"] = "SELECT max(id) FROM alerts"
        if self._has_table("switch_status"):
            marks["switches"] = "SELECT max(updated_at) FROM switch_status"
        return {topic: float(self._sql().rows(query)[0][0] or 0) for topic, query in marks.items()}

    # -- export -------------------------------------------------------------------------------

    def export(self, table: str, path: Path) -> int:
        """Write one table to CSV (or Parquet when `path` ends in .parquet); returns the row count.

        The file appears complete or not at all: it is written beside `path` and renamed.
        """
        if table not in EXPORTABLE:
            raise InputError(f"cannot export {table!r}: choose one of {', '.join(EXPORTABLE)}")
        columns, rows = self._sql().columns(f"SELECT * FROM {table}")
        if path.suffix == ".parquet":
            replace_atomically(path, lambda tmp: _write_parquet(tmp, columns, rows))
        else:
            with open_atomically(path, newline="") as out:
                writer = csv.writer(out)
                writer.writerow(columns)
                writer.writerows(rows)
        return len(rows)


def _take_back(sql: Sql, digest: str) -> None:
    """Subtract what the source `digest` added from the activity, and forget the source."""
    sql.run(
        "UPDATE activity SET "
        "packets = packets - (SELECT s.packets FROM source_activity s WHERE s.digest = ? AND "
        "s.device = activity.device AND s.unit = activity.unit AND s.service = activity.service), "
        "bytes = bytes - (SELECT s.bytes FROM source_activity s WHERE s.digest = ? AND "
        "s.device = activity.device AND s.unit = activity.unit AND s.service = activity.service) "
        "WHERE EXISTS (SELECT 1 FROM source_activity s WHERE s.digest = ? AND "
        "s.device = activity.device AND s.unit = activity.unit AND s.service = activity.service)",
        (digest, digest, digest),
    )
    sql.run("DELETE FROM activity WHERE packets <= 0")
    sql.run("DELETE FROM source_activity WHERE digest = ?", (digest,))
    sql.run("DELETE FROM sources WHERE digest = ?", (digest,))


def _lock_order(record: Sequence[Any]) -> str:
    """A total order of activity rows: concurrent writers that upsert rows in one order lock
    the rows they share in that order, so they never deadlock. (Any total order does; this
    one also orders malformed rows, which the database then refuses.)"""
    return repr(tuple(record[:3]))


def _fingerprint(r: Sequence[Any]) -> FingerprintRecord:
    return FingerprintRecord(r[0], r[1], r[2], r[3], json.loads(r[4]), bool(r[5]))


def _decision(r: Sequence[Any]) -> DecisionRecord:
    return DecisionRecord(r[0], r[1], r[2], r[3], r[4], r[5], json.loads(r[6]), r[7])


def _window(row: FingerprintRecord | DecisionRecord) -> tuple[str, int, int, str]:
    return row.device, row.window_start_unit, row.window_end_unit, row.representation


def _write_parquet(path: Path, columns: list[str], rows: list[Any]) -> None:
    # Imported on first use: only exports need pyarrow's Parquet writer.
    import pyarrow as pa
    import pyarrow.parquet as pq

    data = {name: [row[i] for row in rows] for i, name in enumerate(columns)}
    pq.write_table(pa.table(data), str(path))
