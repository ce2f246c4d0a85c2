"""The device registry: which MAC holds which switch device id, persistent in SQLite.

Ids run 1..MAX_DEVICES-1 (0 means "unregistered" in the data plane). An idle device can be evicted
to free its table entry and id, but only in two steps: `begin_eviction` takes it off the switch
while the collector still maps its id to it, and `release_evicted` frees the id once every switch
has been polled after the removal, so the cells' last values are the baseline the next owner's
deltas start from: the next owner never inherits the old owner's counts.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Literal, Protocol

import numpy as np
import numpy.typing as npt

from controller.base.errors import InputError, SvcfpError
from controller.base.fileio import csv_rows, read_text
from controller.base.p4info import normalize_mac
from controller.store.storage import DeviceRow

PolicyMode = Literal["all", "none", "allowlist"]
UNKNOWN = "unknown"


class DeviceStore(Protocol):
    """Where the registry keeps its rows: a `Store`, or the controller's storage thread."""

    def devices(self) -> list[DeviceRow]:
        """Every stored device."""
        ...

    def put_devices(self, rows: Iterable[DeviceRow]) -> None:
        """Insert or replace these rows."""
        ...


class RegistryFull(SvcfpError):
    """Every device id the registry may hand out is taken."""


@dataclass(frozen=True)
class RegisterPolicy:
    """Which MACs announced by new-device digests are registered automatically."""

    mode: PolicyMode
    allowlist: frozenset[str] = frozenset()

    @classmethod
    def parse(cls, mode: str, allowlist: Path | None = None) -> RegisterPolicy:
        """`all`, `none`, or `allowlist` with a file of MACs (one per line, # comments)."""
        if mode in ("all", "none"):
            return cls(mode)  # type: ignore[arg-type]
        if mode != "allowlist":
            raise InputError(f"register policy {mode!r}: choose all, none or allowlist")
        if allowlist is None:
            raise InputError("register policy allowlist needs an allowlist file")
        macs: set[str] = set()
        for number, line in enumerate(read_text(allowlist, "allowlist").splitlines(), 1):
            text = line.split("#", 1)[0].strip()
            if not text:
                continue
            try:
                macs.add(normalize_mac(text.split(",")[0].strip()))
            except InputError as exc:
                raise InputError(f"{allowlist}:{number}: {exc}") from None
        return cls("allowlist", frozenset(macs))

    def allows(self, mac: str) -> bool:
        """Whether a digest from `mac` registers it."""
        if self.mode == "all":
            return True
        if self.mode == "none":
            return False
        return mac in self.allowlist


@dataclass(frozen=True)
class StaticDevice:
    """A line of a devices file: `mac,label[,port[,switch]]`. The label `infrastructure` marks a
    host that is counted but not identified (a gateway, a server)."""

    mac: str
    label: str
    port: int | None = None
    switch: str | None = None


def load_devices_file(path: Path) -> list[StaticDevice]:
    """Parse a devices CSV (`mac,label[,port[,switch]]`, optional header, # comments)."""
    devices: list[StaticDevice] = []
    seen: set[str] = set()
    for number, row in enumerate(csv_rows(path, read_text(path, "devices file").splitlines()), 1):
        cells = [c.strip() for c in row]
        if not cells or not cells[0] or cells[0].startswith("#"):
            continue
        if number == 1 and cells[0].lower() == "mac":
            continue
        where = f"{path}:{number}"
        try:
            mac = normalize_mac(cells[0])
        except InputError as exc:
            raise InputError(f"{where}: {exc}") from None
        if mac in seen:
            raise InputError(f"{where}: {mac} is listed twice")
        seen.add(mac)
        label = cells[1] if len(cells) > 1 and cells[1] else UNKNOWN
        port: int | None = None
        if len(cells) > 2 and cells[2]:
            try:
                port = int(cells[2])
            except ValueError:
                raise InputError(f"{where}: port {cells[2]!r} is not a number") from None
            if not 0 <= port < 512:
                raise InputError(f"{where}: port {port} does not fit in 9 bits")
        switch = cells[3] if len(cells) > 3 and cells[3] else None
        devices.append(StaticDevice(mac, label, port, switch))
    return devices


class Registry:
    """MAC ↔ device id, with labels and first/last seen, backed by a `DeviceStore`."""

    def __init__(self, storage: DeviceStore, max_devices: int, capacity: int | None = None) -> None:
        if max_devices < 2:
            raise InputError(f"MAX_DEVICES {max_devices} leaves no device id to hand out")
        self.storage = storage
        self.max_devices = max_devices
        self.capacity = max_devices - 1 if capacity is None else capacity
        if not 1 <= self.capacity < max_devices:
            raise InputError(
                f"device capacity {capacity}: the device table has ids 1..{max_devices - 1}"
            )
        self._rows: dict[str, DeviceRow] = {row.mac: row for row in storage.devices()}
        self._evicting: dict[str, int] = {}

    # -- queries --------------------------------------------------------------------------------

    def get(self, mac: str) -> DeviceRow | None:
        """The device with this MAC, registered or evicted, or None."""
        return self._rows.get(mac)

    def active(self) -> list[DeviceRow]:
        """Devices holding a device id (being evicted excluded), by id."""
        rows = [r for r in self._rows.values() if self.is_active(r.mac)]
        return sorted(rows, key=lambda r: r.device_id or 0)

    def infrastructure(self) -> set[str]:
        """MACs labelled `infrastructure` (see `controller.store.records.INFRASTRUCTURE`)."""
        return {mac for mac, row in self._rows.items() if row.infrastructure}

    def rows(self) -> list[DeviceRow]:
        """Every device the registry knows, evicted ones included, by MAC."""
        return sorted(self._rows.values(), key=lambda r: r.mac)

    def for_switch(self, switch: str) -> list[DeviceRow]:
        """Active devices installed on `switch` (those without a home switch go everywhere)."""
        return [r for r in self.active() if r.switch in (None, switch)]

    def macs_by_id(self) -> npt.NDArray[np.object_]:
        """MAC of every device id ('' where none), evicting devices included: the collector map."""
        table = np.full(self.max_devices, "", dtype=object)
        for row in self._rows.values():
            if row.device_id is not None:
                table[row.device_id] = row.mac
        return table

    def __len__(self) -> int:
        return sum(1 for r in self._rows.values() if r.device_id is not None)

    # -- changes --------------------------------------------------------------------------------

    def is_active(self, mac: str) -> bool:
        """Whether `mac` holds a device id and is not being evicted."""
        row = self._rows.get(mac)
        return row is not None and row.device_id is not None and mac not in self._evicting

    def register(
        self,
        mac: str,
        label: str | None = None,
        source: str = "static",
        switch: str | None = None,
        port: int | None = None,
        now: float | None = None,
    ) -> DeviceRow:
        """Give `mac` a device id (or return its current one, updating label/port/switch).

        Raises `RegistryFull` when every id up to the capacity is taken.
        """
        mac = normalize_mac(mac)
        stamp = time.time() if now is None else now
        current = self._rows.get(mac)
        # A device back while being evicted keeps its id: it never left the collector's map.
        self._evicting.pop(mac, None)
        if current is not None and current.device_id is not None:
            updated = replace(
                current,
                label=current.label if label is None else label,
                port=current.port if port is None else port,
                switch=current.switch if switch is None else switch,
            )
            if updated != current:
                self._save(updated)
            return updated
        device_id = self._free_id(mac)
        row = DeviceRow(
            mac=mac,
            device_id=device_id,
            label=label if label is not None else (current.label if current else UNKNOWN),
            switch=switch,
            port=port,
            source=source,
            first_seen=current.first_seen if current else stamp,
            last_seen=stamp,
        )
        self._save(row)
        return row

    def _free_id(self, mac: str) -> int:
        used = {r.device_id for r in self._rows.values() if r.device_id is not None}
        if len(used) >= self.capacity:
            raise RegistryFull(
                f"device table full: {len(used)} of {self.capacity} device ids in use; "
                f"{mac} not registered"
            )
        for candidate in range(1, self.max_devices):
            if candidate not in used:
                return candidate
        raise RegistryFull(f"no free device id below MAX_DEVICES {self.max_devices} for {mac}")

    def _save(self, row: DeviceRow) -> None:
        self.storage.put_devices([row])
        self._rows[row.mac] = row

    def touch(self, macs: Iterable[str], when: float) -> None:
        """Record that these devices were active at `when` (storage is updated by the poll)."""
        for mac in macs:
            row = self._rows.get(mac)
            if row is not None and row.last_seen < when:
                self._rows[mac] = replace(row, last_seen=when)

    def idle(self, now: float, idle_seconds: float) -> list[DeviceRow]:
        """Automatically registered devices silent for more than `idle_seconds`."""
        return [
            r for r in self.active() if r.source != "static" and now - r.last_seen > idle_seconds
        ]

    def begin_eviction(self, macs: Sequence[str], cycle: int) -> None:
        """Mark devices as leaving: no longer installed, ids still mapped for the last deltas."""
        for mac in macs:
            if mac in self._rows and self._rows[mac].device_id is not None:
                self._evicting.setdefault(mac, cycle)

    def release_evicted(self, polled_cycle: int) -> list[str]:
        """Free the ids of devices whose removal began before `polled_cycle` finished everywhere."""
        done = [mac for mac, cycle in self._evicting.items() if cycle < polled_cycle]
        rows = [replace(self._rows[mac], device_id=None) for mac in done]
        if rows:
            self.storage.put_devices(rows)
        for row in rows:
            self._rows[row.mac] = row
            del self._evicting[row.mac]
        return done
