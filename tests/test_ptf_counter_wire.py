"""The PTF suite's counter-read decoding, against messages serialized by the real protobuf."""

from __future__ import annotations

from finsy.proto import p4r

from ptf_tests.counter_wire import CounterSnapshot, counter_entity, read_response_entities

COUNTER_ID = 0x12000001


def response(cells: dict[int, tuple[int, int]], size: int, order: list[int] | None = None) -> bytes:
    """A ReadResponse holding every cell of a `size`-cell counter, as a P4Runtime server sends."""
    message = p4r.ReadResponse()
    for index in order if order is not None else range(size):
        entry = message.entities.add().counter_entry
        entry.counter_id = COUNTER_ID
        entry.index.index = index
        packets, octets = cells.get(index, (0, 0))
        entry.data.packet_count = packets
        entry.data.byte_count = octets
    return message.SerializeToString()


def snapshot(*responses: bytes) -> CounterSnapshot:
    return CounterSnapshot(tuple(e for r in responses for e in read_response_entities(r)))


def test_every_cell_is_one_entity() -> None:
    entities = read_response_entities(response({5: (2, 128)}, 1000))
    assert [counter_entity(e) for e in entities] == [
        (index, *((2, 128) if index == 5 else (0, 0))) for index in range(1000)
    ]


def test_delta_is_exact_for_changed_cells_only() -> None:
    before = snapshot(response({3: (1, 60), 999: (7, 700)}, 1000))
    after = snapshot(response({3: (4, 240), 17: (1, 1500), 999: (7, 700)}, 1000))
    assert after.since(before) == {3: (3, 180), 17: (1, 1500)}
    assert after.since(after) == {}


def test_delta_does_not_depend_on_the_order_cells_come_in() -> None:
    before = snapshot(response({1: (1, 100)}, 4, order=[0, 1, 2, 3]))
    after = snapshot(response({1: (2, 200), 2: (1, 64)}, 4, order=[3, 2, 1, 0]))
    assert after.since(before) == {1: (1, 100), 2: (1, 64)}


def test_cells_split_over_several_responses() -> None:
    first = response({}, 2, order=[0, 1])
    second = response({}, 2, order=[2, 3])
    later = response({3: (5, 5000)}, 4, order=[2, 3])
    assert snapshot(first, later).since(snapshot(first, second)) == {3: (5, 5000)}


def test_large_values_and_absent_fields() -> None:
    message = p4r.ReadResponse()
    entry = message.entities.add().counter_entry
    entry.counter_id = COUNTER_ID
    entry.index.index = 262143
    entry.data.byte_count = 2**40 + 5
    entry.data.packet_count = 2**33
    bare = message.entities.add().counter_entry
    bare.counter_id = COUNTER_ID
    entities = read_response_entities(message.SerializeToString())
    assert [counter_entity(e) for e in entities] == [(262143, 2**33, 2**40 + 5), (0, 0, 0)]


def test_fixed_width_varints_and_long_lengths() -> None:
    # Non-minimal varints are valid protobuf: index 1 in three bytes, zero counts written out,
    # and the entity's length itself in two bytes.
    entity = bytes.fromhex("3a12088180809001120408818000" + "1a0408001003")
    wire = b"\x0a" + bytes([len(entity) | 0x80, 0x00]) + entity
    assert read_response_entities(wire) == [entity]
    assert counter_entity(entity) == (1, 3, 0)
