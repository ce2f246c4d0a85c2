"""A controller with its dashboard and metrics on the same event loop (`svcfp run --http`)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
from collections.abc import Callable
from pathlib import Path

from controller.control.config import RunConfig, RunStats
from controller.control.controller import Controller, UnitCallback, serve_controller
from controller.store.store import DEFAULT_DB_TIMEOUT
from controller.web.server import Dashboard
from controller.web.settings import WebSettings

log = logging.getLogger(__name__)


async def run_with_dashboard(
    config: RunConfig,
    settings: WebSettings,
    on_unit_closed: UnitCallback | None = None,
    on_url: Callable[[str], None] | None = None,
) -> RunStats:
    """Run a controller (as `run_controller`) with the dashboard served beside it; `on_url` is
    told the dashboard's address once it listens."""
    controller = Controller(config, on_unit_closed)
    try:
        dashboard = Dashboard(config.db, settings, controller, db_timeout=config.db_timeout)
    except BaseException:
        controller.close()
        raise
    try:
        url = await dashboard.start()
    except BaseException:
        await dashboard.stop()
        controller.close()
        raise
    if on_url is not None:
        on_url(url)
    try:
        return await serve_controller(controller)
    finally:
        await dashboard.stop()


async def serve_stored(
    db: Path | str,
    settings: WebSettings,
    on_url: Callable[[str], None],
    db_timeout: float = DEFAULT_DB_TIMEOUT,
) -> None:
    """Serve the dashboard of the database `db` until SIGINT or SIGTERM (`svcfp dashboard`)."""
    name = db.name if isinstance(db, Path) else "PostgreSQL"
    dashboard = Dashboard(db, settings, title=f"svcfp · {name}", db_timeout=db_timeout)
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    handled: list[signal.Signals] = []
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(sig, stop.set)
            handled.append(sig)
    try:
        on_url(await dashboard.start())
        await stop.wait()
        log.info("event=stopped")
    finally:
        for sig in handled:
            loop.remove_signal_handler(sig)
        await dashboard.stop()
