"""SQLite storage, the embedded default: one file (default `svcfp.db`) in WAL mode.

`Storage` is the SQLite backend of `controller.store.store.Store`; `open_store` opens a path or
a `postgresql://` URL (`controller.store.postgres`) behind the same interface.
"""

from __future__ import annotations

import re
import sqlite3
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from controller.base.errors import InputError
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
from controller.store.schema import LATEST, MIGRATIONS, SQLITE
from controller.store.store import DEFAULT_DB_TIMEOUT, NamedErrors, Sql, Store

__all__ = [
    "DEFAULT_DB_TIMEOUT",
    "EXPORTABLE",
    "TIME_UNIT_KEY",
    "AlertRecord",
    "Baseline",
    "DecisionRecord",
    "DecisionSummary",
    "DeviceRow",
    "FingerprintRecord",
    "SourceFile",
    "Storage",
    "Store",
    "SwitchStatusRecord",
    "is_url",
    "open_reader",
    "open_store",
    "redacted",
]

POSTGRES_SCHEMES = ("postgresql://", "postgres://")


# Every table a migration of svcfp's schema creates.
_SVCFP_TABLES = frozenset(
    re.findall(
        r"CREATE TABLE (?:IF NOT EXISTS )?(\w+)",
        " ".join(statement for m in MIGRATIONS for statement in m.statements),
    )
)


class _SqliteSql:
    """`Sql` over one sqlite3 connection (SQLite takes `?` placeholders as they are)."""

    def __init__(self, db: sqlite3.Connection) -> None:
        self._db = db

    def run(self, sql: str, params: Sequence[Any] = ()) -> None:
        self._db.execute(sql, params)

    def run_many(self, sql: str, rows: Iterable[Sequence[Any]]) -> None:
        self._db.executemany(sql, rows)

    def rows(self, sql: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        return self._db.execute(sql, params).fetchall()

    def columns(self, sql: str) -> tuple[list[str], list[tuple[Any, ...]]]:
        cursor = self._db.execute(sql)
        return [d[0] for d in cursor.description], cursor.fetchall()


class Storage(Store):
    """The project's SQLite database.

    `readonly` opens an existing database for reading only (a dashboard beside a running
    controller): nothing is created or migrated, and tables it lacks read as empty. Another
    connection's write lock is waited for at most `timeout` seconds (`--db-timeout`).
    """

    dialect = SQLITE
    integrity_error = sqlite3.IntegrityError
    read_error = sqlite3.OperationalError

    def __init__(
        self,
        path: Path,
        scope: str = "",
        readonly: bool = False,
        timeout: float = DEFAULT_DB_TIMEOUT,
    ) -> None:
        super().__init__(str(path), scope)
        self.path = path
        self.readonly = readonly
        self.timeout = timeout
        self._tables: set[str] | None = None
        if readonly and not path.is_file():
            raise InputError(f"database {path} does not exist")
        try:
            if readonly:
                self._db = sqlite3.connect(
                    f"{path.resolve().as_uri()}?mode=ro",
                    uri=True,
                    isolation_level=None,
                    timeout=timeout,
                )
            else:
                self._db = sqlite3.connect(str(path), isolation_level=None, timeout=timeout)
        except sqlite3.DatabaseError as exc:
            raise InputError(f"cannot open database {path}: {exc}") from exc
        self._plain = NamedErrors(
            _SqliteSql(self._db), str(path), sqlite3.DatabaseError, self._said
        )
        if readonly:
            self._set_up(sqlite3.DatabaseError, self._read_tables, migrate=False)
        else:
            self._set_up(sqlite3.DatabaseError, self._prepare)

    def _said(self, exc: Exception) -> str | None:
        """A damaged file, as SQLite says it (its plain DatabaseError: "database disk image is
        malformed"), or a write lock another connection kept past the timeout; None for every
        other failure."""
        if type(exc) is sqlite3.DatabaseError:
            return f"is damaged: {exc}"
        if isinstance(exc, sqlite3.OperationalError) and "locked" in str(exc):
            return (
                f"stayed locked by another connection for {self.timeout:g} s (--db-timeout); "
                "nothing of this write was stored"
            )
        return None

    def _prepare(self) -> None:
        self._refuse_foreign(self._table_names())
        self._pragmas()

    def _table_names(self) -> set[str]:
        rows = self._db.execute("SELECT name FROM sqlite_master WHERE type = 'table'").fetchall()
        return {str(row[0]) for row in rows}

    def _refuse_foreign(self, names: set[str]) -> None:
        """Refuse another application's database before anything is written to it (or read
        from it as if it were ours); a database from before schema versions holds svcfp's
        tables only."""
        if "schema_version" in names:
            return
        strangers = names - _SVCFP_TABLES - {"sqlite_sequence"}
        columns = {str(r[1]) for r in self._db.execute("PRAGMA table_info(devices)")}
        if strangers or ("devices" in names and "mac" not in columns):
            raise InputError(
                f"database {self.path} is not an svcfp database (it holds the tables "
                f"{', '.join(sorted(names))}); it was left as it was"
            )

    def _read_tables(self) -> None:
        names = self._table_names()
        if not names:
            raise InputError(f"database {self.path} holds no svcfp tables: it is empty")
        self._refuse_foreign(names)
        if "schema_version" in names:
            (version,) = self._db.execute("SELECT MAX(version) FROM schema_version").fetchone()
            if version is not None and version > LATEST:
                raise InputError(
                    f"database {self.path} has schema version {version}; this svcfp knows up to "
                    f"{LATEST}: upgrade svcfp to read it"
                )
        self._tables = names

    def _has_table(self, name: str) -> bool:
        return self._tables is None or name in self._tables

    def _has_column(self, table: str, column: str) -> bool:
        if self._tables is None:
            return True
        rows = self._db.execute(f"PRAGMA table_info({table})").fetchall()
        return column in {str(row[1]) for row in rows}

    def _pragmas(self) -> None:
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        # Another controller on the same file waits for the write lock instead of failing.
        self._db.execute(f"PRAGMA busy_timeout={round(self.timeout * 1000)}")

    def close(self) -> None:
        """Close the connection (the WAL is checkpointed by SQLite)."""
        self._db.close()

    @contextmanager
    def transaction(self) -> Iterator[Sql]:
        """One write transaction: everything inside commits together or not at all."""
        self._plain.run("BEGIN IMMEDIATE")
        try:
            yield self._plain
            self._plain.run("COMMIT")
        except BaseException:
            if self._db.in_transaction:
                self._db.execute("ROLLBACK")
            raise

    def _sql(self) -> Sql:
        return self._plain

    def _lock_schema(self, sql: Sql) -> None:
        """BEGIN IMMEDIATE already holds the database's one write lock."""

    def _before_migration(self, sql: Sql, version: int) -> None:
        if version != 1:
            return
        # Databases written before the catalogue snapshot kept `in_dst_table` lack the column;
        # their services were all in both tables, which is the column's default.
        columns = {row[1] for row in sql.rows("PRAGMA table_info(services)")}
        if columns and "in_dst_table" not in columns:
            sql.run("ALTER TABLE services ADD COLUMN in_dst_table INTEGER NOT NULL DEFAULT 1")


def is_url(location: str | Path) -> bool:
    """Whether a `--db` value names a PostgreSQL server rather than a SQLite file."""
    return str(location).startswith(POSTGRES_SCHEMES)


def redacted(location: str | Path) -> str:
    """How messages and logs name the database at `location`: a URL without its password, a
    path as it is."""
    parts = urlsplit(str(location))
    if not is_url(location) or parts.password is None:
        return str(location)
    host = parts.hostname or ""
    if parts.port is not None:
        host = f"{host}:{parts.port}"
    user = f"{parts.username}@" if parts.username else ""
    return urlunsplit(parts._replace(netloc=f"{user}{host}"))


def open_reader(location: str | Path, timeout: float = DEFAULT_DB_TIMEOUT) -> Store:
    """The database at `location` for reading: a SQLite file read-only (nothing is created or
    migrated in it), a PostgreSQL server (`postgresql://`) on a connection of its own; either
    waited for at most `timeout` seconds at a time."""
    if is_url(location):
        return open_store(location, timeout=timeout)
    return Storage(Path(location), readonly=True, timeout=timeout)


def open_store(location: str | Path, scope: str = "", timeout: float = DEFAULT_DB_TIMEOUT) -> Store:
    """The database at `location`: a `postgresql://` URL or the path of a SQLite file. A server
    has `timeout` seconds to answer each time it is asked (see `controller.store.postgres`)."""
    if is_url(location):
        # Imported on first use: the PostgreSQL driver is an optional dependency.
        from controller.store.postgres import PostgresStorage

        return PostgresStorage(str(location), scope, timeout)
    return Storage(Path(location), scope, timeout=timeout)
