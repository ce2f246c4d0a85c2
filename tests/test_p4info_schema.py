from __future__ import annotations

from pathlib import Path

import pytest
from finsy.proto import p4i
from google.protobuf import text_format

from controller.base.errors import InputError
from controller.base.p4info import (
    P4Schema,
    decode_int,
    decode_mac,
    encode_int,
    encode_mac,
    normalize_mac,
)

PROBE = """
tables {
  preamble { id: 33554448 name: "IngressImpl.device_table" alias: "device_table" }
  match_fields { id: 1 name: "src_mac" bitwidth: 48 match_type: EXACT }
  action_refs { id: 16777217 }
  size: 1024
}
actions {
  preamble { id: 16777217 name: "IngressImpl.set_device" alias: "set_device" }
  params { id: 1 name: "device_id" bitwidth: 16 }
}
counters {
  preamble { id: 301989889 name: "IngressImpl.service_hits" alias: "service_hits" }
  spec { unit: BOTH }
  size: 1024
}
registers {
  preamble { id: 373302642 name: "IngressImpl.seen" alias: "seen" }
  type_spec { bitstring { bit { bitwidth: 16 } } }
  size: 64
}
digests {
  preamble { id: 388360070 name: "new_device_t" alias: "new_device_t" }
  type_spec { struct { name: "new_device_t" } }
}
type_info {
  structs {
    key: "new_device_t"
    value {
      members { name: "mac" type_spec { bitstring { bit { bitwidth: 48 } } } }
      members { name: "port" type_spec { bitstring { bit { bitwidth: 9 } } } }
    }
  }
}
"""


@pytest.fixture
def schema(tmp_path: Path) -> P4Schema:
    path = tmp_path / "probe.p4info.txtpb"
    path.write_text(PROBE)
    return P4Schema.load(path)


def test_lookups_by_name_alias_and_id(schema: P4Schema) -> None:
    table = schema.table("device_table")
    assert table is schema.table("IngressImpl.device_table") is schema.table(33554448)
    assert table.field("src_mac").bitwidth == 48
    assert table.field("src_mac").match_type == "EXACT"
    assert table.action_ids == (16777217,)
    assert schema.action("set_device").param("device_id").bitwidth == 16
    assert schema.counter("service_hits").unit == "BOTH"
    assert schema.counter("service_hits").size == 1024
    assert schema.register("seen").bitwidth == 16
    assert schema.digest("new_device_t").members == (("mac", 48), ("port", 9))
    assert schema.by_id(301989889).name == "IngressImpl.service_hits"


def test_unknown_names_are_reported_with_the_source(schema: P4Schema) -> None:
    with pytest.raises(InputError, match=r"probe\.p4info\.txtpb has no table 'nope'"):
        schema.table("nope")
    with pytest.raises(InputError, match="has no match field 'dst_mac'"):
        schema.table("device_table").field("dst_mac")


def test_diff_names_the_object_that_differs(schema: P4Schema) -> None:
    other = p4i.P4Info()
    text_format.Parse(PROBE.replace("bitwidth: 16 }\n}", "bitwidth: 32 }\n}", 1), other)
    theirs = P4Schema(other, "switch")
    assert schema.diff(theirs) == [
        "action IngressImpl.set_device differs: "
        f"{schema.action('set_device')} != {theirs.action('set_device')}"
    ]
    assert schema.diff(schema) == []
    del other.registers[:]
    assert P4Schema(other, "switch").diff(schema)[0] == (
        f"register IngressImpl.seen only in {schema.source}"
    )


def test_bad_files_are_named(tmp_path: Path) -> None:
    bad = tmp_path / "bad.txtpb"
    bad.write_text("tables { nonsense: 1 }")
    with pytest.raises(InputError, match=r"bad\.txtpb is not a valid P4Info"):
        P4Schema.load(bad)
    with pytest.raises(InputError, match="cannot read P4Info"):
        P4Schema.load(tmp_path / "missing.txtpb")


def test_canonical_encoding() -> None:
    assert encode_int(0, 16) == b"\x00"
    assert encode_int(255, 16) == b"\xff"
    assert encode_int(256, 16) == b"\x01\x00"
    assert decode_int(b"\x00\x01\x00") == 256
    with pytest.raises(InputError, match="does not fit in 9 bits"):
        encode_int(512, 9)
    assert encode_mac("00:00:00:00:00:01") == b"\x01"
    assert decode_mac(b"\x01") == "00:00:00:00:00:01"
    assert normalize_mac("AA-BB-CC-DD-EE-0F") == "aa:bb:cc:dd:ee:0f"
    with pytest.raises(InputError, match="is not a MAC address"):
        encode_mac("aa:bb:cc")
