"""The P4Runtime wire codec of a wildcard counter read, both ways, vectorised with numpy.

A wildcard read of a 1024 × 256 counter is one or a few ReadResponses holding 262,144
CounterEntry entities, every one of the same shape:

    ReadResponse.entities (1) → Entity.counter_entry (7) → CounterEntry {counter_id (1),
    index (2) → Index {index (1)}, data (3) → CounterData {byte_count (1), packet_count (2)}}

Building or touching that many protobuf objects from Python costs about a second (and tens of
seconds with the pure-Python protobuf of the PTF environment), so both directions work on the
serialized bytes:

- Decoding (`decode_counter_read`, the controller's poll and the PTF suite): one pass in Python to
  find where each entity starts (entities are length-prefixed, so that chain is inherently
  sequential), then every field of every entity at once. Anything the fast path does not expect —
  another field order, an unknown field, a long entity — goes to a plain field-by-field decoder of
  the wire format, so the result never depends on which path ran.
- Encoding (`CounterArrayEncoder`, the reference switch's Read): sparse arrays (most devices use
  few services) get exactly the bytes protobuf itself would serialise; the entries of all-zero
  cells never change, so they are encoded once and cached, and each read encodes only the
  non-zero cells and splices them in. Dense arrays get fixed-width rows: each varint is written
  with the width of the largest value in its column, padded with continuation bytes (0x80 …), and
  zero values are written rather than omitted — valid wire format that every conforming parser
  decodes to exactly the message protobuf would build, with no per-cell work.

numpy and the standard library only: the PTF environment (p4runtime-shell's protobuf 3.20) imports
this module too.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from controller.base.errors import SwitchError

_MAX_VARINT = 10
_PAD = 32

Int64Array = npt.NDArray[np.int64]


@dataclass(frozen=True)
class CounterValues:
    """Packet and byte count of every cell of a counter, indexed by cell."""

    packets: Int64Array
    bytes: Int64Array

    @classmethod
    def zeros(cls, size: int) -> CounterValues:
        """All cells zero."""
        return cls(np.zeros(size, np.int64), np.zeros(size, np.int64))


class _Unexpected(Exception):
    """The bytes are valid protobuf, just not laid out the way the fast path assumes."""


def decode_counter_read(
    responses: Sequence[bytes],
    counter_id: int,
    size: int,
    source: str = "switch",
    *,
    complete: bool = False,
) -> CounterValues:
    """Counter values from the serialized ReadResponse messages of one wildcard counter read.

    Cells missing from the response stay zero, unless `complete` requires the read to name every
    cell exactly once (as BMv2 and the reference switch do). Raises `SwitchError` when an entity
    belongs to another counter, names a cell outside `size`, or (with `complete`) a cell is
    missing or repeated.
    """
    values = CounterValues.zeros(size)
    seen = np.zeros(size if complete else 0, np.bool_)
    entities = 0
    for data in responses:
        try:
            index, packets, counted = _fast(data, counter_id)
        except _Unexpected:
            index, packets, counted = _slow(data, counter_id, source)
        if len(index) and (index.min() < 0 or index.max() >= size):
            raise SwitchError(
                f"{source}: counter read names cell {int(index.max())}, counter has {size} cells"
            )
        values.packets[index] = packets
        values.bytes[index] = counted
        if complete:
            seen[index] = True
            entities += len(index)
    if complete and (entities != size or not seen.all()):
        raise SwitchError(
            f"{source}: a wildcard counter read must name each of the {size} cells once; "
            f"it named {int(seen.sum())} distinct cells in {entities} entities"
        )
    return values


# Entity's oneof fields by number, to name what a wrong read returned.
_ENTITY_KINDS = {
    1: "extern_entry",
    2: "table_entry",
    3: "action_profile_member",
    4: "action_profile_group",
    5: "meter_entry",
    6: "direct_meter_entry",
    8: "direct_counter_entry",
    9: "packet_replication_engine_entry",
    10: "value_set_entry",
    11: "register_entry",
    12: "digest_entry",
}


def _slow(data: bytes, counter_id: int, source: str) -> tuple[Int64Array, Int64Array, Int64Array]:
    """Field by field, any valid layout: unknown fields are skipped, absent ones are zero."""
    index: list[int] = []
    packets: list[int] = []
    counted: list[int] = []
    try:
        for field, start, end in _fields(data, 0, len(data)):
            if field != 1:
                continue
            entry: tuple[int, int] | None = None
            for kind, value_start, value_end in _fields(data, start, end):
                if kind != 7:
                    name = _ENTITY_KINDS.get(kind, f"field {kind}")
                    raise SwitchError(f"{source}: counter read returned a {name}")
                entry = (value_start, value_end)
            if entry is None:
                raise SwitchError(f"{source}: counter read returned an empty entity")
            cell, cell_packets, cell_bytes = _counter_entry(data, *entry, counter_id, source)
            index.append(cell)
            packets.append(cell_packets)
            counted.append(cell_bytes)
    except IndexError:
        raise SwitchError(f"{source}: counter read is not a valid ReadResponse") from None
    return (
        np.asarray(index, np.int64),
        np.asarray(packets, np.int64),
        np.asarray(counted, np.int64),
    )


def _counter_entry(
    data: bytes, start: int, end: int, counter_id: int, source: str
) -> tuple[int, int, int]:
    found_id = index = packets = counted = 0
    for field, value, value_end in _fields(data, start, end):
        if field == 1:
            found_id = value
        elif field == 2:
            for number, inner, _ in _fields(data, value, value_end):
                if number == 1:
                    index = _signed(inner)
        elif field == 3:
            for number, inner, _ in _fields(data, value, value_end):
                if number == 1:
                    counted = _signed(inner)
                elif number == 2:
                    packets = _signed(inner)
    if found_id != counter_id:
        raise SwitchError(f"{source}: counter read returned counter {found_id}, not {counter_id}")
    return index, packets, counted


def _signed(value: int) -> int:
    """An int64 field's varint (two's complement in 64 bits) as a Python int."""
    return value - (1 << 64) if value >> 63 else value


def _fields(buf: bytes, pos: int, end: int) -> Iterator[tuple[int, int, int]]:
    """(field number, value, 0) for varints and (field number, start, end) for length-delimited
    fields of the protobuf message in buf[pos:end]; fixed-width fields are skipped."""
    while pos < end:
        key, pos = _varint_at(buf, pos)
        wire_type = key & 7
        if wire_type == 0:
            value, pos = _varint_at(buf, pos)
            yield key >> 3, value, 0
        elif wire_type == 2:
            length, pos = _varint_at(buf, pos)
            if pos + length > end:
                raise IndexError(pos + length)
            yield key >> 3, pos, pos + length
            pos += length
        elif wire_type in (1, 5):
            pos += 8 if wire_type == 1 else 4
        else:
            raise IndexError(wire_type)
    if pos != end:
        raise IndexError(pos)


def _varint_at(buf: bytes, pos: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        byte = buf[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        if byte < 0x80:
            return value, pos
        shift += 7
        if shift >= 70:
            raise IndexError(pos)


def _entity_starts(buf: npt.NDArray[np.uint8], limit: int) -> Int64Array:
    """Start of every entity: each is `0x0a <length> 0x3a <length - 2> 0x08 ...`.

    Candidates are found with one vectorised comparison; they are exactly the entities when they
    chain, i.e. each one ends where the next begins and the last ends at the end of the message.
    A byte pattern that merely looks like an entity (inside a counter value) breaks the chain, and
    then the chain is walked entity by entity.
    """
    head = buf[:limit]
    candidates = np.flatnonzero(
        (head == 0x0A) & (buf[2 : limit + 2] == 0x3A) & (buf[4 : limit + 4] == 0x08)
    ).astype(np.int64)
    if len(candidates):
        following = candidates + 2 + buf[candidates + 1].astype(np.int64)
        if (
            candidates[0] == 0
            and following[-1] == limit
            and np.array_equal(following[:-1], candidates[1:])
        ):
            return candidates
    starts: list[int] = []
    position = 0
    data = head.tobytes()
    while position < limit:
        starts.append(position)
        if position + 1 >= limit:
            raise _Unexpected
        position += 2 + data[position + 1]
    if position != limit:
        raise _Unexpected
    return np.asarray(starts, dtype=np.int64)


def varint(value: int) -> bytes:
    """One non-negative int as a minimal protobuf varint."""
    out = bytearray()
    while True:
        low, value = value & 0x7F, value >> 7
        if not value:
            out.append(low)
            return bytes(out)
        out.append(low | 0x80)


def _varints(buf: npt.NDArray[np.uint8], at: Int64Array) -> tuple[Int64Array, Int64Array]:
    """Values and encoded lengths of the varints starting at each position in `at`.

    Byte k is only looked at for the varints still going after k bytes: counter values are
    mostly one or two bytes long.
    """
    current = buf[at].astype(np.uint64)
    value = current & np.uint64(0x7F)
    length = np.ones(len(at), np.int64)
    going = np.flatnonzero(current >= 0x80)
    for k in range(1, _MAX_VARINT):
        if not len(going):
            break
        if len(going) == len(at):
            # Every varint is still going (fixed-width encodings): no gathers needed.
            current = buf[at + k].astype(np.uint64)
            value |= (current & np.uint64(0x7F)) << np.uint64(7 * k)
            length += 1
            going = np.flatnonzero(current >= 0x80)
            continue
        current = buf[at[going] + k].astype(np.uint64)
        value[going] |= (current & np.uint64(0x7F)) << np.uint64(7 * k)
        length[going] += 1
        going = going[current >= 0x80]
    if len(going):
        raise _Unexpected
    return value.astype(np.int64), length


def _fast(data: bytes, counter_id: int) -> tuple[Int64Array, Int64Array, Int64Array]:
    empty = np.zeros(0, np.int64)
    limit = len(data)
    if limit == 0:
        return empty, empty, empty
    buf = np.frombuffer(data + bytes(_PAD), dtype=np.uint8)
    starts = _entity_starts(buf, limit)
    n = len(starts)

    def byte(at: Int64Array) -> npt.NDArray[np.uint8]:
        return buf[np.minimum(at, limit)]

    def length(at: Int64Array) -> Int64Array:
        return byte(at).astype(np.int64)

    def require(condition: npt.NDArray[np.bool_]) -> None:
        if not condition.all():
            raise _Unexpected

    entity_len = length(starts + 1)
    # Entity: field 7 (counter_entry), length-delimited, wrapping the whole entity.
    require(byte(starts + 2) == 0x3A)
    entry_len = length(starts + 3)
    require((entry_len < 0x80) & (entry_len == entity_len - 2))
    position = starts + 4
    end = position + entry_len

    # CounterEntry field 1: counter_id, compared with its canonical encoding byte by byte.
    expected = varint(counter_id)
    require(byte(position) == 0x08)
    for k, value in enumerate(expected):
        require(byte(position + 1 + k) == value)
    position = position + 1 + len(expected)

    # Field 2: Index { int64 index = 1 }; index 0 is an empty message.
    require(byte(position) == 0x12)
    index_len = length(position + 1)
    require(index_len < 0x80)
    index = np.zeros(n, np.int64)
    has_index = index_len > 0
    if has_index.any():
        at = position[has_index] + 2
        require(byte(at) == 0x08)
        values, used = _varints(buf, at + 1)
        require(used + 1 == index_len[has_index])
        index[has_index] = values
    position = position + 2 + index_len

    # Field 3: CounterData { int64 byte_count = 1; int64 packet_count = 2 }, zero fields omitted.
    packets = np.zeros(n, np.int64)
    counted = np.zeros(n, np.int64)
    has_data = (position < end) & (byte(position) == 0x1A)
    data_len = np.where(has_data, length(position + 1), 0)
    require(data_len < 0x80)
    inner = np.where(has_data, position + 2, position)
    data_end = inner + data_len
    for tag, target in ((0x08, counted), (0x10, packets)):
        present = (inner < data_end) & (byte(inner) == tag)
        if present.any():
            values, used = _varints(buf, inner[present] + 1)
            target[present] = values
            inner = inner.copy()
            inner[present] += 1 + used
    require(inner == data_end)
    require(data_end == end)
    return index, packets, counted


# Encoding ---------------------------------------------------------------------------------------

_ENTITIES_TAG = 0x0A  # ReadResponse.entities, field 1, length-delimited
_COUNTER_ENTRY_TAG = 0x3A  # Entity.counter_entry, field 7, length-delimited
_COUNTER_ID_TAG = 0x08  # CounterEntry.counter_id, field 1, varint
_INDEX_TAG = 0x12  # CounterEntry.index, field 2, length-delimited
_DATA_TAG = 0x1A  # CounterEntry.data, field 3, length-delimited
_INDEX_VALUE_TAG = 0x08  # Index.index, field 1, varint
_BYTE_COUNT_TAG = 0x08  # CounterData.byte_count, field 1, varint
_PACKET_COUNT_TAG = 0x10  # CounterData.packet_count, field 2, varint

# Default gRPC clients refuse messages above 4 MiB; stay well below.
MAX_RESPONSE_BYTES = 3 << 20
# Above this share of non-zero cells, splicing costs more than fixed-width rows.
SPARSE_FRACTION = 0.1

ByteMatrix = npt.NDArray[np.uint8]


def _varint_lengths(values: npt.NDArray[np.uint64]) -> Int64Array:
    lengths = np.ones(values.shape, dtype=np.int64)
    longest = len(varint(int(values.max(initial=0))))
    for k in range(1, longest):
        lengths += values >= np.uint64(1 << (7 * k))
    return lengths


def _varint_block(
    values: npt.NDArray[np.uint64], width: int, lengths: Int64Array | None = None
) -> ByteMatrix:
    """Varint bytes of every value in `width` columns. With `lengths`, each value is minimal and
    the bytes past its length are garbage; without, every value is padded to `width` bytes."""
    shifts = np.arange(0, 7 * width, 7, dtype=np.uint64)
    block = ((values[:, None] >> shifts[None, :]) & np.uint64(0x7F)).astype(np.uint8)
    if lengths is None:
        block[:, :-1] |= 0x80
    else:
        block |= (np.arange(width)[None, :] < (lengths[:, None] - 1)).astype(np.uint8) << 7
    return block


class _Rows:
    """Entries as a byte matrix built column block by column block, with a mask of the bytes
    each entry really has; reading the kept bytes row by row gives the entries in order."""

    def __init__(self, rows: int) -> None:
        self.rows = rows
        self.blocks: list[ByteMatrix] = []
        self.masks: list[npt.NDArray[np.bool_]] = []

    def const(self, data: bytes) -> None:
        block = np.frombuffer(data, dtype=np.uint8)
        self.blocks.append(np.broadcast_to(block, (self.rows, len(data))))
        self.masks.append(np.ones((self.rows, len(data)), dtype=np.bool_))

    def column(self, values: Int64Array, present: npt.NDArray[np.bool_] | None = None) -> None:
        self.blocks.append(values.astype(np.uint8)[:, None])
        mask = np.ones(self.rows, dtype=np.bool_) if present is None else present
        self.masks.append(mask[:, None])

    def varint(
        self, values: npt.NDArray[np.uint64], lengths: Int64Array, present: npt.NDArray[np.bool_]
    ) -> None:
        width = int(lengths.max(initial=1))
        self.blocks.append(_varint_block(values, width, lengths))
        self.masks.append((np.arange(width)[None, :] < lengths[:, None]) & present[:, None])

    def tobytes(self) -> bytes:
        matrix = np.hstack(self.blocks)
        return matrix[np.hstack(self.masks)].tobytes()


def encode_minimal(
    counter_id: int, indices: Int64Array, packets: Int64Array, byte_counts: Int64Array
) -> tuple[bytes, Int64Array]:
    """Entries exactly as protobuf serialises them, and each entry's size in bytes."""
    index_u = indices.astype(np.uint64)
    bytes_u = byte_counts.astype(np.uint64)
    packets_u = packets.astype(np.uint64)
    has_index, has_bytes, has_packets = indices != 0, byte_counts != 0, packets != 0
    index_vl = _varint_lengths(index_u)
    bytes_vl = _varint_lengths(bytes_u)
    packets_vl = _varint_lengths(packets_u)
    index_len = np.where(has_index, 1 + index_vl, 0)
    data_len = np.where(has_bytes, 1 + bytes_vl, 0) + np.where(has_packets, 1 + packets_vl, 0)
    counter_id_field = bytes([_COUNTER_ID_TAG]) + varint(counter_id)
    # Every length here is < 128, so each is a one-byte varint.
    entry_len = len(counter_id_field) + 2 + index_len + 2 + data_len
    rows = _Rows(indices.size)
    rows.const(bytes([_ENTITIES_TAG]))
    rows.column(2 + entry_len)
    rows.const(bytes([_COUNTER_ENTRY_TAG]))
    rows.column(entry_len)
    rows.const(counter_id_field + bytes([_INDEX_TAG]))
    rows.column(index_len)
    rows.column(np.full(indices.size, _INDEX_VALUE_TAG, dtype=np.int64), has_index)
    rows.varint(index_u, index_vl, has_index)
    rows.const(bytes([_DATA_TAG]))
    rows.column(data_len)
    rows.column(np.full(indices.size, _BYTE_COUNT_TAG, dtype=np.int64), has_bytes)
    rows.varint(bytes_u, bytes_vl, has_bytes)
    rows.column(np.full(indices.size, _PACKET_COUNT_TAG, dtype=np.int64), has_packets)
    rows.varint(packets_u, packets_vl, has_packets)
    return rows.tobytes(), 4 + entry_len


def _width(values: Int64Array) -> int:
    return len(varint(int(values.max(initial=0))))


class CounterArrayEncoder:
    """Encodes wildcard reads of one counter array; what never changes is cached."""

    def __init__(self, counter_id: int, size: int, limit: int = MAX_RESPONSE_BYTES) -> None:
        self.counter_id = counter_id
        self.size = size
        self.limit = limit
        self._lock = threading.Lock()
        self._zero: tuple[bytes, Int64Array, Int64Array] | None = None
        self._padded_index: ByteMatrix | None = None
        self._templates: dict[tuple[int, int], ByteMatrix] = {}

    def encode(self, packets: Int64Array, byte_counts: Int64Array) -> list[bytes]:
        """Serialised ReadResponses (each at most `limit` bytes) holding every cell in order."""
        cells = np.flatnonzero((packets != 0) | (byte_counts != 0))
        if cells.size <= self.size * SPARSE_FRACTION:
            return self._sparse(cells, packets, byte_counts)
        return self._dense(packets, byte_counts)

    # Sparse: exact protobuf bytes ------------------------------------------------------------

    def _zero_entries(self) -> tuple[bytes, Int64Array, Int64Array]:
        with self._lock:
            if self._zero is None:
                zeros = np.zeros(self.size, dtype=np.int64)
                data, sizes = encode_minimal(
                    self.counter_id, np.arange(self.size, dtype=np.int64), zeros, zeros
                )
                starts = np.concatenate(([0], np.cumsum(sizes)))
                self._zero = (data, starts, sizes)
            return self._zero

    def _sparse(
        self, cells: Int64Array, packets: Int64Array, byte_counts: Int64Array
    ) -> list[bytes]:
        zero, starts, zero_sizes = self._zero_entries()
        data, sizes = encode_minimal(self.counter_id, cells, packets[cells], byte_counts[cells])
        entry_ends = np.cumsum(sizes).tolist()
        pieces: list[bytes] = []
        previous = 0
        entry_start = 0
        for cell, entry_end in zip(cells.tolist(), entry_ends, strict=True):
            pieces.append(zero[starts[previous] : starts[cell]])
            pieces.append(data[entry_start:entry_end])
            previous, entry_start = cell + 1, entry_end
        pieces.append(zero[starts[previous] :])
        every = zero_sizes.copy()
        every[cells] = sizes
        return _split(b"".join(pieces), np.cumsum(every), self.limit)

    # Dense: fixed-width rows -------------------------------------------------------------------

    def _template(self, byte_width: int, packet_width: int) -> ByteMatrix:
        with self._lock:
            template = self._templates.get((byte_width, packet_width))
            if template is not None:
                return template
            if self._padded_index is None:
                indices = np.arange(self.size, dtype=np.uint64)
                width = _width(indices.astype(np.int64))
                self._padded_index = _varint_block(indices, width)
            index_bytes = self._padded_index
            index_message = 1 + index_bytes.shape[1]
            data_message = 2 + byte_width + packet_width
            counter_id_field = bytes([_COUNTER_ID_TAG]) + varint(self.counter_id)
            entry = len(counter_id_field) + 2 + index_message + 2 + data_message
            head = bytes([_ENTITIES_TAG, 2 + entry, _COUNTER_ENTRY_TAG, entry])
            head += counter_id_field + bytes([_INDEX_TAG, index_message, _INDEX_VALUE_TAG])
            tail_width = 3 + byte_width + 1 + packet_width
            template = np.zeros(
                (self.size, len(head) + index_bytes.shape[1] + tail_width), np.uint8
            )
            template[:, : len(head)] = np.frombuffer(head, dtype=np.uint8)
            column = len(head) + index_bytes.shape[1]
            template[:, len(head) : column] = index_bytes
            template[:, column : column + 3] = (_DATA_TAG, data_message, _BYTE_COUNT_TAG)
            template[:, column + 3 + byte_width] = _PACKET_COUNT_TAG
            self._templates[(byte_width, packet_width)] = template
            return template

    def _dense(self, packets: Int64Array, byte_counts: Int64Array) -> list[bytes]:
        byte_width, packet_width = _width(byte_counts), _width(packets)
        rows = self._template(byte_width, packet_width).copy()
        record = rows.shape[1]
        packet_start = record - packet_width
        rows[:, packet_start - 1 - byte_width : packet_start - 1] = _varint_block(
            byte_counts.astype(np.uint64), byte_width
        )
        rows[:, packet_start:] = _varint_block(packets.astype(np.uint64), packet_width)
        flat = rows.reshape(-1)
        step = max(1, self.limit // record) * record
        return [flat[start : start + step].tobytes() for start in range(0, flat.size, step)]


def _split(data: bytes, ends: Int64Array, limit: int) -> list[bytes]:
    """Cut encoded entries into ReadResponses of at most `limit` bytes, at entry boundaries."""
    chunks: list[bytes] = []
    start = 0
    total = len(data)
    while start < total:
        cut = int(np.searchsorted(ends, start + limit, side="right")) - 1
        end = int(ends[cut]) if cut >= 0 else total
        if end <= start:  # one entry larger than the limit: send it alone
            end = int(ends[np.searchsorted(ends, start, side="right")])
        chunks.append(data[start:end])
        start = end
    return chunks
