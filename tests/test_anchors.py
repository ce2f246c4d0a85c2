"""Anchor baselines: 1-NN over log packets per service and the majority type, exact outcomes."""

from __future__ import annotations

import numpy as np
import pytest

from controller.engine.anchors import anchor_results, majority_type, nearest_log_packets
from controller.engine.fingerprints import FingerprintSet


def windows(services: tuple[str, ...], packets: list[list[int]]) -> FingerprintSet:
    counts = np.array(packets, dtype=np.int64)
    n = len(packets)
    usage = np.stack([(counts > 0).astype(np.int64), counts, counts * 100])
    return FingerprintSet(
        services=services,
        weights=(counts > 0).astype(np.float64),
        devices=tuple(f"d{i}" for i in range(n)),
        device=np.arange(n, dtype=np.int64),
        start=np.zeros(n, dtype=np.int64),
        end=np.ones(n, dtype=np.int64),
        converged=np.ones(n, dtype=bool),
        granularity=None,
        usage=usage,
    )


def test_nearest_in_log_packets_on_the_union_of_services() -> None:
    train = windows(("tcp/443", "udp/53"), [[100, 0], [0, 100], [1, 1]])
    # The test windows know a service the training ones never saw: it counts, as 0 for them.
    test = windows(("tcp/443", "udp/123"), [[80, 0], [0, 5], [1, 0]])
    assert nearest_log_packets(train, ["A", "B", "C"], test) == ["A", "C", "C"]


def test_ties_go_to_the_earlier_training_window() -> None:
    train = windows(("tcp/443", "udp/53"), [[9, 0], [0, 9]])
    test = windows(("tcp/443", "udp/53"), [[0, 0]])
    assert nearest_log_packets(train, ["B", "A"], test) == ["B"]


def test_majority_type_and_metrics() -> None:
    assert majority_type(["B", "A", "B", "A"], 2) == ["A", "A"]
    train = windows(("tcp/443", "udp/53"), [[100, 0], [0, 100], [0, 90]])
    test = windows(("tcp/443", "udp/53"), [[50, 0], [0, 60], [70, 0]])
    nearest, majority = anchor_results(train, ["A", "B", "B"], test, ["A", "B", "B"])
    assert (nearest.name, nearest.n_test) == ("1-NN log packets", 3)
    assert nearest.accuracy == pytest.approx(2 / 3)
    assert nearest.macro_f1 == pytest.approx((2 / 3 + 2 / 3) / 2)
    assert majority.name == "majority type"
    assert majority.accuracy == pytest.approx(2 / 3)
    lo, hi = nearest.accuracy_ci
    assert 0.0 < lo < 2 / 3 < hi < 1.0
