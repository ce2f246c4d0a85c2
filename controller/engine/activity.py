"""Per-unit activity: how many packets and bytes each device sent to each service in each time unit.

This is where the live path (switch counters) and the offline path (flow records, captures) meet:
both produce an `ActivityTable`, and the fingerprint engine consumes it. The table is columnar —
one numpy array per column — with one row per (device, unit, service) and at least one packet in
every row. Devices and services are integer codes into the `devices` (MAC keys) and `services`
(service names) vocabularies, so millions of rows stay small and group-bys stay vectorised.
"""

from __future__ import annotations

import csv
import math
from collections.abc import Collection, Iterable, Iterator, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, NamedTuple, TextIO

import numpy as np
import numpy.typing as npt

from controller.base.errors import InputError
from controller.base.fileio import csv_rows, not_utf8, open_atomically

CSV_COLUMNS = ("device", "unit", "unit_seconds", "service", "packets", "bytes")

IntArray = npt.NDArray[np.int64]
CodeArray = npt.NDArray[np.int32]


class ActivityRecord(NamedTuple):
    """One row of an activity table, with the device and service spelled out."""

    device: str
    unit: int
    service: str
    packets: int
    bytes: int


def units_of(epoch_seconds: npt.ArrayLike, unit_seconds: float) -> IntArray:
    """Unit index of each timestamp: floor(epoch_seconds / unit_seconds)."""
    _check_unit_seconds(unit_seconds)
    return np.floor(np.asarray(epoch_seconds, dtype=np.float64) / unit_seconds).astype(np.int64)


def encode(values: Sequence[str] | npt.NDArray[np.str_]) -> tuple[tuple[str, ...], CodeArray]:
    """Sorted vocabulary of `values` and each value's code into it."""
    vocabulary, codes = np.unique(np.asarray(values, dtype=np.str_), return_inverse=True)
    return tuple(str(v) for v in vocabulary), codes.astype(np.int32).reshape(-1)


# Units are times: a unit that starts before 1970 or after 2100 is damage, not a measurement.
MAX_EPOCH_SECONDS = 4_102_444_800.0  # 2100-01-01T00:00:00Z
# A time unit lies between a microsecond (the finest a capture's timestamps tell apart) and the
# whole span units may lie in; beyond either, unit numbers of 1970-2100 overflow 64 bits or
# every timestamp falls into unit 0.
MIN_UNIT_SECONDS = 1e-6
MAX_UNIT_SECONDS = MAX_EPOCH_SECONDS
# Packets and bytes of one row, at most: sums of such rows stay far inside 64 bits.
MAX_ROW_COUNT = 1 << 56


def implausible_row(unit: int, packets: int, octets: int, unit_seconds: float) -> str | None:
    """Why a row's unit or counts cannot be real, or None when they can."""
    if not 0 <= unit * unit_seconds < MAX_EPOCH_SECONDS:
        return f"unit {unit} of {unit_seconds:g} s does not start between 1970 and 2100"
    if not (0 <= packets <= MAX_ROW_COUNT and 0 <= octets <= MAX_ROW_COUNT):
        return f"packet or byte count out of range (0..2^56): {packets}, {octets}"
    return None


@dataclass(frozen=True, eq=False)
class ActivityTable:
    """Columnar per-unit activity; build it with `from_records`, `from_arrays` or `empty`.

    Rows are sorted by (device code, unit, service code) and unique on that triple; every row has
    `packets >= 1`. Vocabularies may hold entries no row uses (e.g. every service of a catalogue).
    """

    devices: tuple[str, ...]
    services: tuple[str, ...]
    device: CodeArray
    unit: IntArray
    service: CodeArray
    packets: IntArray
    bytes: IntArray
    unit_seconds: float

    # --- construction -------------------------------------------------------------------------

    @classmethod
    def empty(
        cls,
        unit_seconds: float = 3600.0,
        devices: Sequence[str] = (),
        services: Sequence[str] = (),
    ) -> ActivityTable:
        """A table without rows."""
        _check_unit_seconds(unit_seconds)
        return cls(
            devices=tuple(devices),
            services=tuple(services),
            device=np.zeros(0, np.int32),
            unit=np.zeros(0, np.int64),
            service=np.zeros(0, np.int32),
            packets=np.zeros(0, np.int64),
            bytes=np.zeros(0, np.int64),
            unit_seconds=float(unit_seconds),
        )

    @classmethod
    def from_records(
        cls,
        records: Iterable[tuple[str, int, str, int, int]],
        unit_seconds: float = 3600.0,
    ) -> ActivityTable:
        """Build from (device MAC key, unit, service name, packets, bytes) tuples.

        Duplicate (device, unit, service) records are summed; vocabularies come out sorted.
        """
        rows = list(records)
        if not rows:
            return cls.empty(unit_seconds)
        devices, device_codes = encode([r[0] for r in rows])
        services, service_codes = encode([r[2] for r in rows])
        return cls.from_arrays(
            devices=devices,
            services=services,
            device=device_codes,
            unit=np.array([r[1] for r in rows], dtype=np.int64),
            service=service_codes,
            packets=np.array([r[3] for r in rows], dtype=np.int64),
            bytes=np.array([r[4] for r in rows], dtype=np.int64),
            unit_seconds=unit_seconds,
        )

    @classmethod
    def from_arrays(
        cls,
        *,
        devices: Sequence[str],
        services: Sequence[str],
        device: npt.ArrayLike,
        unit: npt.ArrayLike,
        service: npt.ArrayLike,
        packets: npt.ArrayLike,
        bytes: npt.ArrayLike,
        unit_seconds: float = 3600.0,
    ) -> ActivityTable:
        """Build from code arrays (any order, duplicates allowed): sums duplicates, drops rows
        whose summed packet count is 0, sorts.

        Raises `InputError` when lengths differ, a code is outside its vocabulary or a count is
        negative.
        """
        _check_unit_seconds(unit_seconds)
        dev = np.asarray(device).astype(np.int32, copy=False).reshape(-1)
        uni = np.asarray(unit).astype(np.int64, copy=False).reshape(-1)
        svc = np.asarray(service).astype(np.int32, copy=False).reshape(-1)
        pkt = np.asarray(packets).astype(np.int64, copy=False).reshape(-1)
        byt = np.asarray(bytes).astype(np.int64, copy=False).reshape(-1)
        n = len(dev)
        if not (len(uni) == len(svc) == len(pkt) == len(byt) == n):
            raise InputError(
                "activity arrays differ in length: "
                f"device {n}, unit {len(uni)}, service {len(svc)}, "
                f"packets {len(pkt)}, bytes {len(byt)}"
            )
        devices_t = tuple(devices)
        services_t = tuple(services)
        if len(set(devices_t)) != len(devices_t):
            raise InputError("activity device vocabulary has duplicate entries")
        if len(set(services_t)) != len(services_t):
            raise InputError("activity service vocabulary has duplicate entries")
        if n:
            _check_codes(dev, len(devices_t), "device")
            _check_codes(svc, len(services_t), "service")
            if pkt.min() < 0 or byt.min() < 0:
                raise InputError("activity packet and byte counts must not be negative")
        dev, uni, svc, pkt, byt = _aggregate(dev, uni, svc, pkt, byt, len(services_t))
        return cls(devices_t, services_t, dev, uni, svc, pkt, byt, float(unit_seconds))

    @classmethod
    def concat(cls, tables: Sequence[ActivityTable]) -> ActivityTable:
        """One table holding the rows of all `tables` (same unit_seconds), duplicates summed.

        The vocabularies are the first table's, extended by unseen entries in table order.
        """
        if not tables:
            raise InputError("concat needs at least one activity table")
        unit_seconds = tables[0].unit_seconds
        for table in tables[1:]:
            if not math.isclose(table.unit_seconds, unit_seconds):
                raise InputError(
                    f"cannot concatenate activity with units of {table.unit_seconds} s "
                    f"and {unit_seconds} s; regroup first with with_unit_seconds"
                )
        devices: dict[str, int] = {}
        services: dict[str, int] = {}
        parts: list[tuple[CodeArray, CodeArray]] = []
        for table in tables:
            dev_map = np.array(
                [devices.setdefault(d, len(devices)) for d in table.devices], dtype=np.int32
            )
            svc_map = np.array(
                [services.setdefault(s, len(services)) for s in table.services], dtype=np.int32
            )
            parts.append(
                (
                    dev_map[table.device] if len(dev_map) else table.device,
                    svc_map[table.service] if len(svc_map) else table.service,
                )
            )
        return cls.from_arrays(
            devices=tuple(devices),
            services=tuple(services),
            device=np.concatenate([p[0] for p in parts]),
            unit=np.concatenate([t.unit for t in tables]),
            service=np.concatenate([p[1] for p in parts]),
            packets=np.concatenate([t.packets for t in tables]),
            bytes=np.concatenate([t.bytes for t in tables]),
            unit_seconds=unit_seconds,
        )

    # --- views --------------------------------------------------------------------------------

    def __len__(self) -> int:
        return len(self.device)

    def records(self) -> Iterator[ActivityRecord]:
        """Rows in table order, with device keys and service names."""
        for d, u, s, p, b in zip(
            self.device.tolist(),
            self.unit.tolist(),
            self.service.tolist(),
            self.packets.tolist(),
            self.bytes.tolist(),
            strict=True,
        ):
            yield ActivityRecord(self.devices[d], u, self.services[s], p, b)

    def unit_range(self) -> tuple[int, int] | None:
        """(first unit, last unit) present in the table, or None when it is empty."""
        if not len(self):
            return None
        return int(self.unit.min()), int(self.unit.max())

    def used_devices(self) -> tuple[str, ...]:
        """Device keys that appear in at least one row, in vocabulary order."""
        return tuple(self.devices[i] for i in np.unique(self.device).tolist())

    def used_services(self) -> tuple[str, ...]:
        """Service names that appear in at least one row, in vocabulary order."""
        return tuple(self.services[i] for i in np.unique(self.service).tolist())

    def select(
        self,
        devices: Iterable[str] | None = None,
        units: tuple[int, int] | None = None,
        services: Iterable[str] | None = None,
    ) -> ActivityTable:
        """Rows of the given devices, of units in the half-open range [lo, hi), and of the given
        services (None keeps all). Vocabularies are kept as they are."""
        keep = np.ones(len(self), dtype=bool)
        if devices is not None:
            wanted = set(devices)
            codes = [i for i, d in enumerate(self.devices) if d in wanted]
            keep &= np.isin(self.device, np.array(codes, dtype=np.int32))
        if services is not None:
            wanted = set(services)
            codes = [i for i, s in enumerate(self.services) if s in wanted]
            keep &= np.isin(self.service, np.array(codes, dtype=np.int32))
        if units is not None:
            lo, hi = units
            keep &= (self.unit >= lo) & (self.unit < hi)
        return self.where(keep)

    def without(self, devices: Collection[str]) -> ActivityTable:
        """The rows of every device but `devices`; vocabularies are kept as they are."""
        if not devices:
            return self
        return self.select(devices=[d for d in self.devices if d not in devices])

    def where(self, keep: npt.NDArray[np.bool_]) -> ActivityTable:
        """The rows where `keep` (one flag per row) is True; vocabularies are kept as they are."""
        return ActivityTable(
            self.devices,
            self.services,
            self.device[keep],
            self.unit[keep],
            self.service[keep],
            self.packets[keep],
            self.bytes[keep],
            self.unit_seconds,
        )

    def with_unit_seconds(self, unit_seconds: float) -> ActivityTable:
        """The same activity regrouped into coarser units; `unit_seconds` must be an integer
        multiple of the current unit (a unit cannot be split after the fact)."""
        _check_unit_seconds(unit_seconds)
        ratio = unit_seconds / self.unit_seconds
        factor = round(ratio)
        if factor < 1 or not math.isclose(ratio, factor, rel_tol=1e-9):
            raise InputError(
                f"cannot regroup {self.unit_seconds} s units into {unit_seconds} s units: "
                "the new unit must be an integer multiple of the current one"
            )
        # floor(floor(t / a) / k) == floor(t / (a k)) for integer k, so regrouping is exact.
        return ActivityTable.from_arrays(
            devices=self.devices,
            services=self.services,
            device=self.device,
            unit=np.floor_divide(self.unit, factor),
            service=self.service,
            packets=self.packets,
            bytes=self.bytes,
            unit_seconds=float(unit_seconds),
        )

    def renamed(self, devices: Iterable[str]) -> ActivityTable:
        """The same rows under new device keys, one per entry of `devices`."""
        names = tuple(devices)
        if len(names) != len(self.devices) or len(set(names)) != len(names):
            raise InputError(
                f"renaming {len(self.devices)} devices needs as many distinct names, "
                f"got {len(names)} ({len(set(names))} distinct)"
            )
        return replace(self, devices=names)

    # --- CSV ----------------------------------------------------------------------------------

    def to_csv(self, path: Path) -> None:
        """Write `device,unit,unit_seconds,service,packets,bytes` rows; the file appears only when
        complete (written beside it, then renamed)."""
        with open_atomically(path, newline="") as handle:
            writer = csv.writer(handle)
            writer.writerow(CSV_COLUMNS)
            if not self._write_rows_arrow(handle):
                seconds = _format_seconds(self.unit_seconds)
                writer.writerows(
                    (r.device, r.unit, seconds, r.service, r.packets, r.bytes)
                    for r in self.records()
                )

    def _write_rows_arrow(self, handle: TextIO) -> bool:
        """Append the rows with pyarrow's CSV writer; False when a name would need quoting (the
        csv module then writes them: pyarrow would quote every name, not just those)."""
        # pyarrow is imported on first use so that importing the engine loads numpy only.
        import pyarrow as pa
        import pyarrow.csv as pacsv

        special = set(',"\r\n')
        if any(special & set(name) for name in (*self.devices, *self.services)):
            return False

        def names(vocabulary: tuple[str, ...], codes: CodeArray) -> Any:
            dictionary = pa.array(vocabulary, type=pa.string())
            return pa.DictionaryArray.from_arrays(pa.array(codes), dictionary).cast(pa.string())

        seconds = _format_seconds(self.unit_seconds)
        table = pa.table(
            [
                names(self.devices, self.device),
                pa.array(self.unit),
                names((seconds,), np.zeros(len(self), dtype=np.int32)),
                names(self.services, self.service),
                pa.array(self.packets),
                pa.array(self.bytes),
            ],
            names=list(CSV_COLUMNS),
        )
        handle.flush()
        with open(handle.fileno(), "ab", closefd=False) as binary:
            pacsv.write_csv(
                table,
                binary,
                write_options=pacsv.WriteOptions(include_header=False, quoting_style="none"),
            )
        return True

    @classmethod
    def from_csv(cls, path: Path, unit_seconds: float | None = None) -> ActivityTable:
        """Read a file written by `to_csv`. Without a `unit_seconds` column, the argument gives
        the unit length. Raises `InputError` naming the file and line of anything malformed."""
        path = Path(path)
        try:
            handle = path.open(newline="", encoding="utf-8-sig")
        except OSError as exc:
            raise InputError(f"{path}: cannot read activity file: {exc.strerror}") from exc
        try:
            with handle:
                return cls._read_csv(path, csv_rows(path, handle), unit_seconds)
        except UnicodeDecodeError as exc:
            raise not_utf8(path, "activity file", exc) from None

    @classmethod
    def _read_csv(
        cls, path: Path, reader: Iterator[list[str]], unit_seconds: float | None
    ) -> ActivityTable:
        header = next(reader, None)
        if header is None:
            raise InputError(f"{path}: empty file, expected a header {','.join(CSV_COLUMNS)}")
        header = [h.strip() for h in header]
        twice = [c for c in CSV_COLUMNS if header.count(c) > 1]
        if twice:
            raise InputError(f"{path}: line 1: column(s) {', '.join(twice)} more than once")
        required = [c for c in CSV_COLUMNS if c != "unit_seconds"]
        missing = [c for c in required if c not in header]
        if missing:
            raise InputError(f"{path}: line 1: missing column(s) {', '.join(missing)}")
        if "unit_seconds" not in header and unit_seconds is None:
            raise InputError(f"{path}: line 1: no unit_seconds column and none given")
        fast = _from_csv_arrow(path, header, unit_seconds)
        if fast is not None:
            return fast
        index = {c: header.index(c) for c in CSV_COLUMNS if c in header}
        devices: dict[str, int] = {}
        services: dict[str, int] = {}
        cols: list[list[int]] = [[], [], [], [], []]
        seen_seconds: float | None = unit_seconds
        for line_no, row in enumerate(reader, start=2):
            if not row or (len(row) == 1 and not row[0].strip()):
                continue
            if len(row) != len(header):
                raise InputError(
                    f"{path}: line {line_no}: {len(row)} fields, expected {len(header)}"
                )
            try:
                values = [int(row[index[c]]) for c in ("unit", "packets", "bytes")]
                if "unit_seconds" in index:
                    row_seconds = float(row[index["unit_seconds"]])
            except ValueError as exc:
                raise InputError(f"{path}: line {line_no}: not a number: {exc}") from exc
            if "unit_seconds" in index:
                if seen_seconds is None:
                    if not (math.isfinite(row_seconds) and row_seconds > 0):
                        raise InputError(
                            f"{path}: line {line_no}: unit_seconds must be a positive number of "
                            f"seconds, got {row_seconds}"
                        )
                    seen_seconds = row_seconds
                elif not math.isclose(row_seconds, seen_seconds):
                    raise InputError(
                        f"{path}: line {line_no}: unit_seconds {row_seconds} differs from "
                        f"{seen_seconds}"
                    )
            if values[1] < 0 or values[2] < 0:
                raise InputError(f"{path}: line {line_no}: negative packet or byte count")
            # Set by now: from the argument, or from the first row's column (line 1 refuses
            # neither), so the fallback never applies.
            why = implausible_row(values[0], values[1], values[2], seen_seconds or 3600.0)
            if why is not None:
                raise InputError(f"{path}: line {line_no}: {why}")
            cols[0].append(devices.setdefault(row[index["device"]].strip(), len(devices)))
            cols[1].append(values[0])
            cols[2].append(services.setdefault(row[index["service"]].strip(), len(services)))
            cols[3].append(values[1])
            cols[4].append(values[2])
        return cls.from_arrays(
            devices=tuple(devices),
            services=tuple(services),
            device=np.array(cols[0], dtype=np.int32),
            unit=np.array(cols[1], dtype=np.int64),
            service=np.array(cols[2], dtype=np.int32),
            packets=np.array(cols[3], dtype=np.int64),
            bytes=np.array(cols[4], dtype=np.int64),
            unit_seconds=seen_seconds if seen_seconds is not None else 3600.0,
        )


def _from_csv_arrow(
    path: Path, header: list[str], unit_seconds: float | None
) -> ActivityTable | None:
    """The columnar read of a well-formed activity CSV; None (the line reader then names the
    problem) when anything does not convert."""
    import pyarrow as pa
    import pyarrow.compute as pc
    import pyarrow.csv as pacsv

    types = {c: pa.int64() for c in ("unit", "packets", "bytes")}
    types.update({"device": pa.string(), "service": pa.string()})
    if "unit_seconds" in header:
        types["unit_seconds"] = pa.float64()
    try:
        table = pacsv.read_csv(
            path,
            convert_options=pacsv.ConvertOptions(include_columns=list(types), column_types=types),
        )
    except (pa.ArrowInvalid, pa.ArrowTypeError):
        return None
    if any(table.column(c).null_count for c in types):
        return None
    seconds = unit_seconds
    if "unit_seconds" in types and table.num_rows:
        column = table.column("unit_seconds")
        lo, hi = pc.min(column).as_py(), pc.max(column).as_py()
        if lo != hi or (seconds is not None and not math.isclose(lo, seconds)):
            return None
        if not (math.isfinite(lo) and lo > 0):
            return None
        seconds = lo
    if table.num_rows:
        # The row that does not hold is named by the line reader.
        top = [pc.max(table.column(c)).as_py() for c in ("unit", "packets", "bytes")]
        low = [pc.min(table.column(c)).as_py() for c in ("unit", "packets", "bytes")]
        unit = seconds if seconds is not None else 3600.0
        if any(implausible_row(row[0], row[1], row[2], unit) for row in (low, top)):
            return None

    def vocabulary(name: str) -> tuple[tuple[str, ...], npt.NDArray[np.int32]]:
        encoded = pc.dictionary_encode(pc.utf8_trim_whitespace(table.column(name)))
        encoded = encoded.combine_chunks() if hasattr(encoded, "combine_chunks") else encoded
        words = tuple(str(w) for w in encoded.dictionary.to_pylist())
        return words, np.asarray(encoded.indices.to_numpy(zero_copy_only=False), dtype=np.int32)

    devices, device_codes = vocabulary("device")
    services, service_codes = vocabulary("service")
    return ActivityTable.from_arrays(
        devices=devices,
        services=services,
        device=device_codes,
        unit=table.column("unit").to_numpy(),
        service=service_codes,
        packets=table.column("packets").to_numpy(),
        bytes=table.column("bytes").to_numpy(),
        unit_seconds=seconds if seconds is not None else 3600.0,
    )


def _check_unit_seconds(value: float) -> None:
    if not (math.isfinite(value) and value > 0):
        raise InputError(f"unit_seconds must be a positive number of seconds, got {value}")
    if not MIN_UNIT_SECONDS <= value <= MAX_UNIT_SECONDS:
        raise InputError(
            f"unit_seconds {value:g}: a time unit lies in [{MIN_UNIT_SECONDS:g}, "
            f"{MAX_UNIT_SECONDS:g}] seconds (a microsecond to the years 1970-2100)"
        )


def _check_codes(codes: npt.NDArray[np.int32], size: int, what: str) -> None:
    if codes.min() < 0 or codes.max() >= size:
        raise InputError(f"activity {what} codes must lie in 0..{size - 1}")


def _format_seconds(value: float) -> str:
    return str(int(value)) if value.is_integer() else repr(value)


def _aggregate(
    dev: CodeArray,
    uni: IntArray,
    svc: CodeArray,
    pkt: IntArray,
    byt: IntArray,
    n_services: int,
) -> tuple[CodeArray, IntArray, CodeArray, IntArray, IntArray]:
    """Sort by (device, unit, service), sum duplicates, drop rows without packets."""
    if len(dev) == 0:
        return dev, uni, svc, pkt, byt
    unit_lo = int(uni.min())
    span = int(uni.max()) - unit_lo + 1
    n_dev = int(dev.max()) + 1
    n_svc = max(n_services, 1)
    if n_dev * span * n_svc < 2**62:
        # One int64 key keeps the sort a single radix-friendly argsort.
        key = (dev.astype(np.int64) * span + (uni - unit_lo)) * n_svc + svc
        if len(key) > 1 and bool(np.all(key[1:] > key[:-1])):
            order = None
            sorted_key = key
        else:
            order = np.argsort(key, kind="stable")
            sorted_key = key[order]
        starts = np.flatnonzero(np.concatenate(([True], sorted_key[1:] != sorted_key[:-1])))
    else:
        order = np.lexsort((svc, uni, dev))
        d, u, s = dev[order], uni[order], svc[order]
        change = (d[1:] != d[:-1]) | (u[1:] != u[:-1]) | (s[1:] != s[:-1])
        starts = np.flatnonzero(np.concatenate(([True], change)))
    if order is not None:
        dev, uni, svc, pkt, byt = dev[order], uni[order], svc[order], pkt[order], byt[order]
    if len(starts) != len(dev):
        dev, uni, svc = dev[starts], uni[starts], svc[starts]
        pkt = np.add.reduceat(pkt, starts)
        byt = np.add.reduceat(byt, starts)
    keep = pkt > 0
    if not bool(keep.all()):
        dev, uni, svc, pkt, byt = dev[keep], uni[keep], svc[keep], pkt[keep], byt[keep]
    return dev, uni, svc, pkt, byt
