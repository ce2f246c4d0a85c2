"""The exporter (DESIGN §5): when a device's growing observation window becomes a fingerprint.

The exporter grows each device's window unit by unit and exports the fingerprint once it has
converged (similarity to the fingerprint of one unit earlier ≥ τ for k consecutive units, with at
least n_min units in the window), or unconditionally at n_max units; then a new window starts. The
batch API (`export_fingerprints`) and the incremental API (`StreamingExporter`) make exactly the
same decisions. A window in which the device used no service at all (it was silent throughout)
closes like any other but exports nothing: an empty fingerprint identifies nothing.

Convergence is judged on the prevalence weights alone, whatever the intensity: the paper's
exporter decides where windows end, and intensity only adds to what a window's fingerprint says.
Every exported fingerprint carries its window's usage (active units, packets and bytes per
service, summed over the units where the service counted as used).

`whole_windows` is the exporter's alternative for short captures: one window per device over its
whole active span.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
import numpy.typing as npt

from controller.base.errors import InputError
from controller.engine.fingerprints import USAGE_ROWS, Fingerprint, FingerprintSet
from controller.engine.representation import (
    DEFAULT_GRANULARITY,
    DEFAULT_THRESHOLD,
    DEFAULT_UNIT_SECONDS,
    INTENSITIES,
    MAX_GRANULARITY,
    BoolArray,
    FloatArray,
    IntArray,
    Intensity,
    quantise,
    representation_name,
)
from controller.engine.similarity import ratio

if TYPE_CHECKING:
    from controller.engine.activity import ActivityTable

DEFAULT_TAU = 0.9
"""τ: similarity to the previous unit's fingerprint that counts as "unchanged"."""
DEFAULT_K = 3
"""k: consecutive unchanged units required for convergence."""
DEFAULT_N_MIN = 6
"""n_min: fewest units in an exported converged window."""
DEFAULT_N_MAX = 168
"""n_max: an unconverged window is exported anyway at this many units (a week of hours)."""


@dataclass(frozen=True)
class ExporterConfig:
    """Every parameter of the exporter, with the documented defaults of this module."""

    threshold: int = DEFAULT_THRESHOLD
    granularity: int | None = DEFAULT_GRANULARITY
    tau: float = DEFAULT_TAU
    k: int = DEFAULT_K
    n_min: int = DEFAULT_N_MIN
    n_max: int = DEFAULT_N_MAX
    intensity: Intensity | None = None

    def __post_init__(self) -> None:
        problems = []
        if self.threshold < 1:
            problems.append(f"threshold h={self.threshold} must be ≥ 1 packet")
        if self.granularity is not None and not 1 <= self.granularity <= MAX_GRANULARITY:
            problems.append(f"granularity G={self.granularity} must lie in 1..{MAX_GRANULARITY}")
        if not 0.0 <= self.tau <= 1.0:
            problems.append(f"tau={self.tau} must lie in [0, 1]")
        if self.k < 1:
            problems.append(f"k={self.k} must be ≥ 1")
        if self.intensity not in (None, *INTENSITIES):
            problems.append(f"intensity {self.intensity!r} must be one of {', '.join(INTENSITIES)}")
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
            intensity=data.get("intensity"),
        )

    @property
    def representation(self) -> str:
        """The name of the representation these settings export."""
        return representation_name(self.granularity, self.intensity)


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
    return ratio(num, den)


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
    pkt = table.packets[active]
    byt = table.bytes[active]
    stop = int(table.unit.max()) + 1 if end_unit is None and len(table.unit) else end_unit
    wanted = (
        None if devices is None else {table.devices.index(d) for d in devices if d in table.devices}
    )
    order = np.lexsort((unit, dev))
    dev, unit, svc, pkt, byt = dev[order], unit[order], svc[order], pkt[order], byt[order]
    bounds = np.flatnonzero(np.diff(dev)) + 1
    starts = np.concatenate([[0], bounds]) if dev.size else np.zeros(0, dtype=np.int64)
    ends = np.concatenate([bounds, [dev.size]]) if dev.size else np.zeros(0, dtype=np.int64)

    silent_window = min(cfg.n_max, max(cfg.n_min, cfg.k + 1))
    all_services = tuple(table.services)
    rows_w: list[FloatArray] = []
    rows_s: list[IntArray] = []
    rows_u: list[IntArray] = []
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
                # The device's rows are in unit order: the window's rows are one slice.
                a, b = lo + np.searchsorted(u, [first + offset, first + offset + length])
                sums = [
                    np.bincount(local_idx[a - lo : b - lo], weights=x[a:b], minlength=local.size)
                    for x in (pkt, byt)
                ]
                rows_u.append(np.stack([counts, *sums]).astype(np.int64))
                meta.append((code, first + offset, first + offset + length, converged))
            offset += length

    if not meta:
        return FingerprintSet.empty(cfg.granularity, unit_seconds, cfg.intensity)
    used = np.unique(np.concatenate(rows_s))
    position = np.full(len(all_services), -1, dtype=np.int64)
    position[used] = np.arange(used.size)
    weights = np.zeros((len(meta), used.size), dtype=np.float64)
    usage = np.zeros((len(USAGE_ROWS), len(meta), used.size), dtype=np.int64)
    for i, (w, s, c) in enumerate(zip(rows_w, rows_s, rows_u, strict=True)):
        weights[i, position[s]] = w
        usage[:, i, position[s]] = c
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
        usage=usage[:, :, by_name],
        intensity=cfg.intensity,
    )


@dataclass
class _Window:
    """An open window of the incremental exporter."""

    start_unit: int
    n: int = 0
    streak: int = 0
    counts: dict[str, int] = field(default_factory=dict)
    previous: dict[str, int] = field(default_factory=dict)
    packets: dict[str, int] = field(default_factory=dict)
    bytes: dict[str, int] = field(default_factory=dict)


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

    def feed_unit(
        self,
        unit: int,
        packets: Mapping[str, Mapping[str, int]],
        bytes: Mapping[str, Mapping[str, int]] | None = None,
    ) -> list[Fingerprint]:
        """Close `unit`: `packets` maps device → service → packets sent in it, `bytes` (same
        keys; None: no byte counts) the bytes.

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
                exported.extend(self._close({}, {}, silent))
        exported.extend(self._close(packets, bytes or {}, unit))
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
            packets: dict[str, dict[str, int]] = {}
            sent: dict[str, dict[str, int]] = {}
            for d, s, p, b in zip(
                table.device[rows].tolist(),
                table.service[rows].tolist(),
                table.packets[rows].tolist(),
                table.bytes[rows].tolist(),
                strict=True,
            ):
                packets.setdefault(table.devices[d], {})[table.services[s]] = int(p)
                sent.setdefault(table.devices[d], {})[table.services[s]] = int(b)
            exported.extend(self.feed_unit(unit, packets, sent))
        return exported

    def pending(self) -> list[Fingerprint]:
        """The fingerprints of the windows still open (not exported), one per device."""
        return [
            self._fingerprint(device, window, converged=False)
            for device, window in sorted(self._windows.items())
            if window.n > 0
        ]

    def _close(
        self,
        packets: Mapping[str, Mapping[str, int]],
        sent: Mapping[str, Mapping[str, int]],
        unit: int,
    ) -> list[Fingerprint]:
        cfg = self.config
        exported: list[Fingerprint] = []
        for device, services in packets.items():
            if device not in self._windows and any(p >= cfg.threshold for p in services.values()):
                self._windows[device] = _Window(start_unit=unit)
        for device, window in self._windows.items():
            used = packets.get(device, {})
            volume = sent.get(device, {})
            window.n += 1
            for name, count in used.items():
                if count >= cfg.threshold:
                    window.counts[name] = window.counts.get(name, 0) + 1
                    window.packets[name] = window.packets.get(name, 0) + count
                    window.bytes[name] = window.bytes.get(name, 0) + volume.get(name, 0)
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
            usage=np.array(
                [
                    [w.get(n, 0) for n in names]
                    for w in (window.counts, window.packets, window.bytes)
                ],
                dtype=np.int64,
            ).reshape(len(USAGE_ROWS), len(names)),
            intensity=self.config.intensity,
        )


def whole_windows(
    table: ActivityTable,
    granularity: int | None,
    threshold: int = DEFAULT_THRESHOLD,
    intensity: Intensity | None = None,
) -> FingerprintSet:
    """One fingerprint per device over its whole active span, from its first to its last unit
    with activity (for short captures, where each capture is one observation window)."""
    active = table.packets >= threshold
    dev = table.device[active].astype(np.int64)
    unit = table.unit[active].astype(np.int64)
    svc = table.service[active].astype(np.int64)
    seconds = float(table.unit_seconds)
    if not dev.size:
        return FingerprintSet.empty(granularity, seconds, intensity)
    codes, dev_idx = np.unique(dev, return_inverse=True)
    used, svc_idx = np.unique(svc, return_inverse=True)
    usage = np.zeros((len(USAGE_ROWS), codes.size, used.size), dtype=np.int64)
    # Each (device, unit, service) occurs once in an ActivityTable, so counting rows counts units.
    np.add.at(usage[0], (dev_idx, svc_idx), 1)
    np.add.at(usage[1], (dev_idx, svc_idx), table.packets[active])
    np.add.at(usage[2], (dev_idx, svc_idx), table.bytes[active])
    counts = usage[0]
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
        usage=usage[:, :, by_name],
        intensity=intensity,
    )


def prefix_windows(
    table: ActivityTable,
    length: int,
    granularity: int | None,
    threshold: int = DEFAULT_THRESHOLD,
    intensity: Intensity | None = None,
    starts: Mapping[str, int] | None = None,
) -> FingerprintSet:
    """One fingerprint per device over the first `length` units of its timeline — from its
    first unit with activity, or from `starts[device]` — as one window: what a device looks like
    when it has been seen only that long (early identification; references of short captures)."""
    first = np.full(len(table.devices), np.iinfo(np.int64).max)
    np.minimum.at(first, table.device, table.unit)
    if starts is not None:
        given = np.array([starts.get(d, -1) for d in table.devices], dtype=np.int64)
        first = np.where(given >= 0, given, first)
    offset = table.unit - first[table.device] if len(table) else table.unit
    return whole_windows(
        table.where((offset >= 0) & (offset < length)), granularity, threshold, intensity
    )
