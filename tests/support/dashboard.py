"""A stored run the dashboard's tests serve: three devices, their decisions, an alert and a
switch's status, in a database of either backend; and how a test reads a device's row."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from controller.engine.activity import ActivityRecord, ActivityTable
from controller.store.storage import (
    AlertRecord,
    DecisionRecord,
    DeviceRow,
    FingerprintRecord,
    SwitchStatusRecord,
    open_store,
)

CAMERA = "02:00:00:00:00:0a"
HUB = "02:00:00:00:00:0b"
QUIET = "02:00:00:00:00:0c"
NOW = 1_800_000_000.0
UNIT = 10.0


def explanation(best: str, similarity: float) -> dict[str, Any]:
    """A decision's explanation: `best` at `similarity`, one service matched, one unexpected."""
    return {
        "similarity": similarity,
        "numerator": similarity,
        "denominator": 1.0,
        "matched": [
            {"service": "tcp/443", "observed": 1.0, "reference": 1.0, "numerator": 1.0,
             "denominator": 1.0, "share": similarity}
        ],
        "unexpected": [
            {"service": "udp/1900", "observed": 0.5, "reference": 0.0, "numerator": 0.0,
             "denominator": 0.5, "share": 0.0}
        ],
        "missing": [],
        "best_type": best,
        "theta": 0.6,
        "runner_up": "plug",
        "runner_up_similarity": 0.2,
        "reference": "ref@0-8",
        "siblings": ["camera-v2"] if best == "camera" else [],
        "accumulated": {"label": best if similarity > 0.6 else "unknown", "confidence": 0.97,
                        "windows": 3, "changed": False, "previous": best},
    }  # fmt: skip


def stored_run(db: Path | str) -> None:
    """Three devices (a camera, a hub nobody knows with an alert, a silent one), activity of the
    camera in four units, one switch's status."""
    unit = int(NOW // UNIT)
    with open_store(db) as storage:
        storage.check_time_unit(UNIT)
        storage.put_devices(
            [
                DeviceRow(CAMERA, 1, "unknown", "s1", 1, "static", NOW - 100, NOW),
                DeviceRow(HUB, 2, "unknown", "s1", 2, "digest", NOW - 90, NOW),
                DeviceRow(QUIET, None, "lab-printer", "s1", 3, "static", NOW - 80, NOW - 50),
            ]
        )
        storage.add_activity(
            ActivityTable.from_records(
                [ActivityRecord(CAMERA, unit - 3 + i, "tcp/443", 5 + i, 500) for i in range(4)]
                + [ActivityRecord(CAMERA, unit, "udp/53", 1, 80)],
                unit_seconds=UNIT,
            )
        )
        storage.add_results(
            [FingerprintRecord(CAMERA, unit - 3, unit + 1, "G=4", {"tcp/443": 1.0}, True)],
            [
                DecisionRecord(CAMERA, unit - 3, unit + 1, "G=4", "camera", 0.91,
                               explanation("camera", 0.91), NOW - 5),
                DecisionRecord(HUB, unit - 3, unit + 1, "G=4", "unknown", 0.31,
                               explanation("camera", 0.31), NOW - 4),
            ],
        )  # fmt: skip
        storage.add_alerts(
            [
                AlertRecord(
                    "new_unknown_device",
                    "warning",
                    HUB,
                    "s1",
                    "unknown device: best type camera at similarity 0.31 < θ 0.60",
                    {"similarity": 0.31},
                    NOW - 4,
                )
            ]
        )
        storage.put_switch_status(
            SwitchStatusRecord(
                "s1",
                {
                    "grpc_addr": "127.0.0.1:9559",
                    "connected": True,
                    "polls": 42,
                    "poll_failures": 0,
                    "last_poll_seconds": 0.0123,
                    "mean_poll_seconds": 0.0101,
                    "last_poll_at": NOW,
                    "last_read_bytes": 4096,
                    "read_bytes": 42 * 4096,
                    "digests": 3,
                    "registered": 1,
                    "refusals": {"rate_limited": 2},
                    "write_failures": 0,
                    "errors": {},
                    "tables": {"devices": [2, 1023], "l2": [3, 1024]},
                },
                NOW,
            )
        )


def cells(html: str, mac: str) -> str:
    """The text of the devices page's row of `mac`, spaces collapsed."""
    row = re.search(rf'<tr [^>]*data-mac="{mac}">(.*?)</tr>', html, re.S)
    assert row is not None, mac
    return re.sub(r"\s+", " ", re.sub(r"<[^>]+>", " ", row.group(1))).strip()
