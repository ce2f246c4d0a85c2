"""The controller's database on a thread of its own, and its identification on another.

A poll's transaction takes about 0.1 s at 16k rows and identifying a closed unit can take longer;
on the event loop either would hold up digests and the other switches' polls. The database
connection (SQLite or PostgreSQL) is opened in the storage thread and used only there (sqlite3
refuses any other thread), and every database call goes through it in the order it was made, so
a poll's activity is stored before the units it closes are read back. Writes nobody waits for
(registry changes) are kept in that order too, and the first call that fails ends the run at the
next `check`: a queued write, or a call whose caller was cut short before it could hear of its
failure (the last poll of a run that ended while the database did not answer).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any, ParamSpec, TypeVar

from controller.store.records import DeviceRow
from controller.store.storage import DEFAULT_DB_TIMEOUT, open_store
from controller.store.store import Store

T = TypeVar("T")
P = ParamSpec("P")


class StorageThread:
    """One `Store` confined to one thread; calls from the event loop are awaited or queued."""

    def __init__(
        self, location: Path | str, scope: str = "", db_timeout: float = DEFAULT_DB_TIMEOUT
    ) -> None:
        self._executor = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="storage")
        self._failure: BaseException | None = None
        try:
            self.storage: Store = self._executor.submit(
                open_store, location, scope, db_timeout
            ).result()
        except BaseException:
            self._executor.shutdown()
            raise

    def run(self, func: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> T:
        """`func(*args)` in the storage thread, waiting for it (setup, before the loop runs)."""
        return self._executor.submit(func, *args, **kwargs).result()

    async def call(self, func: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> T:
        """`func(*args)` in the storage thread, awaited without blocking the event loop."""
        return await self.queued(func, *args, **kwargs)

    def queued(self, func: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> asyncio.Future[T]:
        """Queue `func(*args)` now, behind every earlier call, and give its result to await
        later (`call` queues only once awaited)."""
        future = self._executor.submit(func, *args, **kwargs)
        future.add_done_callback(self._keep_failure)
        return asyncio.wrap_future(future)

    def submit(self, func: Callable[P, object], *args: P.args, **kwargs: P.kwargs) -> None:
        """Queue `func(*args)` behind every earlier call; a failure is raised by `check`."""
        future = self._executor.submit(func, *args, **kwargs)
        future.add_done_callback(self._keep_failure)

    def _keep_failure(self, future: concurrent.futures.Future[Any]) -> None:
        if not future.cancelled() and future.exception() is not None and self._failure is None:
            self._failure = future.exception()

    def check(self) -> None:
        """Raise the first failure of a queued call, if any."""
        if self._failure is not None:
            raise self._failure

    def sync(self) -> None:
        """Wait for every queued call, then raise the first failure among them, if any."""
        self.run(int)
        self.check()

    def put_devices(self, rows: Iterable[DeviceRow]) -> None:
        """Queue registry changes (the registry keeps the current state in memory)."""
        self.submit(self.storage.put_devices, list(rows))

    def devices(self) -> list[DeviceRow]:
        """The stored devices, read in the storage thread (setup only)."""
        return self.run(self.storage.devices)

    def close(self) -> None:
        """Finish every queued call, close the database, end the thread."""
        try:
            self.run(self.storage.close)
        finally:
            self._executor.shutdown()
