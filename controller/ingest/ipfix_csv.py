"""IPFIX flow records exported as CSV, with IANA information element names as column headers.

Columns (IANA IPFIX names; `column_map` maps them to other headers):
- start time: `flowStartMilliseconds` (epoch ms, or `YYYY-MM-DD hh:mm:ss[.sss]` in UTC),
  or `flowStartSeconds` / `flowStartMicroseconds` / `flowStartNanoseconds` (epoch numbers);
- `sourceMacAddress`, `destinationMacAddress` (the latter only needed for biflows);
- `protocolIdentifier` (number or name; empty for non-IP records), `sourceTransportPort`,
  `destinationTransportPort` (empty → 0);
- `packetTotalCount` or `packetDeltaCount`; `octetTotalCount` or `octetDeltaCount` (optional);
- RFC 5103 biflows: `reversePacketTotalCount`/`reversePacketDeltaCount`,
  `reverseOctetTotalCount`/`reverseOctetDeltaCount`.

Ports and counts are decimal digits: "0x10", "+5" or "1_000" is a malformed value to either
parser.

A flow's activity belongs to the unit of its start time: flow exporters cut long flows at their
active timeout (minutes), far shorter than the default one-hour unit, so the error is bounded by
the timeout while per-unit spreading would invent a uniform rate the record does not state.

Parsing uses pyarrow's multithreaded CSV reader in batches when it is installed; without it, or
when a value does not convert, the line-by-line reader takes over (it names the line of the first
bad record, or skips and counts bad records with `skip_bad_records`).
"""

from __future__ import annotations

import csv
import math
from collections.abc import Iterator, Mapping, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from controller.base.checks import is_decimal
from controller.base.errors import InputError
from controller.base.macs import mac_to_int
from controller.engine.activity import ActivityTable
from controller.engine.catalogue import Catalogue
from controller.engine.services import PROTOCOL_NUMBERS
from controller.ingest.flows import (
    MAX_COUNT,
    FlowBatch,
    IngestStats,
    PortCounter,
    batches_to_activity,
    implausible,
    plausible_times,
)

TIME_FIELDS = {
    "flowStartMilliseconds": 1e-3,
    "flowStartSeconds": 1.0,
    "flowStartMicroseconds": 1e-6,
    "flowStartNanoseconds": 1e-9,
}
FIELDS: dict[str, tuple[str, ...]] = {
    "src_mac": ("sourceMacAddress",),
    "dst_mac": ("destinationMacAddress",),
    "proto": ("protocolIdentifier",),
    "sport": ("sourceTransportPort",),
    "dport": ("destinationTransportPort",),
    "packets": ("packetTotalCount", "packetDeltaCount"),
    "bytes": ("octetTotalCount", "octetDeltaCount"),
    "rev_packets": ("reversePacketTotalCount", "reversePacketDeltaCount"),
    "rev_bytes": ("reverseOctetTotalCount", "reverseOctetDeltaCount"),
}
REQUIRED = ("src_mac", "packets")
BATCH_BYTES = 16 << 20
SLOW_CHUNK = 200_000

# Two hex characters (as one 16-bit code, high character first) → their byte; 256 = not hex.
_HEX_PAIR = np.full(1 << 16, 256, dtype=np.uint16)
_HEX_DIGITS = {c: i for i, c in enumerate("0123456789abcdef")}
_HEX_DIGITS.update({c.upper(): i for c, i in list(_HEX_DIGITS.items())})
for _hi, _hv in _HEX_DIGITS.items():
    for _lo, _lv in _HEX_DIGITS.items():
        _HEX_PAIR[(ord(_hi) << 8) | ord(_lo)] = (_hv << 4) | _lv
_PAIR_POS = [0, 3, 6, 9, 12, 15]
_SEP_POS = [2, 5, 8, 11, 14]


def parse_column_map(text: str) -> dict[str, str]:
    """`name=column,...` → {IE name: CSV header}; raises InputError on malformed pairs."""
    mapping: dict[str, str] = {}
    known = set(TIME_FIELDS) | {n for names in FIELDS.values() for n in names}
    for pair in filter(None, (p.strip() for p in text.split(","))):
        name, sep, column = pair.partition("=")
        if not sep or not name.strip() or not column.strip():
            raise InputError(f"--column-map: expected name=column, got {pair!r}")
        if name.strip() not in known:
            raise InputError(
                f"--column-map: {name.strip()!r} is not an IPFIX field this reader uses "
                f"(one of {', '.join(sorted(known))})"
            )
        mapping[name.strip()] = column.strip()
    return mapping


class _Columns:
    """Which CSV header holds which logical field."""

    def __init__(self, path: Path, header: Sequence[str], column_map: Mapping[str, str]) -> None:
        present = {h.strip() for h in header}
        self.header = [h.strip() for h in header]

        def resolve(names: Sequence[str]) -> tuple[str, str] | None:
            for name in names:
                column = column_map.get(name, name)
                if column in present:
                    return name, column
            return None

        time = resolve(tuple(TIME_FIELDS))
        if time is None:
            wanted = " or ".join(column_map.get(n, n) for n in TIME_FIELDS)
            raise InputError(f"{path}: line 1: missing start time column ({wanted})")
        self.time_field, self.time = time
        self.columns: dict[str, str] = {}
        for key, names in FIELDS.items():
            found = resolve(names)
            if found is None:
                if key in REQUIRED:
                    wanted = " or ".join(column_map.get(n, n) for n in names)
                    raise InputError(f"{path}: line 1: missing column {wanted}")
                continue
            self.columns[key] = found[1]
        twice = [c for c in self.wanted() if self.header.count(c) > 1]
        if twice:
            # The fast and the line reader would each take another of them.
            raise InputError(f"{path}: line 1: column(s) {', '.join(twice)} more than once")
        if "rev_packets" in self.columns and "dst_mac" not in self.columns:
            raise InputError(
                f"{path}: line 1: biflow columns need the destination MAC column "
                f"{column_map.get('destinationMacAddress', 'destinationMacAddress')}"
            )

    def wanted(self) -> list[str]:
        return [self.time, *self.columns.values()]


def read_ipfix_csv(
    path: Path,
    catalogue: Catalogue,
    unit_seconds: float = 3600.0,
    devices: npt.NDArray[np.uint64] | None = None,
    column_map: Mapping[str, str] | None = None,
    skip_bad_records: bool = False,
    use_arrow: bool = True,
    ports: PortCounter | None = None,
) -> tuple[ActivityTable, IngestStats]:
    """Activity from one IPFIX CSV file, and what was read and skipped.

    `devices` (48-bit MAC integers) limits which devices count; None counts every MAC. `ports`,
    when given, also collects service-port usage.
    """
    path = Path(path)
    mapping = dict(column_map or {})
    try:
        with path.open(newline="", encoding="utf-8-sig") as handle:
            header = next(csv.reader(handle), None)
    except OSError as exc:
        raise InputError(f"{path}: cannot read: {exc.strerror}") from exc
    except UnicodeDecodeError as exc:
        raise InputError(f"{path}: not a text CSV file: {exc}") from exc
    except csv.Error as exc:
        raise InputError(f"{path}: line 1: not CSV: {exc}") from None
    if header is None:
        raise InputError(f"{path}: empty file, expected a header row")
    columns = _Columns(path, header, mapping)
    if use_arrow:
        # The fast path may give up part way; its port counts join `ports` only if it finishes.
        local = PortCounter(ports.devices, ports.unit_seconds) if ports is not None else None
        stats = IngestStats()
        try:
            batches = _arrow_batches(path, columns, stats, skip_bad_records)
            table = batches_to_activity(batches, catalogue, unit_seconds, devices, local)
        except _ArrowGaveUp:
            pass
        else:
            if ports is not None and local is not None:
                ports.extend(local)
            return table, stats
    stats = IngestStats()
    batches = _line_batches(path, columns, stats, skip_bad_records)
    return batches_to_activity(batches, catalogue, unit_seconds, devices, ports), stats


class _ArrowGaveUp(Exception):
    """A value pyarrow cannot convert: the line reader then finds and names it."""


# --- fast path: pyarrow ---------------------------------------------------------------------------


def _arrow_batches(
    path: Path, columns: _Columns, stats: IngestStats, skip_bad: bool
) -> Iterator[FlowBatch]:
    """Raises `_ArrowGaveUp` when a value does not convert."""
    import pyarrow as pa
    import pyarrow.csv as pacsv

    # Counts are read as text too: pyarrow's integer parser also takes hexadecimal ("0x10"),
    # which the line reader refuses.
    types: dict[str, Any] = {column: pa.string() for column in columns.columns.values()}
    convert = pacsv.ConvertOptions(
        include_columns=columns.wanted(),
        column_types=types,
        strings_can_be_null=True,
        quoted_strings_can_be_null=True,
    )
    line = 1
    try:
        reader = pacsv.open_csv(
            path,
            read_options=pacsv.ReadOptions(block_size=BATCH_BYTES),
            convert_options=convert,
        )
        for record_batch in reader:
            n = record_batch.num_rows
            batch, bad = _arrow_batch(record_batch, columns)
            if bool(bad.any()):
                if not skip_bad:
                    # Re-read line by line: it names the bad line and field exactly.
                    raise _ArrowGaveUp
                for i in np.flatnonzero(bad).tolist():
                    stats.skip(f"{path}: line {line + 1 + i}: malformed value")
                batch = batch.take(~bad)
            stats.records += n
            line += n
            yield batch
    except (pa.ArrowInvalid, pa.ArrowTypeError, ValueError) as exc:
        raise _ArrowGaveUp from exc


def _arrow_batch(record_batch: Any, columns: _Columns) -> tuple[FlowBatch, npt.NDArray[np.bool_]]:
    import pyarrow as pa
    import pyarrow.compute as pc

    n = record_batch.num_rows
    bad = np.zeros(n, dtype=bool)

    def column(key: str) -> Any:
        return record_batch.column(record_batch.schema.get_field_index(columns.columns[key]))

    def ints(key: str, fill: int | None) -> npt.NDArray[np.int64]:
        if key not in columns.columns:
            return np.zeros(n, np.int64)
        array = _counts(column(key), bad)
        if array.null_count:
            if fill is None:
                bad[np.asarray(array.is_null())] = True
                array = pc.fill_null(array, 0)
            else:
                array = pc.fill_null(array, fill)
        return np.asarray(array.to_numpy(zero_copy_only=False), dtype=np.int64)

    time_array = record_batch.column(record_batch.schema.get_field_index(columns.time))
    if time_array.null_count:
        bad[np.asarray(time_array.is_null())] = True
        time_array = (
            pc.fill_null(time_array, 0) if pa.types.is_integer(time_array.type) else time_array
        )
    if pa.types.is_timestamp(time_array.type):
        seconds = (
            time_array.cast(pa.timestamp("ns"))
            .cast(pa.int64())
            .to_numpy(zero_copy_only=False)
            .astype(np.float64)
            / 1e9
        )
    elif pa.types.is_integer(time_array.type) or pa.types.is_floating(time_array.type):
        seconds = (
            np.asarray(time_array.to_numpy(zero_copy_only=False), dtype=np.float64)
            * (TIME_FIELDS[columns.time_field])
        )
    else:
        raise ValueError("start times neither numbers nor timestamps")
    bad |= ~plausible_times(seconds)
    seconds = np.nan_to_num(seconds, nan=0.0, posinf=0.0, neginf=0.0)

    has_reverse = "rev_packets" in columns.columns
    src_mac = _macs(column("src_mac"), bad)
    # The destination MAC only matters (and must be valid) when reverse counters attribute to it.
    dst_mac = (
        _macs(column("dst_mac"), bad if has_reverse else None)
        if "dst_mac" in columns.columns
        else np.zeros(n, np.uint64)
    )
    if "proto" in columns.columns:
        proto = _protocols(column("proto"), bad)
    else:
        proto = np.full(n, -1, np.int64)
    sport = ints("sport", 0)
    dport = ints("dport", 0)
    packets = ints("packets", None)
    octets = ints("bytes", 0)
    rev_packets = ints("rev_packets", 0) if has_reverse else None
    rev_bytes = ints("rev_bytes", 0) if has_reverse else None
    bad |= (sport < 0) | (sport > 65535) | (dport < 0) | (dport > 65535)
    bad |= (packets < 0) | (octets < 0) | (packets > MAX_COUNT) | (octets > MAX_COUNT)
    if rev_packets is not None and rev_bytes is not None:
        bad |= (rev_packets < 0) | (rev_bytes < 0)
        bad |= (rev_packets > MAX_COUNT) | (rev_bytes > MAX_COUNT)
    batch = FlowBatch(
        start=seconds,
        src_mac=src_mac,
        dst_mac=dst_mac,
        proto=proto,
        sport=sport,
        dport=dport,
        packets=packets,
        bytes=octets,
        rev_packets=rev_packets,
        rev_bytes=rev_bytes,
    )
    return batch, bad


def _counts(text: Any, bad: npt.NDArray[np.bool_]) -> Any:
    """An int64 column from a string column of counts. pyarrow's integer parser also takes
    hexadecimal ("0x10"), which the line reader refuses, so such entries flag `bad`; searching the
    raw characters first spares most batches the per-entry tests."""
    import pyarrow as pa
    import pyarrow.compute as pc

    data = text.buffers()[2]
    raw = b"" if data is None else data.to_pybytes()
    if b" " in raw or b"\t" in raw:
        text = pc.utf8_trim_whitespace(text)
    if b"x" in raw or b"X" in raw:
        hexadecimal = pc.fill_null(pc.starts_with(text, "0x", ignore_case=True), False)
        bad[np.asarray(hexadecimal)] = True
    return pc.cast(text, pa.int64())


def _macs(array: Any, bad: npt.NDArray[np.bool_] | None) -> npt.NDArray[np.uint64]:
    """48-bit integers of a string column of MACs; malformed (or null) entries flag `bad`."""
    import pyarrow as pa

    n = len(array)
    result = np.zeros(n, dtype=np.uint64)
    if isinstance(array, pa.ChunkedArray):
        array = array.combine_chunks()
    nulls = np.asarray(array.is_null()) if array.null_count else np.zeros(n, bool)
    offsets = np.frombuffer(array.buffers()[1], dtype=np.int32)[array.offset : array.offset + n + 1]
    data_buffer = array.buffers()[2]
    data = (
        np.frombuffer(data_buffer, dtype=np.uint8)
        if data_buffer is not None
        else np.zeros(0, np.uint8)
    )
    lengths = np.diff(offsets)
    regular = (lengths == 17) & ~nulls
    if bool(regular.all()) and offsets[-1] - offsets[0] == 17 * n:
        # The common case: every MAC in "aa:bb:cc:dd:ee:ff" form, back to back in the buffer.
        chars = data[offsets[0] : offsets[-1]].reshape(n, 17)
    elif bool(regular.any()):
        starts = offsets[:-1][regular].astype(np.int64)
        chars = data[starts[:, None] + np.arange(17)[None, :]]
    if bool(regular.any()):
        pairs = (chars[:, _PAIR_POS].astype(np.uint16) << 8) | chars[:, [p + 1 for p in _PAIR_POS]]
        octets = _HEX_PAIR[pairs]
        seps = chars[:, _SEP_POS]
        ok = (octets != 256).all(axis=1) & (((seps == ord(":")) | (seps == ord("-"))).all(axis=1))
        # Six octets into the low bytes of a big-endian 64-bit word.
        words = np.zeros((len(octets), 8), dtype=np.uint8)
        words[:, 2:] = octets
        values = words.view(">u8").reshape(-1).astype(np.uint64)
        result[regular] = np.where(ok, values, 0)
        if bad is not None:
            bad[np.flatnonzero(regular)[~ok]] = True
    irregular = np.flatnonzero(~regular)
    for i in irregular.tolist():
        text = array[i].as_py()
        try:
            result[i] = mac_to_int(text) if text is not None else 0
        except ValueError:
            if bad is not None:
                bad[i] = True
        else:
            if text is None and bad is not None:
                bad[i] = True
    return result


def _protocols(array: Any, bad: npt.NDArray[np.bool_]) -> npt.NDArray[np.int64]:
    """IP protocol numbers from a string column of numbers or names; null → -1 (not IP)."""
    import pyarrow.compute as pc

    encoded = pc.dictionary_encode(array)
    dictionary = encoded.dictionary.to_pylist()
    table = np.array([_protocol_number(v) for v in dictionary] or [0], dtype=np.int64)
    indices = encoded.indices
    nulls = np.asarray(indices.is_null()) if indices.null_count else None
    codes = np.asarray(pc.fill_null(indices, 0).to_numpy(zero_copy_only=False), dtype=np.int64)
    proto = table[codes] if len(dictionary) else np.full(len(codes), -1, np.int64)
    if nulls is not None:
        proto[nulls] = -1
    bad |= proto < -1
    return proto


def _protocol_number(value: str | None) -> int:
    """-1 for empty (non-IP), -2 for anything unreadable."""
    if value is None or not value.strip():
        return -1
    text = value.strip().lower()
    if text in PROTOCOL_NUMBERS:
        return PROTOCOL_NUMBERS[text]
    if is_decimal(text) and int(text) <= 255:
        return int(text)
    return -2


# --- line reader ----------------------------------------------------------------------------------


def _line_batches(
    path: Path, columns: _Columns, stats: IngestStats, skip_bad: bool
) -> Iterator[FlowBatch]:
    index = {h: i for i, h in enumerate(columns.header)}
    time_col = index[columns.time]
    scale = TIME_FIELDS[columns.time_field]
    cols = {k: index[c] for k, c in columns.columns.items()}
    has_reverse = "rev_packets" in cols
    rows: list[tuple[float, int, int, int, int, int, int, int, int, int]] = []
    with path.open(newline="", encoding="utf-8-sig") as handle:
        reader = csv.reader(handle)
        next(reader, None)
        try:
            for row in reader:
                line = reader.line_num
                if not row or (len(row) == 1 and not row[0].strip()):
                    continue
                stats.records += 1
                try:
                    if len(row) != len(columns.header):
                        raise ValueError(f"{len(row)} fields, expected {len(columns.header)}")
                    rows.append(_parse_row(row, time_col, scale, cols, has_reverse))
                except ValueError as exc:
                    if not skip_bad:
                        raise InputError(f"{path}: line {line}: {exc}") from exc
                    stats.skip(f"{path}: line {line}: {exc}")
                    continue
                if len(rows) >= SLOW_CHUNK:
                    yield _rows_batch(rows, has_reverse)
                    rows = []
        except csv.Error as exc:
            # What the csv module cannot split into fields (a field past its size limit).
            raise InputError(f"{path}: line {reader.line_num}: not CSV: {exc}") from None
    if rows:
        yield _rows_batch(rows, has_reverse)


def _parse_row(
    row: Sequence[str],
    time_col: int,
    scale: float,
    cols: Mapping[str, int],
    has_reverse: bool,
) -> tuple[float, int, int, int, int, int, int, int, int, int]:
    def number(key: str, what: str, empty: int | None, hi: int | None = None) -> int:
        if key not in cols:
            return 0
        text = row[cols[key]].strip()
        if not text:
            if empty is None:
                raise ValueError(f"empty {what}")
            return empty
        if not is_decimal(text.removeprefix("-")):
            raise ValueError(f"{what} is not a number: {text!r}")
        value = int(text)
        if value < 0 or (hi is not None and value > hi):
            raise ValueError(f"{what} out of range: {value}")
        return value

    start = _parse_time(row[time_col].strip(), scale)
    why = implausible(start)
    if why is not None:
        raise ValueError(why)
    src = row[cols["src_mac"]].strip()
    try:
        src_mac = mac_to_int(src)
    except ValueError:
        raise ValueError(f"source MAC is not a MAC address: {src!r}") from None
    dst_mac = 0
    if "dst_mac" in cols and row[cols["dst_mac"]].strip():
        try:
            dst_mac = mac_to_int(row[cols["dst_mac"]])
        except ValueError:
            if has_reverse:
                raise ValueError(
                    f"destination MAC is not a MAC: {row[cols['dst_mac']]!r}"
                ) from None
    proto = -1
    if "proto" in cols:
        proto = _protocol_number(row[cols["proto"]])
        if proto == -2:
            raise ValueError(f"protocol is not a number or name: {row[cols['proto']]!r}")
    return (
        start,
        src_mac,
        dst_mac,
        proto,
        number("sport", "source port", 0, 65535),
        number("dport", "destination port", 0, 65535),
        number("packets", "packet count", None, MAX_COUNT),
        number("bytes", "octet count", 0, MAX_COUNT),
        number("rev_packets", "reverse packet count", 0, MAX_COUNT) if has_reverse else 0,
        number("rev_bytes", "reverse octet count", 0, MAX_COUNT) if has_reverse else 0,
    )


def _parse_time(text: str, scale: float) -> float:
    if not text:
        raise ValueError("empty start time")
    try:
        value = float(text)
    except ValueError:
        pass
    else:
        if not math.isfinite(value):
            raise ValueError(f"start time is not finite: {text!r}")
        return value * scale
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        raise ValueError(
            f"start time is neither epoch milliseconds nor YYYY-MM-DD hh:mm:ss.sss: {text!r}"
        ) from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return moment.timestamp()


def _rows_batch(
    rows: list[tuple[float, int, int, int, int, int, int, int, int, int]], has_reverse: bool
) -> FlowBatch:
    columns = list(zip(*rows, strict=True))
    return FlowBatch(
        start=np.array(columns[0], dtype=np.float64),
        src_mac=np.array(columns[1], dtype=np.uint64),
        dst_mac=np.array(columns[2], dtype=np.uint64),
        proto=np.array(columns[3], dtype=np.int64),
        sport=np.array(columns[4], dtype=np.int64),
        dport=np.array(columns[5], dtype=np.int64),
        packets=np.array(columns[6], dtype=np.int64),
        bytes=np.array(columns[7], dtype=np.int64),
        rev_packets=np.array(columns[8], dtype=np.int64) if has_reverse else None,
        rev_bytes=np.array(columns[9], dtype=np.int64) if has_reverse else None,
    )
