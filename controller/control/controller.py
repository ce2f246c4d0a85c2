"""The controller loop: one asyncio process driving any number of switches until stopped.

Each switch has a worker (controller/control/worker.py) that keeps its session open and serves
its digests. The loop polls every connected switch at every unit boundary and every interval in
between (controller/control/schedule.py), stores the deltas in the storage thread, evicts idle
devices, and hands each closed range of units to the live fingerprint exporter and
identification (controller/control/live.py), computed on a thread of its own, then to a
callback. The event loop itself only waits on the network: digests are served while a poll's
transaction or an identification is under way.

Every failure ends the run with an `SvcfpError` (a worker's unexpected exception included, which
would otherwise leave the loop waiting for a switch that will never be ready), and a stop request
is honoured within a poll's flush. A run's duration counts from its start, set-up included, and
ends it however late its polls are: every RPC of a switch's set-up has at most the time left (a
switch that does not answer one ends the run with an error naming it and the step), a poll
still waiting for a switch then is cut short, the last poll has `FLUSH_TIMEOUT`, and a connected
switch that did not answer it ends the run with an error naming it. So a run with a duration D
ends by D + `FLUSH_TIMEOUT` (and whatever storing and exporting the last poll takes).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import logging
import math
import signal
import time
from collections.abc import Callable, Coroutine, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from controller.base.errors import InputError, SvcfpError, SwitchError
from controller.base.fileio import not_utf8, parse_json
from controller.base.p4info import P4Schema
from controller.control.alerts import (
    DEFAULT_HISTORY_THRESHOLD,
    Alerts,
    BehaviourWatch,
    ComplianceWatch,
)
from controller.control.config import RunConfig, RunStats
from controller.control.live import LiveIdentification, LiveResult
from controller.control.registry import Registry, load_devices_file
from controller.control.schedule import Poll, PollSchedule
from controller.control.storage_thread import StorageThread
from controller.control.telemetry import NO_SWITCH, Telemetry
from controller.control.worker import SwitchWorker
from controller.engine.accumulate import Belief
from controller.engine.activity import ActivityTable
from controller.engine.catalogue import Catalogue
from controller.engine.fingerprints import Fingerprint
from controller.engine.identify import Decision
from controller.mud.compliance import Finding
from controller.p4rt import entries, tofino
from controller.p4rt.session import Deadline
from controller.store.records import AlertRecord
from controller.store.store import Store

log = logging.getLogger(__name__)

# After a stop request or the run's duration, the last poll may take this long before the run
# ends without it.
FLUSH_TIMEOUT = 2.0


@dataclass(frozen=True)
class ClosedUnits:
    """Units `first..last` closed: their stored activity, and what the controller exported and
    decided on closing them (empty without live identification), with each decision's device's
    accumulated answer after it (one per decision; empty without references' types)."""

    first: int
    last: int
    activity: ActivityTable
    fingerprints: tuple[Fingerprint, ...] = ()
    decisions: tuple[Decision, ...] = ()
    beliefs: tuple[Belief, ...] = ()


UnitCallback = Callable[[ClosedUnits], None]


class Controller:
    """The whole controller process: storage, registry, catalogue and one worker per switch."""

    def __init__(self, config: RunConfig, on_unit_closed: UnitCallback | None = None) -> None:
        self.config = config
        self.on_unit_closed = on_unit_closed
        self.stats = RunStats()
        self.schema = P4Schema.load(config.p4info)
        self.counter = self.schema.counter(entries.COUNTER)
        self.max_services = entries.max_services(self.schema)
        self.max_devices = self.schema.table(entries.DEVICE_TABLE).size
        if config.capacity is not None and config.capacity >= self.max_devices:
            raise InputError(
                f"--capacity {config.capacity}: the device table has ids 1..{self.max_devices - 1}"
            )
        self.catalogue = Catalogue.load_or_default(config.catalogue, self.max_services)
        if self.catalogue.max_id >= self.max_services:
            raise InputError(
                f"catalogue {self.catalogue.source} has {self.catalogue.max_id} services; "
                f"the switch counts at most {self.max_services - 1}"
            )
        self.device_config = b"" if config.skip_config else read_device_config(config)
        static = load_devices_file(config.devices) if config.devices else []
        self.telemetry = Telemetry()
        self.store = StorageThread(config.db, config.scope, config.db_timeout)
        self.alerts = Alerts(self._store_alert, self.telemetry, config.alerts)
        self._identifier = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="identify")
        try:
            storage = self.store.storage
            self.store.run(storage.check_time_unit, config.time_unit)
            self.store.run(storage.claim_switches, {s.name: s.grpc_addr for s in config.switches})
            self.registry = Registry(self.store, self.max_devices, config.capacity)
            if config.role == "primary":
                self.store.run(storage.put_services, self.catalogue.services)
                for device in static:
                    self.registry.register(
                        device.mac, device.label, "static", device.switch, device.port
                    )
            self.live = (
                None
                if config.live is None
                else self.store.run(LiveIdentification, storage, config.live, config.time_unit)
            )
            self.watch = self.store.run(self._load_watch, storage)
            self.compliance_watch = ComplianceWatch(self.store.run(storage.alerts))
            self.workers = [SwitchWorker(spec, self) for spec in config.switches]
            self.store.sync()
        except BaseException:
            self._shutdown_threads()
            raise
        for worker in self.workers:
            worker.forwarding.learn_all(
                (row.mac, row.port)
                for row in self.registry.for_switch(worker.spec.name)
                if row.port is not None
            )
        self.background: set[asyncio.Task[None]] = set()
        self._failures: list[BaseException] = []
        self._closing: asyncio.Task[None] | None = None
        self.stop = asyncio.Event()
        self.cycle = 0
        # The end of a bounded run, which the switches' set-up does not go past (set by `run`).
        self.end: Deadline | None = None

    def close(self) -> None:
        """Release a controller that will not run (its threads, the database)."""
        self._shutdown_threads()

    def _shutdown_threads(self) -> None:
        self._identifier.shutdown()
        self.alerts.close()
        self.store.close()

    def _load_watch(self, storage: Store) -> BehaviourWatch:
        """The behaviour watch, with every device's history as stored (in the storage thread)."""
        threshold = self.config.alerts.history_threshold
        if threshold is None:
            threshold = DEFAULT_HISTORY_THRESHOLD
        flagged = {a.device for a in storage.alerts() if a.kind == "new_unknown_device"}
        return BehaviourWatch(
            threshold,
            storage.decision_summaries(),
            storage.fingerprints(),
            {mac for mac in flagged if mac is not None},
        )

    def _store_alert(self, alert: AlertRecord) -> None:
        self.store.submit(self.store.storage.add_alerts, [alert])

    def switch_of(self, mac: str) -> str | None:
        """The switch a device was registered on (None: every switch, or not registered)."""
        row = self.registry.get(mac)
        return None if row is None else row.switch

    def spawn(self, work: Coroutine[Any, Any, None], name: str) -> None:
        """Run `work` beside the loop; a switch error is logged, any other failure ends the run."""
        task = asyncio.create_task(work, name=name)
        self.background.add(task)
        task.add_done_callback(self._background_done)

    def _background_done(self, task: asyncio.Task[None]) -> None:
        self.background.discard(task)
        if task.cancelled():
            return
        exc = task.exception()
        if isinstance(exc, SwitchError):
            log.warning("event=%s_failed error=%s", task.get_name(), exc)
        elif exc is not None:
            self._failures.append(exc)

    async def run(self) -> RunStats:
        """Run until `stop` is set or the duration ends; the last poll is always flushed."""
        config = self.config
        # The end of a bounded run, on the monotonic clock: the schedule runs behind real
        # time after polls that waited for a switch, so it cannot say when the run ends.
        end = None if config.duration is None else time.monotonic() + config.duration
        if end is not None:
            self.end = Deadline(end, f"the end of the run (--duration {config.duration:g} s)")
        tasks = [asyncio.create_task(w.run(), name=f"switch-{w.spec.name}") for w in self.workers]
        try:
            if not await self._until_ready(tasks):
                return self.stats
            schedule = PollSchedule(config.time_unit, config.interval, time.time())
            while not self.stop.is_set():
                poll = schedule.next()
                wait = max(0.0, poll.when - time.time())
                left = math.inf if end is None else end - time.monotonic()
                if await self._stopped_within(min(wait, left)) or left < wait:
                    break
                if not await self._unless_stopped(self.poll_all(poll.unit), end):
                    break
                closed = schedule.done(poll, time.time())
                self._check(tasks)
                self._evict()
                if closed is not None:
                    self._close_units(*closed)
            unanswered = await self._flush(schedule)
            if self._closing is not None:
                await self._closing
            self._check(tasks)
            if config.export_dir is not None:
                await self.store.call(self.export, config.export_dir, config.export_format)
            self.store.sync()
            if unanswered:
                raise SwitchError(
                    "; ".join(
                        f"{w.target.describe()} did not answer the last poll "
                        + (
                            "(it stopped answering keepalive pings and was not back by the end)"
                            if w.session is None
                            else f"within {FLUSH_TIMEOUT:g} s"
                        )
                        + ": what it counted since the last poll it answered is not stored"
                        for w in unanswered
                    )
                )
        finally:
            for task in [*tasks, *self.background]:
                task.cancel()
            await asyncio.gather(*tasks, *self.background, return_exceptions=True)
            if self._closing is not None and not self._closing.done():
                self._closing.cancel()
                await asyncio.gather(self._closing, return_exceptions=True)
            self._shutdown_threads()
        return self.stats

    async def _until_ready(self, tasks: list[asyncio.Task[None]]) -> bool:
        """Wait until every worker has a session; False when stopped first. A worker that failed
        to connect, or ended with any other error, ends the run with its error, and so does one
        still not set up `FLUSH_TIMEOUT` after the end of a bounded run (each of its RPCs ends
        by then: this only names what is left)."""

        async def all_ready() -> None:
            await asyncio.gather(*(w.ready.wait() for w in self.workers))

        ready = asyncio.create_task(all_ready())
        stopped = asyncio.create_task(self.stop.wait())
        watched: set[asyncio.Task[Any]] = {ready, stopped, *tasks}
        end = self.end
        try:
            while not ready.done() and not stopped.done():
                timeout = None if end is None else end.left() + FLUSH_TIMEOUT
                done, _ = await asyncio.wait(
                    watched, timeout=timeout, return_when=asyncio.FIRST_COMPLETED
                )
                self._check(tasks)
                for worker in self.workers:
                    if worker.first_error is not None:
                        raise worker.first_error
                if not done and end is not None:
                    raise SwitchError(
                        "; ".join(
                            f"{w.target.describe()} was not set up by {end.name}: it was {w.step}"
                            for w in self.workers
                            if not w.ready.is_set()
                        )
                    )
        finally:
            ready.cancel()
            stopped.cancel()
        if not all(w.ready.is_set() for w in self.workers):
            log.info("event=stopped_before_ready")
            return False
        return True

    def _check(self, tasks: list[asyncio.Task[None]]) -> None:
        """End the run on a worker that died, a failed background task or storage write."""
        for worker, task in zip(self.workers, tasks, strict=True):
            if task.done() and not task.cancelled() and task.exception() is not None:
                exc = task.exception()
                raise SvcfpError(
                    f"switch {worker.spec.name} ({worker.spec.grpc_addr}): "
                    f"{type(exc).__name__}: {exc}"
                ) from exc
        if self._failures:
            exc = self._failures[0]
            raise SvcfpError(f"controller task failed: {type(exc).__name__}: {exc}") from exc
        if self._closing is not None and self._closing.done() and not self._closing.cancelled():
            failure = self._closing.exception()
            if failure is not None:
                raise failure
        self.store.check()

    async def _stopped_within(self, seconds: float) -> bool:
        """Whether `stop` is set within `seconds`."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.stop.wait(), max(0.0, seconds))
        return self.stop.is_set()

    async def _unless_stopped(
        self, work: Coroutine[Any, Any, None], until: float | None = None
    ) -> bool:
        """Run `work` unless `stop` comes first, or the monotonic time `until` (a poll of a
        switch that hangs); True if done."""
        task = asyncio.ensure_future(work)
        stopped = asyncio.ensure_future(self.stop.wait())
        timeout = None if until is None else max(0.0, until - time.monotonic())
        try:
            await asyncio.wait(
                {task, stopped}, timeout=timeout, return_when=asyncio.FIRST_COMPLETED
            )
        finally:
            stopped.cancel()
        if not task.done():
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
            return False
        task.result()
        return True

    async def _flush(self, schedule: PollSchedule) -> list[SwitchWorker]:
        """The last poll, bounded in time, and the close of every unit up to the current one;
        the connected switches that did not answer it."""
        unit = schedule.unit
        try:
            await asyncio.wait_for(self.poll_all(unit), FLUSH_TIMEOUT)
        except TimeoutError:
            log.warning("event=flush_timeout: the last poll took over %g s", FLUSH_TIMEOUT)
        now = time.time()
        closed = schedule.done(Poll(now, unit, closes=True), now)
        if closed is not None:
            self._close_units(*closed)
        # A switch known to be lost was said to be (its alert); one that holds its session
        # open and answers nothing, or whose session ended because it stopped answering (its
        # keepalive pings), is said here.
        return [
            w
            for w in self.workers
            if (w.session is not None or w.silent) and w.polled_cycle < self.cycle
        ]

    def export(self, folder: Path, file_format: str) -> None:
        """Write the stored activity, devices, fingerprints and decisions into `folder` (in the
        storage thread)."""
        folder.mkdir(parents=True, exist_ok=True)
        for table in ("activity", "devices", "fingerprints", "decisions", "alerts"):
            rows = self.store.storage.export(table, folder / f"{table}.{file_format}")
            log.info("event=exported table=%s rows=%d folder=%s", table, rows, folder)

    async def poll_all(self, unit: int | None = None) -> None:
        """One poll of every connected switch; then release ids whose eviction is complete."""
        self.cycle += 1
        rows = await asyncio.gather(*(w.poll(self.cycle, unit) for w in self.workers))
        self.stats.polls += 1
        self.stats.rows += sum(r for r in rows if r > 0)
        polled_everywhere = min(w.polled_cycle for w in self.workers)
        for mac in self.registry.release_evicted(polled_everywhere):
            log.info("event=evicted mac=%s", mac)

    def _evict(self) -> None:
        idle = self.config.idle_seconds
        if idle is None or self.config.role != "primary":
            return
        leaving = [row.mac for row in self.registry.idle(time.time(), idle)]
        if not leaving:
            return
        # The entries go first; the ids are freed only after every switch was polled again.
        self.registry.begin_eviction(leaving, self.cycle)
        for worker in self.workers:
            self.spawn(worker.remove_devices(leaving), f"evict-{worker.spec.name}")

    def _close_units(self, first: int, last: int) -> None:
        """Identify units `first..last` after every earlier closed range, beside the loop."""
        if self.on_unit_closed is None and self.live is None:
            return
        self._closing = asyncio.create_task(
            self._identify(self._closing, first, last), name=f"units-{first}-{last}"
        )

    async def _identify(self, previous: asyncio.Task[None] | None, first: int, last: int) -> None:
        if previous is not None:
            await previous
        storage = self.store.storage
        table = await self.store.call(storage.activity_table, first, last, self.config.time_unit)
        if self.config.scope:
            # A shared database holds other controllers' devices too: this one reports its own.
            mine = await self.store.call(storage.devices)
            table = table.select(devices=[row.mac for row in mine])
        table = table.without(self.registry.infrastructure())
        result: LiveResult | None = None
        if self.live is not None:
            loop = asyncio.get_running_loop()
            result = await loop.run_in_executor(
                self._identifier, self.live.identify, table, last + 1
            )
            if result is not None:
                findings = await self.store.call(self.live.store, result)
                self.live.log(result, {row.mac: row.device_id for row in self.registry.active()})
                self._review(result, findings)
        if self.on_unit_closed is not None:
            self.on_unit_closed(
                ClosedUnits(
                    first,
                    last,
                    table,
                    () if result is None else result.fingerprints,
                    () if result is None else result.decisions,
                    () if result is None else result.beliefs,
                )
            )

    def _review(self, result: LiveResult, findings: Sequence[Finding]) -> None:
        """Count what was decided and raise the alerts it (and MUD compliance) calls for."""
        telemetry = self.telemetry
        for fp in result.fingerprints:
            telemetry.fingerprints[self.switch_of(fp.device) or NO_SWITCH] += 1
        for decision in result.decisions:
            telemetry.decisions[(self.switch_of(decision.device) or NO_SWITCH, decision.label)] += 1
        for alert in self.watch.review(
            result.fingerprints,
            result.decisions,
            result.beliefs,
            self.switch_of,
            result.decided_at,
        ):
            self.alerts.raise_alert(alert)
        for alert in self.compliance_watch.review(findings, self.switch_of, result.decided_at):
            self.alerts.raise_alert(alert)


def log_unit(closed: ClosedUnits) -> None:
    """The default closed-unit callback of `svcfp run`: one log line per closed range."""
    table = closed.activity
    log.info(
        "event=unit_closed units=%d..%d devices=%d rows=%d fingerprints=%d decisions=%d",
        closed.first,
        closed.last,
        len(table.used_devices()),
        len(table),
        len(closed.fingerprints),
        len(closed.decisions),
    )


async def run_controller(config: RunConfig, on_unit_closed: UnitCallback | None = None) -> RunStats:
    """Run a controller; SIGINT/SIGTERM stop it cleanly (last poll flushed), a second one at
    once."""
    return await serve_controller(Controller(config, on_unit_closed))


async def serve_controller(controller: Controller) -> RunStats:
    """Run a controller made already (a dashboard beside it) with run_controller's signals."""
    loop = asyncio.get_running_loop()
    main = asyncio.current_task()
    handled: list[signal.Signals] = []

    def on_signal(sig: signal.Signals) -> None:
        if controller.stop.is_set() and main is not None:
            log.warning("event=signal signal=%s: stopping now, without the last poll", sig.name)
            main.cancel()
            return
        log.info("event=signal signal=%s: stopping after the last poll", sig.name)
        controller.stop.set()

    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(sig, on_signal, sig)
            handled.append(sig)
    try:
        return await controller.run()
    except asyncio.CancelledError:
        if controller.stop.is_set():
            return controller.stats
        raise
    finally:
        for sig in handled:
            loop.remove_signal_handler(sig)


def read_device_config(config: RunConfig) -> bytes:
    """The `p4_device_config` the run pushes: the BMv2 JSON, or for a Tofino target the packed
    compiler output (empty when neither was given)."""
    if config.target in tofino.CHIPS:
        if config.tofino_out is None:
            raise InputError(
                f"--target {config.target}: give --tofino-out, the Tofino compiler's output folder"
            )
        return tofino.device_config(config.tofino_out, config.program_name, config.target)
    if config.bmv2_json is None:
        return b""
    try:
        data = config.bmv2_json.read_bytes()
    except OSError as exc:
        raise InputError(f"cannot read {config.bmv2_json}: {exc.strerror}") from exc
    check_bmv2_json(data, config.bmv2_json)
    return data


def check_bmv2_json(data: bytes, path: Path) -> None:
    """Refuse, before any switch is asked, a `--bmv2-json` that is not what p4c's BMv2 back end
    writes: a JSON object with its `pipelines` list (BMv2 would only say it cannot load it)."""
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise not_utf8(path, "BMv2 JSON", exc, at=exc.start) from None
    document = parse_json(text, f"--bmv2-json {path}")
    if not isinstance(document, dict) or not isinstance(document.get("pipelines"), list):
        raise InputError(
            f"--bmv2-json {path}: not a BMv2 JSON file (p4c-bm2-ss output): it has no "
            "'pipelines' list"
        )
