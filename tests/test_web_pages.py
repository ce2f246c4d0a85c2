"""The dashboard's pages, fragments, event stream and access control over a stored run, and
`svcfp dashboard` as a user starts and stops it."""

from __future__ import annotations

import asyncio
import os
import re
import signal
import subprocess
import sys
import urllib.request
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from controller.base.errors import InputError
from controller.store.records import INFRASTRUCTURE
from controller.store.storage import AlertRecord, DeviceRow, Storage, open_store
from controller.web.server import Dashboard
from controller.web.settings import WebSettings
from tests.support.dashboard import CAMERA, HUB, NOW, QUIET, cells, stored_run
from tests.support.paths import ROOT

TOKEN = "a-token-of-sixteen-or-more"
pytest_plugins = ["tests.support.storage"]


async def serving(
    db: Path | str,
    settings: WebSettings,
    check: Callable[[str, aiohttp.ClientSession], Coroutine[Any, Any, None]],
) -> None:
    dashboard = Dashboard(db, settings)
    url = await dashboard.start()
    try:
        # A jar that keeps cookies of an IP address, as browsers do.
        async with aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True)) as http:
            await check(url, http)
    finally:
        await dashboard.stop()


@pytest.fixture
def db(tmp_path: Path) -> Path:
    path = tmp_path / "svcfp.db"
    stored_run(path)
    return path


@pytest.fixture
def any_db(db_location: str | Path) -> str | Path:
    """The stored run in a database of each backend."""
    stored_run(db_location)
    return db_location


def test_pages_show_the_stored_run(any_db: str | Path) -> None:
    async def check(url: str, http: aiohttp.ClientSession) -> None:
        async with http.get(url) as response:
            assert response.status == 200
            assert "default-src 'self'" in response.headers["Content-Security-Policy"]
            page = await response.text()
        # Unknown and alerted devices first, then the rest by MAC.
        order = re.findall(r'data-mac="([0-9a-f:]+)"', page)
        assert order == [HUB, CAMERA, QUIET]
        assert cells(page, HUB).startswith(f"{HUB} 2 s1:2 unknown")
        assert "camera" in cells(page, CAMERA) and "0.91" in cells(page, CAMERA)
        assert "evicted" in cells(page, QUIET) and "lab-printer" in cells(page, QUIET)
        assert 'id="count-unknown">1<' in page and 'id="count-alerts">1<' in page
        assert "unknown device: best type camera at similarity 0.31" in page

        async with http.get(f"{url}devices/{CAMERA}") as response:
            device = await response.text()
        # Four units of tcp/443 and one of udp/53 on the heat map, most used first.
        assert re.findall(r'<text class="svc"[^>]*>([^<]+)<', device) == [
            "decisions", "tcp/443", "udp/53"
        ]  # fmt: skip
        assert len(re.findall(r'<rect class="l\d" x=', device)) == 5
        assert "tcp/443 at" in device and ": 8 packets" in device
        assert re.search(r'class="chip g-unexpected">unexpected', device)
        assert "runner-up plug 0.200" in device and "Reference ref@0-8" in device
        assert "The references cannot tell camera apart from camera-v2." in device
        assert '<dd id="accumulated">camera at 0.97 over 3 windows</dd>' in device

        async with http.get(f"{url}devices/{CAMERA}?fragment=history") as response:
            fragment = await response.text()
        assert "<html" not in fragment and 'id="history"' in fragment
        async with http.get(f"{url}devices/02:00:00:00:00:99") as response:
            assert response.status == 404
        async with http.get(f"{url}?fragment=nothing") as response:
            assert response.status == 404

        async with http.get(f"{url}switches") as response:
            switches = re.sub(r"\s+", " ", re.sub(r"<[^>]+>", " ", await response.text()))
        assert "12.3 ms / 10.1 ms" in switches and "4.0 KiB / 168.0 KiB" in switches
        assert "devices 2/1023" in switches and "rate limited 2" in switches

        async with http.get(f"{url}alerts?kind=behaviour_change") as response:
            assert "No alerts of this kind" in await response.text()
        async with http.get(f"{url}alerts?kind=nonsense") as response:
            assert response.status == 400
        async with http.get(f"{url}metrics") as response:
            assert response.status == 404

    asyncio.run(serving(any_db, WebSettings("127.0.0.1", 0), check))


def test_a_host_labelled_infrastructure_is_listed_but_not_waited_for(any_db: str | Path) -> None:
    """A gateway from the devices file: listed with its label, "not identified" where the others
    have their verdict, and not counted among the devices with no decision yet."""
    gateway = "02:00:00:00:00:0e"
    pages: list[str] = []

    async def check(url: str, http: aiohttp.ClientSession) -> None:
        async with http.get(url) as response:
            pages.append(await response.text())

    def pending(page: str) -> str:
        found = re.search(r'<div class="big">(\d+)</div><div class="what">no decision yet', page)
        assert found is not None
        return found.group(1)

    asyncio.run(serving(any_db, WebSettings("127.0.0.1", 0), check))
    with open_store(any_db) as storage:
        storage.put_devices([DeviceRow(gateway, 3, INFRASTRUCTURE, "s1", 9, "static", NOW, NOW)])
    asyncio.run(serving(any_db, WebSettings("127.0.0.1", 0), check))
    before, after = pages
    assert gateway not in before
    assert cells(after, gateway).startswith(f"{gateway} infrastructure 3 s1:9 not identified")
    assert pending(after) == pending(before)


def test_devices_of_every_controller_sharing_the_database_are_shown(any_db: str | Path) -> None:
    """A second controller (scope edge2) registers a device in the same database: the devices
    page lists it beside the first controller's, and its device page opens."""
    other = "02:00:00:00:00:0d"
    with open_store(any_db, scope="edge2") as storage:
        storage.put_devices([DeviceRow(other, 1, "unknown", "s2", 4, "digest", NOW - 70, NOW)])
        assert [row.mac for row in storage.devices()] == [other]
    with open_store(any_db) as storage:
        assert other not in [row.mac for row in storage.devices()]

    async def check(url: str, http: aiohttp.ClientSession) -> None:
        async with http.get(url) as response:
            page = await response.text()
        assert re.findall(r'data-mac="([0-9a-f:]+)"', page) == [HUB, CAMERA, QUIET, other]
        assert cells(page, other).startswith(f"{other} 1 s2:4 pending")
        async with http.get(f"{url}devices/{other}") as response:
            assert response.status == 200
            assert "<dt>switch</dt><dd>s2</dd>" in await response.text()

    asyncio.run(serving(any_db, WebSettings("127.0.0.1", 0), check))


def test_event_stream_names_what_a_writer_changed(db: Path) -> None:
    async def check(url: str, http: aiohttp.ClientSession) -> None:
        async with http.get(f"{url}events", timeout=aiohttp.ClientTimeout(total=10)) as stream:
            assert stream.headers["Content-Type"] == "text/event-stream"
            hello = await stream.content.readuntil(b"\n\n")
            assert b"event: hello" in hello

            # Another process (here: another connection) stores an alert.
            def write() -> None:
                with Storage(db) as storage:
                    storage.add_alerts(
                        [AlertRecord("switch_lost", "critical", None, "s1", "lost", {}, NOW)]
                    )

            await asyncio.to_thread(write)
            event = await asyncio.wait_for(stream.content.readuntil(b"\n\n"), 5)
            assert event == b'event: change\ndata: ["alerts"]\n\n'

    asyncio.run(serving(db, WebSettings("127.0.0.1", 0), check))


def test_a_token_guards_everything_but_health(db: Path) -> None:
    async def check(url: str, http: aiohttp.ClientSession) -> None:
        async with http.get(url) as response:
            assert response.status == 401
        async with http.get(f"{url}healthz") as response:
            assert response.status == 200
        async with http.get(f"{url}readyz") as response:
            assert (response.status, await response.text()) == (200, "ready\n")
        async with http.get(url, headers={"Authorization": f"Bearer {TOKEN}x"}) as response:
            assert response.status == 401
        async with http.get(url, headers={"Authorization": f"Bearer {TOKEN}"}) as response:
            assert response.status == 200
        # A browser: the token once in the address, then a cookie; the address loses it.
        async with http.get(f"{url}switches?token={TOKEN}") as response:
            assert response.status == 200
            assert str(response.url).endswith("/switches")
        async with http.get(f"{url}alerts") as response:
            assert response.status == 200

    asyncio.run(serving(db, WebSettings("127.0.0.1", 0, TOKEN), check))


def test_listening_beyond_loopback_needs_a_token(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="serves beyond this machine: give an access token"):
        WebSettings.parse("0.0.0.0:8080")
    with pytest.raises(InputError, match="at least 16 characters"):
        WebSettings("0.0.0.0", 8080, "short")
    token = tmp_path / "token"
    token.write_text(f"{TOKEN}\n")
    assert WebSettings.parse("[::]:8080", token) == WebSettings("::", 8080, TOKEN)
    assert WebSettings.parse("[::1]:0").url(4242) == "http://[::1]:4242/"
    with pytest.raises(InputError, match="expected HOST:PORT"):
        WebSettings.parse("8080")


def test_svcfp_dashboard_serves_until_interrupted(db: Path) -> None:
    command = [sys.executable, "-m", "svcfp", "dashboard", "--db", str(db), "--http", "127.0.0.1:0"]
    process = subprocess.Popen(
        command, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    try:
        assert process.stdout is not None
        line = process.stdout.readline()
        found = re.search(r"(http://127\.0\.0\.1:\d+/)", line)
        assert found, line
        with urllib.request.urlopen(found.group(1), timeout=10) as response:
            assert CAMERA in response.read().decode()
        os.kill(process.pid, signal.SIGINT)
        assert process.wait(timeout=10) == 0
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()


def test_svcfp_dashboard_of_a_missing_database_is_bad_input(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "svcfp", "dashboard", "--db", str(tmp_path / "no.db"),
         "--http", "127.0.0.1:0"],
        cwd=ROOT, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert result.returncode == 2
    assert f"database {tmp_path / 'no.db'} does not exist" in result.stderr
