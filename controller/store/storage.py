"""SQLite storage: registry, catalogue snapshot, per-unit activity, counter baselines, results.

One file (default `svcfp.db`) in WAL mode. Every write is one transaction, so a crash or bad input
never leaves half a poll behind: the activity a poll produced and the counter baseline it moved to
commit together, which is what stops a restarted controller from counting a unit twice.
"""

from __future__ import annotations

import csv
import hashlib
import json
import sqlite3
import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from controller.base.errors import InputError
from controller.base.fileio import open_atomically, replace_atomically
from controller.base.wire import CounterValues
from controller.engine.activity import ActivityRecord, ActivityTable
from controller.engine.services import Service

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (
    key TEXT PRIMARY KEY,
    value TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS devices (
    mac TEXT PRIMARY KEY,
    device_id INTEGER UNIQUE,
    label TEXT NOT NULL DEFAULT 'unknown',
    switch TEXT,
    port INTEGER,
    source TEXT NOT NULL,
    first_seen REAL NOT NULL,
    last_seen REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS services (
    id INTEGER PRIMARY KEY,
    name TEXT NOT NULL,
    proto INTEGER,
    port_lo INTEGER NOT NULL,
    port_hi INTEGER NOT NULL,
    priority INTEGER NOT NULL,
    in_dst_table INTEGER NOT NULL DEFAULT 1
);
CREATE TABLE IF NOT EXISTS activity (
    device TEXT NOT NULL,
    unit INTEGER NOT NULL,
    service TEXT NOT NULL,
    packets INTEGER NOT NULL,
    bytes INTEGER NOT NULL,
    PRIMARY KEY (device, unit, service)
);
CREATE TABLE IF NOT EXISTS sources (
    digest TEXT PRIMARY KEY,
    name TEXT NOT NULL,
    rows INTEGER NOT NULL,
    packets INTEGER NOT NULL,
    added_at REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS source_activity (
    digest TEXT NOT NULL REFERENCES sources (digest),
    device TEXT NOT NULL,
    unit INTEGER NOT NULL,
    service TEXT NOT NULL,
    packets INTEGER NOT NULL,
    bytes INTEGER NOT NULL,
    PRIMARY KEY (digest, device, unit, service)
);
CREATE TABLE IF NOT EXISTS baselines (
    switch TEXT PRIMARY KEY,
    cells INTEGER NOT NULL,
    nonzero BLOB NOT NULL,
    packets BLOB NOT NULL,
    bytes BLOB NOT NULL,
    updated_at REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS fingerprints (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    device TEXT NOT NULL,
    window_start_unit INTEGER NOT NULL,
    window_end_unit INTEGER NOT NULL,
    representation TEXT NOT NULL,
    fingerprint TEXT NOT NULL,
    converged INTEGER NOT NULL,
    created_at REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS decisions (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    device TEXT NOT NULL,
    window_start_unit INTEGER NOT NULL,
    window_end_unit INTEGER NOT NULL,
    representation TEXT NOT NULL,
    label TEXT NOT NULL,
    similarity REAL NOT NULL,
    explanation TEXT NOT NULL,
    decided_at REAL NOT NULL
);
"""

# The last raw counter values read from one switch, one entry per counter cell.
Baseline = CounterValues

# The one time unit of every activity row in the database, in seconds.
TIME_UNIT_KEY = "time_unit_seconds"

EXPORTABLE = ("activity", "fingerprints", "decisions", "devices", "services")
# Activity adds up: a row already stored for (device, unit, service) grows by the new counts.
_ADD_ACTIVITY = (
    "INSERT INTO activity (device, unit, service, packets, bytes) VALUES (?, ?, ?, ?, ?) "
    "ON CONFLICT (device, unit, service) DO UPDATE SET "
    "packets = packets + excluded.packets, bytes = bytes + excluded.bytes"
)
_SERVICE_COLUMNS = "id, name, proto, port_lo, port_hi, priority, in_dst_table"
_FINGERPRINT_COLUMNS = (
    "device, window_start_unit, window_end_unit, representation, fingerprint, converged"
)
_DECISION_COLUMNS = (
    "device, window_start_unit, window_end_unit, representation, label, similarity, "
    "explanation, decided_at"
)


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


class Storage:
    """The project's SQLite database; one instance per process, used from one thread."""

    def __init__(self, path: Path) -> None:
        self.path = path
        try:
            self._db = sqlite3.connect(str(path), isolation_level=None)
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=NORMAL")
            self._db.executescript(_SCHEMA)
            self._migrate()
        except sqlite3.DatabaseError as exc:
            raise InputError(f"cannot open database {path}: {exc}") from exc

    def _migrate(self) -> None:
        # Databases written before the catalogue snapshot kept `in_dst_table` lack the column;
        # their services were all in both tables, which is the column's default.
        columns = {row[1] for row in self._db.execute("PRAGMA table_info(services)")}
        if "in_dst_table" not in columns:
            self._db.execute(
                "ALTER TABLE services ADD COLUMN in_dst_table INTEGER NOT NULL DEFAULT 1"
            )

    def close(self) -> None:
        """Close the connection (the WAL is checkpointed by SQLite)."""
        self._db.close()

    def __enter__(self) -> Storage:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        """One write transaction: everything inside commits together or not at all."""
        self._db.execute("BEGIN IMMEDIATE")
        try:
            yield self._db
        except BaseException:
            self._db.execute("ROLLBACK")
            raise
        self._db.execute("COMMIT")

    # -- meta ---------------------------------------------------------------------------------

    def meta(self, key: str) -> str | None:
        """A stored setting, or None."""
        row = self._db.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return None if row is None else str(row[0])

    def check_meta(self, key: str, value: str) -> None:
        """Record `value` for `key`, or refuse if the database already holds a different one.

        Activity counted with one time unit cannot be added to activity counted with another.
        """
        with self.transaction() as db:
            _check_setting(db, self.path, key, value)

    def check_time_unit(self, unit_seconds: float) -> None:
        """Record the database's time unit, or refuse one other than the stored one."""
        self.check_meta(TIME_UNIT_KEY, repr(float(unit_seconds)))

    # -- devices ------------------------------------------------------------------------------

    def devices(self) -> list[DeviceRow]:
        """Every device ever registered, evicted ones included."""
        rows = self._db.execute(
            "SELECT mac, device_id, label, switch, port, source, first_seen, last_seen "
            "FROM devices ORDER BY mac"
        ).fetchall()
        return [DeviceRow(*row) for row in rows]

    def put_devices(self, rows: Iterable[DeviceRow]) -> None:
        """Insert or replace devices in one transaction."""
        with self.transaction() as db:
            db.executemany(
                "INSERT OR REPLACE INTO devices "
                "(mac, device_id, label, switch, port, source, first_seen, last_seen) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
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
                    )
                    for r in rows
                ],
            )

    def delete_devices(self, macs: Iterable[str]) -> int:
        """Forget these devices (their activity stays) in one transaction; how many were stored."""
        chosen = sorted(set(macs))
        with self.transaction() as db:
            before = db.total_changes
            db.executemany("DELETE FROM devices WHERE mac = ?", [(mac,) for mac in chosen])
            return db.total_changes - before

    # -- services -----------------------------------------------------------------------------

    def put_services(self, services: Iterable[Service]) -> None:
        """Replace the catalogue snapshot (what the switch was given)."""
        with self.transaction() as db:
            db.execute("DELETE FROM services")
            db.executemany(
                f"INSERT INTO services ({_SERVICE_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?)",
                [
                    (s.id, s.name, s.proto, s.port_lo, s.port_hi, s.priority, int(s.in_dst_table))
                    for s in services
                ],
            )

    def services(self) -> list[Service]:
        """The catalogue snapshot, by id."""
        rows = self._db.execute(f"SELECT {_SERVICE_COLUMNS} FROM services ORDER BY id").fetchall()
        return [Service(r[0], r[1], r[2], r[3], r[4], r[5], bool(r[6])) for r in rows]

    # -- activity and baselines ---------------------------------------------------------------

    def baseline(self, switch: str, cells: int) -> Baseline | None:
        """The stored baseline of `switch`, or None if there is none for a counter of this size."""
        row = self._db.execute(
            "SELECT cells, nonzero, packets, bytes FROM baselines WHERE switch = ?", (switch,)
        ).fetchone()
        if row is None or row[0] != cells:
            return None
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
        with self.transaction() as db:
            db.executemany(_ADD_ACTIVITY, activity)
            db.execute(
                "INSERT OR REPLACE INTO baselines "
                "(switch, cells, nonzero, packets, bytes, updated_at) VALUES (?, ?, ?, ?, ?, ?)",
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
                db.executemany(
                    "UPDATE devices SET last_seen = max(last_seen, ?) WHERE mac = ?",
                    [(when, mac) for mac in sorted({a.device for a in activity})],
                )

    def activity(
        self, unit_from: int | None = None, unit_to: int | None = None
    ) -> list[ActivityRecord]:
        """Activity rows with `unit_from <= unit <= unit_to`, ordered by device, unit, service."""
        lo = -(2**62) if unit_from is None else unit_from
        hi = 2**62 if unit_to is None else unit_to
        rows = self._db.execute(
            "SELECT device, unit, service, packets, bytes FROM activity "
            "WHERE unit BETWEEN ? AND ? ORDER BY device, unit, service",
            (lo, hi),
        ).fetchall()
        return [ActivityRecord(*row) for row in rows]

    def add_activity(self, table: ActivityTable) -> None:
        """Add activity in one transaction: rows already stored grow by the new counts.

        The database keeps one time unit: activity counted with another is refused whole.
        """
        with self.transaction() as db:
            _check_setting(db, self.path, TIME_UNIT_KEY, repr(float(table.unit_seconds)))
            db.executemany(_ADD_ACTIVITY, table.records())

    def add_sources(
        self, parts: Sequence[tuple[SourceFile, ActivityTable]], replace: bool = False
    ) -> None:
        """Add the activity of input files, each once: a file added before (by its content) is
        refused whole, or with `replace` what it added then is taken back first. One
        transaction for all of them: on any refusal nothing is stored."""
        with self.transaction() as db:
            for source, table in parts:
                _check_setting(db, self.path, TIME_UNIT_KEY, repr(float(table.unit_seconds)))
                before = db.execute(
                    "SELECT name, added_at FROM sources WHERE digest = ?", (source.digest,)
                ).fetchone()
                if before is not None:
                    if not replace:
                        when = time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(before[1]))
                        raise InputError(
                            f"{source.name} was already added to {self.path} on {when} UTC (as "
                            f"{before[0]}): its activity is stored; pass --replace to replace it"
                        )
                    _take_back(db, source.digest)
                records = list(table.records())
                db.executemany(_ADD_ACTIVITY, records)
                db.executemany(
                    "INSERT INTO source_activity (digest, device, unit, service, packets, bytes) "
                    "VALUES (?, ?, ?, ?, ?, ?)",
                    ((source.digest, *r) for r in records),
                )
                db.execute(
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
            stored = self.meta(TIME_UNIT_KEY)
            if stored is None:
                raise InputError(
                    f"database {self.path} has no time unit: no activity was ever stored"
                )
            unit_seconds = float(stored)
        return ActivityTable.from_records(
            self.activity(unit_from, unit_to), unit_seconds=unit_seconds
        )

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
        with self.transaction() as db:
            db.executemany(
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
            db.executemany(
                f"INSERT INTO decisions ({_DECISION_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                [
                    (
                        *_window(r),
                        r.label,
                        r.similarity,
                        json.dumps(r.explanation, sort_keys=True),
                        r.decided_at,
                    )
                    for r in decisions
                ],
            )
            db.executemany(
                "INSERT OR REPLACE INTO meta (key, value) VALUES (?, ?)", (meta or {}).items()
            )

    def fingerprints(self) -> list[FingerprintRecord]:
        """Every stored fingerprint, oldest first."""
        rows = self._db.execute(
            f"SELECT {_FINGERPRINT_COLUMNS} FROM fingerprints ORDER BY id"
        ).fetchall()
        return [
            FingerprintRecord(r[0], r[1], r[2], r[3], json.loads(r[4]), bool(r[5])) for r in rows
        ]

    def decisions(self) -> list[DecisionRecord]:
        """Every stored decision, oldest first."""
        rows = self._db.execute(f"SELECT {_DECISION_COLUMNS} FROM decisions ORDER BY id").fetchall()
        return [
            DecisionRecord(r[0], r[1], r[2], r[3], r[4], r[5], json.loads(r[6]), r[7]) for r in rows
        ]

    # -- export -------------------------------------------------------------------------------

    def export(self, table: str, path: Path) -> int:
        """Write one table to CSV (or Parquet when `path` ends in .parquet); returns the row count.

        The file appears complete or not at all: it is written beside `path` and renamed.
        """
        if table not in EXPORTABLE:
            raise InputError(f"cannot export {table!r}: choose one of {', '.join(EXPORTABLE)}")
        cursor = self._db.execute(f"SELECT * FROM {table}")
        columns = [d[0] for d in cursor.description]
        rows = cursor.fetchall()
        if path.suffix == ".parquet":
            replace_atomically(path, lambda tmp: _write_parquet(tmp, columns, rows))
        else:
            with open_atomically(path, newline="") as out:
                writer = csv.writer(out)
                writer.writerow(columns)
                writer.writerows(rows)
        return len(rows)


def _take_back(db: sqlite3.Connection, digest: str) -> None:
    """Subtract what the source `digest` added from the activity, and forget the source."""
    db.execute(
        "UPDATE activity SET "
        "packets = packets - (SELECT s.packets FROM source_activity s WHERE s.digest = ? AND "
        "s.device = activity.device AND s.unit = activity.unit AND s.service = activity.service), "
        "bytes = bytes - (SELECT s.bytes FROM source_activity s WHERE s.digest = ? AND "
        "s.device = activity.device AND s.unit = activity.unit AND s.service = activity.service) "
        "WHERE EXISTS (SELECT 1 FROM source_activity s WHERE s.digest = ? AND "
        "s.device = activity.device AND s.unit = activity.unit AND s.service = activity.service)",
        (digest, digest, digest),
    )
    db.execute("DELETE FROM activity WHERE packets <= 0")
    db.execute("DELETE FROM source_activity WHERE digest = ?", (digest,))
    db.execute("DELETE FROM sources WHERE digest = ?", (digest,))


def _window(row: FingerprintRecord | DecisionRecord) -> tuple[str, int, int, str]:
    return row.device, row.window_start_unit, row.window_end_unit, row.representation


def _check_setting(db: sqlite3.Connection, path: Path, key: str, value: str) -> None:
    stored = db.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
    if stored is None:
        db.execute("INSERT INTO meta (key, value) VALUES (?, ?)", (key, value))
    elif stored[0] != value:
        raise InputError(f"database {path} was written with {key}={stored[0]}, not {value}")


def _write_parquet(path: Path, columns: list[str], rows: list[Any]) -> None:
    # Imported on first use: only exports need pyarrow's Parquet writer.
    import pyarrow as pa
    import pyarrow.parquet as pq

    data = {name: [row[i] for row in rows] for i, name in enumerate(columns)}
    pq.write_table(pa.table(data), str(path))
