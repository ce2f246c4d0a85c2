"""Fingerprints as values: one device's weights over one observation window (`Fingerprint`), and
many of them as one matrix over a shared service axis (`FingerprintSet`, for numpy work).

Next to the prevalence weights a fingerprint carries its window's *usage*: per service, the units
in which it was used and the packets and bytes sent in those units (exact integer sums). The
intensity representations are computed from it (`features`), and explanations quote it.

The exporter (`controller.engine.exporter`) makes them; identification compares them with
references.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
import numpy.typing as npt

from controller.base.errors import InputError
from controller.engine.representation import (
    DEFAULT_UNIT_SECONDS,
    INTENSITIES,
    BoolArray,
    FloatArray,
    IntArray,
    Intensity,
    feature_matrix,
    representation_name,
)

USAGE_ROWS = ("units", "packets", "bytes")
"""What the rows of a usage array count, per service: active units, packets, bytes."""


def _usage_array(usage: npt.ArrayLike | None, shape: tuple[int, ...]) -> IntArray | None:
    if usage is None:
        return None
    out = np.array(usage, dtype=np.int64)
    if out.shape != (len(USAGE_ROWS), *shape):
        raise ValueError(f"usage of shape {out.shape}, expected {(len(USAGE_ROWS), *shape)}")
    out.setflags(write=False)
    return out


@dataclass(frozen=True, eq=False)
class Fingerprint:
    """One device's fingerprint over one observation window.

    `services` lists the services with a non-zero weight, sorted by name; `weights` (read-only)
    holds their weights in the same order. The window covers units [start_unit, end_unit).
    `usage` (optional, read-only, 3 × services) holds per service its active units, packets and
    bytes in the window; `intensity` says whether similarity weighs them (see
    `controller.engine.representation`).
    """

    device: str
    start_unit: int
    end_unit: int
    granularity: int | None
    services: tuple[str, ...]
    weights: FloatArray
    converged: bool = True
    unit_seconds: float = DEFAULT_UNIT_SECONDS
    usage: IntArray | None = None
    intensity: Intensity | None = None

    def __post_init__(self) -> None:
        weights = np.array(self.weights, dtype=np.float64)
        if weights.shape != (len(self.services),):
            raise ValueError(f"{len(self.services)} services but weights of shape {weights.shape}")
        weights.setflags(write=False)
        object.__setattr__(self, "weights", weights)
        object.__setattr__(self, "usage", _usage_array(self.usage, (len(self.services),)))
        if self.intensity is not None and self.usage is None:
            raise ValueError(f"an intensity fingerprint of {self.device} needs its usage")

    @property
    def n_units(self) -> int:
        """Units in the window, which is also the convergence time of an exported fingerprint."""
        return self.end_unit - self.start_unit

    @property
    def representation(self) -> str:
        """ "list", "prevalence" or "G=<n>", with "+intensity" or "+rate"."""
        return representation_name(self.granularity, self.intensity)

    def usage_of(self, service: str) -> tuple[int, int, int]:
        """(active units, packets, bytes) of one service in the window; zeros when unused."""
        if self.usage is None or service not in self.services:
            return 0, 0, 0
        j = self.services.index(service)
        units, packets, sent = self.usage[:, j].tolist()
        return int(units), int(packets), int(sent)

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
        } | (
            {}
            if self.usage is None
            else {
                "intensity": self.intensity,
                "usage": {name: self.usage[:, j].tolist() for j, name in enumerate(self.services)},
            }
        )

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Fingerprint:
        """A fingerprint from `to_json` output."""
        try:
            weights = {str(k): float(v) for k, v in dict(data["weights"]).items()}
            names = tuple(sorted(weights))
            usage = data.get("usage")
            intensity = data.get("intensity")
            if intensity not in (None, *INTENSITIES):
                raise ValueError(f"intensity {intensity!r} is not one of {', '.join(INTENSITIES)}")
            return cls(
                device=str(data["device"]),
                start_unit=int(data["start_unit"]),
                end_unit=int(data["end_unit"]),
                granularity=None if data["granularity"] is None else int(data["granularity"]),
                services=names,
                weights=np.array([weights[n] for n in names], dtype=np.float64),
                converged=bool(data.get("converged", True)),
                unit_seconds=float(data.get("unit_seconds", DEFAULT_UNIT_SECONDS)),
                usage=None
                if usage is None
                else np.array([[int(v) for v in dict(usage)[n]] for n in names]).T.reshape(3, -1),
                intensity=intensity,
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
            and self.intensity == other.intensity
            and bool(np.array_equal(self.weights, other.weights))
            and (
                self.usage is other.usage
                or (
                    self.usage is not None
                    and other.usage is not None
                    and bool(np.array_equal(self.usage, other.usage))
                )
            )
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

    Row i is the fingerprint of `devices[device[i]]` over units [start[i], end[i]). `usage`
    (optional, 3 × rows × services) holds every row's active units, packets and bytes per service.
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
    usage: IntArray | None = None
    intensity: Intensity | None = None

    def __post_init__(self) -> None:
        n = self.weights.shape[0]
        if self.weights.shape != (n, len(self.services)):
            raise ValueError(
                f"weights {self.weights.shape} do not match {len(self.services)} services"
            )
        for name in ("device", "start", "end", "converged"):
            if getattr(self, name).shape != (n,):
                raise ValueError(f"column {name} does not have {n} rows")
        if self.usage is not None and self.usage.shape != (len(USAGE_ROWS), *self.weights.shape):
            raise ValueError(
                f"usage {self.usage.shape} does not match weights {self.weights.shape}"
            )
        if self.intensity is not None and self.usage is None:
            raise ValueError("an intensity fingerprint set needs its usage")

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
            usage=None if self.usage is None else self.usage[:, i, order],
            intensity=self.intensity,
        )

    @property
    def n_units(self) -> IntArray:
        """Window lengths (convergence times of converged rows)."""
        return self.end - self.start

    @property
    def device_names(self) -> list[str]:
        """The device key of every row."""
        return [self.devices[int(code)] for code in self.device]

    @property
    def origins(self) -> list[str]:
        """Every row's window as "<device>@<start>-<end>" (how references name their origin)."""
        return [
            f"{name}@{s}-{e}"
            for name, s, e in zip(
                self.device_names, self.start.tolist(), self.end.tolist(), strict=True
            )
        ]

    @property
    def representation(self) -> str:
        """The representation's name ("prevalence", "G=4+intensity", ...)."""
        return representation_name(self.granularity, self.intensity)

    def features(self, services: Sequence[str] | None = None) -> FloatArray:
        """What similarity compares, laid out over `services` (default: this set's axis): the
        weights, and with intensity the two intensity weights per service after them."""
        axis = self.services if services is None else tuple(services)
        usage = None if self.usage is None else self.aligned_usage(axis)
        return feature_matrix(
            self.aligned(axis),
            None if usage is None else usage[0],
            None if usage is None else usage[1],
            None if usage is None else usage[2],
            self.intensity,
        )

    def with_intensity(self, intensity: Intensity | None) -> FingerprintSet:
        """The same windows compared with another intensity (None: prevalence weights alone)."""
        return replace(self, intensity=intensity)

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
            usage=None if self.usage is None else self.usage[:, idx],
            intensity=self.intensity,
        )

    def aligned(self, services: Sequence[str]) -> FloatArray:
        """The weight matrix laid out over another service axis (zeros for services not here)."""
        return self._laid_out(self.weights, services)

    def aligned_usage(self, services: Sequence[str]) -> IntArray:
        """The usage (3 × rows × services) laid out over another service axis."""
        if self.usage is None:
            raise InputError("these fingerprints carry no packet and byte counts")
        return np.stack([self._laid_out(u, services) for u in self.usage])

    def _laid_out(self, matrix: npt.NDArray[Any], services: Sequence[str]) -> npt.NDArray[Any]:
        if tuple(services) == self.services:
            return matrix
        index = {name: i for i, name in enumerate(services)}
        out = np.zeros((len(self), len(services)), dtype=matrix.dtype)
        src = [i for i, name in enumerate(self.services) if name in index]
        missing = [
            name
            for i, name in enumerate(self.services)
            if name not in index and np.any(self.weights[:, i] > 0)
        ]
        if missing:
            raise ValueError(f"services {missing[:5]} are not in the given axis")
        out[:, [index[self.services[i]] for i in src]] = matrix[:, src]
        return out

    @classmethod
    def empty(
        cls, granularity: int | None, unit_seconds: float, intensity: Intensity | None = None
    ) -> FingerprintSet:
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
            usage=np.zeros((len(USAGE_ROWS), 0, 0), dtype=np.int64),
            intensity=intensity,
        )

    @classmethod
    def from_fingerprints(
        cls, fingerprints: Iterable[Fingerprint], services: Sequence[str] | None = None
    ) -> FingerprintSet:
        """Stack fingerprints (all of one representation and unit) over a shared service axis;
        the set has usage when every fingerprint has."""
        fps = list(fingerprints)
        if not fps:
            raise ValueError("no fingerprints to stack")
        kinds = {(fp.granularity, fp.intensity) for fp in fps}
        units = {fp.unit_seconds for fp in fps}
        if len(kinds) != 1 or len(units) != 1:
            raise InputError(
                f"fingerprints mix representations "
                f"{sorted(representation_name(g, i) for g, i in kinds)} or time units "
                f"{sorted(units)}"
            )
        axis = (
            tuple(services)
            if services is not None
            else tuple(sorted({name for fp in fps for name in fp.services}))
        )
        devices = tuple(dict.fromkeys(fp.device for fp in fps))
        code = {name: i for i, name in enumerate(devices)}
        usage = None
        if all(fp.usage is not None for fp in fps):
            position = {name: j for j, name in enumerate(axis)}
            usage = np.zeros((len(USAGE_ROWS), len(fps), len(axis)), dtype=np.int64)
            for i, fp in enumerate(fps):
                assert fp.usage is not None
                usage[:, i, [position[n] for n in fp.services]] = fp.usage
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
            usage=usage,
            intensity=fps[0].intensity,
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
            len({(s.granularity, s.intensity) for s in nonempty}) != 1
            or len({s.unit_seconds for s in nonempty}) != 1
        ):
            raise InputError("fingerprint sets mix representations or time units")
        axis = tuple(sorted({name for s in nonempty for name in s.services}))
        devices = tuple(dict.fromkeys(d for s in nonempty for d in s.devices))
        code = {name: i for i, name in enumerate(devices)}
        with_usage = all(s.usage is not None for s in nonempty)
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
            usage=np.concatenate([s.aligned_usage(axis) for s in nonempty], axis=1)
            if with_usage
            else None,
            intensity=nonempty[0].intensity,
        )
