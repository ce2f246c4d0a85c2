"""A device's verdict: its accumulated answer when its decisions carry one, else the most
frequent label; the same in every reader of stored decisions (devices list, dashboard, the
alert watch resumed after a restart)."""

from __future__ import annotations

import asyncio
import math
from pathlib import Path

import pytest

from controller.control.alerts import BehaviourWatch
from controller.control.devices import list_devices
from controller.control.live import answering, verdict
from controller.engine.accumulate import Accumulator
from controller.store.storage import DecisionRecord, DeviceRow, Storage
from controller.web.data import DashboardData

PLUG = "02:00:00:00:00:21"
OLD = "02:00:00:00:00:22"
ALTERNATING = ["plug", "unknown", "plug", "unknown"]


def test_the_accumulated_answer_decides_and_the_most_frequent_label_without_one() -> None:
    # Without an accumulated answer: the latest of the most frequent labels (here a tie, so the
    # last window's "unknown").
    assert verdict(ALTERNATING) == 3
    # With one: the latest decision of that label.
    assert verdict(ALTERNATING, "plug") == 2
    # After a change of behaviour the answer is the new one, though older windows outnumber it.
    assert verdict(["camera"] * 5 + ["plug"] * 2, "plug") == 6
    # An answer none of the decisions has (they were not what it accumulated): the most frequent.
    assert verdict(["camera", "camera", "plug"], "hub") == 1
    with pytest.raises(ValueError, match="at least one decision"):
        verdict([], "plug")
    assert answering([]) is None


def test_half_unknown_windows_leave_a_known_answer() -> None:
    # What the accumulator answers after the alternating windows: unknown only when most are.
    accumulator = Accumulator(("plug", "camera"))
    beliefs = [
        accumulator.update(PLUG, unit, "plug", math.nan, label != "unknown")
        for unit, label in enumerate(ALTERNATING)
    ]
    assert [b.label for b in beliefs] == ["plug", "plug", "plug", "plug"]
    beliefs.append(accumulator.update(PLUG, 9, "plug", math.nan, False))
    assert beliefs[-1].label == "unknown"


def decided(device: str, labels: list[str], answers: list[str | None]) -> list[DecisionRecord]:
    out = []
    for unit, (label, answer) in enumerate(zip(labels, answers, strict=True)):
        why: dict[str, object] = {"best_type": "plug", "similarity": 0.8, "theta": 0.6}
        if answer is not None:
            why["accumulated"] = {"label": answer, "confidence": 0.9, "windows": unit + 1}
        out.append(
            DecisionRecord(device, 4 * unit, 4 * unit + 4, "G=4", label, 0.8, why, 10.0 + unit)
        )
    return out


def test_every_reader_of_stored_decisions_gives_the_same_verdict(tmp_path: Path) -> None:
    path = tmp_path / "run.db"
    with Storage(path) as storage:
        storage.put_devices(
            [
                DeviceRow(PLUG, 1, "unknown", "s1", 2, "digest", 1.0, 2.0),
                DeviceRow(OLD, 2, "unknown", "s1", 3, "digest", 1.0, 2.0),
            ]
        )
        # PLUG accumulated plug over its alternating windows; OLD's decisions were stored
        # without accumulated answers, so its verdict is the last of its tied labels.
        storage.add_results([], decided(PLUG, ALTERNATING, ["plug"] * 4), when=20.0)
        storage.add_results([], decided(OLD, ALTERNATING, [None] * 4), when=21.0)
    expected = {PLUG: "plug", OLD: "unknown"}

    assert {v.row.mac: v.answer for v in list_devices(path)} == expected

    data = DashboardData(path)
    try:
        overview = asyncio.run(data.call(data.overview))
        assert {d.row.mac: d.label for d in overview.devices} == expected
        assert (overview.identified, overview.unknown) == (1, 1)
        for mac, label in expected.items():
            page = asyncio.run(data.call(data.device, mac))
            assert page is not None and page.summary.label == label
            assert page.answer is not None and page.answer.record.label == label
    finally:
        data.close()

    with Storage(path) as storage:
        watch = BehaviourWatch(0.5, storage.decision_summaries())
    assert {mac: h.accumulated for mac, h in watch.devices.items()} == {PLUG: "plug", OLD: None}
    assert {
        mac: h.labels[verdict(h.labels, h.accumulated)] for mac, h in watch.devices.items()
    } == expected
