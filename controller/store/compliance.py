"""The MUD compliance findings of a controller database (table `mud_findings`).

One row per (device, type, service, direction): a later check of the same finding widens its
first and last unit and adds its units, packets and bytes, in one transaction, so a crash never
leaves half a check behind and a finding reads the same however many polls made it.
"""

from __future__ import annotations

from collections.abc import Iterable

from controller.mud.compliance import Finding
from controller.mud.profile import role_of
from controller.store.store import Store

_ADD = (
    "INSERT INTO mud_findings (device, type, service, direction, first_unit, last_unit, units, "
    "packets, bytes, updated_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?) "
    "ON CONFLICT (device, type, service, direction) DO UPDATE SET "
    "first_unit = CASE WHEN excluded.first_unit < mud_findings.first_unit "
    "THEN excluded.first_unit ELSE mud_findings.first_unit END, "
    "last_unit = CASE WHEN excluded.last_unit > mud_findings.last_unit "
    "THEN excluded.last_unit ELSE mud_findings.last_unit END, "
    "units = mud_findings.units + excluded.units, "
    "packets = mud_findings.packets + excluded.packets, "
    "bytes = mud_findings.bytes + excluded.bytes, "
    "updated_at = excluded.updated_at"
)
_COLUMNS = "device, type, service, direction, first_unit, last_unit, units, packets, bytes"


def add_findings(storage: Store, findings: Iterable[Finding], when: float) -> None:
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
        db.run_many(_ADD, rows)


def stored_findings(storage: Store) -> list[Finding]:
    """Every stored finding, by device, type, service and direction (none in a database read
    as it is that was written before findings were stored)."""
    if not storage._has_table("mud_findings"):
        return []
    with storage.transaction() as db:
        rows = db.rows(
            f"SELECT {_COLUMNS} FROM mud_findings ORDER BY device, type, service, direction"
        )
    return [Finding(r[0], r[1], r[2], role_of(r[3]), r[4], r[5], r[6], r[7], r[8]) for r in rows]
