"""The dashboard of a database that goes away after it started: a session the PostgreSQL server
ends, a server shut down and started again on the same port, one that stops answering, a SQLite
file whose reads fail. `svcfp dashboard` keeps running, answers 503 at once naming the database
(without its password) while it cannot be read, says so once in its log, and serves the same
pages once the database is back, without a restart; a database that is down, or whose
connections open but fail, is tried no more often than the back-off allows."""

from __future__ import annotations

import asyncio
import itertools
import json
import logging
import re
import signal
import sqlite3
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import aiohttp
import pytest

import controller.web.data as data_module
from controller.store.storage import open_reader
from controller.store.store import Store
from controller.web.data import RETRY_FIRST, RETRY_MOST, DashboardData, DatabaseUnavailable
from controller.web.server import Dashboard
from controller.web.settings import WebSettings
from tests.support.dashboard import CAMERA, HUB, QUIET, cells, stored_run
from tests.support.postgres import PostgresServer, with_password
from tests.support.processes import SvcfpProcess

if TYPE_CHECKING:
    from selenium.webdriver.remote.webdriver import WebDriver

pytest_plugins = ["tests.support.storage", "tests.support.browser"]

DB_TIMEOUT = 2.0
# Beyond the waits a test expects: a process starting, a loaded machine.
SLACK = 5.0
LOST = "event=dashboard_db_lost"
BACK = "event=dashboard_db_back"


@dataclass(frozen=True)
class Answer:
    status: int
    body: str
    headers: dict[str, str]
    seconds: float


def get(url: str, accept: str = "text/html") -> Answer:
    """One request, however it is answered, and how long it took."""
    request = urllib.request.Request(url, headers={"Accept": accept})
    started = time.monotonic()
    try:
        with urllib.request.urlopen(request, timeout=3 * DB_TIMEOUT + SLACK) as response:
            status, body, headers = response.status, response.read(), dict(response.headers)
    except urllib.error.HTTPError as exc:
        status, body, headers = exc.code, exc.read(), dict(exc.headers)
    return Answer(status, body.decode(), headers, time.monotonic() - started)


def rows(page: str) -> list[str]:
    """The devices page's rows, in order, as text."""
    return [cells(page, mac) for mac in re.findall(r'data-mac="([0-9a-f:]+)"', page)]


def sessions(url: str) -> list[int]:
    """The PIDs of the server's backends on the database of `url`, other than the asker's."""
    import psycopg

    with psycopg.connect(url, autocommit=True) as admin:
        found = admin.execute(
            "SELECT pid FROM pg_stat_activity WHERE datname = current_database() "
            "AND pid <> pg_backend_pid()"
        ).fetchall()
    return [int(pid) for (pid,) in found]


def count(process: SvcfpProcess, text: str) -> int:
    return sum(text in line for line in list(process.lines))


@pytest.fixture
def stored(private_postgres: PostgresServer) -> str:
    """The stored run in a database of the test's own server."""
    url = private_postgres.new_database()
    stored_run(url)
    return url


@pytest.fixture
def dashboard(stored: str) -> Iterator[tuple[SvcfpProcess, str]]:
    """`svcfp dashboard` of the stored run (its URL given with a password), and its address."""
    process = SvcfpProcess(
        "--log-level", "INFO", "dashboard", "--db", with_password(stored),
        "--db-timeout", f"{DB_TIMEOUT:g}", "--http", "127.0.0.1:0",
    )  # fmt: skip
    try:
        process.wait_for("event=dashboard url=")
        found = re.search(r"url=(http://127\.0\.0\.1:\d+/)", process.stderr)
        assert found, process.stderr
        yield process, found.group(1)
        assert process.process.poll() is None, f"the dashboard ended:\n{process.stderr}"
        assert process.stop(signal.SIGINT) == 0, process.stderr
        assert "Traceback" not in process.stderr
        assert "secret" not in process.stderr
    finally:
        process.kill_if_running()


@pytest.mark.postgres
def test_a_session_the_server_ends_is_replaced_and_the_same_pages_served(
    stored: str, dashboard: tuple[SvcfpProcess, str]
) -> None:
    process, address = dashboard
    before = get(address)
    assert before.status == 200
    assert [row.split()[0] for row in rows(before.body)] == [HUB, CAMERA, QUIET]
    ended = sessions(stored)
    assert len(ended) == 1, "the dashboard reads on one connection"

    import psycopg

    with psycopg.connect(stored, autocommit=True) as admin:
        admin.execute("SELECT pg_terminate_backend(%s)", (ended[0],))

    after = get(address)
    assert after.status == 200, after.body
    assert rows(after.body) == rows(before.body)
    assert get(f"{address}devices/{CAMERA}").status == 200
    process.wait_for(BACK, timeout=SLACK)
    replaced = sessions(stored)
    assert len(replaced) == 1 and replaced != ended
    assert (count(process, LOST), count(process, BACK)) == (1, 1), process.stderr


@pytest.mark.postgres
@pytest.mark.slow
def test_a_server_shut_down_gets_503_naming_it_until_it_is_started_again(
    private_postgres: PostgresServer, stored: str, dashboard: tuple[SvcfpProcess, str]
) -> None:
    process, address = dashboard
    before = get(address)
    assert before.status == 200

    private_postgres.shut_down()
    down = time.monotonic()
    answers: list[Answer] = []
    # Pages asked for a while (several back-off rounds): each answered at once.
    while time.monotonic() - down < 2 * RETRY_FIRST + RETRY_MOST and len(answers) < 100:
        answers.append(get(address))
        time.sleep(0.1)
    assert {a.status for a in answers} == {503}
    slowest = max(a.seconds for a in answers)
    assert slowest < DB_TIMEOUT, f"a page took {slowest:.2f} s while the database was down"
    page = answers[-1]
    assert page.headers["Content-Type"].startswith("text/html")
    assert int(page.headers["Retry-After"]) >= 1
    assert "The database cannot be read" in page.body
    assert f'id="outage-database">{stored}<' in page.body
    assert "Connection refused" in page.body
    assert "secret" not in page.body and "Traceback" not in page.body

    for asked in (get(address, accept="application/json"), get(f"{address}?fragment=devices")):
        assert asked.status == 503
        said = json.loads(asked.body)
        assert said["error"] == "database unavailable"
        assert said["database"] == stored
        assert "Connection refused" in said["reason"]
    assert count(process, LOST) == 1, process.stderr
    assert count(process, BACK) == 0
    # The probes: alive, not ready.
    assert (get(f"{address}healthz").status, get(f"{address}healthz").body) == (200, "ok\n")
    probed = get(f"{address}readyz")
    assert (probed.status, probed.body) == (503, "database unavailable\n")
    assert int(probed.headers["Retry-After"]) >= 1

    private_postgres.start_again()
    started = time.monotonic()
    back = get(address)
    # A connection is tried at most RETRY_MOST seconds apart, each within the bound.
    while back.status != 200 and time.monotonic() - started < RETRY_MOST + DB_TIMEOUT + SLACK:
        time.sleep(0.1)
        back = get(address)
    recovered = time.monotonic() - started
    assert back.status == 200, back.body
    print(f"down: slowest 503 {slowest:.3f} s; back: 200 {recovered:.2f} s after the start")
    assert rows(back.body) == rows(before.body)
    assert 'id="database-down" class="banner" role="alert" hidden' in back.body
    probed = get(f"{address}readyz")
    assert (probed.status, probed.body) == (200, "ready\n")
    process.wait_for(BACK, timeout=SLACK)
    assert (count(process, LOST), count(process, BACK)) == (1, 1), process.stderr


@pytest.mark.postgres
@pytest.mark.slow
def test_a_server_that_is_down_is_asked_no_more_often_than_the_back_off(
    private_postgres: PostgresServer, stored: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    attempts: list[float] = []

    def counted(location: str, timeout: float) -> Store:
        attempts.append(time.monotonic())
        return open_reader(location, timeout)

    monkeypatch.setattr(data_module, "open_reader", counted)
    data = DashboardData(stored, DB_TIMEOUT)

    async def asked(seconds: float) -> tuple[int, int]:
        """Queries for `seconds`, 20 at once: (answered, refused)."""
        answered = refused = 0
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            results = await asyncio.gather(
                *(data.call(data.marks) for _ in range(20)), return_exceptions=True
            )
            for result in results:
                if isinstance(result, DatabaseUnavailable):
                    refused += 1
                else:
                    assert isinstance(result, dict), result
                    answered += 1
            await asyncio.sleep(0.02)
        return answered, refused

    try:
        marks = asyncio.run(data.call(data.marks))
        attempts.clear()
        private_postgres.shut_down()
        answered, refused = asyncio.run(asked(3 * RETRY_FIRST + 0.5))
        assert answered == 0 and refused > 100
        # At once, then 1 s and 2 s later: three attempts in 3.5 s, however many queries.
        gaps = [later - earlier for earlier, later in itertools.pairwise(attempts)]
        assert len(attempts) == 3, gaps
        assert gaps[0] >= RETRY_FIRST and gaps[1] >= 2 * RETRY_FIRST, gaps
        assert data.outage is not None and data.outage.database == stored

        private_postgres.start_again()
        answered, refused = asyncio.run(asked(RETRY_MOST + 0.5))
        assert answered > 0
        assert data.outage is None
        assert asyncio.run(data.call(data.marks)) == marks
    finally:
        data.close()


@pytest.mark.postgres
def test_open_pages_are_told_over_the_event_stream(
    private_postgres: PostgresServer, stored: str
) -> None:
    async def check() -> None:
        dashboard = Dashboard(stored, WebSettings("127.0.0.1", 0), db_timeout=DB_TIMEOUT)
        url = await dashboard.start()
        try:
            async with (
                aiohttp.ClientSession() as http,
                http.get(f"{url}events", timeout=aiohttp.ClientTimeout(total=30)) as stream,
            ):
                assert b"event: hello" in await stream.content.readuntil(b"\n\n")
                await asyncio.to_thread(private_postgres.shut_down)
                event = await asyncio.wait_for(stream.content.readuntil(b"\n\n"), SLACK)
                name, data = event.decode().split("\n")[:2]
                assert name == "event: database"
                state = json.loads(data.removeprefix("data: "))
                assert state["up"] is False and state["database"] == stored

                await asyncio.to_thread(private_postgres.start_again)
                event = await asyncio.wait_for(
                    stream.content.readuntil(b"\n\n"), RETRY_MOST + SLACK
                )
                assert event == b'event: database\ndata: {"up": true}\n\n'
                # Everything an open page shows is fetched again.
                event = await asyncio.wait_for(stream.content.readuntil(b"\n\n"), SLACK)
                assert event == (
                    b'event: change\ndata: ["alerts", "decisions", "devices", "switches"]\n\n'
                )
        finally:
            await dashboard.stop()

    asyncio.run(check())


@pytest.mark.postgres
@pytest.mark.slow
def test_a_server_that_stops_answering_gets_503_within_the_bound(
    private_postgres: PostgresServer, stored: str
) -> None:
    """A frozen server (as a network cut): the page that meets it waits for the statement's
    bound only, the ones after it not at all; the same page once it answers again."""

    async def check() -> None:
        dashboard = Dashboard(stored, WebSettings("127.0.0.1", 0), db_timeout=DB_TIMEOUT)
        url = await dashboard.start()

        async def page(http: aiohttp.ClientSession) -> Answer:
            started = time.monotonic()
            async with http.get(url) as response:
                body = await response.text()
                return Answer(response.status, body, {}, time.monotonic() - started)

        try:
            async with aiohttp.ClientSession() as http:
                before = await page(http)
                with private_postgres.frozen():
                    first = await page(http)
                    later = [await page(http) for _ in range(5)]
                started = time.monotonic()
                back = await page(http)
                while back.status != 200 and time.monotonic() - started < RETRY_MOST + SLACK:
                    await asyncio.sleep(0.1)
                    back = await page(http)
        finally:
            await dashboard.stop()
        assert first.status == 503 and "did not answer within 2 s" in first.body
        # The statement's bound with the server's margins (see controller.store.postgres).
        assert first.seconds < DB_TIMEOUT + 2 + SLACK / 5, first.seconds
        assert {a.status for a in later} == {503}
        assert max(a.seconds for a in later) < 0.5
        assert back.status == 200 and rows(back.body) == rows(before.body)

    asyncio.run(check())


@pytest.mark.postgres
@pytest.mark.slow
def test_an_open_page_shows_a_banner_while_the_database_is_down(
    private_postgres: PostgresServer,
    stored: str,
    dashboard: tuple[SvcfpProcess, str],
    browser: WebDriver,
) -> None:
    from selenium.webdriver.common.by import By

    from tests.support.browser import screenshot

    def shown(element_id: str) -> str | None:
        element = browser.find_element(By.ID, element_id)
        return str(element.text) if element.is_displayed() else None

    def wait_for(condition: Callable[[], object], seconds: float, what: str) -> None:
        deadline = time.monotonic() + seconds
        while not condition():
            assert time.monotonic() < deadline, f"not seen within {seconds:g} s: {what}"
            time.sleep(0.1)

    _, address = dashboard
    browser.get(address)
    wait_for(lambda: shown("live-status") == "live", SLACK, "the page live")
    assert shown("database-down") is None
    browser.execute_script("window.svcfpNotReloaded = true;")

    private_postgres.shut_down()
    wait_for(lambda: shown("database-down"), SLACK, "the banner")
    banner = shown("database-down") or ""
    assert "The database cannot be read." in banner and "Connection refused" in banner
    assert shown("live-status") == "database lost"
    screenshot(browser, "database-down-banner")

    private_postgres.start_again()
    wait_for(lambda: shown("database-down") is None, RETRY_MOST + SLACK, "the banner gone")
    assert shown("live-status") == "live"
    assert browser.execute_script("return window.svcfpNotReloaded === true;")
    assert len(browser.find_elements(By.CSS_SELECTOR, "#devices tr[data-mac]")) == 3


def test_connections_that_open_but_fail_are_tried_no_more_often_than_the_back_off(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """A SQLite file whose every read fails for a while, though it opens: the outage is said
    once, new connections wait for the back-off, and the first read that works ends it."""
    db = tmp_path / "svcfp.db"
    stored_run(db)
    attempts: list[float] = []

    def counted(location: Path, timeout: float) -> Store:
        attempts.append(time.monotonic())
        return open_reader(location, timeout)

    def failing() -> None:
        raise sqlite3.OperationalError("disk I/O error")

    monkeypatch.setattr(data_module, "open_reader", counted)
    data = DashboardData(db, DB_TIMEOUT)
    attempts.clear()

    async def asked(seconds: float) -> list[str]:
        """`failing` asked for `seconds`; then the marks: what each call said."""
        said = []
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            try:
                await data.call(failing)
            except DatabaseUnavailable as exc:
                said.append(str(exc))
            await asyncio.sleep(0.01)
        return said

    try:
        with caplog.at_level(logging.INFO, logger="controller.web.data"):
            said = asyncio.run(asked(3 * RETRY_FIRST + 0.5))
            assert len(said) > 100
            assert set(said) == {f"database {db}: disk I/O error"}
            # At once, then 1 s and 2 s later.
            assert len(attempts) == 3, attempts
            assert data.outage is not None
            time.sleep(data.outage.retry_in())
            marks = asyncio.run(data.call(data.marks))
            assert data.outage is None and set(marks) >= {"devices", "decisions"}
        logged = [r.getMessage().split()[0] for r in caplog.records]
        assert logged == ["event=dashboard_db_lost", "event=dashboard_db_back"], logged
    finally:
        data.close()
