"""PostgreSQL storage: the same schema and operations as SQLite, in a server several
controllers (one per switch group) and the dashboard share.

`postgresql://user@host:port/dbname` URLs (libpq's form; a password is better kept in
`~/.pgpass` or `PGPASSWORD` than in the URL). The driver is psycopg 3 (`pip install
'svcfp[postgres]'`). Every write is one transaction, as with SQLite; schema migrations take an
advisory lock, so controllers started together migrate a new database once.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from controller.base.errors import InputError
from controller.store.schema import POSTGRES
from controller.store.store import NamedErrors, Sql, Store

try:
    import psycopg
except ImportError as exc:  # pragma: no cover - depends on the installation
    raise InputError(
        "a postgresql:// database needs the psycopg driver: pip install 'svcfp[postgres]'"
    ) from exc

# pg_advisory_xact_lock key of schema migrations ("svcfp" in ASCII).
_SCHEMA_LOCK = 0x7376636670


def redacted(url: str) -> str:
    """The URL without its password, for messages."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    host = parts.hostname or ""
    if parts.port is not None:
        host = f"{host}:{parts.port}"
    user = f"{parts.username}@" if parts.username else ""
    return urlunsplit(parts._replace(netloc=f"{user}{host}"))


class _PostgresSql:
    """`Sql` over one psycopg connection: `?` placeholders become psycopg's `%s`."""

    def __init__(self, db: psycopg.Connection[tuple[Any, ...]]) -> None:
        self._db = db

    def run(self, sql: str, params: Sequence[Any] = ()) -> None:
        self._db.execute(_placeholders(sql), params)

    def run_many(self, sql: str, rows: Iterable[Sequence[Any]]) -> None:
        batch = list(rows)
        if batch:
            with self._db.cursor() as cursor:
                cursor.executemany(_placeholders(sql), batch)

    def rows(self, sql: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        return self._db.execute(_placeholders(sql), params).fetchall()

    def columns(self, sql: str) -> tuple[list[str], list[tuple[Any, ...]]]:
        cursor = self._db.execute(_placeholders(sql))
        names = [d.name for d in cursor.description or ()]
        return names, cursor.fetchall()


def _lost(exc: Exception) -> str:
    return f"lost the connection: {exc}"


def _placeholders(sql: str) -> str:
    # The schema's SQL has no literal '?' or '%'.
    return sql.replace("?", "%s")


class PostgresStorage(Store):
    """The project's database on a PostgreSQL server."""

    dialect = POSTGRES
    integrity_error = psycopg.IntegrityError

    def __init__(self, url: str, scope: str = "", connect_timeout: float = 10.0) -> None:
        super().__init__(redacted(url), scope)
        self.url = url
        try:
            self._db = psycopg.connect(
                url, autocommit=True, connect_timeout=max(1, round(connect_timeout))
            )
        except psycopg.Error as exc:
            raise InputError(f"cannot connect to database {self.name}: {exc}") from exc
        # The server shut down or went away mid-run: said of the database, not a traceback.
        self._plain = NamedErrors(
            _PostgresSql(self._db), self.name, psycopg.OperationalError, _lost
        )
        self._set_up(psycopg.Error)

    def close(self) -> None:
        """Close the connection."""
        self._db.close()

    @contextmanager
    def transaction(self) -> Iterator[Sql]:
        """One write transaction: everything inside commits together or not at all."""
        with self._plain.named(), self._db.transaction():
            yield self._plain

    def _sql(self) -> Sql:
        return self._plain

    def _text_order(self) -> str:
        return ' COLLATE "C"'

    def _before_migration(self, sql: Sql, version: int) -> None:
        """PostgreSQL databases were versioned from the start: nothing to repair."""

    def _lock_schema(self, sql: Sql) -> None:
        sql.rows("SELECT pg_advisory_xact_lock(?)", (_SCHEMA_LOCK,))
