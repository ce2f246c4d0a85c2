"""Anchor baselines: simple classifiers an evaluation runs on the method's own training and test
windows, so that the method's numbers stand next to what a plain approach reaches.

- `1-NN log packets`: each window is the vector of log(1 + packets) per service; a test window
  takes the type of the training window nearest in Euclidean distance (ties: the earlier row).
- `majority type`: every test window is called the type with the most training windows (ties:
  the first name) — the floor any classifier must clear.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence

import numpy as np

from controller.engine.fingerprints import FingerprintSet
from controller.engine.metrics import accuracy, macro_f1, wilson_interval
from controller.engine.representation import FloatArray
from controller.engine.results import AnchorResult

ANCHORS = ("1-NN log packets", "majority type")
BLOCK_ROWS = 64
"""Test rows whose distances to every training row are computed at once: a block of distances
to tens of thousands of training rows stays in cache for the passes that finish it (512 rows
took twice as long on 19k × 19k windows)."""


def log_packets(fps: FingerprintSet, axis: Sequence[str]) -> FloatArray:
    """log(1 + packets) per service of `axis` for every row (services not in `fps` are 0)."""
    if fps.usage is None:
        raise ValueError("anchor baselines need fingerprints with their usage")
    column = {name: i for i, name in enumerate(fps.services)}
    out = np.zeros((len(fps), len(axis)), dtype=np.float64)
    for j, name in enumerate(axis):
        i = column.get(name)
        if i is not None:
            out[:, j] = np.log1p(fps.usage[1][:, i].astype(np.float64))
    return out


def nearest_log_packets(
    train: FingerprintSet, train_labels: Sequence[str], test: FingerprintSet
) -> list[str]:
    """The `1-NN log packets` anchor's type for every test row."""
    if not len(test):
        return []
    axis = tuple(sorted(set(train.services) | set(test.services)))
    refs = log_packets(train, axis)
    queries = log_packets(test, axis)
    ref_norms = (refs**2).sum(axis=1)
    query_norms = (queries**2).sum(axis=1)
    columns = np.ascontiguousarray(refs.T)
    buffer = np.empty((min(BLOCK_ROWS, len(test)), len(refs)))
    nearest = np.empty(len(test), dtype=np.int64)
    for lo in range(0, len(test), BLOCK_ROWS):
        block = queries[lo : lo + BLOCK_ROWS]
        # |q|² − 2 q·r + |r|², in place.
        distance = buffer[: len(block)]
        np.matmul(block, columns, out=distance)
        distance *= -2.0
        distance += query_norms[lo : lo + BLOCK_ROWS, None]
        distance += ref_norms
        nearest[lo : lo + BLOCK_ROWS] = np.argmin(distance, axis=1)
    return [train_labels[i] for i in nearest.tolist()]


def majority_type(train_labels: Sequence[str], n_test: int) -> list[str]:
    """The `majority type` anchor's type for every one of `n_test` rows."""
    counts = Counter(train_labels)
    top = max(sorted(counts), key=lambda t: counts[t])
    return [top] * n_test


def anchor_results(
    train: FingerprintSet,
    train_labels: Sequence[str],
    test: FingerprintSet,
    truth: Sequence[str],
) -> tuple[AnchorResult, ...]:
    """Closed-set accuracy (with its Wilson interval) and macro-F1 of every anchor."""
    predictions = {
        "1-NN log packets": nearest_log_packets(train, train_labels, test),
        "majority type": majority_type(train_labels, len(test)),
    }
    out = []
    for name in ANCHORS:
        predicted = predictions[name]
        right = sum(t == p for t, p in zip(truth, predicted, strict=True))
        out.append(
            AnchorResult(
                name=name,
                n_test=len(truth),
                accuracy=accuracy(truth, predicted),
                macro_f1=macro_f1(truth, predicted),
                accuracy_ci=wilson_interval(right, len(truth)),
            )
        )
    return tuple(out)
