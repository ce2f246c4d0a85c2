"""Recurrence (DESIGN §5): how similar a device's successive exported fingerprints are to each
other, against how similar they are to other devices' fingerprints."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from controller.engine.fingerprints import FingerprintSet
from controller.engine.representation import FloatArray
from controller.engine.similarity import BLOCK_ELEMENTS, similarity_pairs


@dataclass(frozen=True)
class Recurrence:
    """How similar a device's successive exported fingerprints are, against other devices'.

    `intra`: similarity of each exported fingerprint to the same device's previous one.
    `inter`: similarity between fingerprints of different devices (all pairs, or a seeded sample
    of `max_pairs` of them).
    """

    intra: FloatArray
    inter: FloatArray

    def summary(self) -> dict[str, float | int | None]:
        """Counts, means and medians of the two distributions."""

        def stat(values: FloatArray, fn: Any) -> float | None:
            return float(fn(values)) if values.size else None

        return {
            "intra_pairs": int(self.intra.size),
            "inter_pairs": int(self.inter.size),
            "intra_mean": stat(self.intra, np.mean),
            "intra_median": stat(self.intra, np.median),
            "inter_mean": stat(self.inter, np.mean),
            "inter_median": stat(self.inter, np.median),
        }


def recurrence(fps: FingerprintSet, max_pairs: int = 200_000, seed: int = 0) -> Recurrence:
    """Recurrence statistics of an exported set (rows of one device in time order matter)."""
    order = np.lexsort((fps.start, fps.device))
    dev = fps.device[order]
    w = fps.weights[order]
    same = dev[1:] == dev[:-1]
    intra = similarity_pairs(w[1:][same], w[:-1][same]) if same.any() else np.zeros(0)
    n = len(fps)
    total = n * (n - 1) // 2
    if total <= max_pairs:
        i, j = np.triu_indices(n, k=1)
    else:
        rng = np.random.default_rng(seed)
        i = rng.integers(0, n, size=max_pairs)
        j = rng.integers(0, n, size=max_pairs)
    other = fps.device[i] != fps.device[j]
    i, j = i[other], j[other]
    inter = np.zeros(0)
    if i.size:
        parts = []
        block = max(1, BLOCK_ELEMENTS // max(1, w.shape[1]))
        for lo in range(0, i.size, block):
            parts.append(
                similarity_pairs(fps.weights[i[lo : lo + block]], fps.weights[j[lo : lo + block]])
            )
        inter = np.concatenate(parts)
    return Recurrence(intra=intra, inter=inter)
