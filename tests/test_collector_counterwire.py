"""The wire-format counter decoder agrees with protobuf on every layout it may see."""

from __future__ import annotations

import numpy as np
import pytest
from finsy.proto import p4r

from controller.base.errors import SwitchError
from controller.base.wire import CounterArrayEncoder, decode_counter_read

COUNTER = 301989889


def response(indices: list[int], packets: list[int], counted: list[int]) -> bytes:
    message = p4r.ReadResponse()
    for i, p, b in zip(indices, packets, counted, strict=True):
        entry = message.entities.add().counter_entry
        entry.counter_id = COUNTER
        entry.index.index = i
        entry.data.packet_count = p
        entry.data.byte_count = b
    return message.SerializeToString()


def test_random_cells_decode_exactly() -> None:
    rng = np.random.default_rng(3)
    size = 4096
    packets = rng.integers(0, 2**45, size) * (rng.random(size) < 0.4)
    counted = packets * rng.integers(0, 9000, size)
    order = rng.permutation(size)
    data = response(order.tolist(), packets[order].tolist(), counted[order].tolist())
    half = len(data) // 2
    # Split into two ReadResponses at an entity boundary, as a server may stream them.
    cut = 0
    for start in range(half, len(data)):
        if data[start] == 0x0A and data[start + 2] == 0x3A:
            probe = p4r.ReadResponse()
            try:
                probe.ParseFromString(data[:start])
                probe.ParseFromString(data[start:])
            except Exception:
                continue
            cut = start
            break
    values = decode_counter_read([data[:cut], data[cut:]], COUNTER, size)
    assert np.array_equal(values.packets, packets)
    assert np.array_equal(values.bytes, counted)


def test_values_that_look_like_entity_headers() -> None:
    # 0x0a ?? 0x3a ?? 0x08 inside a byte count: the fast candidate scan must not be fooled.
    tricky = int.from_bytes(bytes([0x08, 0x3A | 0x80, 0x06 | 0x80, 0x0A | 0x80]), "little")
    data = response([0, 1, 2], [1, 2, 3], [tricky, 5, tricky])
    values = decode_counter_read([data], COUNTER, 3)
    assert values.packets.tolist() == [1, 2, 3]
    assert values.bytes.tolist() == [tricky, 5, tricky]


def test_unusual_layout_falls_back_to_protobuf() -> None:
    # CounterEntry fields written in reverse order: legal protobuf, not the usual layout.
    entity = bytes.fromhex("3a10" + "1a04" + "1005" + "0864" + "1202" + "0802" + "088180809001")
    wrapped = bytes([0x0A, len(entity)]) + entity
    assert p4r.ReadResponse.FromString(wrapped).entities[0].counter_entry.index.index == 2
    values = decode_counter_read([wrapped], COUNTER, 4)
    assert values.packets.tolist() == [0, 0, 5, 0]
    assert values.bytes.tolist() == [0, 0, 100, 0]


def test_empty_response_and_errors() -> None:
    assert decode_counter_read([b""], COUNTER, 2).packets.tolist() == [0, 0]
    with pytest.raises(SwitchError, match="names cell 9, counter has 4 cells"):
        decode_counter_read([response([9], [1], [1])], COUNTER, 4)
    other = p4r.ReadResponse()
    entry = other.entities.add().counter_entry
    entry.counter_id = 7
    entry.index.index = 1
    with pytest.raises(SwitchError, match="returned counter 7, not 301989889"):
        decode_counter_read([other.SerializeToString()], COUNTER, 4)


def test_reference_switch_encoding_decodes_exactly() -> None:
    size = 1024 * 256
    rng = np.random.default_rng(11)
    packets = rng.integers(0, 2**33, size) * (rng.random(size) < 0.05)
    counted = packets * 1500
    chunks = CounterArrayEncoder(COUNTER, size).encode(packets, counted)
    assert len(chunks) > 1, "the read spans several ReadResponses"
    values = decode_counter_read(chunks, COUNTER, size)
    assert np.array_equal(values.packets, packets)
    assert np.array_equal(values.bytes, counted)
