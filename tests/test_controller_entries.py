"""Golden tests: the exact P4Runtime entities built from the committed P4Info."""

from __future__ import annotations

import pytest
from finsy.proto import p4r
from google.protobuf import text_format

from controller.base.errors import InputError
from controller.base.p4info import P4Schema
from controller.engine.catalogue import Catalogue
from controller.engine.services import Service
from controller.p4rt import entries
from controller.p4rt.forwarding import Forwarding
from tests.support.paths import P4INFO


@pytest.fixture(scope="module")
def schema() -> P4Schema:
    return P4Schema.load(P4INFO)


def text(message: p4r.TableEntry | p4r.Entity | p4r.DigestEntry) -> str:
    return text_format.MessageToString(message, as_one_line=True)


def test_device_entry_exact_bytes(schema: P4Schema) -> None:
    entry = entries.device_entry(schema, "AA:BB:CC:DD:EE:01", 7)
    assert entry.SerializeToString() == bytes.fromhex(
        "0881808010"  # table_id 33554433
        + "120c0801"  # match: field_id 1
        + "1208"  # exact
        + "0a06aabbccddee01"  # value: the 6 MAC bytes
        + "1a0e"  # action
        + "0a0c"  # TableAction.action
        + "0881808008"  # action_id 16777217
        + "22051001"  # param: param_id 1
        + "1a0107"  # value 0x07 (canonical: one byte)
    )
    assert text(entry) == (
        'table_id: 33554433 match { field_id: 1 exact { value: "\\252\\273\\314\\335\\356\\001" } }'
        ' action { action { action_id: 16777217 params { param_id: 1 value: "\\007" } } }'
    )


def test_service_entries_ternary_proto_range_port_and_priority(schema: P4Schema) -> None:
    https = Service(id=3, name="tcp/443", proto=6, port_lo=443, port_hi=443, priority=100)
    ephemeral = Service(5, "udp/49152-65535", 17, 49152, 65535, 20, in_dst_table=False)
    built = entries.service_entries(schema, [https], [https, ephemeral])
    assert [text(e) for e in built] == [
        'table_id: 33554434 match { field_id: 1 ternary { value: "\\006" mask: "\\377" } }'
        ' match { field_id: 2 range { low: "\\001\\273" high: "\\001\\273" } }'
        ' action { action { action_id: 16777219 params { param_id: 1 value: "\\003" } } }'
        " priority: 100",
        'table_id: 33554435 match { field_id: 1 ternary { value: "\\006" mask: "\\377" } }'
        ' match { field_id: 2 range { low: "\\001\\273" high: "\\001\\273" } }'
        ' action { action { action_id: 16777219 params { param_id: 1 value: "\\003" } } }'
        " priority: 100",
        'table_id: 33554435 match { field_id: 1 ternary { value: "\\021" mask: "\\377" } }'
        ' match { field_id: 2 range { low: "\\300\\000" high: "\\377\\377" } }'
        ' action { action { action_id: 16777219 params { param_id: 1 value: "\\005" } } }'
        " priority: 20",
    ]


def test_dont_care_fields_are_omitted(schema: P4Schema) -> None:
    any_udp = Service(1, "udp/0-65535", 17, 0, 65535, 3)
    anything_on_53 = Service(2, "ip/any/53-53", None, 53, 53, 4)
    icmp = Service(4, "icmp", 1, 0, 0, 9)
    dst = entries.service_entries(schema, [any_udp, anything_on_53, icmp], [])
    assert [[m.field_id for m in e.match] for e in dst] == [[1], [2], [1, 2]]
    assert dst[2].match[1].range.low == b"\x00" and dst[2].match[1].range.high == b"\x00"


def test_bad_services_are_refused(schema: P4Schema) -> None:
    with pytest.raises(InputError, match="tcp/1: priority must be > 0"):
        entries.service_entries(schema, [Service(1, "tcp/1", 6, 1, 1, 0)], [])
    with pytest.raises(InputError, match="bad port range 9-8"):
        entries.service_entries(schema, [Service(1, "x", 6, 9, 8, 1)], [])


def test_catalogue_entries_cover_both_tables(schema: P4Schema) -> None:
    catalogue = Catalogue.default()
    built = entries.catalogue_entries(schema, catalogue)
    dst = [e for e in built if e.table_id == schema.table("service_by_dst").id]
    src = [e for e in built if e.table_id == schema.table("service_by_src").id]
    assert len(dst) == len(catalogue.dst_services())
    assert len(src) == len(catalogue.src_services()) == len(catalogue.services)
    ids = sorted(int.from_bytes(e.action.action.params[0].value, "big") for e in src)
    assert ids == [s.id for s in sorted(catalogue.services, key=lambda s: s.id)]


def test_forwarding_entries_default_and_flood(schema: P4Schema) -> None:
    forwarding = Forwarding(ports=[3, 0, 1, 2, 255], static={"02:00:00:00:00:0A": 2}, cpu_port=255)
    assert forwarding.learn("02:00:00:00:00:0b", 1) is True
    assert forwarding.learn("02:00:00:00:00:0b", 1) is False
    assert forwarding.learn("02:00:00:00:00:0a", 3) is False, "static entries win"
    assert forwarding.learn("02:00:00:00:00:0c", 255) is False, "the CPU port is never learned"
    assert [text(e) for e in forwarding.entries(schema)] == [
        'table_id: 33554436 match { field_id: 1 exact { value: "\\002\\000\\000\\000\\000\\n" } }'
        ' action { action { action_id: 16777220 params { param_id: 1 value: "\\002" } } }',
        'table_id: 33554436 match { field_id: 1 exact { value: "\\002\\000\\000\\000\\000\\013" } }'
        ' action { action { action_id: 16777220 params { param_id: 1 value: "\\001" } } }',
    ]
    assert text(forwarding.default(schema)) == (
        "table_id: 33554436 action { action { action_id: 16777221 } } is_default_action: true"
    )
    assert text(forwarding.flood(schema) or p4r.Entity()) == (
        "packet_replication_engine_entry { multicast_group_entry { multicast_group_id: 1"
        " replicas { egress_port: 0 instance: 1 } replicas { egress_port: 1 instance: 1 }"
        " replicas { egress_port: 2 instance: 1 } replicas { egress_port: 3 instance: 1 } } }"
    )


def test_tap_mode_drops_and_installs_no_forwarding(schema: P4Schema) -> None:
    tap = Forwarding(ports=[0, 1], static={"02:00:00:00:00:0a": 1}, tap=True)
    assert tap.entries(schema) == []
    assert tap.flood(schema) is None
    assert text(tap.default(schema)) == (
        "table_id: 33554436 action { action { action_id: 16777222 } } is_default_action: true"
    )


def test_digest_counter_and_sizes(schema: P4Schema) -> None:
    assert text(entries.digest_entry(schema)) == (
        "digest_id: 388360070 config { max_list_size: 1 ack_timeout_ns: 1000000000 }"
    )
    assert text(entries.counter_wildcard(schema)) == "counter_entry { counter_id: 301989889 }"
    assert text(entries.table_wildcard(schema, entries.L2_TABLE)) == (
        "table_entry { table_id: 33554436 }"
    )
    assert entries.max_services(schema) == 256


def test_match_key_ignores_action_and_field_order(schema: P4Schema) -> None:
    one = entries.device_entry(schema, "02:00:00:00:00:01", 1)
    other = entries.device_entry(schema, "02:00:00:00:00:01", 9)
    assert entries.match_key(one) == entries.match_key(other)
    service = Service(3, "tcp/443", 6, 443, 443, 100)
    entry = entries.service_entries(schema, [service], [])[0]
    swapped = p4r.TableEntry()
    swapped.CopyFrom(entry)
    del swapped.match[:]
    swapped.match.extend(reversed(entry.match))
    assert entries.match_key(swapped) == entries.match_key(entry)
    assert entries.match_key(entry) != entries.match_key(one)
