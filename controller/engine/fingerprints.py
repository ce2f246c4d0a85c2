"""Fingerprints as values: one device's weights over one observation window (`Fingerprint`), and
many of them as one matrix over a shared service axis (`FingerprintSet`, for numpy work).

The exporter (`controller.engine.exporter`) makes them; identification compares them with
references.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from controller.base.errors import InputError
from controller.engine.representation import (
    DEFAULT_UNIT_SECONDS,
    BoolArray,
    FloatArray,
    IntArray,
    representation_name,
)


@dataclass(frozen=True, eq=False)
class Fingerprint:
    """One device's fingerprint over one observation window.

    `services` lists the services with a non-zero weight, sorted by name; `weights` (read-only)
    holds their weights in the same order. The window covers units [start_unit, end_unit).
    """

    device: str
    start_unit: int
    end_unit: int
    granularity: int | None
    services: tuple[str, ...]
    weights: FloatArray
    converged: bool = True
    unit_seconds: float = DEFAULT_UNIT_SECONDS

    def __post_init__(self) -> None:
        weights = np.array(self.weights, dtype=np.float64)
        if weights.shape != (len(self.services),):
            raise ValueError(f"{len(self.services)} services but weights of shape {weights.shape}")
        weights.setflags(write=False)
        object.__setattr__(self, "weights", weights)

    @property
    def n_units(self) -> int:
        """Units in the window, which is also the convergence time of an exported fingerprint."""
        return self.end_unit - self.start_unit

    @property
    def representation(self) -> str:
        """ "list", "prevalence" or "G=<n>"."""
        return representation_name(self.granularity)

    def as_dict(self) -> dict[str, float]:
        """Service name → weight, for the services with a non-zero weight."""
        return dict(zip(self.services, self.weights.tolist(), strict=True))

    def vector(self, services: Sequence[str]) -> FloatArray:
        """The weights laid out over `services` (zero where this fingerprint has none)."""
        index = {name: i for i, name in enumerate(services)}
        out = np.zeros(len(services), dtype=np.float64)
        for name, weight in zip(self.services, self.weights.tolist(), strict=True):
            if name not in index:
                raise ValueError(f"service {name!r} of {self.device} is not in the given axis")
            out[index[name]] = weight
        return out

    def to_json(self) -> dict[str, Any]:
        """A JSON-ready dict."""
        return {
            "device": self.device,
            "start_unit": self.start_unit,
            "end_unit": self.end_unit,
            "n_units": self.n_units,
            "unit_seconds": self.unit_seconds,
            "granularity": self.granularity,
            "representation": self.representation,
            "converged": self.converged,
            "weights": self.as_dict(),
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Fingerprint:
        """A fingerprint from `to_json` output."""
        try:
            weights = {str(k): float(v) for k, v in dict(data["weights"]).items()}
            names = tuple(sorted(weights))
            return cls(
                device=str(data["device"]),
                start_unit=int(data["start_unit"]),
                end_unit=int(data["end_unit"]),
                granularity=None if data["granularity"] is None else int(data["granularity"]),
                services=names,
                weights=np.array([weights[n] for n in names], dtype=np.float64),
                converged=bool(data.get("converged", True)),
                unit_seconds=float(data.get("unit_seconds", DEFAULT_UNIT_SECONDS)),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise InputError(f"fingerprint record {str(data)[:80]}: {exc}") from None

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Fingerprint):
            return NotImplemented
        return (
            self.device == other.device
            and self.start_unit == other.start_unit
            and self.end_unit == other.end_unit
            and self.granularity == other.granularity
            and self.services == other.services
            and self.converged == other.converged
            and self.unit_seconds == other.unit_seconds
            and bool(np.array_equal(self.weights, other.weights))
        )

    def __hash__(self) -> int:
        return hash((self.device, self.start_unit, self.end_unit, self.granularity, self.services))

    def __repr__(self) -> str:
        return (
            f"Fingerprint({self.device}, units {self.start_unit}..{self.end_unit}, "
            f"{self.representation}, {self.as_dict()})"
        )


@dataclass(frozen=True, eq=False)
class FingerprintSet:
    """Many fingerprints as one matrix over a shared service axis (columnar, for numpy work).

    Row i is the fingerprint of `devices[device[i]]` over units [start[i], end[i]).
    """

    services: tuple[str, ...]
    weights: FloatArray
    devices: tuple[str, ...]
    device: IntArray
    start: IntArray
    end: IntArray
    converged: BoolArray
    granularity: int | None
    unit_seconds: float = DEFAULT_UNIT_SECONDS

    def __post_init__(self) -> None:
        n = self.weights.shape[0]
        if self.weights.shape != (n, len(self.services)):
            raise ValueError(
                f"weights {self.weights.shape} do not match {len(self.services)} services"
            )
        for name in ("device", "start", "end", "converged"):
            if getattr(self, name).shape != (n,):
                raise ValueError(f"column {name} does not have {n} rows")

    def __len__(self) -> int:
        return int(self.weights.shape[0])

    def __iter__(self) -> Iterator[Fingerprint]:
        for i in range(len(self)):
            yield self[i]

    def __getitem__(self, i: int) -> Fingerprint:
        row = self.weights[i]
        nonzero = np.flatnonzero(row)
        order = sorted(nonzero.tolist(), key=lambda j: self.services[j])
        return Fingerprint(
            device=self.devices[int(self.device[i])],
            start_unit=int(self.start[i]),
            end_unit=int(self.end[i]),
            granularity=self.granularity,
            services=tuple(self.services[j] for j in order),
            weights=row[order],
            converged=bool(self.converged[i]),
            unit_seconds=self.unit_seconds,
        )

    @property
    def n_units(self) -> IntArray:
        """Window lengths (convergence times of converged rows)."""
        return self.end - self.start

    @property
    def device_names(self) -> list[str]:
        """The device key of every row."""
        return [self.devices[int(code)] for code in self.device]

    def select(self, rows: npt.ArrayLike) -> FingerprintSet:
        """The rows picked by a boolean mask or an index array, in that order."""
        idx = np.asarray(rows)
        return FingerprintSet(
            services=self.services,
            weights=self.weights[idx],
            devices=self.devices,
            device=self.device[idx],
            start=self.start[idx],
            end=self.end[idx],
            converged=self.converged[idx],
            granularity=self.granularity,
            unit_seconds=self.unit_seconds,
        )

    def aligned(self, services: Sequence[str]) -> FloatArray:
        """The weight matrix laid out over another service axis (zeros for services not here)."""
        if tuple(services) == self.services:
            return self.weights
        index = {name: i for i, name in enumerate(services)}
        out = np.zeros((len(self), len(services)), dtype=np.float64)
        src = [i for i, name in enumerate(self.services) if name in index]
        missing = [
            name
            for i, name in enumerate(self.services)
            if name not in index and np.any(self.weights[:, i] > 0)
        ]
        if missing:
            raise ValueError(f"services {missing[:5]} are not in the given axis")
        out[:, [index[self.services[i]] for i in src]] = self.weights[:, src]
        return out

    @classmethod
    def empty(cls, granularity: int | None, unit_seconds: float) -> FingerprintSet:
        """A set with no rows."""
        return cls(
            services=(),
            weights=np.zeros((0, 0)),
            devices=(),
            device=np.zeros(0, dtype=np.int64),
            start=np.zeros(0, dtype=np.int64),
            end=np.zeros(0, dtype=np.int64),
            converged=np.zeros(0, dtype=bool),
            granularity=granularity,
            unit_seconds=unit_seconds,
        )

    @classmethod
    def from_fingerprints(
        cls, fingerprints: Iterable[Fingerprint], services: Sequence[str] | None = None
    ) -> FingerprintSet:
        """Stack fingerprints (all of one granularity and unit) over a shared service axis."""
        fps = list(fingerprints)
        if not fps:
            raise ValueError("no fingerprints to stack")
        granularities = {fp.granularity for fp in fps}
        units = {fp.unit_seconds for fp in fps}
        if len(granularities) != 1 or len(units) != 1:
            raise InputError(
                f"fingerprints mix representations {sorted(map(str, granularities))} "
                f"or time units {sorted(units)}"
            )
        axis = (
            tuple(services)
            if services is not None
            else tuple(sorted({name for fp in fps for name in fp.services}))
        )
        devices = tuple(dict.fromkeys(fp.device for fp in fps))
        code = {name: i for i, name in enumerate(devices)}
        return cls(
            services=axis,
            weights=np.stack([fp.vector(axis) for fp in fps]),
            devices=devices,
            device=np.array([code[fp.device] for fp in fps], dtype=np.int64),
            start=np.array([fp.start_unit for fp in fps], dtype=np.int64),
            end=np.array([fp.end_unit for fp in fps], dtype=np.int64),
            converged=np.array([fp.converged for fp in fps], dtype=bool),
            granularity=fps[0].granularity,
            unit_seconds=fps[0].unit_seconds,
        )

    @classmethod
    def concat(cls, sets: Sequence[FingerprintSet]) -> FingerprintSet:
        """Rows of several sets (same representation and unit) over the union of their axes."""
        nonempty = [s for s in sets if len(s)]
        if not nonempty:
            if not sets:
                raise ValueError("nothing to concatenate")
            return sets[0]
        if (
            len({s.granularity for s in nonempty}) != 1
            or len({s.unit_seconds for s in nonempty}) != 1
        ):
            raise InputError("fingerprint sets mix representations or time units")
        axis = tuple(sorted({name for s in nonempty for name in s.services}))
        devices = tuple(dict.fromkeys(d for s in nonempty for d in s.devices))
        code = {name: i for i, name in enumerate(devices)}
        return cls(
            services=axis,
            weights=np.concatenate([s.aligned(axis) for s in nonempty]),
            devices=devices,
            device=np.concatenate(
                [np.array([code[d] for d in s.devices], dtype=np.int64)[s.device] for s in nonempty]
            ),
            start=np.concatenate([s.start for s in nonempty]),
            end=np.concatenate([s.end for s in nonempty]),
            converged=np.concatenate([s.converged for s in nonempty]),
            granularity=nonempty[0].granularity,
            unit_seconds=nonempty[0].unit_seconds,
        )
