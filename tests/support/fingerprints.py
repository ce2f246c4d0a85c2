"""Fingerprints built by hand for tests: a device's usage matrix, the fingerprint of a whole
matrix, and the similarity of two single fingerprints."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import numpy.typing as npt

from controller.engine.activity import ActivityTable
from controller.engine.fingerprints import Fingerprint
from controller.engine.representation import (
    DEFAULT_THRESHOLD,
    DEFAULT_UNIT_SECONDS,
    BoolArray,
    quantise,
)
from controller.engine.similarity import weighted_jaccard


def usage_matrix(
    table: ActivityTable,
    device: str,
    start_unit: int,
    end_unit: int,
    threshold: int = DEFAULT_THRESHOLD,
) -> tuple[BoolArray, tuple[str, ...]]:
    """Binary usage of one device over units [start_unit, end_unit): (units × services, services).

    Entry [t, s] is True when the device sent at least `threshold` packets of service s in unit
    start_unit + t. The service axis is the table's whole service list.
    """
    if end_unit < start_unit:
        raise ValueError(f"window ends ({end_unit}) before it starts ({start_unit})")
    out = np.zeros((end_unit - start_unit, len(table.services)), dtype=bool)
    if device not in table.devices:
        return out, tuple(table.services)
    code = table.devices.index(device)
    rows = (
        (table.device == code)
        & (table.unit >= start_unit)
        & (table.unit < end_unit)
        & (table.packets >= threshold)
    )
    out[table.unit[rows] - start_unit, table.service[rows]] = True
    return out, tuple(table.services)


def fingerprint_of(
    usage: npt.ArrayLike,
    services: Sequence[str],
    device: str,
    start_unit: int,
    granularity: int | None,
    unit_seconds: float = DEFAULT_UNIT_SECONDS,
    converged: bool = True,
) -> Fingerprint:
    """The fingerprint of a whole usage matrix (units × services) taken as one window."""
    matrix = np.asarray(usage, dtype=bool)
    if matrix.ndim != 2 or matrix.shape[1] != len(services) or matrix.shape[0] < 1:
        raise ValueError(f"usage of shape {matrix.shape} for {len(services)} services")
    weights = quantise(matrix.sum(axis=0), matrix.shape[0], granularity)
    keep = sorted(np.flatnonzero(weights).tolist(), key=lambda j: services[j])
    return Fingerprint(
        device=device,
        start_unit=start_unit,
        end_unit=start_unit + matrix.shape[0],
        granularity=granularity,
        services=tuple(services[j] for j in keep),
        weights=weights[keep],
        converged=converged,
        unit_seconds=unit_seconds,
    )


def fingerprint_similarity(one: Fingerprint, other: Fingerprint) -> float:
    """Weighted Jaccard of two fingerprints over the union of their services."""
    axis = sorted(set(one.services) | set(other.services))
    return weighted_jaccard(one.vector(axis), other.vector(axis))


def listed(device: str, services: str, granularity: int | None = 1, start: int = 0) -> Fingerprint:
    """A Service List fingerprint (weight 1 per service) of one 10-unit window, 1 s units."""
    names = tuple(sorted(services.split())) if services else ()
    return Fingerprint(
        device, start, start + 10, granularity, names, np.ones(len(names)), True, 1.0
    )


# Type X: {a,b}, {a,b,c}, {a}; type Y: {d}, {d,e}; type Z: {f} (a single reference).
HAND_REFERENCES = (
    listed("x1", "a b"),
    listed("x2", "a b c"),
    listed("x3", "a"),
    listed("y1", "d"),
    listed("y2", "d e"),
    listed("z1", "f"),
)
HAND_LABELS = {"x1": "X", "x2": "X", "x3": "X", "y1": "Y", "y2": "Y", "z1": "Z"}
