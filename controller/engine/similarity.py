"""Similarity of fingerprints: the weighted Jaccard index Σ min(a, b) / Σ max(a, b) (DESIGN §5).

On Service Lists it is the plain Jaccard index. Two empty fingerprints have similarity 1.0: both
windows saw the same (empty) set of services, and a device that stays silent must still be able
to converge. Pairs, whole matrices (one matrix operation for many devices against many
references) and single vectors share that definition.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from controller.engine.representation import SIZE_TOLERANCE, SIZED_BLOCKS, FloatArray, IntArray

# Elements (float64) of one block of a blocked similarity computation: small enough for cache.
# 64k elements are 512 KB, so a block's sums, its scratch and the two size buffers share a 2 MB
# L2 cache; 256k-element blocks (2 MB each) made the 3 M-record evaluation 1.6 times slower.
BLOCK_ELEMENTS = 64_000


def _is_binary(matrix: FloatArray) -> bool:
    return bool(np.all((matrix == 0.0) | (matrix == 1.0)))


def ratio(numerator: FloatArray, denominator: FloatArray) -> FloatArray:
    """Σmin/Σmax with 0/0 defined as 1.0 (two empty fingerprints are identical)."""
    out = np.ones(np.broadcast(numerator, denominator).shape, dtype=np.float64)
    np.divide(numerator, denominator, out=out, where=denominator > 0)
    return out


def weighted_jaccard(a: npt.ArrayLike, b: npt.ArrayLike) -> float:
    """Σ min(a, b) / Σ max(a, b) of two aligned weight vectors; 1.0 when both are empty."""
    x = np.asarray(a, dtype=np.float64)
    y = np.asarray(b, dtype=np.float64)
    if x.shape != y.shape:
        raise ValueError(f"vectors of different lengths: {x.shape} and {y.shape}")
    num = math.fsum(np.minimum(x, y).tolist())
    den = math.fsum(np.maximum(x, y).tolist())
    return 1.0 if den == 0.0 else num / den


Tolerance = float | FloatArray
"""τ of sized features: one for every service, or one per service (an array over the services)."""


def _per_tolerance(tolerance: Tolerance) -> FloatArray:
    """1/τ, per service where τ is (a 0-d array where it is one)."""
    inverse: FloatArray = 1.0 / np.asarray(tolerance, dtype=np.float64)
    return inverse


def _sized_layout(width: int) -> int:
    """Services of a sized feature matrix of `width` columns (see `SIZED_BLOCKS`)."""
    if width % SIZED_BLOCKS:
        raise ValueError(
            f"sized features have {SIZED_BLOCKS} blocks per service, not {width} columns"
        )
    return width // SIZED_BLOCKS


def _size_match(
    mass_a: FloatArray,
    mass_b: FloatArray,
    log_a: FloatArray,
    log_b: FloatArray,
    tolerance: Tolerance,
) -> FloatArray:
    """k = max(0, 1 − |ln x − ln y| / τ) from masses and mass·ln(size) (0 where a mass is 0)."""
    gap = np.abs(_log_size(mass_a, log_a) - _log_size(mass_b, log_b))
    matched: FloatArray = np.maximum(1.0 - gap * _per_tolerance(tolerance), 0.0)
    return matched


def _log_size(mass: FloatArray, logged: FloatArray) -> FloatArray:
    """ln(size) from mass and mass·ln(size): 0 where the mass is 0 (and so is mass·ln(size))."""
    size: FloatArray = logged / np.where(mass > 0, mass, 1.0)
    return size


def parts(
    a: npt.ArrayLike, b: npt.ArrayLike, sized: bool = False, tolerance: Tolerance = SIZE_TOLERANCE
) -> tuple[FloatArray, FloatArray]:
    """Element-wise parts of Σmin and Σmax of aligned feature rows (the last axis is features),
    over their weight columns: min and max, and for sized features' matched mass k·min and
    a + b − k·min with sizes matched within `tolerance`; the mass·ln(size) block is no weight
    and has no part."""
    x = np.asarray(a, dtype=np.float64)
    y = np.asarray(b, dtype=np.float64)
    if x.shape != y.shape:
        raise ValueError(f"matrices of different shapes: {x.shape} and {y.shape}")
    lo = np.minimum(x, y)
    hi = np.maximum(x, y)
    if not sized:
        return lo, hi
    n = _sized_layout(x.shape[-1])
    mass = slice(3 * n, 4 * n)
    logs = slice(4 * n, 5 * n)
    k = _size_match(x[..., mass], y[..., mass], x[..., logs], y[..., logs], tolerance)
    matched = lo[..., mass] * k
    lo[..., mass] = matched
    hi[..., mass] = x[..., mass] + y[..., mass] - matched
    return lo[..., : 4 * n], hi[..., : 4 * n]


def similarity_pairs(
    a: npt.ArrayLike, b: npt.ArrayLike, sized: bool = False, tolerance: Tolerance = SIZE_TOLERANCE
) -> FloatArray:
    """Row-wise weighted Jaccard of two equally shaped matrices (row i of `a` with row i of `b`);
    `sized`: the rows are sized features (see `controller.engine.representation`), their sizes
    matched within `tolerance`."""
    lo, hi = parts(a, b, sized, tolerance)
    return ratio(lo.sum(axis=-1), hi.sum(axis=-1))


def similarity_matrix(
    a: npt.ArrayLike, b: npt.ArrayLike, sized: bool = False, tolerance: Tolerance = SIZE_TOLERANCE
) -> FloatArray:
    """Weighted Jaccard of every row of `a` against every row of `b` (an m × n matrix).

    Binary matrices (Service Lists) go through one matrix product: |A∩B| = A·Bᵀ and
    |A∪B| = |A| + |B| − |A∩B|. Weighted matrices use Σmax = Σa + Σb − Σmin, with Σmin summed
    service by service over cache-sized row blocks (temporary memory stays small). `sized`:
    the rows are sized features, whose matched masses add k·min(a, b) to Σmin (and so
    a + b − k·min(a, b) to Σmax), their sizes matched within `tolerance`.
    """
    x = np.asarray(a, dtype=np.float64)
    y = np.asarray(b, dtype=np.float64)
    if x.ndim != 2 or y.ndim != 2 or x.shape[1] != y.shape[1]:
        raise ValueError(f"need two matrices over the same services: {x.shape} and {y.shape}")
    weights = x.shape[1]
    if sized:
        weights = 4 * _sized_layout(x.shape[1])
    sum_x = x[:, :weights].sum(axis=1)[:, None]
    sum_y = y[:, :weights].sum(axis=1)[None, :]
    if not sized and _is_binary(x) and _is_binary(y):
        num = x @ y.T
    else:
        num = np.zeros((x.shape[0], y.shape[0]), dtype=np.float64)
        columns = np.ascontiguousarray(y.T)
        used = x[:, :weights] > 0
        # min(a, b) is 0 wherever a or b is. Each block of rows adds only the services its rows
        # use (few, as rows of one device sit together), and for each only the span of `b` rows
        # from the first to the last that use it (narrow when `b` is grouped, e.g. by type).
        nonzero = columns > 0
        first = np.where(nonzero.any(axis=1), np.argmax(nonzero, axis=1), 0)
        last = columns.shape[1] - np.argmax(nonzero[:, ::-1], axis=1)
        rows = max(1, BLOCK_ELEMENTS // max(1, y.shape[0]))
        scratch = np.empty((min(rows, x.shape[0]), y.shape[0]), dtype=np.float64)
        matched_from = 3 * weights // 4 if sized else weights
        fused = False
        n = 0
        if sized:
            # Every fingerprint's ln(size) per service once, in units of τ (k = 1 − |difference|),
            # and per service the rows of `b` that use it in order of size: a block of rows
            # matches only those within τ of its own sizes, a few of the span as a rule.
            per = _per_tolerance(tolerance)
            size_x = _log_size(x[:, matched_from:weights], x[:, weights:]) * per
            size_y = _log_size(y[:, matched_from:weights], y[:, weights:]) * per
            size_y = np.ascontiguousarray(size_y.T)
            by_size = []
            for j in range(weights - matched_from):
                users = np.flatnonzero(columns[matched_from + j] > 0)
                ordered = users[np.argsort(size_y[j, users], kind="stable")]
                by_size.append((ordered, size_y[j, ordered]))
            buffers = (np.empty_like(scratch), np.empty_like(scratch))
            # Where the matched mass is the prevalence weight itself (always, but for rounded
            # prototypes), the prevalence weight's min serves the matched mass too.
            n = weights - matched_from
            fused = np.array_equal(x[:, :n], x[:, matched_from:weights]) and np.array_equal(
                y[:, :n], y[:, matched_from:weights]
            )
            if fused:
                used[:, matched_from:] = False
            matched = _Matched(x, columns, size_x, size_y, by_size, buffers)
        for lo in range(0, x.shape[0], rows):
            hi = min(lo + rows, x.shape[0])
            for s in np.flatnonzero(used[lo:hi].any(axis=0)).tolist():
                a, b = int(first[s]), int(last[s])
                if not nonzero[s, a]:
                    continue
                if s >= matched_from:
                    matched.add(num, lo, hi, s, a, b)
                    continue
                tmp = scratch[: hi - lo, a:b]
                np.minimum(x[lo:hi, s, None], columns[s, None, a:b], out=tmp)
                if fused and s < n:
                    matched.add(num, lo, hi, matched_from + s, a, b, tmp)
                    continue
                num[lo:hi, a:b] += tmp
            # Σmin/Σmax while the block is still in cache (a pass over the whole matrix each
            # for Σmax, the test and the division cost more than the block's own work).
            _divide_block(num[lo:hi], sum_x[lo:hi], sum_y, scratch[: hi - lo])
        return num
    return ratio(num, sum_x + sum_y - num)


def _divide_block(num: FloatArray, sum_x: FloatArray, sum_y: FloatArray, den: FloatArray) -> None:
    """num ← Σmin/Σmax in place, Σmax = Σx + Σy − Σmin (in `den`), 1.0 where Σmax is 0."""
    np.add(sum_x, sum_y, out=den)
    np.subtract(den, num, out=den)
    empty = den <= 0
    np.divide(num, den, out=num, where=~empty)
    np.copyto(num, 1.0, where=empty)


@dataclass(frozen=True)
class _Matched:
    """What the matched-mass columns of one similarity matrix need: both sides' features and
    sizes (in units of τ), `b`'s users of every service by size, and two scratch buffers."""

    x: FloatArray
    columns: FloatArray
    size_x: FloatArray
    size_y: FloatArray
    by_size: list[tuple[IntArray, FloatArray]]
    buffers: tuple[FloatArray, FloatArray]

    def add(
        self,
        num: FloatArray,
        lo: int,
        hi: int,
        s: int,
        a: int,
        b: int,
        prevalence: FloatArray | None = None,
    ) -> None:
        """Add k·min(a, b) of matched-mass column `s` for rows lo:hi to `num`: over the rows of
        `b` whose size lies within τ of one of the block's, or over the span a:b when those are
        many. `prevalence`: the min of the prevalence weights over the span, equal to the
        matched mass's, which is then added to `num` as well (min·(1 + k) in one pass)."""
        x, columns = self.x, self.columns
        j = s - (x.shape[1] // SIZED_BLOCKS) * 3
        mine = self.size_x[lo:hi, j][x[lo:hi, s] > 0]
        ordered, sizes = self.by_size[j]
        start = int(np.searchsorted(sizes, mine.min() - 1.0, side="left"))
        stop = int(np.searchsorted(sizes, mine.max() + 1.0, side="right"))
        if 2 * (stop - start) < b - a:
            if prevalence is not None:
                num[lo:hi, a:b] += prevalence
            if stop <= start:
                return
            near = ordered[start:stop]
            matched = np.minimum(x[lo:hi, s, None], columns[s, near][None, :])
            k = np.abs(self.size_x[lo:hi, j, None] - self.size_y[j, near][None, :])
            np.subtract(1.0, k, out=k)
            np.maximum(k, 0.0, out=k)
            matched *= k
            num[lo:hi, near] += matched
            return
        k = self.buffers[0][: hi - lo, a:b]
        np.subtract(self.size_x[lo:hi, j, None], self.size_y[j, None, a:b], out=k)
        np.abs(k, out=k)
        if prevalence is None:
            tmp = self.buffers[1][: hi - lo, a:b]
            np.minimum(x[lo:hi, s, None], columns[s, None, a:b], out=tmp)
            np.subtract(1.0, k, out=k)
            np.maximum(k, 0.0, out=k)
        else:
            tmp = prevalence
            np.subtract(2.0, k, out=k)
            np.maximum(k, 1.0, out=k)
        tmp *= k
        num[lo:hi, a:b] += tmp
