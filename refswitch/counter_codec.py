"""Wire encoding of a whole counter array as ReadResponse bytes, vectorised with numpy.

A wildcard read of a 1024×256 counter returns 262,144 CounterEntry messages; building them as
protobuf objects in Python takes about a second. Every entry has the same shape:

    ReadResponse.entities (1) → Entity.counter_entry (7) → CounterEntry {counter_id (1),
    index (2) → Index {index (1)}, data (3) → CounterData {byte_count (1), packet_count (2)}}

so the bytes are assembled with numpy, one entry per matrix row, in one of two ways:

- Sparse arrays (the usual case: most devices use few services) get exactly the bytes protobuf
  itself would serialise. The entries of all-zero cells never change, so they are encoded once
  and cached; each read encodes only the non-zero cells and splices them in.
- Dense arrays get fixed-width rows: each varint is written with the width of the largest value
  in its column, padded with continuation bytes (0x80 …), and zero values are written rather than
  omitted. That is valid protobuf wire format which every conforming parser decodes to exactly the
  message protobuf would build (the tests check that equality), and it needs no per-cell work.
"""

from __future__ import annotations

import threading

import numpy as np
import numpy.typing as npt

from controller.base.wire import varint

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

Int64Array = npt.NDArray[np.int64]
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
