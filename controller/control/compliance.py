"""MUD compliance of live devices: each closed range of units checked against the profile of the
type each device is identified as, the findings logged and stored.

A device's type is the verdict of its decisions so far (`controller.control.live.verdict`: its
accumulated answer, which a window that alone looks unknown or like another type does not
change). It is checked from the window that first gave it a type with a profile: that window's
earlier units are read back from the database once, later units as they close. So every unit of
a typed device is checked once, and a device whose verdict changes is checked against the new
type's profile from then on (findings are kept per type).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence

from controller.control.live import answering
from controller.engine.accumulate import Belief
from controller.engine.activity import ActivityTable
from controller.engine.catalogue import Catalogue
from controller.engine.identify import Decision
from controller.mud.compliance import Finding, check_activity
from controller.mud.profile import MudProfiles
from controller.store.compliance import add_findings
from controller.store.records import DecisionRecord
from controller.store.store import Store

log = logging.getLogger(__name__)


class LiveCompliance:
    """Checks closed units against MUD profiles; one per controller."""

    def __init__(self, storage: Store, profiles: MudProfiles) -> None:
        self.storage = storage
        self.profiles = profiles
        # A restarted controller takes each device's type from its stored decisions.
        stored: dict[str, list[DecisionRecord]] = {}
        for d in storage.decisions():
            stored.setdefault(d.device, []).append(d)
        self.types = {
            device: answer.label
            for device, mine in stored.items()
            if (answer := answering(mine)) is not None
        }
        services = storage.services()
        self.catalogue = Catalogue(tuple(services)) if services else None

    def close_units(
        self,
        table: ActivityTable,
        decisions: Sequence[Decision],
        first_unit: int,
        beliefs: Sequence[Belief | None],
    ) -> list[Finding]:
        """Check `table` (units from `first_unit` on) after `decisions`, and the earlier units
        of the windows that gave a device its type; store and log what is not allowed.
        `beliefs`: each decision's device's accumulated answer after it, which is then its
        type (so one odd or unknown window does not move the profile it is checked against);
        a None belief (no references' types to accumulate) leaves the decision's own label."""
        known = set(self.profiles.types)
        parts = [table]
        for d, belief in zip(decisions, beliefs, strict=True):
            label = d.label if belief is None else belief.label
            if label in known and self.types.get(d.device) != label and d.start_unit < first_unit:
                earlier = self.storage.activity_table(d.start_unit, first_unit - 1)
                parts.append(earlier.select(devices=[d.device]))
            self.types[d.device] = label
        checked = ActivityTable.concat(parts) if len(parts) > 1 else table
        findings = check_activity(checked, self.types, self.profiles, self.catalogue)
        if not findings:
            return []
        add_findings(self.storage, findings, time.time())
        ids = {row.mac: row.device_id for row in self.storage.devices()}
        for f in findings:
            log.warning(
                "event=mud-violation device=%s mac=%s type=%s service=%s units=%d..%d "
                "packets=%d bytes=%d",
                "-" if ids.get(f.device) is None else ids[f.device],
                f.device,
                f.type,
                f.service,
                f.first_unit,
                f.last_unit,
                f.packets,
                f.bytes,
            )
        return findings
