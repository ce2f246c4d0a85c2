"""Counter reads on the wire: a wildcard CounterEntry read kept as serialized entities.

The PTF environment must use a pure-Python protobuf (p4runtime-shell pins it), which takes
seconds to parse a whole counter array; the suite reads it twice per test. A snapshot therefore
keeps each cell's wire bytes, and only cells whose bytes changed between two reads are decoded.
Standard library only: PTF imports every module of its test directory.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

Cells = dict[int, tuple[int, int]]


@dataclass(frozen=True)
class CounterSnapshot:
    """A wildcard counter read: the serialized `Entity` messages in the order the target sent."""

    entities: tuple[bytes, ...]

    def since(self, before: CounterSnapshot) -> Cells:
        """{index: (packets, bytes)} of every cell that changed since `before`, by how much.

        Entities equal at the same position cancel out; the rest are decoded on both sides, so
        the result is exact whatever order the target returns cells in.
        """
        change: dict[int, list[int]] = {}
        for old, new in zip(before.entities, self.entities, strict=True):
            if old == new:
                continue
            for entity, sign in ((new, 1), (old, -1)):
                index, packets, octets = counter_entity(entity)
                total = change.setdefault(index, [0, 0])
                total[0] += sign * packets
                total[1] += sign * octets
        return {index: (p, b) for index, (p, b) in change.items() if (p, b) != (0, 0)}


def read_response_entities(response: bytes) -> list[bytes]:
    """The `entities` (field 1) of a serialized ReadResponse, each still serialized."""
    entities: list[bytes] = []
    pos, end = 0, len(response)
    while pos < end:
        # The common case, tag 0x0a with a one-byte length, without a function call.
        if response[pos] == 0x0A and response[pos + 1] < 0x80:
            length = response[pos + 1]
            pos += 2
        else:
            key, pos = _varint(response, pos)
            if key != 0x0A:
                raise ValueError(f"unexpected field {key >> 3} in a ReadResponse")
            length, pos = _varint(response, pos)
        entities.append(response[pos : pos + length])
        pos += length
    return entities


def counter_entity(entity: bytes) -> tuple[int, int, int]:
    """(index, packets, bytes) of a serialized Entity holding a CounterEntry: Entity.counter_entry
    = 7, CounterEntry.index = 2 (Index.index = 1), CounterEntry.data = 3 (CounterData.byte_count
    = 1, packet_count = 2). Absent fields are zero."""
    index = packets = octets = 0
    for field, start, end in _fields(entity, 0, len(entity)):
        if field != 7:
            continue
        for entry_field, value_start, value_end in _fields(entity, start, end):
            if entry_field == 2:
                for number, value, _ in _fields(entity, value_start, value_end):
                    if number == 1:
                        index = value
            elif entry_field == 3:
                for number, value, _ in _fields(entity, value_start, value_end):
                    if number == 1:
                        octets = value
                    elif number == 2:
                        packets = value
    return index, packets, octets


def _fields(buf: bytes, pos: int, end: int) -> Iterator[tuple[int, int, int]]:
    """(field number, value, 0) for varints and (field number, start, end) for length-delimited
    fields of the protobuf message in buf[pos:end]."""
    while pos < end:
        key, pos = _varint(buf, pos)
        wire_type = key & 7
        if wire_type == 0:
            value, pos = _varint(buf, pos)
            yield key >> 3, value, 0
        elif wire_type == 2:
            length, pos = _varint(buf, pos)
            yield key >> 3, pos, pos + length
            pos += length
        else:
            raise ValueError(f"unexpected protobuf wire type {wire_type} in a counter read")


def _varint(buf: bytes, pos: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        byte = buf[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        if byte < 0x80:
            return value, pos
        shift += 7
