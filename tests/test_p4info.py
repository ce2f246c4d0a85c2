"""The committed P4Info against the P4 source it describes and the contract in p4src/README.md.

p4c is not available everywhere, so drift between `fingerprint.p4` and the committed
`fingerprint.p4info.txtpb` is caught here by reading the declarations out of the P4 text and
building the P4Info p4c would emit for them (names, IDs, match fields, action references, sizes,
counter/register/digest specs), in p4c's text format.
"""

from __future__ import annotations

import ast
import operator
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from finsy.proto import p4i
from google.protobuf import text_format

ROOT = Path(__file__).resolve().parent.parent
P4_SOURCE = ROOT / "p4src" / "fingerprint.p4"
P4INFO = ROOT / "p4src" / "fingerprint.p4info.txtpb"
CONTRACT = ROOT / "p4src" / "README.md"

HEADER_LINES = "# proto-file: p4/config/v1/p4info.proto\n# proto-message: p4.config.v1.P4Info\n\n"

# p4c's ID prefixes (top byte) per object kind.
PREFIX = {"action": 0x01, "table": 0x02, "counter": 0x12, "register": 0x16, "digest": 0x17}
MATCH_TYPES = {
    "exact": p4i.MatchField.EXACT,
    "ternary": p4i.MatchField.TERNARY,
    "range": p4i.MatchField.RANGE,
    "lpm": p4i.MatchField.LPM,
}
NOACTION = "NoAction"
ANNOTATION = r"(?P<annotations>(?:@\w+(?:\([^)]*\))?\s*)*)"


def jenkins_one_at_a_time(text: str) -> int:
    """The 32-bit hash p4c derives IDs from for objects without `@id`."""
    mask = 0xFFFFFFFF
    value = 0
    for byte in text.encode():
        value = (value + byte) & mask
        value = (value + (value << 10)) & mask
        value ^= value >> 6
    value = (value + (value << 3)) & mask
    value ^= value >> 11
    return (value + (value << 15)) & mask


def object_id(kind: str, name: str, annotations: str) -> int:
    """The ID p4c assigns: the `@id` value with its kind prefix, else the hash of the name."""
    pinned = re.search(r"@id\(\s*(0x[0-9a-fA-F]+|\d+)\s*\)", annotations)
    if pinned is None:
        return PREFIX[kind] << 24 | (jenkins_one_at_a_time(name) & 0xFFFFFF)
    value = int(pinned.group(1), 0)
    return value if value >> 24 else PREFIX[kind] << 24 | value


def name_preamble(
    preamble: p4i.Preamble, kind: str, name: str, alias: str, annotations: str
) -> None:
    """Fill a preamble's ID, name and alias as p4c does."""
    preamble.id = object_id(kind, name, annotations)
    preamble.name = name
    preamble.alias = alias


@dataclass(frozen=True)
class P4Source:
    """The parts of a P4 program's text that its P4Info is derived from."""

    text: str
    defines: dict[str, str]

    @classmethod
    def read(cls, path: Path, overrides: dict[str, str] | None = None) -> P4Source:
        raw = path.read_text()
        defines = dict(re.findall(r"^#define\s+(\w+)\s+(.+?)\s*$", raw, re.MULTILINE))
        defines.update(overrides or {})
        text = re.sub(r"/\*.*?\*/", " ", raw, flags=re.DOTALL)
        text = re.sub(r"//[^\n]*", " ", text)
        text = re.sub(r"^#[^\n]*", " ", text, flags=re.MULTILINE)
        return cls(text, defines)

    def evaluate(self, expression: str) -> int:
        """A constant integer expression over the #define'd names."""
        expanded = re.sub(r"\b[A-Za-z_]\w*\b", lambda m: self.defines[m.group(0)], expression)
        return _constant(ast.parse(expanded.strip(), mode="eval").body)

    def fields(self, type_name: str) -> dict[str, tuple[str, int]]:
        """Members of a header or struct: name -> (type name, bit width or 0 if not bit<W>)."""
        match = re.search(rf"\b(?:header|struct)\s+{type_name}\s*\{{", self.text)
        assert match, f"no header or struct {type_name}"
        members: dict[str, tuple[str, int]] = {}
        for kind, name in re.findall(r"([\w<>]+)\s+(\w+)\s*;", _block(self.text, match.start())):
            width = re.fullmatch(r"bit<(\d+)>", kind)
            members[name] = (kind, int(width.group(1)) if width else 0)
        return members

    def control(self, name: str) -> tuple[str, dict[str, str]]:
        """A control's body and its parameter name -> type name."""
        match = re.search(rf"\bcontrol\s+{name}\s*\(([^)]*)\)", self.text)
        assert match, f"no control {name}"
        params = {
            param: kind
            for kind, param in re.findall(
                r"(?:in|out|inout)?\s*(\w+)\s+(\w+)\s*(?:,|$)", match.group(1)
            )
        }
        return _block(self.text, match.end()), params

    def width(self, expression: str, params: dict[str, str]) -> int:
        """Bit width of a field path such as `hdr.ethernet.src` or `meta.l4_proto`."""
        parts = expression.split(".")
        type_name = params[parts[0]]
        for part in parts[1:-1]:
            type_name = self.fields(type_name)[part][0]
        return self.fields(type_name)[parts[-1]][1]


def derive_p4info(source: P4Source, control_name: str = "IngressImpl") -> p4i.P4Info:
    """The P4Info p4c emits for the control-plane objects of one v1model control."""
    body, params = source.control(control_name)
    info = p4i.P4Info()
    info.pkg_info.arch = "v1model"

    declared_actions: list[tuple[str, str, str]] = re.findall(
        ANNOTATION + r"action\s+(\w+)\s*\(([^)]*)\)", body
    )
    table_heads = list(re.finditer(ANNOTATION + r"table\s+(\w+)\s*\{", body))
    referenced = set()
    for head in table_heads:
        table_body = _block(body, head.start())
        referenced.update(re.findall(r"(\w+)\s*;", _section(table_body, "actions")))

    action_ids: dict[str, int] = {}
    if NOACTION in referenced:
        action = info.actions.add()
        name_preamble(action.preamble, "action", NOACTION, NOACTION, "")
        action.preamble.annotations.append('@noWarn("unused")')
        action_ids[NOACTION] = action.preamble.id
    for pinned, name, param_text in declared_actions:
        action = info.actions.add()
        name_preamble(action.preamble, "action", f"{control_name}.{name}", name, pinned)
        action_ids[name] = action.preamble.id
        for number, (width, param) in enumerate(
            re.findall(r"bit<(\d+)>\s+(\w+)", param_text), start=1
        ):
            action.params.add(id=number, name=param, bitwidth=int(width))

    for head in table_heads:
        table_body = _block(body, head.start())
        name = head.group(2)
        table = info.tables.add()
        pinned = head.group("annotations")
        name_preamble(table.preamble, "table", f"{control_name}.{name}", name, pinned)
        keys = re.findall(
            r"([\w.]+)\s*:\s*(\w+)\s*(?:@name\(\"(\w+)\"\))?\s*;", _section(table_body, "key")
        )
        for number, (expression, kind, alias) in enumerate(keys, start=1):
            table.match_fields.add(
                id=number,
                name=alias or expression,
                bitwidth=source.width(expression, params),
                match_type=MATCH_TYPES[kind],
            )
        for default_only, action_name in re.findall(
            r"(@defaultonly\s+)?(\w+)\s*;", _section(table_body, "actions")
        ):
            ref = table.action_refs.add(id=action_ids[action_name])
            if default_only:
                ref.annotations.append("@defaultonly")
                ref.scope = p4i.ActionRef.DEFAULT_ONLY
        size = re.search(r"\bsize\s*=\s*([^;]+);", table_body)
        table.size = source.evaluate(size.group(1)) if size else 1024

    counter_decl = ANNOTATION + r"counter\s*\(([^;]*),\s*CounterType\.(\w+)\s*\)\s*(\w+)\s*;"
    for pinned, size_text, unit, name in re.findall(counter_decl, body):
        counter = info.counters.add()
        name_preamble(counter.preamble, "counter", f"{control_name}.{name}", name, pinned)
        counter.spec.unit = {
            "packets": p4i.CounterSpec.PACKETS,
            "bytes": p4i.CounterSpec.BYTES,
            "packets_and_bytes": p4i.CounterSpec.BOTH,
        }[unit]
        counter.size = source.evaluate(size_text)

    register_decl = ANNOTATION + r"register\s*<\s*bit<(\d+)>\s*>\s*\(([^;]*)\)\s*(\w+)\s*;"
    for pinned, width, size_text, name in re.findall(register_decl, body):
        register = info.registers.add()
        name_preamble(register.preamble, "register", f"{control_name}.{name}", name, pinned)
        register.type_spec.bitstring.bit.bitwidth = int(width)
        register.size = source.evaluate(size_text)

    for struct_name in dict.fromkeys(re.findall(r"\bdigest\s*<\s*(\w+)\s*>", body)):
        digest = info.digests.add()
        name_preamble(digest.preamble, "digest", struct_name, struct_name, "")
        digest.type_spec.struct.name = struct_name
        members = info.type_info.structs[struct_name].members
        for member, (_, width) in source.fields(struct_name).items():
            members.add(name=member).type_spec.bitstring.bit.bitwidth = width
    return info


_OPERATORS = {ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul}


def _constant(node: ast.expr) -> int:
    """An integer expression of literals, +, - and *."""
    if isinstance(node, ast.Constant) and isinstance(node.value, int):
        return int(node.value)
    assert isinstance(node, ast.BinOp) and type(node.op) in _OPERATORS, ast.dump(node)
    return int(_OPERATORS[type(node.op)](_constant(node.left), _constant(node.right)))


def _block(text: str, start: int) -> str:
    opening = text.index("{", start)
    depth = 0
    for position in range(opening, len(text)):
        depth += {"{": 1, "}": -1}.get(text[position], 0)
        if depth == 0:
            return text[opening + 1 : position]
    raise AssertionError(f"unbalanced braces after offset {start}")


def _section(table_body: str, name: str) -> str:
    match = re.search(rf"\b{name}\s*=\s*\{{", table_body)
    return _block(table_body, match.start()) if match else ""


def render(info: p4i.P4Info) -> str:
    """P4Info in the text format p4c writes with --p4runtime-files."""
    return HEADER_LINES + text_format.MessageToString(info)


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


def test_probe_p4info_is_what_p4c_emitted_for_the_probe() -> None:
    """The derivation reproduces byte for byte a P4Info p4c really emitted."""
    probe = ROOT.parent / "shared" / "examples"
    if not (probe / "probe.p4").is_file():
        pytest.skip("the p4c-compiled probe example is not on this machine")
    derived = derive_p4info(P4Source.read(probe / "probe.p4"))
    assert render(derived) == (probe / "probe.p4info.txtpb").read_text()


def test_committed_p4info_matches_the_p4_source_exactly() -> None:
    derived = render(derive_p4info(P4Source.read(P4_SOURCE)))
    assert P4INFO.read_text() == derived


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


def test_defines_resize_the_counter_and_tables() -> None:
    """`-DMAX_DEVICES=...` reaches every size derived from it."""
    info = derive_p4info(P4Source.read(P4_SOURCE, {"MAX_DEVICES": "64", "MAX_SERVICES": "32"}))
    assert info.counters[0].size == 64 * 32
    assert {t.preamble.alias: t.size for t in info.tables}["device_table"] == 64


def test_jenkins_hash_gives_p4c_ids() -> None:
    assert object_id("digest", "new_device_t", "") == 388360070
    assert object_id("action", "NoAction", "") == 21257015
    assert object_id("action", "IngressImpl.set_device", "@id(1)") == 16777217
    assert object_id("table", "IngressImpl.t", "@id(0x02000010)") == 0x02000010
