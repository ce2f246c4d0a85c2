"""The MUD compliance findings of a controller database (table `mud_findings`).

One row per (device, type, service, direction): a later check of the same finding widens its
first and last unit and adds its units, packets and bytes, in one transaction, so a crash never
leaves half a check behind and a finding reads the same however many polls made it.
"""

from __future__ import annotations

from collections.abc import Iterable

from controller.mud.compliance import Finding
from controller.mud.profile import role_of
from controller.store.storage import Storage

_SCHEMA = """
CREATE TABLE IF NOT EXISTS mud_findings (
    device TEXT NOT NULL,
    type TEXT NOT NULL,
    service TEXT NOT NULL,
    direction TEXT NOT NULL,
    first_unit INTEGER NOT NULL,
    last_unit INTEGER NOT NULL,
    units INTEGER NOT NULL,
    packets INTEGER NOT NULL,
    bytes INTEGER NOT NULL,
    updated_at REAL NOT NULL,
    PRIMARY KEY (device, type, service, direction)
)
"""
_ADD = (
    "INSERT INTO mud_findings (device, type, service, direction, first_unit, last_unit, units, "
    "packets, bytes, updated_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?) "
    "ON CONFLICT (device, type, service, direction) DO UPDATE SET "
    "first_unit = min(first_unit, excluded.first_unit), "
    "last_unit = max(last_unit, excluded.last_unit), units = units + excluded.units, "
    "packets = packets + excluded.packets, bytes = bytes + excluded.bytes, "
    "updated_at = excluded.updated_at"
)
_COLUMNS = "device, type, service, direction, first_unit, last_unit, units, packets, bytes"


def add_findings(storage: Storage, findings: Iterable[Finding], when: float) -> None:
    """Store findings, merged into those of the same key already stored (one transaction)."""
    rows = [
        (
            f.device,
            f.type,
            f.service,
            f.role or "",
            f.first_unit,
            f.last_unit,
            f.units,
            f.packets,
            f.bytes,
            when,
        )
        for f in findings
    ]
    with storage.transaction() as db:
        db.execute(_SCHEMA)
        db.executemany(_ADD, rows)


def stored_findings(storage: Storage) -> list[Finding]:
    """Every stored finding, by device, type, service and direction."""
    with storage.transaction() as db:
        db.execute(_SCHEMA)
        rows = db.execute(
            f"SELECT {_COLUMNS} FROM mud_findings ORDER BY device, type, service, direction"
        ).fetchall()
    return [Finding(r[0], r[1], r[2], role_of(r[3]), r[4], r[5], r[6], r[7], r[8]) for r in rows]
