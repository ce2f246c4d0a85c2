"""Collector: deltas (incl. counter resets and switch restarts), attribution, units, baselines."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from controller.base.wire import CounterValues
from controller.control.collector import Collector, UnitClock, attribute, counter_deltas
from controller.engine.activity import ActivityRecord
from controller.store.storage import Baseline, Storage

S = 4  # services per device in these small counters
NAMES = ["other", "tcp/443", "udp/53", "udp/123"]


def values(cells: int, **set_cells: tuple[int, int]) -> CounterValues:
    result = CounterValues.zeros(cells)
    for key, (packets, counted) in set_cells.items():
        result.packets[int(key[1:])] = packets
        result.bytes[int(key[1:])] = counted
    return result


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Storage]:
    opened = Storage(tmp_path / "c.db")
    yield opened
    opened.close()


def macs(*pairs: tuple[int, str]) -> np.ndarray:
    table = np.full(4, "", dtype=object)
    for device_id, mac in pairs:
        table[device_id] = mac
    return table


def test_deltas_and_reset_cells() -> None:
    base = Baseline(np.array([5, 10, 0, 7]), np.array([500, 1000, 0, 700]))
    now = CounterValues(np.array([8, 3, 2, 7]), np.array([800, 300, 128, 700]))
    deltas = counter_deltas(base, now)
    assert deltas.packets.tolist() == [3, 3, 2, 0], "cell 1 went down: its new value is the delta"
    assert deltas.bytes.tolist() == [300, 300, 128, 0]
    assert deltas.resets == 1


def test_attribution_maps_cells_to_devices_and_services() -> None:
    deltas = counter_deltas(
        Baseline.zeros(16), values(16, c1=(9, 900), c5=(2, 200), c6=(1, 64), c10=(4, 40))
    )
    records, lost = attribute(deltas, 7, S, macs((1, "aa"), (2, "bb")), NAMES)
    # cell 1 = device 0 (unregistered): not attributable; cell 10 = device 2, service 2.
    assert records == [
        ActivityRecord("aa", 7, "tcp/443", 2, 200),
        ActivityRecord("aa", 7, "udp/53", 1, 64),
        ActivityRecord("bb", 7, "udp/53", 4, 40),
    ]
    assert lost == 9


def test_ids_without_a_device_are_not_attributed() -> None:
    deltas = counter_deltas(Baseline.zeros(16), values(16, c13=(3, 30)))
    records, lost = attribute(deltas, 0, S, macs((1, "aa")), NAMES)
    assert records == [] and lost == 3


def test_collector_stores_deltas_per_unit_and_survives_restart(store: Storage) -> None:
    table = macs((1, "aa"))
    collector = Collector("s1", store, 16, S, unit_seconds=10.0)
    collector.record(values(16, c5=(2, 200)), 101.0, table, NAMES)
    collector.record(values(16, c5=(5, 500), c6=(1, 80)), 109.0, table, NAMES)
    collector.record(values(16, c5=(6, 600), c6=(1, 80)), 111.0, table, NAMES)
    assert store.activity() == [
        ActivityRecord("aa", 10, "tcp/443", 5, 500),
        ActivityRecord("aa", 10, "udp/53", 1, 80),
        ActivityRecord("aa", 11, "tcp/443", 1, 100),
    ]
    # A new controller process picks up the stored baseline: the same counters add nothing.
    restarted = Collector("s1", store, 16, S, unit_seconds=10.0)
    result = restarted.record(values(16, c5=(6, 600), c6=(1, 80)), 112.0, table, NAMES)
    assert result.records == ()
    # The switch restarted: cell 5 dropped to 2, so those 2 packets are new.
    result = restarted.record(values(16, c5=(2, 120)), 113.0, table, NAMES)
    assert result.resets == 2 and result.records == (ActivityRecord("aa", 11, "tcp/443", 2, 120),)
    # A re-pushed pipeline zeroes counters: after reset() everything read is new.
    restarted.reset()
    restarted.record(values(16, c5=(1, 60)), 114.0, table, NAMES)
    assert store.activity(11, 11) == [ActivityRecord("aa", 11, "tcp/443", 4, 280)]


def test_reused_id_does_not_inherit_counts(store: Storage) -> None:
    collector = Collector("s1", store, 16, S, unit_seconds=10.0)
    collector.record(values(16, c5=(10, 1000)), 1.0, macs((1, "old")), NAMES)
    # id 1 passes to a new device; the old device's cell values are the baseline.
    collector.record(values(16, c5=(12, 1100)), 2.0, macs((1, "new")), NAMES)
    assert store.activity() == [
        ActivityRecord("new", 0, "tcp/443", 2, 100),
        ActivityRecord("old", 0, "tcp/443", 10, 1000),
    ]


def test_unit_clock_and_closed_activity(store: Storage) -> None:
    clock = UnitClock(10.0, start=105.0)
    assert clock.advance(109.9) is None
    assert clock.advance(131.0) == (10, 12)
    assert clock.advance(135.0) is None
    collector = Collector("s1", store, 16, S, unit_seconds=10.0)
    collector.record(values(16, c5=(2, 200)), 101.0, macs((1, "aa")), NAMES)
    collector.record(values(16, c5=(3, 300), c10=(1, 1)), 125.0, macs((1, "aa"), (2, "bb")), NAMES)
    table = store.activity_table(10, 12, 10.0)
    assert table.unit_seconds == 10.0
    assert list(table.records()) == [
        ActivityRecord("aa", 10, "tcp/443", 2, 200),
        ActivityRecord("aa", 12, "tcp/443", 1, 100),
        ActivityRecord("bb", 12, "udp/53", 1, 1),
    ]
