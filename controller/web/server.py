"""The dashboard: an aiohttp application on the controller's own event loop.

Pages are rendered on the server (Jinja2 templates shipped with the package), so there is no
JavaScript build step: one small script (static/live.js) listens to `/events`, a server-sent
event stream that names what changed, and reloads just those parts of the page. What changed is
found by looking at cheap marks in the database twice a second (data.py), which works the same
beside a running controller and on a database another controller is writing.

While the database cannot be read, pages answer 503 at once: a page saying which database
(without its password) and why for a browser, a JSON object for a script or a fragment; open
pages are told over `/events` and show a banner until it is back.

aiohttp because it is asyncio itself: the server is started on the running loop
(`AppRunner` without its own signal handling, so the controller's SIGINT/SIGTERM handling
stays in charge), it streams server-sent events natively, and it needs no second server
package.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import json
import logging
import math
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import jinja2
from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

from controller import __version__
from controller.base.errors import InputError
from controller.control.alerts import KINDS, SEVERITY
from controller.store.store import DEFAULT_DB_TIMEOUT
from controller.web.data import (
    HEATMAP_UNITS,
    RETRY_MOST,
    ChangeWatch,
    DashboardData,
    DatabaseUnavailable,
    Outage,
)
from controller.web.settings import WebSettings

if TYPE_CHECKING:
    from controller.control.controller import Controller

log = logging.getLogger(__name__)

HERE = Path(__file__).resolve().parent
TOKEN_COOKIE = "svcfp_token"
# What load balancers ask without the token: the process is alive; its database can be read.
PROBES = frozenset({"/healthz", "/readyz"})
# How often the database's marks are looked at, and how long a quiet event stream waits before
# a keep-alive comment (proxies close idle connections).
WATCH_SECONDS = 0.5
KEEPALIVE_SECONDS = 15.0
# Event streams open at once; more are refused (503) rather than holding memory.
MAX_STREAMS = 64
# Each page's live parts: fragment name → the topics that change it.
FRAGMENTS: dict[str, dict[str, str]] = {
    "devices": {
        "summary": "devices decisions alerts switches",
        "devices": "devices decisions alerts",
        "recent": "alerts",
    },
    "device": {
        "head": "devices decisions alerts",
        "heatmap": "switches",
        "fingerprint": "decisions",
        "history": "decisions alerts",
    },
    "switches": {"switches": "switches"},
    "alerts": {"alerts": "alerts"},
}
# Every topic; and the one that says the database was lost or is back.
TOPICS = frozenset(t for page in FRAGMENTS.values() for ts in page.values() for t in ts.split())
DATABASE = "database"
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def _clock(stamp: float | None) -> str:
    if stamp is None:
        return "–"
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(stamp))


def _unit_time(unit: int | None, unit_seconds: float | None) -> str:
    """When unit `unit` began, as precise as units are long."""
    if unit is None:
        return "–"
    if not unit_seconds:
        return str(unit)
    if unit_seconds < 60:
        pattern = "%H:%M:%S"
    elif unit_seconds < 86400:
        pattern = "%m-%d %H:%M"
    else:
        pattern = "%Y-%m-%d"
    return time.strftime(pattern, time.localtime(unit * unit_seconds))


def _size(value: float | None) -> str:
    if value is None:
        return "–"
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(value) < 1024 or unit == "GiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{value:.1f} GiB"


def _ms(seconds: float | None) -> str:
    if seconds is None:
        return "–"
    return f"{seconds * 1000:.1f} ms" if seconds < 10 else f"{seconds:.1f} s"


def _fixed(value: float | None, digits: int = 2) -> str:
    return "–" if value is None else f"{value:.{digits}f}"


def templates() -> jinja2.Environment:
    """The page templates, escaped by default."""
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(HERE / "templates"),
        autoescape=True,
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.filters.update(clock=_clock, unit_time=_unit_time, size=_size, ms=_ms, fixed=_fixed)
    env.globals.update(version=__version__, severity=SEVERITY, kinds=KINDS)
    return env


class EventHub:
    """The open event streams, each a queue of topic sets."""

    def __init__(self) -> None:
        self.queues: set[asyncio.Queue[frozenset[str] | None]] = set()

    def subscribe(self) -> asyncio.Queue[frozenset[str] | None]:
        """A new stream's queue (a slow reader loses old changes, never the latest)."""
        queue: asyncio.Queue[frozenset[str] | None] = asyncio.Queue(maxsize=8)
        self.queues.add(queue)
        return queue

    def unsubscribe(self, queue: asyncio.Queue[frozenset[str] | None]) -> None:
        """Forget a closed stream."""
        self.queues.discard(queue)

    def publish(self, topics: frozenset[str] | None) -> None:
        """Tell every stream (None: the server is closing)."""
        for queue in self.queues:
            if queue.full():
                queue.get_nowait()
            queue.put_nowait(topics)


class Dashboard:
    """The dashboard over a database, with the metrics of `controller` when it runs beside one."""

    def __init__(
        self,
        db: Path | str,
        settings: WebSettings,
        controller: Controller | None = None,
        title: str = "svcfp",
        db_timeout: float = DEFAULT_DB_TIMEOUT,
    ) -> None:
        self.settings = settings
        self.controller = controller
        self.title = title
        self.data = DashboardData(db, db_timeout)
        self.env = templates()
        self.hub = EventHub()
        self.metrics: CollectorRegistry | None = None
        if controller is not None:
            # Imported here: a dashboard of a stored run has no controller to measure.
            from controller.web.metrics import controller_registry

            self.metrics = controller_registry(controller)
        self._runner: web.AppRunner | None = None
        self._watcher: asyncio.Task[None] | None = None
        self.port: int | None = None

    # -- lifecycle -------------------------------------------------------------------------------

    def app(self) -> web.Application:
        """The aiohttp application: pages, fragments, events, metrics, static files."""
        app = web.Application(middlewares=[self._guard, self._unavailable])
        app.router.add_get("/", self.devices_page)
        app.router.add_get("/devices/{mac}", self.device_page)
        app.router.add_get("/switches", self.switches_page)
        app.router.add_get("/alerts", self.alerts_page)
        app.router.add_get("/events", self.events)
        app.router.add_get("/metrics", self.metrics_page)
        app.router.add_get("/healthz", self.health)
        app.router.add_get("/readyz", self.ready)
        app.router.add_static("/static", HERE / "static", append_version=True)
        app.on_shutdown.append(self._closing)
        app.on_response_prepare.append(self._headers)
        return app

    async def start(self) -> str:
        """Listen (on the running loop); the dashboard's URL."""
        runner = web.AppRunner(self.app(), handle_signals=False, access_log=None)
        await runner.setup()
        site = web.TCPSite(runner, self.settings.host, self.settings.port)
        try:
            await site.start()
        except OSError as exc:
            await runner.cleanup()
            raise InputError(
                f"--http {self.settings.host}:{self.settings.port}: cannot listen: {exc.strerror}"
            ) from exc
        self._runner = runner
        address = runner.addresses[0]
        self.port = int(address[1])
        self._watcher = asyncio.create_task(self._watch(), name="dashboard-watch")
        url = self.settings.url(self.port)
        log.info("event=dashboard url=%s token=%s", url, "yes" if self.settings.token else "no")
        return url

    async def stop(self) -> None:
        """Close every stream, stop listening, close the database."""
        if self._watcher is not None:
            self._watcher.cancel()
            await asyncio.gather(self._watcher, return_exceptions=True)
            self._watcher = None
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
        self.data.close()

    async def _closing(self, app: web.Application) -> None:
        self.hub.publish(None)

    async def _watch(self) -> None:
        """Publish the topics whose marks moved, twice a second, and the database's loss and
        return (each look at a lost database is a reconnection attempt, when one is due)."""
        watch = ChangeWatch()
        # The dashboard starts with the database open: an outage met from the first look on is
        # news to the streams. The first look names every topic, none of which changed yet.
        lost = False
        topics: set[str] = set()
        with contextlib.suppress(DatabaseUnavailable):
            watch.changed(await self.data.call(self.data.marks))
        while True:
            if (self.data.outage is not None) != lost:
                lost = not lost
                # Back: what an open page shows may have changed meanwhile.
                topics = {DATABASE} if lost else {DATABASE, *TOPICS}
            if topics:
                self.hub.publish(frozenset(topics))
            await asyncio.sleep(WATCH_SECONDS)
            topics = set()
            with contextlib.suppress(DatabaseUnavailable):
                topics = watch.changed(await self.data.call(self.data.marks))

    # -- access ----------------------------------------------------------------------------------

    @web.middleware
    async def _guard(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        token = self.settings.token
        if token is not None and request.path not in PROBES:
            given = request.query.get("token")
            if given is not None and hmac.compare_digest(given, token):
                # Keep it in a cookie and drop it from the address bar (and from history).
                query = {k: v for k, v in request.query.items() if k != "token"}
                redirect = web.HTTPSeeOther(request.rel_url.with_query(query))
                redirect.set_cookie(TOKEN_COOKIE, token, httponly=True, samesite="Strict")
                raise redirect
            header = request.headers.get("Authorization", "")
            offered = (
                header[7:]
                if header.startswith("Bearer ")
                else request.cookies.get(TOKEN_COOKIE, "")
            )
            if not hmac.compare_digest(offered, token):
                raise web.HTTPUnauthorized(
                    text="svcfp dashboard: give the access token (?token=… once, or "
                    "Authorization: Bearer …)\n",
                    headers={"WWW-Authenticate": 'Bearer realm="svcfp"'},
                )
        return await handler(request)

    @web.middleware
    async def _unavailable(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        """A query the database could not answer: 503, naming the database and why."""
        try:
            return await handler(request)
        except DatabaseUnavailable as exc:
            return self._outage_response(request, exc.outage)

    def _outage_response(self, request: web.Request, outage: Outage) -> web.Response:
        """A page for a browser; JSON for a script (Accept: application/json) or a fragment."""
        headers = {"Retry-After": str(max(1, math.ceil(outage.retry_in())))}
        accept = request.headers.get("Accept", "")
        if "fragment" in request.query or ("json" in accept and "html" not in accept):
            body = {
                "error": "database unavailable",
                "database": outage.database,
                "reason": outage.reason,
                "since": outage.since,
                "retry_in": round(outage.retry_in(), 1),
            }
            return web.json_response(body, status=503, headers=headers)
        context = self._context("unavailable", outage=outage, refresh=round(RETRY_MOST))
        text = self.env.get_template("unavailable.html").render(**context)
        return web.Response(status=503, text=text, content_type="text/html", headers=headers)

    async def _headers(self, request: web.Request, response: web.StreamResponse) -> None:
        # Pages load nothing from elsewhere and run no inline script.
        response.headers.setdefault("X-Content-Type-Options", "nosniff")
        response.headers.setdefault(
            "Content-Security-Policy",
            "default-src 'self'; style-src 'self'; script-src 'self'; frame-ancestors 'none'",
        )

    # -- pages -----------------------------------------------------------------------------------

    def _context(self, page: str, **context: Any) -> dict[str, Any]:
        """What every template is given, with `context`."""
        return {
            "page": page,
            "title": self.title,
            "live": self.controller is not None,
            "fragments": FRAGMENTS.get(page, {}),
            "now": time.time(),
            "outage": self.data.outage,
            "refresh": None,
            **context,
        }

    def _render(self, request: web.Request, page: str, **context: Any) -> web.Response:
        """The page, or only its fragment `?fragment=NAME` (what live.js reloads)."""
        context = self._context(page, **context)
        fragment = request.query.get("fragment")
        if fragment is not None:
            if fragment not in FRAGMENTS.get(page, {}):
                raise web.HTTPNotFound(text=f"no fragment {fragment!r} on this page\n")
            name = f"_{page}_{fragment}.html"
        else:
            name = f"{page}.html"
        text = self.env.get_template(name).render(**context)
        return web.Response(text=text, content_type="text/html")

    async def devices_page(self, request: web.Request) -> web.Response:
        """Every device, unknown and alerted ones first, with the latest alerts."""
        overview = await self.data.call(self.data.overview)
        return self._render(request, "devices", overview=overview)

    async def device_page(self, request: web.Request) -> web.Response:
        """One device: heat map, fingerprint beside its reference, decisions, alerts."""
        mac = request.match_info["mac"].lower()
        try:
            units = int(request.query.get("units", HEATMAP_UNITS))
        except ValueError:
            raise web.HTTPBadRequest(text="units: expected a number of units\n") from None
        detail = await self.data.call(self.data.device, mac, units)
        if detail is None:
            raise web.HTTPNotFound(text=f"no device {mac} in the registry\n")
        return self._render(request, "device", detail=detail, units=units)

    async def switches_page(self, request: web.Request) -> web.Response:
        """Every switch: connection, poll latency, counter read size, table occupancy."""
        switches = await self.data.call(self.data.switches)
        return self._render(request, "switches", switches=switches)

    async def alerts_page(self, request: web.Request) -> web.Response:
        """Every alert, newest first (`?kind=` for one kind)."""
        kind = request.query.get("kind") or None
        if kind is not None and kind not in KINDS:
            raise web.HTTPBadRequest(text=f"kind {kind!r}: one of {', '.join(KINDS)}\n")
        alerts = await self.data.call(self.data.alerts, kind)
        return self._render(request, "alerts", alerts=alerts, kind=kind)

    async def health(self, request: web.Request) -> web.Response:
        """Liveness for load balancers and tests: no token, no database."""
        return web.Response(text="ok\n")

    async def ready(self, request: web.Request) -> web.Response:
        """Readiness for load balancers: 503 while the database cannot be read (as the pages
        last found it, at most WATCH_SECONDS ago: a probe adds no query), else 200. No token;
        which database and why are on the pages."""
        outage = self.data.outage
        if outage is None:
            return web.Response(text="ready\n")
        return web.Response(
            status=503,
            text="database unavailable\n",
            headers={"Retry-After": str(max(1, math.ceil(outage.retry_in())))},
        )

    async def metrics_page(self, request: web.Request) -> web.Response:
        """Prometheus text exposition of the controller's metrics."""
        if self.metrics is None:
            raise web.HTTPNotFound(
                text="metrics are served by a running controller (svcfp run --http)\n"
            )
        body = generate_latest(self.metrics)
        return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})

    async def events(self, request: web.Request) -> web.StreamResponse:
        """Server-sent events: `change` with the topics that moved, until the client leaves."""
        if len(self.hub.queues) >= MAX_STREAMS:
            raise web.HTTPServiceUnavailable(text="too many open event streams\n")
        response = web.StreamResponse(
            headers={
                "Content-Type": "text/event-stream",
                "Cache-Control": "no-cache",
                "X-Accel-Buffering": "no",
            }
        )
        await response.prepare(request)
        queue = self.hub.subscribe()
        try:
            await response.write(b"retry: 2000\nevent: hello\ndata: {}\n\n")
            if self.data.outage is not None:
                await response.write(self._database_event())
            while True:
                try:
                    topics = await asyncio.wait_for(queue.get(), KEEPALIVE_SECONDS)
                except TimeoutError:
                    await response.write(b": keep-alive\n\n")
                    continue
                if topics is None:
                    break
                if DATABASE in topics:
                    await response.write(self._database_event())
                if changed := topics - {DATABASE}:
                    data = json.dumps(sorted(changed))
                    await response.write(f"event: change\ndata: {data}\n\n".encode())
        except ConnectionResetError:
            return response
        finally:
            self.hub.unsubscribe(queue)
        with contextlib.suppress(ConnectionResetError):
            await response.write_eof()
        return response

    def _database_event(self) -> bytes:
        """`database`: whether it can be read now, and if not which one and why."""
        outage = self.data.outage
        state: dict[str, Any] = {"up": outage is None}
        if outage is not None:
            state.update(database=outage.database, reason=outage.reason)
        return f"event: database\ndata: {json.dumps(state)}\n\n".encode()
