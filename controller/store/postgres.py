"""PostgreSQL storage: the same schema and operations as SQLite, in a server several
controllers (one per switch group) and the dashboard share.

`postgresql://user@host:port/dbname` URLs (libpq's form; a password is better kept in
`~/.pgpass` or `PGPASSWORD` than in the URL). The driver is psycopg 3 (`pip install
'svcfp[postgres]'`). Every write is one transaction, as with SQLite; schema migrations take an
advisory lock, so controllers started together migrate a new database once.

Every wait on the server is bounded by `timeout` (`--db-timeout`): connecting, each statement,
and a lock another session holds, so a server that stops answering ends the command with an error
naming it instead of blocking it; what was committed before stays.
"""

from __future__ import annotations

import contextlib
import math
import os
import socket
import threading
import time
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any

from controller.base.errors import InputError
from controller.store.schema import POSTGRES
from controller.store.storage import redacted
from controller.store.store import DEFAULT_DB_TIMEOUT, NamedErrors, Sql, Store

try:
    import psycopg
except ImportError as exc:  # pragma: no cover - depends on the installation
    raise InputError(
        "a postgresql:// database needs the psycopg driver: pip install 'svcfp[postgres]'"
    ) from exc

# pg_advisory_xact_lock key of schema migrations ("svcfp" in ASCII).
_SCHEMA_LOCK = 0x7376636670
# The server's own limits come first, by this much each, so that a server that still runs says
# what it waited for: a lock at `timeout`, any statement a second later, and only a server that
# answers nothing at all is cut off by the client.
_MARGIN = 1.0
# Rows sent by one executemany: each batch is one bounded wait, however many rows a write has.
_BATCH_ROWS = 5000


class _Watchdog:
    """Cuts off a call the server has not answered in time: the connection's socket is shut
    down, so libpq's wait ends as for a lost connection. A server that is stopped or unreachable
    answers neither the statement nor a cancel request; nothing else would end the wait."""

    def __init__(self, sock: int, seconds: float) -> None:
        self.seconds = seconds
        self.expired = False
        self._socket = sock
        self._deadline: float | None = None
        self._closed = False
        self._changed = threading.Condition()
        threading.Thread(target=self._watch, name="postgres-watchdog", daemon=True).start()

    @contextmanager
    def bounded(self) -> Iterator[None]:
        """The block (one call to the server) is cut off after `seconds`."""
        with self._changed:
            self._deadline = time.monotonic() + self.seconds
            self._changed.notify()
        try:
            yield
        finally:
            with self._changed:
                self._deadline = None

    def close(self) -> None:
        """End the watch (before the connection, and its socket, are closed)."""
        with self._changed:
            self._closed = True
            self._changed.notify()

    def _watch(self) -> None:
        with self._changed:
            while not self._closed:
                if self._deadline is None:
                    self._changed.wait()
                elif (left := self._deadline - time.monotonic()) > 0:
                    self._changed.wait(left)
                else:
                    self.expired = True
                    self._deadline = None
                    # A duplicate of libpq's descriptor: shutting it down ends the connection
                    # for both, closing it leaves libpq's own to close.
                    with (
                        contextlib.suppress(OSError),
                        socket.socket(fileno=os.dup(self._socket)) as cut,
                    ):
                        cut.shutdown(socket.SHUT_RDWR)


class _PostgresSql:
    """`Sql` over one psycopg connection: `?` placeholders become psycopg's `%s`; every call is
    bounded by the watchdog."""

    def __init__(self, db: psycopg.Connection[tuple[Any, ...]], watchdog: _Watchdog) -> None:
        self._db = db
        self._watchdog = watchdog

    def run(self, sql: str, params: Sequence[Any] = ()) -> None:
        with self._watchdog.bounded():
            self._db.execute(_placeholders(sql), params)

    def run_many(self, sql: str, rows: Iterable[Sequence[Any]]) -> None:
        batch = list(rows)
        with self._db.cursor() as cursor:
            for start in range(0, len(batch), _BATCH_ROWS):
                with self._watchdog.bounded():
                    cursor.executemany(_placeholders(sql), batch[start : start + _BATCH_ROWS])

    def rows(self, sql: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        with self._watchdog.bounded():
            return self._db.execute(_placeholders(sql), params).fetchall()

    def columns(self, sql: str) -> tuple[list[str], list[tuple[Any, ...]]]:
        with self._watchdog.bounded():
            cursor = self._db.execute(_placeholders(sql))
            names = [d.name for d in cursor.description or ()]
            return names, cursor.fetchall()


def _placeholders(sql: str) -> str:
    # The schema's SQL has no literal '?' or '%'.
    return sql.replace("?", "%s")


class PostgresStorage(Store):
    """The project's database on a PostgreSQL server."""

    dialect = POSTGRES
    integrity_error = psycopg.IntegrityError
    read_error = psycopg.OperationalError

    def __init__(self, url: str, scope: str = "", timeout: float = DEFAULT_DB_TIMEOUT) -> None:
        super().__init__(redacted(url), scope)
        self.url = url
        self.timeout = timeout
        try:
            self._db = psycopg.connect(url, autocommit=True, connect_timeout=math.ceil(timeout))
        except psycopg.Error as exc:
            raise InputError(f"cannot connect to database {self.name}: {exc}") from exc
        self._watchdog = _Watchdog(self._db.pgconn.socket, timeout + 2 * _MARGIN)
        # A server that went away, stopped answering or kept a lock: said of the database.
        self._plain = NamedErrors(
            _PostgresSql(self._db, self._watchdog), self.name, psycopg.OperationalError, self._said
        )
        self._set_up(psycopg.Error, self._limit_waits)

    def _limit_waits(self) -> None:
        for setting, seconds in (("lock_timeout", 0.0), ("statement_timeout", _MARGIN)):
            milliseconds = str(round((self.timeout + seconds) * 1000))
            self._plain.run("SELECT set_config(?, ?, false)", (setting, milliseconds))

    def _said(self, exc: Exception) -> str:
        bound = f"{self.timeout:g} s (--db-timeout)"
        if self._watchdog.expired:
            return f"did not answer within {bound}"
        if isinstance(exc, psycopg.errors.LockNotAvailable):
            return f"waited {bound} for a lock another session holds"
        if isinstance(exc, psycopg.errors.QueryCanceled):
            return f"did not answer within {bound}: {exc}"
        return f"lost the connection: {exc}"

    def close(self) -> None:
        """Close the connection."""
        self._watchdog.close()
        self._db.close()

    @contextmanager
    def transaction(self) -> Iterator[Sql]:
        """One write transaction: everything inside commits together or not at all. BEGIN and
        COMMIT are statements of their own, so they are bounded as every other one is."""
        self._plain.run("BEGIN")
        try:
            yield self._plain
        except BaseException:
            # A connection cut off or lost has no transaction left to roll back.
            if not self._db.broken:
                self._plain.run("ROLLBACK")
            raise
        self._plain.run("COMMIT")

    def _sql(self) -> Sql:
        return self._plain

    def _text_order(self) -> str:
        return ' COLLATE "C"'

    def _before_migration(self, sql: Sql, version: int) -> None:
        """PostgreSQL databases were versioned from the start: nothing to repair."""

    def _lock_schema(self, sql: Sql) -> None:
        sql.rows("SELECT pg_advisory_xact_lock(?)", (_SCHEMA_LOCK,))
