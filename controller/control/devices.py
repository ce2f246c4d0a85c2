"""What an operator sees of and does to a controller's device registry, from its database.

`svcfp devices list` shows every registered device with its label, where it was seen and the
controller's latest verdict on it; `svcfp devices purge` forgets chosen devices (their activity
stays). Purge while the controller is stopped: it keeps its registry in memory, and on its next
start it removes the purged devices' entries from the switches.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from controller.base.errors import InputError
from controller.base.macs import is_unicast
from controller.base.p4info import normalize_mac
from controller.control.live import answering
from controller.store.records import DeviceRow
from controller.store.storage import is_url, open_reader, open_store
from controller.store.store import DEFAULT_DB_TIMEOUT, Store


@dataclass(frozen=True)
class DeviceView:
    """One registered device, with the controller's verdict over its decisions (if any)."""

    row: DeviceRow
    decisions: int
    answer: str | None
    similarity: float | None


def open_existing(
    db: Path | str, readonly: bool = False, db_timeout: float = DEFAULT_DB_TIMEOUT
) -> Store:
    """The database at `db`; InputError when there is none (not an empty new one). A SQLite
    file opened `readonly` is only read: nothing is created or migrated in it. A server is
    waited for at most `db_timeout` seconds at a time."""
    if not is_url(db) and not Path(db).is_file():
        raise InputError(f"{db}: no such database")
    return (open_reader if readonly else open_store)(db, timeout=db_timeout)


def list_devices(db: Path | str, db_timeout: float = DEFAULT_DB_TIMEOUT) -> list[DeviceView]:
    """Every device of the registry in `db`, evicted ones included, by MAC."""
    with open_existing(db, readonly=True, db_timeout=db_timeout) as storage:
        rows = storage.devices()
        decided = storage.decisions()
    views = []
    for row in rows:
        mine = [d for d in decided if d.device == row.mac]
        chosen = answering(mine)
        views.append(
            DeviceView(
                row,
                len(mine),
                None if chosen is None else chosen.label,
                None if chosen is None else chosen.similarity,
            )
        )
    return views


@dataclass(frozen=True)
class Purge:
    """Which devices to forget: these MACs, those registered from digests, those silent since
    before `idle_before` (epoch seconds), group or zero addresses. Any one matching is enough."""

    macs: tuple[str, ...] = ()
    from_digests: bool = False
    idle_before: float | None = None
    group: bool = False

    def __post_init__(self) -> None:
        if not (self.macs or self.from_digests or self.idle_before is not None or self.group):
            raise InputError("say which devices to purge: --mac, --from-digests, --idle or --group")

    def matches(self, row: DeviceRow) -> bool:
        """Whether `row` is to be forgotten."""
        return (
            row.mac in self.macs
            or (self.from_digests and row.source == "digest")
            or (self.idle_before is not None and row.last_seen < self.idle_before)
            or (self.group and not is_unicast(row.mac))
        )


def purge_devices(
    db: Path | str, purge: Purge, dry_run: bool = False, db_timeout: float = DEFAULT_DB_TIMEOUT
) -> list[DeviceRow]:
    """Forget the devices `purge` selects from the registry in `db`; returns them."""
    wanted = Purge(
        tuple(normalize_mac(m) for m in purge.macs),
        purge.from_digests,
        purge.idle_before,
        purge.group,
    )
    with open_existing(db, db_timeout=db_timeout) as storage:
        chosen = [row for row in storage.devices() if wanted.matches(row)]
        if not dry_run:
            storage.delete_devices(row.mac for row in chosen)
    return chosen


def missing(macs: Sequence[str], chosen: Sequence[DeviceRow]) -> list[str]:
    """MACs asked for by name that the registry does not hold."""
    held = {row.mac for row in chosen}
    return [mac for mac in (normalize_mac(m) for m in macs) if mac not in held]
