"""The counter-read decoding the PTF suite uses — the project's own codec, controller.base.wire —
against messages serialized by the real protobuf, and importable in the PTF environment."""

from __future__ import annotations

import os
import subprocess

import numpy as np
import pytest
from finsy.proto import p4r

from controller.base.errors import SwitchError
from controller.base.wire import CounterValues, decode_counter_read
from tests.support.paths import P4INFO, ROOT

COUNTER_ID = 0x12000001
PTF_PYTHON = ROOT / ".venv-ptf" / "bin" / "python"


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


def read(*responses: bytes, size: int) -> CounterValues:
    return decode_counter_read(list(responses), COUNTER_ID, size, complete=True)


def changes(before: CounterValues, after: CounterValues) -> dict[int, tuple[int, int]]:
    """What `FingerprintTest.changes` computes: the cells that moved, by how much."""
    packets, octets = after.packets - before.packets, after.bytes - before.bytes
    moved = np.flatnonzero((packets != 0) | (octets != 0))
    return {int(i): (int(packets[i]), int(octets[i])) for i in moved}


def test_every_cell_is_one_entity() -> None:
    values = read(response({5: (2, 128)}, 1000), size=1000)
    assert [(i, int(values.packets[i]), int(values.bytes[i])) for i in range(1000)] == [
        (index, *((2, 128) if index == 5 else (0, 0))) for index in range(1000)
    ]


def test_delta_is_exact_for_changed_cells_only() -> None:
    before = read(response({3: (1, 60), 999: (7, 700)}, 1000), size=1000)
    after = read(response({3: (4, 240), 17: (1, 1500), 999: (7, 700)}, 1000), size=1000)
    assert changes(before, after) == {3: (3, 180), 17: (1, 1500)}
    assert changes(after, after) == {}


def test_delta_does_not_depend_on_the_order_cells_come_in() -> None:
    before = read(response({1: (1, 100)}, 4, order=[0, 1, 2, 3]), size=4)
    after = read(response({1: (2, 200), 2: (1, 64)}, 4, order=[3, 2, 1, 0]), size=4)
    assert changes(before, after) == {1: (1, 100), 2: (1, 64)}


def test_cells_split_over_several_responses() -> None:
    first = response({}, 2, order=[0, 1])
    second = response({}, 2, order=[2, 3])
    later = response({3: (5, 5000)}, 4, order=[2, 3])
    assert changes(read(first, second, size=4), read(first, later, size=4)) == {3: (5, 5000)}


def test_large_values_and_absent_fields() -> None:
    message = p4r.ReadResponse()
    entry = message.entities.add().counter_entry
    entry.counter_id = COUNTER_ID
    entry.index.index = 262143
    entry.data.byte_count = 2**40 + 5
    entry.data.packet_count = 2**33
    bare = message.entities.add().counter_entry
    bare.counter_id = COUNTER_ID
    values = decode_counter_read([message.SerializeToString()], COUNTER_ID, 262144)
    assert (int(values.packets[262143]), int(values.bytes[262143])) == (2**33, 2**40 + 5)
    assert (int(values.packets[0]), int(values.bytes[0])) == (0, 0)


def test_fixed_width_varints_and_long_lengths() -> None:
    # Non-minimal varints are valid protobuf: index 1 in three bytes, zero counts written out,
    # and the entity's length itself in two bytes.
    entity = bytes.fromhex("3a12088180809001120408818000" + "1a0408001003")
    wire = b"\x0a" + bytes([len(entity) | 0x80, 0x00]) + entity
    assert p4r.ReadResponse.FromString(wire).entities[0].counter_entry.index.index == 1
    values = decode_counter_read([wire], COUNTER_ID, 2)
    assert values.packets.tolist() == [0, 3]
    assert values.bytes.tolist() == [0, 0]


def test_a_read_missing_or_repeating_a_cell_is_refused() -> None:
    with pytest.raises(SwitchError, match="named 3 distinct cells in 3 entities"):
        read(response({}, 3), size=4)
    with pytest.raises(SwitchError, match="named 3 distinct cells in 4 entities"):
        read(response({}, 4, order=[0, 1, 2, 2]), size=4)


def test_the_ptf_environment_imports_the_codec_and_the_contract() -> None:
    """The PTF suite runs on protobuf 3.20 without finsy: the codec and the contract module must
    work there as they are (the runner puts the checkout on PYTHONPATH)."""
    script = (
        "import sys\n"
        "from google.protobuf import text_format\n"
        "from p4.config.v1 import p4info_pb2\n"
        "from controller.base.contract import Contract\n"
        "from controller.base.wire import decode_counter_read\n"
        "info = text_format.Parse(open(sys.argv[1]).read(), p4info_pb2.P4Info())\n"
        "c = Contract.from_p4info(info, sys.argv[1])\n"
        "v = decode_counter_read([sys.stdin.buffer.read()], 0x12000001, 4, complete=True)\n"
        "print(c.max_devices, c.max_services, c.flood_group, v.packets.tolist(),"
        " 'finsy' in sys.modules)\n"
    )
    done = subprocess.run(
        [str(PTF_PYTHON), "-c", script, str(P4INFO)],
        input=response({2: (9, 900)}, 4),
        capture_output=True,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        check=False,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr.decode()
    assert done.stdout.decode().split() == ["1024", "256", "1", "[0,", "0,", "9,", "0]", "False"]
