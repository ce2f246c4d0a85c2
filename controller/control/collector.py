"""Counter reads → per-cell deltas → per-unit activity.

The switch's counters are never reset (BMv2 cannot reset a whole array), so every poll is
compared with the previous one (the baseline). A cell whose value went *down* belongs to a switch
that restarted: its whole new value is the delta. A session that had to re-push the pipeline also
means fresh counters, and `reset` re-baselines to zero. The baseline is stored in the same
transaction as the activity it produced, so a restarted controller neither loses nor repeats a
poll.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from controller.base.errors import SwitchError
from controller.base.wire import CounterValues
from controller.engine.activity import ActivityRecord
from controller.store.records import Baseline
from controller.store.store import Store

log = logging.getLogger(__name__)

Int64Array = npt.NDArray[np.int64]


@dataclass(frozen=True)
class Deltas:
    """What each cell counted since the baseline, and how many cells were found reset."""

    packets: Int64Array
    bytes: Int64Array
    resets: int


def counter_deltas(baseline: Baseline, values: CounterValues) -> Deltas:
    """Per-cell increase from `baseline` to `values`; a cell that went down counts from zero."""
    if len(values.packets) != len(baseline.packets):
        raise SwitchError(
            f"counter has {len(values.packets)} cells, baseline {len(baseline.packets)}"
        )
    reset = (values.packets < baseline.packets) | (values.bytes < baseline.bytes)
    packets = np.where(reset, values.packets, values.packets - baseline.packets)
    counted = np.where(reset, values.bytes, values.bytes - baseline.bytes)
    return Deltas(packets, counted, int(np.count_nonzero(reset)))


@dataclass(frozen=True)
class PollResult:
    """One poll's outcome: activity rows stored, and what could not be attributed."""

    unit: int
    records: tuple[ActivityRecord, ...]
    resets: int
    unregistered_packets: int


def attribute(
    deltas: Deltas,
    unit: int,
    max_services: int,
    macs_by_id: npt.NDArray[np.object_],
    service_names: Sequence[str],
) -> tuple[list[ActivityRecord], int]:
    """Activity rows of one unit from cell deltas; also the packets of unregistered devices.

    Cell `device_id * max_services + service_id`; device 0 and ids without a MAC are not
    attributable to a device.
    """
    cells = np.flatnonzero(deltas.packets > 0)
    device_ids = cells // max_services
    service_ids = cells % max_services
    macs = macs_by_id[np.minimum(device_ids, len(macs_by_id) - 1)]
    known = (device_ids > 0) & (device_ids < len(macs_by_id)) & (macs != "")
    lost = int(deltas.packets[cells[~known]].sum())
    names = np.asarray([*service_names, "other"], dtype=object)
    service_ids = np.where(service_ids < len(service_names), service_ids, len(service_names))
    keep = cells[known]
    records = [
        ActivityRecord(str(mac), unit, str(service), int(p), int(b))
        for mac, service, p, b in zip(
            macs[known],
            names[service_ids[known]],
            deltas.packets[keep],
            deltas.bytes[keep],
            strict=True,
        )
    ]
    return records, lost


class Collector:
    """Turns successive counter reads of one switch into stored activity."""

    def __init__(
        self,
        switch: str,
        storage: Store,
        cells: int,
        max_services: int,
        unit_seconds: float,
    ) -> None:
        if not unit_seconds > 0 or not math.isfinite(unit_seconds):
            raise SwitchError(f"time unit must be a positive number of seconds: {unit_seconds}")
        self.switch = switch
        self.storage = storage
        self.cells = cells
        self.max_services = max_services
        self.unit_seconds = unit_seconds
        stored = storage.baseline(switch, cells)
        self.baseline = stored if stored is not None else Baseline.zeros(cells)

    def reset(self) -> None:
        """The switch's counters start from zero again (pipeline re-pushed after a restart)."""
        self.baseline = Baseline.zeros(self.cells)

    def unit_of(self, when: float) -> int:
        """The time unit `when` (epoch seconds) falls in."""
        return math.floor(when / self.unit_seconds)

    def record(
        self,
        values: CounterValues,
        when: float,
        macs_by_id: npt.NDArray[np.object_],
        service_names: Sequence[str],
        unit: int | None = None,
    ) -> PollResult:
        """Store the activity since the last poll and move the baseline.

        The activity goes to `unit`, the unit the poll interval lies in (see
        controller/control/schedule.py), or without one to the unit of `when`.
        """
        deltas = counter_deltas(self.baseline, values)
        if deltas.resets:
            log.warning(
                "switch=%s event=counter_reset cells=%d: counting their new values in full",
                self.switch,
                deltas.resets,
            )
        if unit is None:
            unit = self.unit_of(when)
        records, lost = attribute(deltas, unit, self.max_services, macs_by_id, service_names)
        # A read's arrays are never written to again: they become the baseline without a copy.
        self.storage.record_poll(self.switch, values, records, when)
        self.baseline = values
        return PollResult(unit, tuple(records), deltas.resets, lost)


class UnitClock:
    """Tracks the open time unit and says which units a moment in time has closed."""

    def __init__(self, unit_seconds: float, start: float) -> None:
        self.unit_seconds = unit_seconds
        self.open_unit = math.floor(start / unit_seconds)

    def advance(self, now: float) -> tuple[int, int] | None:
        """(first, last) closed unit when `now` is past the open unit, else None."""
        current = math.floor(now / self.unit_seconds)
        if current <= self.open_unit:
            return None
        closed = (self.open_unit, current - 1)
        self.open_unit = current
        return closed
