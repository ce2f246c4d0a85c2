"""Observing less: packet sampling of activity, to measure how identification holds up when a
device is seen through 1:N sampled flow records (IPFIX packet sampling) instead of the switch's
exact counters."""

from __future__ import annotations

import numpy as np

from controller.base.errors import InputError
from controller.engine.activity import ActivityTable


def sample_packets(table: ActivityTable, one_in: int, seed: int = 0) -> ActivityTable:
    """The activity a 1:`one_in` random packet sampler would have reported: each packet kept
    with probability 1/one_in (binomially, per row), bytes in proportion to the packets kept
    (the row's mean packet size stays), counts not scaled back. Rows that keep no packet
    vanish: a service used lightly in a unit may not be seen in it at all."""
    if one_in < 1:
        raise InputError(f"sampling 1:{one_in}: N must be at least 1")
    if one_in == 1:
        return table
    rng = np.random.default_rng(seed)
    kept = rng.binomial(table.packets, 1.0 / one_in)
    volume = np.rint(table.bytes * (kept / np.maximum(table.packets, 1))).astype(np.int64)
    return ActivityTable.from_arrays(
        devices=table.devices,
        services=table.services,
        device=table.device,
        unit=table.unit,
        service=table.service,
        packets=kept,
        bytes=volume,
        unit_seconds=table.unit_seconds,
    )
