"""Classification metrics the evaluation reports: accuracy, macro-F1, confusion matrices, the
AUROC of a score, empirical CDFs, and Wilson confidence intervals for proportions."""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import numpy.typing as npt

from controller.engine.representation import IntArray


def accuracy(truth: Sequence[str], predicted: Sequence[str]) -> float:
    """Fraction of predictions equal to the truth (NaN for no samples)."""
    if not truth:
        return math.nan
    return sum(t == p for t, p in zip(truth, predicted, strict=True)) / len(truth)


def confusion_matrix(
    truth: Sequence[str], predicted: Sequence[str], classes: Sequence[str] | None = None
) -> tuple[tuple[str, ...], IntArray]:
    """(classes, matrix) with matrix[i, j] = samples of class i predicted as class j.

    Classes default to the sorted union of true and predicted labels.
    """
    names = tuple(classes) if classes is not None else tuple(sorted(set(truth) | set(predicted)))
    index = {name: i for i, name in enumerate(names)}
    matrix = np.zeros((len(names), len(names)), dtype=np.int64)
    for t, p in zip(truth, predicted, strict=True):
        matrix[index[t], index[p]] += 1
    return names, matrix


def macro_f1(truth: Sequence[str], predicted: Sequence[str]) -> float:
    """Unweighted mean over classes (true ∪ predicted) of F1; a class with no true and no
    predicted sample cannot occur, one with precision and recall both 0 scores 0."""
    if not truth:
        return math.nan
    _, matrix = confusion_matrix(truth, predicted)
    tp = np.diag(matrix).astype(np.float64)
    support = matrix.sum(axis=1).astype(np.float64)
    called = matrix.sum(axis=0).astype(np.float64)
    denominator = support + called
    f1 = np.zeros_like(tp)
    np.divide(2 * tp, denominator, out=f1, where=denominator > 0)
    return float(f1.mean())


def auroc(scores: npt.ArrayLike, positive: npt.ArrayLike) -> float:
    """Area under the ROC curve = P(score of a positive > score of a negative), ties count ½
    (the Mann–Whitney U statistic from average ranks). NaN when a class is empty."""
    s = np.asarray(scores, dtype=np.float64)
    p = np.asarray(positive, dtype=bool)
    n_pos = int(p.sum())
    n_neg = int(p.size - n_pos)
    if n_pos == 0 or n_neg == 0:
        return math.nan
    order = np.argsort(s, kind="mergesort")
    ordered = s[order]
    bounds = np.flatnonzero(np.diff(ordered)) + 1
    starts = np.concatenate([[0], bounds])
    ends = np.concatenate([bounds, [s.size]])
    ranks = np.empty(s.size, dtype=np.float64)
    ranks[order] = np.repeat((starts + ends + 1) / 2.0, ends - starts)
    u = ranks[p].sum() - n_pos * (n_pos + 1) / 2.0
    return float(u / (n_pos * n_neg))


def cdf(values: npt.ArrayLike) -> tuple[list[float], list[float]]:
    """Empirical CDF: distinct sorted values and the fraction of values ≤ each."""
    v = np.sort(np.asarray(values, dtype=np.float64))
    if not v.size:
        return [], []
    distinct, counts = np.unique(v, return_counts=True)
    return distinct.tolist(), (np.cumsum(counts) / v.size).tolist()


def wilson_interval(successes: int, n: int, z: float = 1.96) -> tuple[float, float]:
    """The Wilson score interval of a proportion (95 % for z = 1.96); (NaN, NaN) for n = 0.

    Wilson rather than the normal approximation: per-type counts here are small (5–20 test
    windows) and accuracies near 1, where p ± z·√(p(1−p)/n) leaves [0, 1] or collapses to a point.
    """
    if n <= 0:
        return math.nan, math.nan
    p = successes / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return max(0.0, centre - half), min(1.0, centre + half)
