"""Storage fixtures: `store` is a fresh database of each backend in turn (SQLite in the test's
folder; PostgreSQL on the tests' own server, tests marked `postgres`), `db_location` where it
lives (open it again with `open_store`), `postgres` the server itself (`private_postgres`: one of
a test's own, which it may shut down and start again); and `db`: the path of a controller
database that already holds one poll.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Iterator
from pathlib import Path

import pytest

from controller.store.storage import Storage, Store, open_store
from tests.support.database import make_db
from tests.support.postgres import PostgresServer, postgres_binaries, start_server

BACKENDS = ("sqlite", pytest.param("postgresql", marks=pytest.mark.postgres))


def _server() -> Iterator[PostgresServer]:
    if importlib.util.find_spec("psycopg") is None:
        pytest.skip("psycopg is not installed: pip install 'svcfp[postgres]'")
    binaries = postgres_binaries()
    if binaries is None:
        pytest.skip(
            "PostgreSQL server binaries (initdb, postgres) not found: apt-get install postgresql"
        )
    server = start_server(binaries)
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="session")
def postgres() -> Iterator[PostgresServer]:
    """The tests' PostgreSQL server, started once per session and stopped by its PID."""
    yield from _server()


@pytest.fixture
def private_postgres() -> Iterator[PostgresServer]:
    """A PostgreSQL server of the test's own, which it may shut down and start again."""
    yield from _server()


@pytest.fixture(params=BACKENDS)
def db_location(request: pytest.FixtureRequest, tmp_path: Path) -> str | Path:
    """A new, empty database of one backend: a SQLite path or a postgresql:// URL."""
    if request.param == "sqlite":
        return tmp_path / "svcfp.db"
    server: PostgresServer = request.getfixturevalue("postgres")
    return server.new_database()


@pytest.fixture
def store(db_location: str | Path) -> Iterator[Store]:
    opened = open_store(db_location)
    try:
        yield opened
    finally:
        opened.close()


@pytest.fixture
def sqlite_store(tmp_path: Path) -> Iterator[Storage]:
    """A fresh SQLite database, for what only SQLite has (its file, WAL, old layouts)."""
    opened = Storage(tmp_path / "svcfp.db")
    try:
        yield opened
    finally:
        opened.close()


@pytest.fixture
def db(tmp_path: Path) -> Path:
    return make_db(tmp_path / "svcfp.db")
