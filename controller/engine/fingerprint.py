"""Service-level fingerprints: representations, similarity and the exporter (DESIGN §5).

Activity (which services a device used in which time unit) becomes, per device and observation
window of N units, a vector over services:

- the *prevalence* P(s) = (units in which s was used) / N, exactly;
- quantised to G levels, q(s) = ceil(P(s)·G) / G. G = 1 is the Service List (1 for every service
  used at least once), G = ∞ (``granularity=None``) is the Service Prevalence itself.

Similarity is the weighted Jaccard index Σ min(a, b) / Σ max(a, b), which is the plain Jaccard
index on lists. Two empty fingerprints are defined to have similarity 1.0: both windows saw the
same (empty) set of services, and a device that stays silent must still be able to converge.

The exporter grows each device's window unit by unit and exports the fingerprint once it has
converged (similarity to the fingerprint of one unit earlier ≥ τ for k consecutive units, with at
least n_min units in the window), or unconditionally at n_max units; then a new window starts. The
batch API (`export_fingerprints`) and the incremental API (`StreamingExporter`) make exactly the
same decisions. A window in which the device used no service at all (it was silent throughout)
closes like any other but exports nothing: an empty fingerprint identifies nothing.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
import numpy.typing as npt

from controller.base.errors import InputError

if TYPE_CHECKING:
    from controller.engine.activity import ActivityTable

FloatArray = npt.NDArray[np.float64]
IntArray = npt.NDArray[np.int64]
BoolArray = npt.NDArray[np.bool_]

DEFAULT_THRESHOLD = 1
"""h: packets of a service a device must send in a unit for the unit to count as using it."""
DEFAULT_GRANULARITY: int | None = None
"""G: quantisation levels of the default representation (1 = Service List, None = prevalence).

Prevalence is the default because it identified best on real captures (IoT Sentinel, one window
per capture: closed-set accuracy 0.83 against 0.80 for G=4 and 0.75 for the list); smaller G
remains the choice where noise or convergence speed matter more."""
DEFAULT_TAU = 0.9
"""τ: similarity to the previous unit's fingerprint that counts as "unchanged"."""
DEFAULT_K = 3
"""k: consecutive unchanged units required for convergence."""
DEFAULT_N_MIN = 6
"""n_min: fewest units in an exported converged window."""
DEFAULT_N_MAX = 168
"""n_max: an unconverged window is exported anyway at this many units (a week of hours)."""
DEFAULT_UNIT_SECONDS = 3600.0
"""The default time unit: one hour."""

# Elements (float64) of one block of a blocked similarity computation: small enough for cache.
_BLOCK_ELEMENTS = 256_000


def representation_name(granularity: int | None) -> str:
    """The human name of a representation: "list" (G=1), "prevalence" (G=∞) or "G=<n>"."""
    if granularity is None:
        return "prevalence"
    if granularity == 1:
        return "list"
    return f"G={granularity}"


def parse_granularity(text: str) -> int | None:
    """Parse a granularity flag: "list", "prevalence"/"inf", or a positive integer."""
    lowered = text.strip().lower()
    if lowered in {"list", "1"}:
        return 1
    if lowered in {"prevalence", "inf", "infinity", "∞"}:
        return None
    try:
        value = int(lowered.removeprefix("g=").removeprefix("g"))
    except ValueError:
        raise InputError(
            f"granularity {text!r}: expected 'list', 'prevalence', 'inf' or a positive integer"
        ) from None
    if value < 1:
        raise InputError(f"granularity {text!r}: must be at least 1")
    return value


def quantise(counts: npt.ArrayLike, n_units: npt.ArrayLike, granularity: int | None) -> FloatArray:
    """Representation weights from usage counts: ceil(counts/n · G)/G, or counts/n for G=None.

    `counts` holds, per service, the number of units in which it was used; `n_units` the window
    length (broadcast against `counts`). The ceiling is taken in integer arithmetic so that, e.g.,
    3 of 10 units at G=10 gives exactly 0.3 and not 0.4 from a rounding error in 0.3·10.
    """
    c = np.asarray(counts, dtype=np.int64)
    n = np.asarray(n_units, dtype=np.int64)
    if np.any(n < 1):
        raise ValueError("a window has at least one unit")
    if granularity is None:
        return c / n
    levels = -((-c * granularity) // n)
    return levels / float(granularity)


def _is_binary(matrix: FloatArray) -> bool:
    return bool(np.all((matrix == 0.0) | (matrix == 1.0)))


def _ratio(numerator: FloatArray, denominator: FloatArray) -> FloatArray:
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
    return _ratio(np.minimum(x, y).sum(axis=-1), np.maximum(x, y).sum(axis=-1))


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
        rows = max(1, _BLOCK_ELEMENTS // max(1, y.shape[0]))
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
    return _ratio(num, sum_x + sum_y - num)


@dataclass(frozen=True)
class ExporterConfig:
    """Every parameter of the exporter, with the documented defaults of this module."""

    threshold: int = DEFAULT_THRESHOLD
    granularity: int | None = DEFAULT_GRANULARITY
    tau: float = DEFAULT_TAU
    k: int = DEFAULT_K
    n_min: int = DEFAULT_N_MIN
    n_max: int = DEFAULT_N_MAX

    def __post_init__(self) -> None:
        problems = []
        if self.threshold < 1:
            problems.append(f"threshold h={self.threshold} must be ≥ 1 packet")
        if self.granularity is not None and self.granularity < 1:
            problems.append(f"granularity G={self.granularity} must be ≥ 1")
        if not 0.0 <= self.tau <= 1.0:
            problems.append(f"tau={self.tau} must lie in [0, 1]")
        if self.k < 1:
            problems.append(f"k={self.k} must be ≥ 1")
        if not 1 <= self.n_min <= self.n_max:
            problems.append(f"need 1 ≤ n_min ({self.n_min}) ≤ n_max ({self.n_max})")
        if problems:
            raise InputError("exporter settings: " + "; ".join(problems))

    def to_json(self) -> dict[str, Any]:
        """The settings as a JSON-ready dict."""
        return asdict(self)

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> ExporterConfig:
        """Settings from `to_json` output."""
        return cls(
            threshold=int(data["threshold"]),
            granularity=None if data["granularity"] is None else int(data["granularity"]),
            tau=float(data["tau"]),
            k=int(data["k"]),
            n_min=int(data["n_min"]),
            n_max=int(data["n_max"]),
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

    def similarity(self, other: Fingerprint) -> float:
        """Weighted Jaccard against another fingerprint."""
        axis = sorted(set(self.services) | set(other.services))
        return weighted_jaccard(self.vector(axis), other.vector(axis))

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


def _step_similarity(
    counts: npt.ArrayLike,
    n_units: npt.ArrayLike,
    previous: npt.ArrayLike,
    n_previous: npt.ArrayLike,
    granularity: int | None,
) -> FloatArray:
    """Similarity of fingerprints given as usage counts and window lengths, row by row.

    Computed on integer numerators over a common denominator, so Σmin and Σmax are exact and the
    batch and incremental exporters compare with τ on bit-identical values whatever order the
    services are summed in.
    """
    c = np.asarray(counts, dtype=np.int64)
    p = np.asarray(previous, dtype=np.int64)
    n = np.asarray(n_units, dtype=np.int64)
    m = np.asarray(n_previous, dtype=np.int64)
    if granularity is None:
        a, b = c * m[..., None], p * n[..., None]
    else:
        a = -((-c * granularity) // n[..., None])
        b = -((-p * granularity) // m[..., None])
    num = np.minimum(a, b).sum(axis=-1).astype(np.float64)
    den = np.maximum(a, b).sum(axis=-1).astype(np.float64)
    return _ratio(num, den)


def _scan_window(usage: BoolArray, config: ExporterConfig) -> tuple[int, bool] | None:
    """Where the window starting at row 0 of `usage` is exported: (units, converged), or None
    when the rows run out first (the window stays open).

    Fingerprints after 1..L units are computed at once from cumulative counts; L grows
    geometrically up to n_max so early convergence does not pay for n_max units.
    """
    available = usage.shape[0]
    length = min(config.n_max, available, max(2 * (config.n_min + config.k), 32))
    while True:
        counts = np.cumsum(usage[:length], axis=0, dtype=np.int64)
        n = np.arange(1, length + 1, dtype=np.int64)
        same = np.zeros(length, dtype=bool)
        if length > 1:
            sims = _step_similarity(counts[1:], n[1:], counts[:-1], n[:-1], config.granularity)
            same[1:] = sims >= config.tau
        # Run length of consecutive "unchanged" comparisons ending at each unit.
        positions = np.arange(length)
        last_change = np.maximum.accumulate(np.where(same, -1, positions))
        streak = positions - last_change
        hits = np.flatnonzero((n >= config.n_min) & (streak >= config.k))
        if hits.size:
            return int(hits[0]) + 1, True
        if length == config.n_max:
            return length, False
        if length == available:
            return None
        length = min(2 * length, config.n_max, available)


def export_fingerprints(
    table: ActivityTable,
    config: ExporterConfig | None = None,
    end_unit: int | None = None,
    devices: Iterable[str] | None = None,
    own_end: bool = False,
    flush: bool = False,
) -> FingerprintSet:
    """Batch exporter: every fingerprint the exporter exports from `table`, device by device.

    A device's timeline starts at its first unit with activity (≥ h packets of some service) and
    runs, silent units included, up to `end_unit` (default: one past the table's last unit), or
    with `own_end` to one past the device's own last active unit (for tracks that are separate
    captures). Windows still open at the end are not exported, exactly as in
    `StreamingExporter`, unless `flush` exports them as unconverged (its `pending()`).
    """
    cfg = config or ExporterConfig()
    unit_seconds = float(table.unit_seconds)
    active = table.packets >= cfg.threshold
    dev = table.device[active].astype(np.int64)
    unit = table.unit[active].astype(np.int64)
    svc = table.service[active].astype(np.int64)
    stop = int(table.unit.max()) + 1 if end_unit is None and len(table.unit) else end_unit
    wanted = (
        None if devices is None else {table.devices.index(d) for d in devices if d in table.devices}
    )
    order = np.lexsort((unit, dev))
    dev, unit, svc = dev[order], unit[order], svc[order]
    bounds = np.flatnonzero(np.diff(dev)) + 1
    starts = np.concatenate([[0], bounds]) if dev.size else np.zeros(0, dtype=np.int64)
    ends = np.concatenate([bounds, [dev.size]]) if dev.size else np.zeros(0, dtype=np.int64)

    silent_window = min(cfg.n_max, max(cfg.n_min, cfg.k + 1))
    all_services = tuple(table.services)
    rows_w: list[FloatArray] = []
    rows_s: list[IntArray] = []
    meta: list[tuple[int, int, int, bool]] = []
    for lo, hi in zip(starts.tolist(), ends.tolist(), strict=True):
        code = int(dev[lo])
        if wanted is not None and code not in wanted:
            continue
        first = int(unit[lo])
        last = int(unit[hi - 1]) + 1 if own_end else stop
        assert last is not None
        if last <= first:
            continue
        local, local_idx = np.unique(svc[lo:hi], return_inverse=True)
        u = unit[lo:hi]
        keep = u < last
        usage = np.zeros((last - first, local.size), dtype=bool)
        usage[u[keep] - first, local_idx[keep]] = True
        busy = np.unique(u[keep] - first)
        offset = 0
        while offset < usage.shape[0]:
            # Windows that start in a silent stretch all close after the same number of units
            # and export nothing: jump over as many whole ones as the stretch holds.
            upcoming = busy[np.searchsorted(busy, offset) :]
            gap = int(upcoming[0]) - offset if upcoming.size else usage.shape[0] - offset
            if gap >= silent_window:
                offset += (gap // silent_window) * silent_window
                continue
            found = _scan_window(usage[offset:], cfg)
            if found is None:
                if flush:
                    found = (usage.shape[0] - offset, False)
                else:
                    break
            length, converged = found
            counts = usage[offset : offset + length].sum(axis=0)
            if counts.any():
                rows_w.append(quantise(counts, length, cfg.granularity))
                rows_s.append(local)
                meta.append((code, first + offset, first + offset + length, converged))
            offset += length

    if not meta:
        return FingerprintSet.empty(cfg.granularity, unit_seconds)
    used = np.unique(np.concatenate(rows_s))
    position = np.full(len(all_services), -1, dtype=np.int64)
    position[used] = np.arange(used.size)
    weights = np.zeros((len(meta), used.size), dtype=np.float64)
    for i, (w, s) in enumerate(zip(rows_w, rows_s, strict=True)):
        weights[i, position[s]] = w
    names = [all_services[j] for j in used.tolist()]
    by_name = np.argsort(np.array(names, dtype=object), kind="stable")
    codes = sorted({m[0] for m in meta})
    recode = {c: i for i, c in enumerate(codes)}
    return FingerprintSet(
        services=tuple(names[j] for j in by_name.tolist()),
        weights=weights[:, by_name],
        devices=tuple(table.devices[c] for c in codes),
        device=np.array([recode[m[0]] for m in meta], dtype=np.int64),
        start=np.array([m[1] for m in meta], dtype=np.int64),
        end=np.array([m[2] for m in meta], dtype=np.int64),
        converged=np.array([m[3] for m in meta], dtype=bool),
        granularity=cfg.granularity,
        unit_seconds=unit_seconds,
    )


@dataclass
class _Window:
    """An open window of the incremental exporter."""

    start_unit: int
    n: int = 0
    streak: int = 0
    counts: dict[str, int] = field(default_factory=dict)
    previous: dict[str, int] = field(default_factory=dict)


class StreamingExporter:
    """Incremental exporter for the live controller: feed units in order, get exports back.

    Makes the same decisions as `export_fingerprints`: a device joins at its first unit with
    activity; every later unit, silent or not, extends its window.
    """

    def __init__(
        self, config: ExporterConfig | None = None, unit_seconds: float = DEFAULT_UNIT_SECONDS
    ) -> None:
        self.config = config or ExporterConfig()
        self.unit_seconds = unit_seconds
        self._windows: dict[str, _Window] = {}
        self._next_unit: int | None = None

    @property
    def next_unit(self) -> int | None:
        """The unit the exporter expects next (None before the first unit)."""
        return self._next_unit

    def feed_unit(self, unit: int, packets: Mapping[str, Mapping[str, int]]) -> list[Fingerprint]:
        """Close `unit`: `packets` maps device → service → packets sent in it.

        Units skipped since the previous call are closed first as silent for every known device.
        Returns the fingerprints exported by the units closed now, in unit order.
        """
        if self._next_unit is not None and unit < self._next_unit:
            raise InputError(
                f"unit {unit} fed after unit {self._next_unit - 1}: units must increase"
            )
        exported: list[Fingerprint] = []
        if self._next_unit is not None:
            for silent in range(self._next_unit, unit):
                exported.extend(self._close({}, silent))
        exported.extend(self._close(packets, unit))
        self._next_unit = unit + 1
        return exported

    def feed_table(self, table: ActivityTable, end_unit: int | None = None) -> list[Fingerprint]:
        """Feed every unit of `table` in order (and silent units up to `end_unit`, exclusive)."""
        if len(table.unit) == 0 and end_unit is None:
            return []
        order = np.argsort(table.unit, kind="stable")
        units = table.unit[order]
        exported: list[Fingerprint] = []
        first = int(units[0]) if units.size else end_unit
        last = int(units[-1]) + 1 if units.size else end_unit
        assert first is not None and last is not None
        stop = last if end_unit is None else end_unit
        if self._next_unit is not None:
            first = min(first, self._next_unit)
        bounds = np.searchsorted(units, np.arange(first, stop + 1))
        for i, unit in enumerate(range(first, stop)):
            rows = order[bounds[i] : bounds[i + 1]]
            per_device: dict[str, dict[str, int]] = {}
            for d, s, p in zip(
                table.device[rows].tolist(),
                table.service[rows].tolist(),
                table.packets[rows].tolist(),
                strict=True,
            ):
                per_device.setdefault(table.devices[d], {})[table.services[s]] = int(p)
            exported.extend(self.feed_unit(unit, per_device))
        return exported

    def pending(self) -> list[Fingerprint]:
        """The fingerprints of the windows still open (not exported), one per device."""
        return [
            self._fingerprint(device, window, converged=False)
            for device, window in sorted(self._windows.items())
            if window.n > 0
        ]

    def _close(self, packets: Mapping[str, Mapping[str, int]], unit: int) -> list[Fingerprint]:
        cfg = self.config
        exported: list[Fingerprint] = []
        for device, services in packets.items():
            if device not in self._windows and any(p >= cfg.threshold for p in services.values()):
                self._windows[device] = _Window(start_unit=unit)
        for device, window in self._windows.items():
            used = packets.get(device, {})
            window.n += 1
            for name, count in used.items():
                if count >= cfg.threshold:
                    window.counts[name] = window.counts.get(name, 0) + 1
            if window.n > 1:
                axis = sorted(window.counts)
                sim = _step_similarity(
                    [window.counts[s] for s in axis],
                    window.n,
                    [window.previous.get(s, 0) for s in axis],
                    window.n - 1,
                    cfg.granularity,
                )
                window.streak = window.streak + 1 if float(sim) >= cfg.tau else 0
            window.previous = dict(window.counts)
            converged = window.n >= cfg.n_min and window.streak >= cfg.k
            if converged or window.n >= cfg.n_max:
                if window.counts:
                    exported.append(self._fingerprint(device, window, converged=converged))
                self._windows[device] = _Window(start_unit=unit + 1)
        return exported

    def _weights(self, window: _Window) -> dict[str, float]:
        names = sorted(window.counts)
        values = quantise([window.counts[n] for n in names], window.n, self.config.granularity)
        return dict(zip(names, values.tolist(), strict=True))

    def _fingerprint(self, device: str, window: _Window, converged: bool) -> Fingerprint:
        weights = self._weights(window)
        names = tuple(n for n in sorted(weights) if weights[n] > 0)
        return Fingerprint(
            device=device,
            start_unit=window.start_unit,
            end_unit=window.start_unit + window.n,
            granularity=self.config.granularity,
            services=names,
            weights=np.array([weights[n] for n in names], dtype=np.float64),
            converged=converged,
            unit_seconds=self.unit_seconds,
        )


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
        block = max(1, _BLOCK_ELEMENTS // max(1, w.shape[1]))
        for lo in range(0, i.size, block):
            parts.append(
                similarity_pairs(fps.weights[i[lo : lo + block]], fps.weights[j[lo : lo + block]])
            )
        inter = np.concatenate(parts)
    return Recurrence(intra=intra, inter=inter)


def whole_windows(
    table: ActivityTable,
    granularity: int | None,
    threshold: int = DEFAULT_THRESHOLD,
) -> FingerprintSet:
    """One fingerprint per device over its whole active span, from its first to its last unit
    with activity (for short captures, where each capture is one observation window)."""
    active = table.packets >= threshold
    dev = table.device[active].astype(np.int64)
    unit = table.unit[active].astype(np.int64)
    svc = table.service[active].astype(np.int64)
    seconds = float(table.unit_seconds)
    if not dev.size:
        return FingerprintSet.empty(granularity, seconds)
    codes, dev_idx = np.unique(dev, return_inverse=True)
    used, svc_idx = np.unique(svc, return_inverse=True)
    counts = np.zeros((codes.size, used.size), dtype=np.int64)
    # Each (device, unit, service) occurs once in an ActivityTable, so counting rows counts units.
    np.add.at(counts, (dev_idx, svc_idx), 1)
    first = np.full(codes.size, np.iinfo(np.int64).max)
    last = np.full(codes.size, np.iinfo(np.int64).min)
    np.minimum.at(first, dev_idx, unit)
    np.maximum.at(last, dev_idx, unit)
    n = last - first + 1
    names = [table.services[j] for j in used.tolist()]
    by_name = np.argsort(np.array(names, dtype=object), kind="stable")
    return FingerprintSet(
        services=tuple(names[j] for j in by_name.tolist()),
        weights=quantise(counts[:, by_name], n[:, None], granularity),
        devices=tuple(table.devices[c] for c in codes.tolist()),
        device=np.arange(codes.size, dtype=np.int64),
        start=first,
        end=last + 1,
        converged=np.ones(codes.size, dtype=bool),
        granularity=granularity,
        unit_seconds=seconds,
    )
