"""Similarity of fingerprints: the weighted Jaccard index Σ min(a, b) / Σ max(a, b) (DESIGN §5).

On Service Lists it is the plain Jaccard index. Two empty fingerprints have similarity 1.0: both
windows saw the same (empty) set of services, and a device that stays silent must still be able
to converge. Pairs, whole matrices (one matrix operation for many devices against many
references) and single vectors share that definition.
"""

from __future__ import annotations

import math

import numpy as np
import numpy.typing as npt

from controller.engine.representation import FloatArray

# Elements (float64) of one block of a blocked similarity computation: small enough for cache.
BLOCK_ELEMENTS = 256_000


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


def similarity_pairs(a: npt.ArrayLike, b: npt.ArrayLike) -> FloatArray:
    """Row-wise weighted Jaccard of two equally shaped matrices (row i of `a` with row i of `b`)."""
    x = np.asarray(a, dtype=np.float64)
    y = np.asarray(b, dtype=np.float64)
    if x.shape != y.shape:
        raise ValueError(f"matrices of different shapes: {x.shape} and {y.shape}")
    return ratio(np.minimum(x, y).sum(axis=-1), np.maximum(x, y).sum(axis=-1))


def similarity_matrix(a: npt.ArrayLike, b: npt.ArrayLike) -> FloatArray:
    """Weighted Jaccard of every row of `a` against every row of `b` (an m × n matrix).

    Binary matrices (Service Lists) go through one matrix product: |A∩B| = A·Bᵀ and
    |A∪B| = |A| + |B| − |A∩B|. Weighted matrices use Σmax = Σa + Σb − Σmin, with Σmin summed
    service by service over cache-sized row blocks (temporary memory stays small).
    """
    x = np.asarray(a, dtype=np.float64)
    y = np.asarray(b, dtype=np.float64)
    if x.ndim != 2 or y.ndim != 2 or x.shape[1] != y.shape[1]:
        raise ValueError(f"need two matrices over the same services: {x.shape} and {y.shape}")
    sum_x = x.sum(axis=1)[:, None]
    sum_y = y.sum(axis=1)[None, :]
    if _is_binary(x) and _is_binary(y):
        num = x @ y.T
    else:
        num = np.zeros((x.shape[0], y.shape[0]), dtype=np.float64)
        columns = np.ascontiguousarray(y.T)
        used = x > 0
        # min(a, b) is 0 wherever a or b is. Each block of rows adds only the services its rows
        # use (few, as rows of one device sit together), and for each only the span of `b` rows
        # from the first to the last that use it (narrow when `b` is grouped, e.g. by type).
        nonzero = columns > 0
        first = np.where(nonzero.any(axis=1), np.argmax(nonzero, axis=1), 0)
        last = columns.shape[1] - np.argmax(nonzero[:, ::-1], axis=1)
        rows = max(1, BLOCK_ELEMENTS // max(1, y.shape[0]))
        scratch = np.empty((min(rows, x.shape[0]), y.shape[0]), dtype=np.float64)
        for lo in range(0, x.shape[0], rows):
            hi = min(lo + rows, x.shape[0])
            for s in np.flatnonzero(used[lo:hi].any(axis=0)).tolist():
                a, b = int(first[s]), int(last[s])
                if not nonzero[s, a]:
                    continue
                tmp = scratch[: hi - lo, a:b]
                np.minimum(x[lo:hi, s, None], columns[s, None, a:b], out=tmp)
                num[lo:hi, a:b] += tmp
    return ratio(num, sum_x + sum_y - num)
