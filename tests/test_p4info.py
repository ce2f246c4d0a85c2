"""The committed P4Info against the contract the controller and the reference switch expect.

The committed P4Info and BMv2 JSON are p4c's own output (`make build` writes them; with p4c on
PATH, tests/test_p4build.py compiles afresh and requires both byte for byte). Here, without p4c:
the objects, IDs, widths, kinds and sizes the README's contract table and `controller.base.contract`
state, the compile-time constants p4c copied from `@svcfp_contract`, and the refusal of a P4Info
that breaks the contract, naming what differs.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
from finsy.proto import p4i
from google.protobuf import text_format

from controller.base import contract as names
from controller.base.contract import Contract
from controller.base.errors import InputError

ROOT = Path(__file__).resolve().parent.parent
P4INFO = ROOT / "p4src" / "fingerprint.p4info.txtpb"
CONTRACT = ROOT / "p4src" / "README.md"


def committed() -> p4i.P4Info:
    return text_format.Parse(P4INFO.read_text(), p4i.P4Info())


def contract_rows() -> list[tuple[str, str, int]]:
    """(kind, fully-qualified name, id) from the P4Runtime objects table of p4src/README.md."""
    rows = []
    for line in CONTRACT.read_text().splitlines():
        cells = [cell.strip() for cell in line.strip().strip("|").split("|")]
        if len(cells) != 3 or cells[0] not in ("table", "action", "counter", "register", "digest"):
            continue
        name = re.match(r"`([\w.]+)", cells[1])
        number = re.match(r"(0x[0-9a-fA-F]+|\d+)", cells[2])
        assert name and number, line
        rows.append((cells[0], name.group(1), int(number.group(1), 0)))
    return rows


def test_committed_p4info_has_every_contract_object_with_its_id() -> None:
    info = committed()
    by_kind: dict[str, Any] = {
        "table": info.tables,
        "action": info.actions,
        "counter": info.counters,
        "register": info.registers,
        "digest": info.digests,
    }
    found = {(kind, o.preamble.name, o.preamble.id) for kind, objs in by_kind.items() for o in objs}
    assert found == set(contract_rows())


def test_committed_p4info_widths_and_sizes_follow_the_contract() -> None:
    info = committed()
    tables = {t.preamble.alias: t for t in info.tables}
    assert {
        a: [(f.name, f.bitwidth, f.match_type) for f in t.match_fields] for a, t in tables.items()
    } == {
        "device_table": [("src_mac", 48, p4i.MatchField.EXACT)],
        "service_by_dst": [
            ("proto", 8, p4i.MatchField.TERNARY),
            ("port", 16, p4i.MatchField.RANGE),
        ],
        "service_by_src": [
            ("proto", 8, p4i.MatchField.TERNARY),
            ("port", 16, p4i.MatchField.RANGE),
        ],
        "l2_forward": [("dst_mac", 48, p4i.MatchField.EXACT)],
    }
    assert {a: t.size for a, t in tables.items()} == {
        "device_table": 1024,
        "service_by_dst": 1024,
        "service_by_src": 1024,
        "l2_forward": 1024,
    }
    params = {a.preamble.alias: [(p.name, p.bitwidth) for p in a.params] for a in info.actions}
    assert params == {
        "NoAction": [],
        "set_device": [("device_id", 16)],
        "unregistered": [],
        "set_service": [("service_id", 16)],
        "forward": [("port", 9)],
        "flood": [],
        "drop": [],
    }
    (counter,) = info.counters
    assert (counter.size, counter.spec.unit) == (1024 * 256, p4i.CounterSpec.BOTH)
    assert [
        (r.preamble.alias, r.type_spec.bitstring.bit.bitwidth, r.size) for r in info.registers
    ] == [
        ("digest_mac", 48, 256),
        ("digest_time", 48, 256),
    ]
    members = info.type_info.structs["new_device_t"].members
    assert [(m.name, m.type_spec.bitstring.bit.bitwidth) for m in members] == [
        ("mac", 48),
        ("port", 9),
    ]


def test_defaults_are_only_defaults() -> None:
    """`unregistered` and the service tables' NoAction can be defaults but never entries."""
    info = committed()
    ids = {a.preamble.alias: a.preamble.id for a in info.actions}
    default_only = {
        t.preamble.alias: sorted(
            r.id for r in t.action_refs if r.scope == p4i.ActionRef.DEFAULT_ONLY
        )
        for t in info.tables
    }
    assert default_only == {
        "device_table": [ids["unregistered"]],
        "service_by_dst": [ids["NoAction"]],
        "service_by_src": [ids["NoAction"]],
        "l2_forward": [],
    }


def constants_table() -> dict[str, int]:
    """Compile-time constant → default, from the constants table of p4src/README.md."""
    found = {}
    for line in CONTRACT.read_text().splitlines():
        match = re.match(r"\|\s*`([A-Z_]+)`\s*\|\s*(\d+)\s*\|", line)
        if match:
            found[match.group(1)] = int(match.group(2))
    return found


def test_contract_constants_are_the_documented_defaults() -> None:
    contract = Contract.from_p4info(committed(), str(P4INFO))
    assert contract == Contract(
        max_devices=1024,
        max_services=256,
        digest_cache_size=256,
        digest_repeat_us=5_000_000,
        flood_group=1,
    )
    documented = constants_table()
    assert {name.lower(): value for name, value in documented.items()} == {
        key: getattr(contract, key) for key in names.CONSTANTS
    }
    assert contract.cell(1023, 255) == contract.counter_size - 1 == 262143


def test_contract_names_every_object_of_the_committed_p4info() -> None:
    info = committed()
    assert {t.preamble.name for t in info.tables} == set(names.TABLES)
    assert {a.preamble.name for a in info.actions} == {*names.ACTIONS, names.NO_ACTION}
    assert {c.preamble.name for c in info.counters} == {names.COUNTER}
    assert {r.preamble.name for r in info.registers} == set(names.REGISTERS)
    assert {d.preamble.name for d in info.digests} == {names.NEW_DEVICE_DIGEST}


def _edited(change: Any) -> p4i.P4Info:
    info = committed()
    change(info)
    return info


def _set_constant(info: p4i.P4Info, key: str, value: int) -> None:
    for pair in info.pkg_info.structured_annotations[0].kv_pair_list.kv_pairs:
        if pair.key == key:
            pair.value.int64_value = value


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (
            lambda info: info.pkg_info.ClearField("structured_annotations"),
            r"has no @svcfp_contract annotation in pkg_info",
        ),
        (
            lambda info: info.pkg_info.structured_annotations[0].kv_pair_list.kv_pairs.pop(4),
            r"@svcfp_contract lacks flood_group",
        ),
        (
            lambda info: _set_constant(info, "max_services", 512),
            r"counter IngressImpl.service_hits has 262144 cells, MAX_DEVICES × MAX_SERVICES is "
            r"1024 × 512",
        ),
        (
            lambda info: _set_constant(info, "max_devices", 2048),
            r"table IngressImpl.device_table holds 1024 entries, MAX_DEVICES is 2048",
        ),
        (
            lambda info: setattr(info.tables[0].match_fields[0], "bitwidth", 32),
            r"table IngressImpl.device_table has key \(\('src_mac', 32, 'EXACT'\),\)",
        ),
        (
            lambda info: setattr(info.actions[3].params[0], "bitwidth", 8),
            r"action IngressImpl.set_service has parameters \(\('service_id', 8\),\)",
        ),
        (
            lambda info: setattr(info.registers[1], "size", 128),
            r"register IngressImpl.digest_time is bit<48>\[128\], expected bit<48>\[256\]",
        ),
        (
            lambda info: info.ClearField("digests"),
            r"has no digest 'new_device_t'",
        ),
    ],
)
def test_a_p4info_that_breaks_the_contract_is_refused_naming_it(change: Any, message: str) -> None:
    with pytest.raises(InputError, match=message):
        Contract.from_p4info(_edited(change), "edited.p4info.txtpb")
