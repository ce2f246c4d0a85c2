"""The P4Info schema: every P4Runtime name resolved to its id, width and kind in one place.

Controller and reference switch both resolve tables, actions, fields, counters, registers and
digests *by name* through a `P4Schema` built from the P4Info they are given, never by a hard-coded
number. Values travel as P4Runtime canonical bytestrings (big-endian, no leading zero bytes).

A TNA P4Info comes in two forms. Compiled with `--p4runtime-force-std-externs` (the committed
p4src/fingerprint_tna.p4info.txtpb, what Stratum takes) it has standard `counters`, `registers`
and `digests`, named as the v1model program's. Without it, the TNA `Counter`, `Register` and
`Digest` are Barefoot `externs` entries (`barefoot.Counter` ... packed in `Any`) and every table
and extern name starts with the pipeline's (`pipe.IngressImpl.device_table`): `standard_form`
turns such a P4Info into the standard one — the externs as standard entries with the extern
instance's id (the id a Tofino P4Runtime server then expects in a `CounterEntry`), the names
without the pipeline — and the schema resolves names against that. The P4Info pushed to a switch
is always the one given. Such a P4Info must be binary or arrive over P4Runtime: its text form
names Barefoot message types this module does not carry.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any, TypedDict, TypeVar

from finsy.proto import p4i
from google.protobuf import empty_pb2, text_format
from google.protobuf.message import DecodeError
from google.protobuf.unknown_fields import UnknownFieldSet

from controller.base.contract import Contract, type_width
from controller.base.errors import InputError
from controller.base.macs import int_to_mac, mac_key, mac_to_int

_MATCH_TYPES = {
    p4i.MatchField.EXACT: "EXACT",
    p4i.MatchField.LPM: "LPM",
    p4i.MatchField.TERNARY: "TERNARY",
    p4i.MatchField.RANGE: "RANGE",
    p4i.MatchField.OPTIONAL: "OPTIONAL",
}


@dataclass(frozen=True)
class MatchFieldInfo:
    """One key field of a table."""

    id: int
    name: str
    bitwidth: int
    match_type: str


@dataclass(frozen=True)
class ParamInfo:
    """One parameter of an action."""

    id: int
    name: str
    bitwidth: int


@dataclass(frozen=True)
class ObjectInfo:
    """What every P4Info object has: its P4Runtime id, full name and short alias."""

    id: int
    name: str
    alias: str


@dataclass(frozen=True)
class ActionInfo(ObjectInfo):
    """An action and its parameters, in declaration order."""

    params: tuple[ParamInfo, ...]

    def param(self, name: str) -> ParamInfo:
        """The parameter called `name`."""
        return _named(self.params, name, f"action {self.name} has no parameter {name!r}")


@dataclass(frozen=True)
class TableInfo(ObjectInfo):
    """A match-action table: its key fields, allowed actions and capacity."""

    match_fields: tuple[MatchFieldInfo, ...]
    action_ids: tuple[int, ...]
    size: int
    const_default_action_id: int

    def field(self, name: str) -> MatchFieldInfo:
        """The key field called `name`."""
        return _named(self.match_fields, name, f"table {self.name} has no match field {name!r}")


@dataclass(frozen=True)
class CounterInfo(ObjectInfo):
    """An indirect counter array."""

    unit: str
    size: int


@dataclass(frozen=True)
class RegisterInfo(ObjectInfo):
    """A register array of bit<bitwidth> cells."""

    bitwidth: int
    size: int


@dataclass(frozen=True)
class DigestInfo(ObjectInfo):
    """A digest and the (name, bitwidth) members of its struct."""

    members: tuple[tuple[str, int], ...]


_Member = TypeVar("_Member", MatchFieldInfo, ParamInfo)


def _named(members: tuple[_Member, ...], name: str, missing: str) -> _Member:
    for member in members:
        if member.name == name:
            return member
    raise InputError(missing)


Info = TableInfo | ActionInfo | CounterInfo | RegisterInfo | DigestInfo
_I = TypeVar("_I", TableInfo, ActionInfo, CounterInfo, RegisterInfo, DigestInfo)


def _index(kind: str, items: list[_I]) -> dict[str | int, _I]:
    """Map every name, alias and id of `items` to the item."""
    index: dict[str | int, _I] = {}
    for item in items:
        for key in (item.name, item.alias, item.id):
            if key in index and index[key] is not item:
                raise InputError(f"P4Info has two {kind}s called {key!r}")
            index[key] = item
    return index


def _extern_fields(info: Any) -> dict[int, int | bytes]:
    """The first value of each field of a Barefoot extern's info (packed in `Any`, of a message
    type this module does not carry), read as protobuf's unknown fields: varints as ints,
    length-delimited fields as bytes."""
    message = empty_pb2.Empty()
    try:
        message.ParseFromString(info.value)
    except DecodeError as exc:
        raise InputError(f"unreadable Barefoot extern info in the P4Info: {exc}") from None
    unknown = UnknownFieldSet(message)
    fields: dict[int, int | bytes] = {}
    for field in (unknown[i] for i in range(len(unknown))):
        fields.setdefault(field.field_number, field.data)
    return fields


# The Barefoot extern types with a standard P4Info counterpart.
_BAREFOOT_STANDARD = ("Counter", "Register", "Digest")


def standard_form(p4info: p4i.P4Info) -> p4i.P4Info:
    """`p4info` with the Barefoot `Counter`, `Register` and `Digest` externs as standard entries
    and the pipeline's name taken off table and extern names; `p4info` itself when it has none
    (see the module docstring)."""
    barefoot = [
        (extern.extern_type_name, instance)
        for extern in p4info.externs
        for instance in extern.instances
        if extern.extern_type_name in _BAREFOOT_STANDARD
        and instance.info.type_url.startswith("type.googleapis.com/barefoot.")
    ]
    if not barefoot:
        return p4info
    # Barefoot names are <pipeline>.<control>.<object>: the first part of any three-part name.
    named = [t.preamble.name for t in p4info.tables] + [i.preamble.name for _, i in barefoot]
    pipes = {name.split(".")[0] for name in named if name.count(".") >= 2}

    def unpiped(preamble: p4i.Preamble) -> None:
        first, _, rest = preamble.name.partition(".")
        if rest and first in pipes:
            preamble.name = rest

    standard = p4i.P4Info()
    standard.CopyFrom(p4info)
    del standard.externs[:]
    for table in standard.tables:
        unpiped(table.preamble)
    targets: dict[str, Any] = {
        "Counter": standard.counters,
        "Register": standard.registers,
        "Digest": standard.digests,
    }
    for kind, instance in barefoot:
        # barefoot.Counter {spec = 1; size = 2}, barefoot.Register {type_spec = 1; size = 2; ...},
        # barefoot.Digest {type_spec = 1}: field 1 is the standard entry's spec or type_spec.
        fields = _extern_fields(instance.info)
        entry: Any = targets[kind].add()
        entry.preamble.CopyFrom(instance.preamble)
        unpiped(entry.preamble)
        (entry.spec if kind == "Counter" else entry.type_spec).ParseFromString(fields.get(1, b""))
        if kind != "Digest":
            entry.size = fields.get(2, 0)
    standard.externs.extend(
        e for e in p4info.externs if e.extern_type_name not in _BAREFOOT_STANDARD
    )
    return standard


class P4Schema:
    """Lookups by name, alias or id over one P4Info message (its standard form, see
    `standard_form`); `p4info` is the message as given."""

    def __init__(self, p4info: p4i.P4Info, source: str = "P4Info") -> None:
        self.p4info = p4info
        self.source = source
        self.standard = standard_form(p4info)
        p4info = self.standard
        self.tables = _index("table", [_table(t) for t in p4info.tables])
        self.actions = _index("action", [_action(a) for a in p4info.actions])
        self.counters = _index("counter", [_counter(c) for c in p4info.counters])
        self.registers = _index("register", [_register(r, p4info) for r in p4info.registers])
        self.digests = _index("digest", [_digest(d, p4info) for d in p4info.digests])

    @classmethod
    def load(cls, path: Path) -> P4Schema:
        """Read a P4Info file: protobuf text (.txt, .txtpb, .p4info) or binary (.bin, .pb)."""
        try:
            data = path.read_bytes()
        except OSError as exc:
            raise InputError(f"cannot read P4Info {path}: {exc.strerror}") from exc
        message = p4i.P4Info()
        try:
            if path.suffix in (".bin", ".pb"):
                message.ParseFromString(data)
            else:
                text_format.Parse(data.decode("utf-8"), message)
        except (text_format.ParseError, DecodeError, UnicodeDecodeError) as exc:
            hint = ""
            if "barefoot." in str(exc):
                hint = (
                    " (a TNA P4Info with Barefoot externs: compile with "
                    "--p4runtime-force-std-externs, or give its binary form)"
                )
            raise InputError(f"{path} is not a valid P4Info: {exc}{hint}") from exc
        if not message.tables and not message.actions:
            raise InputError(f"{path} is not a valid P4Info: it declares no tables or actions")
        return cls(message, source=str(path))

    @cached_property
    def contract(self) -> Contract:
        """The data-plane contract this P4Info carries (checked on first use)."""
        return Contract.from_p4info(self.standard, self.source)

    def _get(self, kind: str, index: dict[str | int, _I], key: str | int) -> _I:
        try:
            return index[key]
        except KeyError:
            raise InputError(f"{self.source} has no {kind} {key!r}") from None

    def table(self, key: str | int) -> TableInfo:
        """The table with this name, alias or id."""
        return self._get("table", self.tables, key)

    def action(self, key: str | int) -> ActionInfo:
        """The action with this name, alias or id."""
        return self._get("action", self.actions, key)

    def counter(self, key: str | int) -> CounterInfo:
        """The counter with this name, alias or id."""
        return self._get("counter", self.counters, key)

    def register(self, key: str | int) -> RegisterInfo:
        """The register with this name, alias or id."""
        return self._get("register", self.registers, key)

    def digest(self, key: str | int) -> DigestInfo:
        """The digest with this name, alias or id."""
        return self._get("digest", self.digests, key)

    def by_id(self, object_id: int) -> Info:
        """Any object by its P4Runtime id."""
        for index in (self.tables, self.actions, self.counters, self.registers, self.digests):
            found = index.get(object_id)
            if found is not None:
                return found
        raise InputError(f"{self.source} has no object with id {object_id}")

    def objects(self) -> dict[str, Info]:
        """Every object keyed by kind and fully qualified name, e.g. 'table IngressImpl.l2'."""
        groups: tuple[tuple[str, Mapping[str | int, Info]], ...] = (
            ("table", self.tables),
            ("action", self.actions),
            ("counter", self.counters),
            ("register", self.registers),
            ("digest", self.digests),
        )
        return {f"{kind} {item.name}": item for kind, index in groups for item in index.values()}

    def diff(self, other: P4Schema) -> list[str]:
        """Human-readable differences between two schemas, one line per differing object."""
        mine, theirs = self.objects(), other.objects()
        lines = [f"{key} only in {self.source}" for key in sorted(mine.keys() - theirs.keys())]
        lines += [f"{key} only in {other.source}" for key in sorted(theirs.keys() - mine.keys())]
        for key in sorted(mine.keys() & theirs.keys()):
            if mine[key] != theirs[key]:
                lines.append(f"{key} differs: {mine[key]} != {theirs[key]}")
        return lines


class _Names(TypedDict):
    id: int
    name: str
    alias: str


def _names(preamble: p4i.Preamble) -> _Names:
    # p4c always writes an alias; hand-written P4Info may leave it out.
    return _Names(id=preamble.id, name=preamble.name, alias=preamble.alias or preamble.name)


def _table(table: p4i.Table) -> TableInfo:
    return TableInfo(
        **_names(table.preamble),
        match_fields=tuple(
            MatchFieldInfo(
                id=f.id,
                name=f.name,
                bitwidth=f.bitwidth,
                match_type=_MATCH_TYPES.get(f.match_type, "UNSPECIFIED"),
            )
            for f in table.match_fields
        ),
        action_ids=tuple(ref.id for ref in table.action_refs),
        size=table.size,
        const_default_action_id=table.const_default_action_id,
    )


def _action(action: p4i.Action) -> ActionInfo:
    return ActionInfo(
        **_names(action.preamble),
        params=tuple(ParamInfo(id=p.id, name=p.name, bitwidth=p.bitwidth) for p in action.params),
    )


def _counter(counter: p4i.Counter) -> CounterInfo:
    return CounterInfo(
        **_names(counter.preamble),
        unit=p4i.CounterSpec.Unit.Name(counter.spec.unit),
        size=counter.size,
    )


def _register(register: p4i.Register, p4info: p4i.P4Info) -> RegisterInfo:
    return RegisterInfo(
        **_names(register.preamble),
        bitwidth=type_width(register.type_spec, p4info),
        size=register.size,
    )


def _digest(digest: p4i.Digest, p4info: p4i.P4Info) -> DigestInfo:
    struct_name = digest.type_spec.struct.name
    members: tuple[tuple[str, int], ...] = ()
    if struct_name in p4info.type_info.structs:
        members = tuple(
            (m.name, m.type_spec.bitstring.bit.bitwidth)
            for m in p4info.type_info.structs[struct_name].members
        )
    return DigestInfo(
        **_names(digest.preamble),
        members=members,
    )


def encode_int(value: int, bitwidth: int) -> bytes:
    """`value` as a P4Runtime canonical bytestring (minimal big-endian; zero is one 0x00 byte)."""
    if value < 0 or value >= 1 << bitwidth:
        raise InputError(f"value {value} does not fit in {bitwidth} bits")
    return value.to_bytes(max(1, (value.bit_length() + 7) // 8), "big")


def decode_int(data: bytes) -> int:
    """An unsigned integer from a (canonical or zero-padded) big-endian bytestring."""
    return int.from_bytes(data, "big")


def encode_mac(mac: str) -> bytes:
    """A MAC address (any form `controller.base.macs` accepts) as a canonical 48-bit bytestring."""
    return encode_int(mac_to_int(mac), 48)


def decode_mac(data: bytes) -> str:
    """A MAC bytestring (canonical or full width) as its device key."""
    return int_to_mac(decode_int(data))


def normalize_mac(mac: str) -> str:
    """A MAC in the project's device-key form: lower-case, colon-separated."""
    return mac_key(mac)
