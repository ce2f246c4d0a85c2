"""One switch kept programmed and readable: its session, table sync, digests and polls.

The worker connects, arbitrates, pushes or attaches to the pipeline, installs the registry,
catalogue and forwarding entries, and serves new-device digests; when the session drops it
reconnects and does it all again. Its polls are made by the controller loop
(controller/control/controller.py), which says which unit each poll's deltas belong to.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np
import numpy.typing as npt
from finsy.proto import p4r

from controller.base.errors import SvcfpError, SwitchError
from controller.base.p4info import decode_int, decode_mac
from controller.base.wire import decode_counter_read
from controller.control.admission import Admission
from controller.control.alerts import make_alert
from controller.control.collector import Collector
from controller.control.config import SwitchSpec
from controller.control.registry import RegistryFull
from controller.p4rt import entries
from controller.p4rt.forwarding import Forwarding
from controller.p4rt.session import Session, SwitchTarget, WriteError
from controller.store.records import SwitchStatusRecord

if TYPE_CHECKING:
    from controller.control.controller import Controller

log = logging.getLogger(__name__)


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
            tls=config.tls_of(spec),
        )
        self.forwarding = Forwarding(
            spec.ports,
            spec.l2,
            config.tap_of(spec),
            config.cpu_port_of(spec),
            capacity=controller.schema.table(entries.L2_TABLE).size,
        )
        self.telemetry = controller.telemetry.switch(spec.name, spec.grpc_addr)
        self.admission = Admission(
            spec.name,
            config.register_rate_of(spec),
            on_refusal=self._refused,
            on_storm=self._storm,
        )
        # When the session was lost (epoch seconds), until it is back.
        self.lost_at: float | None = None
        # Whether it was lost because the switch stopped answering (keepalive), until it is back.
        self.silent = False
        store = controller.store
        self.collector = store.run(
            Collector,
            spec.name,
            store.storage,
            controller.counter.size,
            controller.max_services,
            config.time_unit,
        )
        self.session: Session | None = None
        # The session being opened and set up, until it is ready.
        self._opening: Session | None = None
        self.ready = asyncio.Event()
        self.polled_cycle = -1
        self.first_error: SvcfpError | None = None

    @property
    def step(self) -> str:
        """What the switch's set-up is doing ("pushing the pipeline"), as errors name it."""
        if self._opening is not None:
            return self._opening.step
        return "waiting to reconnect" if self.session is None else "set up"

    @property
    def programming(self) -> bool:
        """Whether this controller writes to the switch (primary) or only reads (monitor)."""
        return self.controller.config.role == "primary"

    async def run(self) -> None:
        """Connect, program, serve digests; reconnect after every disconnect until cancelled.

        A failure before the first session was ready is kept in `first_error` and ends the
        worker: the controller reports it. Later ones are logged and retried.
        """
        config = self.controller.config
        while True:
            try:
                # A bounded run does not wait for a switch's set-up longer than it runs.
                self._opening = Session(
                    self.target, config.connect_timeout, config.log_dir, until=self.controller.end
                )
                async with self._opening as session:
                    await self._setup(session)
                    # Polls have the controller loop's own bounds.
                    session.until = None
                    self._opening = None
                    self.session = session
                    self.ready.set()
                    stats = self.controller.stats
                    stats.connects[self.spec.name] = stats.connects.get(self.spec.name, 0) + 1
                    self._connected()
                    if self.programming:
                        self._serve_digests(session)
                    await session.disconnected.wait()
                    log.warning(
                        "switch=%s event=disconnected reason=%r",
                        self.spec.name,
                        session.disconnect_reason,
                    )
                    self.silent = session.stopped_answering
                    self._lost(session.disconnect_reason or "disconnected")
            except SvcfpError as exc:
                if not self.ready.is_set() and self.first_error is None:
                    self.first_error = exc
                    self.ready.set()
                    return
                self.telemetry.errors["session_failed"] += 1
                log.warning("switch=%s event=session_failed error=%s", self.spec.name, exc)
            finally:
                self.session = None
                self._opening = None
            await asyncio.sleep(config.reconnect_delay)

    # -- what operators are told: connection state, refusals, storms ----------------------------

    def _connected(self) -> None:
        telemetry = self.telemetry
        telemetry.connected = True
        telemetry.connects += 1
        self.silent = False
        if self.lost_at is not None:
            down = time.time() - self.lost_at
            self.lost_at = None
            self.controller.alerts.raise_alert(
                make_alert(
                    "switch_regained",
                    f"switch {self.spec.name} ({self.spec.grpc_addr}) is back after {down:.1f} s",
                    time.time(),
                    switch=self.spec.name,
                    details={"down_seconds": down},
                )
            )
        self.store_status()

    def _lost(self, reason: str) -> None:
        self.telemetry.connected = False
        self.lost_at = time.time()
        self.controller.alerts.raise_alert(
            make_alert(
                "switch_lost",
                f"switch {self.spec.name} ({self.spec.grpc_addr}) lost: {reason}",
                self.lost_at,
                switch=self.spec.name,
                details={"reason": reason},
            )
        )
        self.store_status()

    def _refused(self, reason: str) -> None:
        self.telemetry.refusals[reason] += 1

    def _storm(self, port: int, mac: str) -> None:
        rate = self.admission.rate
        self.controller.alerts.raise_alert(
            make_alert(
                "registration_storm",
                f"switch {self.spec.name} port {port}: more than {rate.count} new MACs in "
                f"{rate.seconds:g} s (latest {mac}); further ones are ignored until the "
                "interval ends",
                time.time(),
                device=None,
                switch=self.spec.name,
                details={"port": port, "mac": mac, "count": rate.count, "seconds": rate.seconds},
            )
        )

    def store_status(self, now: float | None = None) -> None:
        """Queue this switch's latest state for the database (what dashboards of stored runs
        show)."""
        stamp = time.time() if now is None else now
        store = self.controller.store
        store.submit(
            store.storage.put_switch_status,
            SwitchStatusRecord(self.spec.name, self.telemetry.status(), stamp),
        )

    def _occupancy(self) -> dict[str, tuple[int, int]]:
        controller = self.controller
        schema = controller.schema
        devices = sum(1 for r in controller.registry.for_switch(self.spec.name) if r.device_id)
        return {
            "devices": (devices, controller.max_devices - 1),
            "l2": (
                len(self.forwarding.table()),
                schema.table(entries.L2_TABLE).size
                if self.forwarding.capacity is None
                else self.forwarding.capacity,
            ),
            **{
                name.rpartition(".")[2]: (count, schema.table(name).size)
                for name, count in zip(
                    entries.SERVICE_TABLES,
                    (
                        len(controller.catalogue.dst_services()),
                        len(controller.catalogue.src_services()),
                    ),
                    strict=True,
                )
            },
        }

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
            await self.controller.store.call(self.collector.reset)
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
            for e in await session.read(wildcard, "Read tables", "reading table entries")
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
        await session.write(updates, "Write tables", "writing table entries")
        await self._upsert(
            session, [entries.digest_entry(schema)], "digest config", "writing the digest config"
        )
        flood = self.forwarding.flood(schema)
        if flood is not None:
            await self._upsert(session, [flood], "flood group", "writing the flood group")
        log.info(
            "switch=%s event=synced inserted=%d modified=%d deleted=%d",
            self.spec.name,
            len(inserts),
            len(modifies),
            len(deletes),
        )

    async def _upsert(
        self,
        session: Session,
        items: Sequence[entries.Writable],
        what: str,
        step: str | None = None,
    ) -> None:
        """Insert `items`, or modify them when the switch already holds them (`what` and
        `step` as `Session.write` takes them)."""
        try:
            await session.write(entries.updates(p4r.Update.INSERT, items), what, step)
        except WriteError as exc:
            if not exc.only("ALREADY_EXISTS"):
                raise
            await session.write(entries.updates(p4r.Update.MODIFY, items), what, step)

    def _serve_digests(self, session: Session) -> None:
        self.controller.spawn(self._digest_loop(session), f"digests-{self.spec.name}")

    async def _digest_loop(self, session: Session) -> None:
        schema = self.controller.schema
        digest_id = schema.digest(entries.NEW_DEVICE_DIGEST).id
        async for digest in session.digests():
            if digest.digest_id != digest_id:
                continue
            for item in digest.items:
                if len(item) < 2:
                    continue
                self.telemetry.digests += 1
                try:
                    await self.on_new_device(session, decode_mac(item[0]), decode_int(item[1]))
                except SwitchError as exc:
                    if isinstance(exc, WriteError):
                        self.telemetry.write_failures += 1
                    else:
                        self.telemetry.errors["digest_failed"] += 1
                    log.warning("switch=%s event=digest_failed error=%s", self.spec.name, exc)

    async def on_new_device(self, session: Session, mac: str, port: int) -> None:
        """A new-device digest: learn where the MAC is, register it if the policy says so.

        Group and zero source addresses, and MACs past their port's rate limit, are ignored.
        """
        if not self.admission.admit(mac, port):
            return
        schema = self.controller.schema
        items: list[p4r.TableEntry] = []
        if self.forwarding.learn(mac, port):
            items.append(entries.l2_entry(schema, mac, port))
        elif self.forwarding.full and mac not in self.forwarding.table():
            self.admission.full(
                "l2_table_full",
                f"with {self.forwarding.capacity} entries: {mac} on port {port} is flooded, "
                "not learned",
            )
        registry = self.controller.registry
        if self.controller.config.policy.allows(mac) and not registry.is_active(mac):
            try:
                row = registry.register(mac, source="digest", switch=self.spec.name, port=port)
            except RegistryFull as exc:
                self._refused("registry_full")
                self.admission.full(
                    "registry_full",
                    f"{exc}; new devices are counted as unregistered (said again once ids are "
                    "free)",
                )
            else:
                self.admission.room("registry_full")
                self.telemetry.registered += 1
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
                self.telemetry.write_failures += 1
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

    async def poll(self, cycle: int, unit: int | None = None) -> int:
        """Read the counter once and store the deltas (in `unit`, or the unit of the moment of
        the read); the number of rows, -1 if not connected.

        The deltas, their attribution and the transaction run in the storage thread.
        """
        session = self.session
        if session is None or session.disconnected.is_set():
            return -1
        counter = self.controller.counter
        started = time.perf_counter()
        try:
            chunks = await session.read_counter_raw(counter)
            values = decode_counter_read(
                chunks, counter.id, counter.size, session.target.describe()
            )
            macs = await self.macs_by_id(session)
        except SwitchError as exc:
            self.telemetry.poll_failures += 1
            self.telemetry.errors["poll_failed"] += 1
            log.warning("switch=%s event=poll_failed error=%s", self.spec.name, exc)
            return -1
        seconds = time.perf_counter() - started
        now = time.time()
        result = await self.controller.store.call(
            self.collector.record, values, now, macs, self.controller.catalogue.names, unit
        )
        self.polled_cycle = cycle
        self.controller.registry.touch({r.device for r in result.records}, now)
        telemetry = self.telemetry
        telemetry.polled(
            seconds,
            sum(len(c) for c in chunks),
            len(result.records),
            sum(r.packets for r in result.records),
            now,
        )
        telemetry.unregistered_packets += result.unregistered_packets
        telemetry.tables = self._occupancy()
        self.store_status(now)
        if result.records or result.unregistered_packets:
            log.debug(
                "switch=%s event=poll unit=%d rows=%d unregistered_packets=%d",
                self.spec.name,
                result.unit,
                len(result.records),
                result.unregistered_packets,
            )
        return len(result.records)
