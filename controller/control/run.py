"""`svcfp run`: program the switches, collect their counters into SQLite, until stopped.

One asyncio process drives any number of switches. Each switch has a worker that keeps a session
open: it connects, arbitrates, pushes or attaches to the pipeline, installs the registry, catalogue
and forwarding entries, and handles new-device digests; when the session drops it reconnects and
does it all again. The main loop polls every connected switch each interval, stores the activity
with the counter baseline in one transaction, evicts idle devices, and hands each closed time unit
to the live fingerprint exporter and identification (controller/live.py) and to a callback.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import numpy.typing as npt
from finsy.proto import p4r

from controller.base.errors import InputError, SvcfpError, SwitchError
from controller.base.fileio import read_json
from controller.base.p4info import P4Schema, decode_int, decode_mac, normalize_mac
from controller.control.collector import Collector, UnitClock
from controller.control.live import LiveIdentification, LiveSettings
from controller.control.registry import RegisterPolicy, Registry, RegistryFull, load_devices_file
from controller.engine.activity import ActivityTable
from controller.engine.catalogue import Catalogue
from controller.p4rt import entries
from controller.p4rt.forwarding import Forwarding
from controller.p4rt.session import Role, Session, SwitchTarget, TlsOptions, WriteError
from controller.store.storage import Storage

log = logging.getLogger(__name__)

UnitCallback = Callable[[ActivityTable], None]
# Read-only clients (a monitor, an operator's p4runtime-shell at 0,1) stay below the primary.
PRIMARY_ELECTION_ID = (0, 10)
MONITOR_ELECTION_ID = (0, 5)


@dataclass(frozen=True)
class SwitchSpec:
    """One switch of a `--switches` file."""

    name: str
    grpc_addr: str
    device_id: int
    ports: tuple[int, ...] = ()
    l2: dict[str, int] = field(default_factory=dict)


def load_switches(path: Path) -> list[SwitchSpec]:
    """Parse a JSON list of {name, grpc_addr, device_id, ports[, l2]}."""
    data = read_json(path, "switches file")
    if not isinstance(data, list) or not data:
        raise InputError(f"{path}: expected a non-empty JSON list of switches")
    specs: list[SwitchSpec] = []
    for i, item in enumerate(data):
        where = f"{path}: switch #{i}"
        if not isinstance(item, dict):
            raise InputError(f"{where}: expected an object")
        try:
            spec = SwitchSpec(
                name=str(item.get("name", f"s{i + 1}")),
                grpc_addr=str(item["grpc_addr"]),
                device_id=int(item["device_id"]),
                ports=tuple(int(p) for p in item.get("ports", ())),
                l2={normalize_mac(m): int(p) for m, p in dict(item.get("l2", {})).items()},
            )
        except KeyError as exc:
            raise InputError(f"{where}: missing {exc.args[0]!r}") from None
        except (TypeError, ValueError) as exc:
            raise InputError(f"{where}: {exc}") from None
        specs.append(spec)
    names = [s.name for s in specs]
    if len(set(names)) != len(names):
        raise InputError(f"{path}: switch names must be unique")
    return specs


@dataclass(frozen=True)
class RunConfig:
    """Everything `svcfp run` was asked to do."""

    switches: tuple[SwitchSpec, ...]
    p4info: Path
    bmv2_json: Path | None = None
    skip_config: bool = False
    election_id: tuple[int, int] = PRIMARY_ELECTION_ID
    role: Role = "primary"
    tls: TlsOptions | None = None
    cpu_port: int | None = None
    interval: float = 5.0
    time_unit: float = 3600.0
    db: Path = Path("svcfp.db")
    catalogue: Path | None = None
    devices: Path | None = None
    policy: RegisterPolicy = field(default_factory=lambda: RegisterPolicy("all"))
    capacity: int | None = None
    idle_timeout: float | None = None
    tap: bool = False
    log_dir: Path | None = None
    export_dir: Path | None = None
    export_format: str = "csv"
    duration: float | None = None
    connect_timeout: float = 10.0
    reconnect_delay: float = 1.0
    live: LiveSettings | None = None


@dataclass
class RunStats:
    """What a run did, for logs and tests."""

    polls: int = 0
    rows: int = 0
    connects: dict[str, int] = field(default_factory=dict)
    pushes: dict[str, int] = field(default_factory=dict)


class SwitchWorker:
    """Keeps one switch programmed and readable, reconnecting whenever its session drops."""

    def __init__(self, spec: SwitchSpec, controller: Controller) -> None:
        self.spec = spec
        self.controller = controller
        config = controller.config
        self.target = SwitchTarget(
            name=spec.name,
            grpc_addr=spec.grpc_addr,
            device_id=spec.device_id,
            election_id=config.election_id,
            role=config.role,
            tls=config.tls,
        )
        self.forwarding = Forwarding(spec.ports, spec.l2, config.tap, config.cpu_port)
        self.collector = Collector(
            spec.name,
            controller.storage,
            controller.counter.size,
            controller.max_services,
            config.time_unit,
        )
        self.session: Session | None = None
        self.ready = asyncio.Event()
        self.polled_cycle = -1
        self.first_error: SvcfpError | None = None

    @property
    def programming(self) -> bool:
        """Whether this controller writes to the switch (primary) or only reads (monitor)."""
        return self.controller.config.role == "primary"

    async def run(self) -> None:
        """Connect, program, serve digests; reconnect after every disconnect until cancelled."""
        config = self.controller.config
        while True:
            try:
                async with Session(self.target, config.connect_timeout, config.log_dir) as session:
                    await self._setup(session)
                    self.session = session
                    self.ready.set()
                    stats = self.controller.stats
                    stats.connects[self.spec.name] = stats.connects.get(self.spec.name, 0) + 1
                    if self.programming:
                        await self._serve_digests(session)
                    await session.disconnected.wait()
                    log.warning(
                        "switch=%s event=disconnected reason=%r",
                        self.spec.name,
                        session.disconnect_reason,
                    )
            except SvcfpError as exc:
                if not self.ready.is_set() and self.first_error is None:
                    self.first_error = exc
                    self.ready.set()
                    return
                log.warning("switch=%s event=session_failed error=%s", self.spec.name, exc)
            finally:
                self.session = None
            await asyncio.sleep(config.reconnect_delay)

    async def _setup(self, session: Session) -> None:
        config = self.controller.config
        # Without --bmv2-json the pipeline is pushed with an empty device config, which the
        # reference switch accepts and BMv2 refuses with a clear error.
        device_config = None if config.skip_config else self.controller.device_config
        pushed = await session.ensure_pipeline(
            self.controller.schema, device_config, config.skip_config
        )
        if pushed:
            # A freshly pushed pipeline starts with zeroed counters: count from zero.
            self.collector.reset()
            stats = self.controller.stats
            stats.pushes[self.spec.name] = stats.pushes.get(self.spec.name, 0) + 1
        if self.programming:
            await self.sync(session)

    def desired_entries(self) -> list[p4r.TableEntry]:
        """Every table entry this switch should hold, registry + catalogue + forwarding."""
        schema = self.controller.schema
        registry = self.controller.registry
        devices = [
            entries.device_entry(schema, row.mac, row.device_id)
            for row in registry.for_switch(self.spec.name)
            if row.device_id is not None
        ]
        return (
            devices
            + entries.catalogue_entries(schema, self.controller.catalogue)
            + self.forwarding.entries(schema)
        )

    async def sync(self, session: Session) -> None:
        """Make the switch's tables match the desired state with one batched Write."""
        schema = self.controller.schema
        tables = [entries.DEVICE_TABLE, *entries.SERVICE_TABLES, entries.L2_TABLE]
        wildcard = [entries.table_wildcard(schema, t) for t in tables]
        existing = {
            entries.match_key(e.table_entry): e.table_entry
            for e in await session.read(wildcard, "Read tables")
        }
        desired = {entries.match_key(e): e for e in self.desired_entries()}
        deletes = [existing[k] for k in existing.keys() - desired.keys()]
        inserts = [desired[k] for k in desired.keys() - existing.keys()]
        modifies = [
            desired[k]
            for k in desired.keys() & existing.keys()
            if desired[k].action.SerializeToString(deterministic=True)
            != existing[k].action.SerializeToString(deterministic=True)
        ]
        updates = (
            entries.updates(p4r.Update.DELETE, deletes)
            + entries.updates(p4r.Update.MODIFY, [*modifies, self.forwarding.default(schema)])
            + entries.updates(p4r.Update.INSERT, inserts)
        )
        await session.write(updates, "Write tables")
        await self._upsert(session, [entries.digest_entry(schema)], "digest config")
        flood = self.forwarding.flood()
        if flood is not None:
            await self._upsert(session, [flood], "flood group")
        log.info(
            "switch=%s event=synced inserted=%d modified=%d deleted=%d",
            self.spec.name,
            len(inserts),
            len(modifies),
            len(deletes),
        )

    async def _upsert(self, session: Session, items: Sequence[entries.Writable], what: str) -> None:
        """Insert `items`, or modify them when the switch already holds them."""
        try:
            await session.write(entries.updates(p4r.Update.INSERT, items), what)
        except WriteError as exc:
            if not exc.only("ALREADY_EXISTS"):
                raise
            await session.write(entries.updates(p4r.Update.MODIFY, items), what)

    async def _serve_digests(self, session: Session) -> None:
        task = asyncio.create_task(self._digest_loop(session), name=f"digests-{self.spec.name}")
        self.controller.background.add(task)
        task.add_done_callback(self.controller.background.discard)

    async def _digest_loop(self, session: Session) -> None:
        schema = self.controller.schema
        digest_id = schema.digest(entries.NEW_DEVICE_DIGEST).id
        async for digest in session.digests():
            if digest.digest_id != digest_id:
                continue
            for item in digest.items:
                if len(item) < 2:
                    continue
                try:
                    await self.on_new_device(session, decode_mac(item[0]), decode_int(item[1]))
                except SwitchError as exc:
                    log.warning("switch=%s event=digest_failed error=%s", self.spec.name, exc)

    async def on_new_device(self, session: Session, mac: str, port: int) -> None:
        """A new-device digest: learn where the MAC is, register it if the policy says so."""
        schema = self.controller.schema
        items: list[p4r.TableEntry] = []
        if self.forwarding.learn(mac, port):
            items.append(entries.l2_entry(schema, mac, port))
        registry = self.controller.registry
        if self.controller.config.policy.allows(mac) and not registry.is_active(mac):
            try:
                row = registry.register(mac, source="digest", switch=self.spec.name, port=port)
            except RegistryFull as exc:
                log.warning("switch=%s event=registry_full %s", self.spec.name, exc)
            else:
                assert row.device_id is not None
                log.info(
                    "switch=%s event=registered mac=%s device_id=%d port=%d",
                    self.spec.name,
                    mac,
                    row.device_id,
                    port,
                )
                items.append(entries.device_entry(schema, mac, row.device_id))
        await self._upsert(session, items, "Write new device")

    async def remove_devices(self, macs: Sequence[str]) -> None:
        """Delete these devices' entries (eviction); a disconnected switch is re-synced later."""
        session = self.session
        if session is None or not self.programming or session.disconnected.is_set():
            return
        schema = self.controller.schema
        items = []
        for mac in macs:
            row = self.controller.registry.get(mac)
            if (
                row is not None
                and row.device_id is not None
                and row.switch in (None, self.spec.name)
            ):
                items.append(entries.device_entry(schema, mac, row.device_id))
        try:
            await session.write(entries.updates(p4r.Update.DELETE, items), "Write eviction")
        except WriteError as exc:
            if not exc.only("NOT_FOUND"):
                raise

    async def macs_by_id(self, session: Session) -> npt.NDArray[np.object_]:
        """The id → MAC map: from the registry, or read from the switch by a monitor."""
        if self.programming:
            return self.controller.registry.macs_by_id()
        schema = self.controller.schema
        table = schema.table(entries.DEVICE_TABLE)
        found = await session.read(
            [entries.table_wildcard(schema, entries.DEVICE_TABLE)], "Read devices"
        )
        macs = np.full(table.size, "", dtype=object)
        for e in found:
            entry = e.table_entry
            device_id = decode_int(entry.action.action.params[0].value)
            if 0 < device_id < len(macs):
                macs[device_id] = decode_mac(entry.match[0].exact.value)
        return macs

    async def poll(self, cycle: int) -> int:
        """Read the counter once and store the deltas; the number of rows, -1 if not connected."""
        session = self.session
        if session is None or session.disconnected.is_set():
            return -1
        try:
            values = await session.read_counter(self.controller.counter)
            macs = await self.macs_by_id(session)
        except SwitchError as exc:
            log.warning("switch=%s event=poll_failed error=%s", self.spec.name, exc)
            return -1
        now = time.time()
        result = self.collector.record(values, now, macs, self.controller.catalogue.names)
        self.polled_cycle = cycle
        self.controller.registry.touch({r.device for r in result.records}, now)
        if result.records or result.unregistered_packets:
            log.debug(
                "switch=%s event=poll unit=%d rows=%d unregistered_packets=%d",
                self.spec.name,
                result.unit,
                len(result.records),
                result.unregistered_packets,
            )
        return len(result.records)


class Controller:
    """The whole `svcfp run` process: storage, registry, catalogue and one worker per switch."""

    def __init__(self, config: RunConfig, on_unit_closed: UnitCallback | None = None) -> None:
        self.config = config
        self.on_unit_closed = on_unit_closed
        self.stats = RunStats()
        self.schema = P4Schema.load(config.p4info)
        self.counter = self.schema.counter(entries.COUNTER)
        self.max_services = entries.max_services(self.schema)
        self.max_devices = self.schema.table(entries.DEVICE_TABLE).size
        self.catalogue = Catalogue.load_or_default(config.catalogue)
        if self.catalogue.max_id >= self.max_services:
            raise InputError(
                f"catalogue {self.catalogue.source} has {self.catalogue.max_id} services; "
                f"the switch counts at most {self.max_services - 1}"
            )
        self.device_config = b""
        if config.bmv2_json is not None and not config.skip_config:
            try:
                self.device_config = config.bmv2_json.read_bytes()
            except OSError as exc:
                raise InputError(f"cannot read {config.bmv2_json}: {exc.strerror}") from exc
        static = load_devices_file(config.devices) if config.devices else []
        self.storage = Storage(config.db)
        try:
            self.storage.check_time_unit(config.time_unit)
            self.registry = Registry(self.storage, self.max_devices, config.capacity)
            if config.role == "primary":
                self.storage.put_services(self.catalogue.services)
                for device in static:
                    self.registry.register(
                        device.mac, device.label, "static", device.switch, device.port
                    )
        except BaseException:
            self.storage.close()
            raise
        self.live = (
            None
            if config.live is None
            else LiveIdentification(self.storage, config.live, config.time_unit)
        )
        self.workers = [SwitchWorker(spec, self) for spec in config.switches]
        for worker in self.workers:
            worker.forwarding.learn_all(
                (row.mac, row.port)
                for row in self.registry.for_switch(worker.spec.name)
                if row.port is not None
            )
        self.background: set[asyncio.Task[None]] = set()
        self.stop = asyncio.Event()
        self.cycle = 0

    async def run(self) -> RunStats:
        """Run until `stop` is set or the duration ends; the last poll is always flushed."""
        config = self.config
        tasks = [asyncio.create_task(w.run(), name=f"switch-{w.spec.name}") for w in self.workers]
        try:
            await asyncio.gather(*(w.ready.wait() for w in self.workers))
            for worker in self.workers:
                if worker.first_error is not None:
                    raise worker.first_error
            clock = UnitClock(config.time_unit, time.time())
            started = time.monotonic()
            while not self.stop.is_set():
                wait = config.interval
                if config.duration is not None:
                    left = config.duration - (time.monotonic() - started)
                    if left <= 0:
                        break
                    wait = min(wait, left)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self.stop.wait(), wait)
                await self.poll_all()
                self._evict()
                self._close_units(clock, time.time())
            if self.cycle == 0:
                await self.poll_all()
            self._close_units(clock, time.time() + config.time_unit)
            if config.export_dir is not None:
                self.export(config.export_dir, config.export_format)
        finally:
            for task in [*tasks, *self.background]:
                task.cancel()
            await asyncio.gather(*tasks, *self.background, return_exceptions=True)
            self.storage.close()
        return self.stats

    def export(self, folder: Path, file_format: str) -> None:
        """Write the stored activity, devices, fingerprints and decisions into `folder`."""
        folder.mkdir(parents=True, exist_ok=True)
        for table in ("activity", "devices", "fingerprints", "decisions"):
            rows = self.storage.export(table, folder / f"{table}.{file_format}")
            log.info("event=exported table=%s rows=%d folder=%s", table, rows, folder)

    async def poll_all(self) -> None:
        """One poll of every connected switch; then release ids whose eviction is complete."""
        self.cycle += 1
        rows = await asyncio.gather(*(w.poll(self.cycle) for w in self.workers))
        self.stats.polls += 1
        self.stats.rows += sum(r for r in rows if r > 0)
        polled_everywhere = min(w.polled_cycle for w in self.workers)
        for mac in self.registry.release_evicted(polled_everywhere):
            log.info("event=evicted mac=%s", mac)

    def _evict(self) -> None:
        idle = self.config.idle_timeout
        if idle is None or self.config.role != "primary":
            return
        leaving = [row.mac for row in self.registry.idle(time.time(), idle)]
        if not leaving:
            return
        # The entries go first; the ids are freed only after every switch was polled again.
        self.registry.begin_eviction(leaving, self.cycle)
        for worker in self.workers:
            task = asyncio.create_task(worker.remove_devices(leaving))
            self.background.add(task)
            task.add_done_callback(self.background.discard)

    def _close_units(self, clock: UnitClock, now: float) -> None:
        closed = clock.advance(now)
        if closed is None or (self.on_unit_closed is None and self.live is None):
            return
        table = self.storage.activity_table(closed[0], closed[1], self.config.time_unit)
        if self.live is not None:
            self.live.close_units(table, closed[1] + 1)
        if self.on_unit_closed is not None:
            self.on_unit_closed(table)


def log_unit(table: ActivityTable) -> None:
    """The default closed-unit callback of `svcfp run`: one log line per closed unit."""
    span = table.unit_range()
    log.info(
        "event=unit_closed units=%s devices=%d rows=%d",
        "-" if span is None else f"{span[0]}..{span[1]}",
        len(table.used_devices()),
        len(table),
    )


async def run_controller(config: RunConfig, on_unit_closed: UnitCallback | None = None) -> RunStats:
    """Run a controller with SIGINT/SIGTERM stopping it cleanly (last poll flushed)."""
    controller = Controller(config, on_unit_closed)
    loop = asyncio.get_running_loop()
    handled: list[signal.Signals] = []
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(sig, controller.stop.set)
            handled.append(sig)
    try:
        return await controller.run()
    finally:
        for sig in handled:
            loop.remove_signal_handler(sig)
