"""P4Runtime table state: entries keyed by match and priority, default actions, validation.

Validation follows the P4Runtime specification (and PI, BMv2's P4Runtime server): values are
bytestrings that must fit their field (non-canonical leading zeros are accepted); a "don't care"
ternary/range/LPM/optional field is omitted, never written as a zero mask or full range; ternary
and range tables need a priority > 0, others a priority of 0; duplicate INSERT is ALREADY_EXISTS,
MODIFY/DELETE of a missing entry is NOT_FOUND; a full table is RESOURCE_EXHAUSTED.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from finsy.proto import p4i, p4r, rpc_code

from controller.base.errors import InputError
from controller.base.p4info import ActionInfo, MatchFieldInfo, P4Schema, TableInfo, encode_int
from refswitch.status import (
    P4RuntimeError,
    already_exists,
    invalid_argument,
    not_found,
    shown_bytes,
    unimplemented,
)

# A match on one field, normalised: exact (value,), ternary (value, mask), lpm (value, prefix),
# range (low, high), optional (value,); None when the field is "don't care".
FieldMatch = tuple[int, ...]
MatchKey = tuple[FieldMatch | None, ...]

_PRIORITY_KINDS = frozenset({"TERNARY", "RANGE", "OPTIONAL"})


@dataclass(frozen=True)
class ActionCall:
    """An action with its parameter values, in the action's parameter order."""

    action_id: int
    params: tuple[int, ...] = ()


@dataclass(frozen=True)
class Entry:
    """One installed table entry."""

    table_id: int
    match: MatchKey
    priority: int
    action: ActionCall
    controller_metadata: int = 0
    metadata: bytes = b""


def decode_bytestring(data: bytes, bitwidth: int, what: str) -> int:
    """A P4Runtime bytestring as an int, checking it fits `bitwidth` bits.

    Leading zero bytes beyond the width are accepted (P4Runtime allows non-canonical strings);
    a longer value is refused before it is converted, and the error shows only its start.
    """
    if not data:
        raise invalid_argument(f"{what}: empty bytestring")
    excess = len(data) - (bitwidth + 7) // 8
    if excess > 0:
        if data.count(0, 0, excess) != excess:
            raise _too_wide(data, bitwidth, what)
        data = data[excess:]
    value = int.from_bytes(data, "big")
    if value >> bitwidth:
        raise _too_wide(data, bitwidth, what)
    return value


def _too_wide(data: bytes, bitwidth: int, what: str) -> P4RuntimeError:
    return invalid_argument(f"{what}: value {shown_bytes(data)} does not fit in {bitwidth} bits")


class TableStore:
    """Every table's entries and default action for one pipeline."""

    def __init__(
        self,
        schema: P4Schema,
        initial_defaults: Mapping[int, ActionCall],
        param_limits: Mapping[tuple[int, int], tuple[int, str]] | None = None,
    ) -> None:
        self.schema = schema
        # Parameters whose values must stay below a bound (ids that index the counter).
        self._param_limits = dict(param_limits or {})
        self._initial_defaults = dict(initial_defaults)
        self._entries: dict[int, dict[tuple[MatchKey, int], Entry]] = {}
        self._defaults: dict[int, ActionCall] = {}
        self._scopes: dict[tuple[int, int], int] = {}
        for table in schema.standard.tables:
            self._entries[table.preamble.id] = {}
            for ref in table.action_refs:
                self._scopes[(table.preamble.id, ref.id)] = ref.scope
            initial = self._initial_defaults.get(table.preamble.id)
            if initial is not None:
                self._defaults[table.preamble.id] = initial

    # Lookups ------------------------------------------------------------------------------------

    def entries(self, table_id: int) -> list[Entry]:
        """The table's entries in insertion order."""
        return list(self._entries[table_id].values())

    def default(self, table_id: int) -> ActionCall | None:
        """The table's current default action (None: the implicit NoAction)."""
        return self._defaults.get(table_id)

    def table(self, table_id: int) -> TableInfo:
        """The table with this id, or INVALID_ARGUMENT."""
        try:
            return self.schema.table(table_id)
        except InputError:
            raise invalid_argument(f"table id {table_id} does not exist in the P4Info") from None

    # Writes -------------------------------------------------------------------------------------

    def write(self, update_type: int, message: p4r.TableEntry) -> tuple[int, ...]:
        """Apply one update; returns the ids of the tables it changed."""
        table = self.table(message.table_id)
        if message.HasField("meter_config") or message.HasField("counter_data"):
            raise unimplemented("Direct resources not supported in TableEntry yet")
        if message.idle_timeout_ns:
            raise invalid_argument(f"table {table.name} does not support idle timeout")
        if message.is_default_action:
            return self._write_default(update_type, table, message)
        key = (self._match_key(table, message.match), self._priority(table, message.priority))
        entries = self._entries[table.id]
        if update_type == p4r.Update.INSERT:
            if key in entries:
                raise already_exists(f"table {table.name}: entry already exists")
            if len(entries) >= table.size:
                raise P4RuntimeError(
                    rpc_code.RESOURCE_EXHAUSTED,
                    f"table {table.name} is full ({table.size} entries)",
                )
            entries[key] = self._entry(table, key, message)
        elif update_type == p4r.Update.MODIFY:
            if key not in entries:
                raise not_found(f"table {table.name}: no such entry to modify")
            entries[key] = self._entry(table, key, message)
        elif update_type == p4r.Update.DELETE:
            if key not in entries:
                raise not_found(f"table {table.name}: no such entry to delete")
            del entries[key]
        else:
            raise invalid_argument(f"table {table.name}: update type must be INSERT/MODIFY/DELETE")
        return (table.id,)

    def _write_default(
        self, update_type: int, table: TableInfo, message: p4r.TableEntry
    ) -> tuple[int, ...]:
        if update_type != p4r.Update.MODIFY:
            raise invalid_argument(
                f"table {table.name}: the default entry can only be modified, not inserted or "
                "deleted"
            )
        if message.match or message.priority:
            raise invalid_argument(
                f"table {table.name}: a default entry has no match fields and no priority"
            )
        if table.const_default_action_id:
            raise P4RuntimeError(
                rpc_code.PERMISSION_DENIED, f"table {table.name} has a const default action"
            )
        if not message.HasField("action"):
            initial = self._initial_defaults.get(table.id)
            if initial is None:
                self._defaults.pop(table.id, None)
            else:
                self._defaults[table.id] = initial
            return (table.id,)
        self._defaults[table.id] = self._action(table, message.action, default=True)
        return (table.id,)

    def _entry(self, table: TableInfo, key: tuple[MatchKey, int], message: p4r.TableEntry) -> Entry:
        if not message.HasField("action"):
            raise invalid_argument(f"table {table.name}: entry has no action")
        return Entry(
            table_id=table.id,
            match=key[0],
            priority=key[1],
            action=self._action(table, message.action, default=False),
            controller_metadata=message.controller_metadata,
            metadata=message.metadata,
        )

    def _priority(self, table: TableInfo, priority: int) -> int:
        needs = any(f.match_type in _PRIORITY_KINDS for f in table.match_fields)
        if needs and priority <= 0:
            raise invalid_argument(
                f"table {table.name}: ternary, range and optional matches need a priority > 0"
            )
        if not needs and priority != 0:
            raise invalid_argument(
                f"table {table.name}: priority must be 0 for exact and LPM-only tables"
            )
        if priority >= 1 << 31:
            raise invalid_argument(f"table {table.name}: priority {priority} exceeds 2^31-1")
        return priority

    def _match_key(self, table: TableInfo, matches: Iterable[p4r.FieldMatch]) -> MatchKey:
        given: dict[int, p4r.FieldMatch] = {}
        for match in matches:
            if match.field_id in given:
                raise invalid_argument(
                    f"table {table.name}: match field id {match.field_id} given twice"
                )
            given[match.field_id] = match
        known = {info.id for info in table.match_fields}
        for field_id in given:
            if field_id not in known:
                raise invalid_argument(
                    f"table {table.name}: match field id {field_id} does not exist"
                )
        key: list[FieldMatch | None] = []
        for info in table.match_fields:
            field = given.get(info.id)
            if field is None:
                if info.match_type == "EXACT":
                    raise invalid_argument(
                        f"table {table.name}: exact match field {info.name} is missing"
                    )
                key.append(None)
            else:
                key.append(_field_match(table, info, field))
        return tuple(key)

    def _action(self, table: TableInfo, message: p4r.TableAction, *, default: bool) -> ActionCall:
        if message.WhichOneof("type") != "action":
            raise unimplemented(
                f"table {table.name}: only direct actions are supported (no action profiles)"
            )
        action_id = message.action.action_id
        try:
            action = self.schema.action(action_id)
        except InputError:
            raise invalid_argument(
                f"table {table.name}: action id {action_id} does not exist in the P4Info"
            ) from None
        scope = self._scopes.get((table.id, action_id))
        if scope is None:
            raise invalid_argument(f"table {table.name} does not offer action {action.name}")
        if default and scope == p4i.ActionRef.TABLE_ONLY:
            raise P4RuntimeError(
                rpc_code.PERMISSION_DENIED,
                f"table {table.name}: action {action.name} cannot be the default action",
            )
        if not default and scope == p4i.ActionRef.DEFAULT_ONLY:
            raise invalid_argument(
                f"table {table.name}: action {action.name} is only allowed as the default action"
            )
        return ActionCall(action.id, _params(action, message.action.params, self._param_limits))

    # Reads --------------------------------------------------------------------------------------

    def read(self, request: p4r.TableEntry) -> list[p4r.TableEntry]:
        """Entries matching a read request: all tables, one table, one entry, or defaults."""
        if request.table_id == 0:
            table_ids = list(self._entries)
        else:
            table_ids = [self.table(request.table_id).id]
        found: list[p4r.TableEntry] = []
        for table_id in table_ids:
            table = self.schema.table(table_id)
            if request.is_default_action:
                found.append(self.default_to_proto(table))
                continue
            entries = self._entries[table_id]
            if request.table_id and request.match:
                key = (self._match_key(table, request.match), request.priority)
                entry = entries.get(key)
                selected = [entry] if entry is not None else []
            else:
                selected = list(entries.values())
            found.extend(self.entry_to_proto(table, entry) for entry in selected)
        return found

    def entry_to_proto(self, table: TableInfo, entry: Entry) -> p4r.TableEntry:
        """An entry as P4Runtime returns it: canonical bytestrings."""
        message = p4r.TableEntry(
            table_id=table.id,
            priority=entry.priority,
            controller_metadata=entry.controller_metadata,
            metadata=entry.metadata,
        )
        for info, match in zip(table.match_fields, entry.match, strict=True):
            if match is not None:
                message.match.append(_field_match_to_proto(info, match))
        self._action_to_proto(entry.action, message.action.action)
        return message

    def default_to_proto(self, table: TableInfo) -> p4r.TableEntry:
        """The table's default entry as P4Runtime returns it."""
        message = p4r.TableEntry(table_id=table.id, is_default_action=True)
        call = self._defaults.get(table.id)
        if call is not None:
            self._action_to_proto(call, message.action.action)
        return message

    def _action_to_proto(self, call: ActionCall, message: p4r.Action) -> None:
        action = self.schema.action(call.action_id)
        message.action_id = action.id
        for param, value in zip(action.params, call.params, strict=True):
            message.params.append(
                p4r.Action.Param(param_id=param.id, value=encode_int(value, param.bitwidth))
            )


def _params(
    action: ActionInfo,
    given: Iterable[p4r.Action.Param],
    limits: Mapping[tuple[int, int], tuple[int, str]],
) -> tuple[int, ...]:
    values: dict[int, int] = {}
    by_id = {p.id: p for p in action.params}
    for param in given:
        info = by_id.get(param.param_id)
        if info is None:
            raise invalid_argument(
                f"action {action.name}: parameter id {param.param_id} does not exist"
            )
        if param.param_id in values:
            raise invalid_argument(f"action {action.name}: parameter {info.name} given twice")
        value = decode_bytestring(
            param.value, info.bitwidth, f"action {action.name} parameter {info.name}"
        )
        bound = limits.get((action.id, param.param_id))
        if bound is not None and value >= bound[0]:
            raise invalid_argument(
                f"action {action.name} parameter {info.name}: {value} is out of range, "
                f"{bound[1]} is {bound[0]} (the id indexes the service_hits counter)"
            )
        values[param.param_id] = value
    missing = [p.name for p in action.params if p.id not in values]
    if missing:
        raise invalid_argument(f"action {action.name}: missing parameter(s) {', '.join(missing)}")
    return tuple(values[p.id] for p in action.params)


def _field_match(table: TableInfo, info: MatchFieldInfo, match: p4r.FieldMatch) -> FieldMatch:
    what = f"table {table.name} match field {info.name}"
    kind = match.WhichOneof("field_match_type")
    expected = info.match_type.lower()
    if kind != expected:
        raise invalid_argument(f"{what} is {info.match_type}, got a {kind} match")
    width = info.bitwidth
    if kind == "exact":
        return (decode_bytestring(match.exact.value, width, what),)
    if kind == "ternary":
        value = decode_bytestring(match.ternary.value, width, what)
        mask = decode_bytestring(match.ternary.mask, width, what)
        if mask == 0:
            raise invalid_argument(f"{what}: a don't-care ternary match must be omitted")
        if value & ~mask:
            raise invalid_argument(f"{what}: ternary value has bits set outside the mask")
        return (value, mask)
    if kind == "lpm":
        value = decode_bytestring(match.lpm.value, width, what)
        prefix = match.lpm.prefix_len
        if prefix <= 0 or prefix > width:
            raise invalid_argument(
                f"{what}: prefix length {prefix} must be 1..{width} (omit the field for 0)"
            )
        if value & ((1 << (width - prefix)) - 1):
            raise invalid_argument(f"{what}: LPM value has bits set beyond the prefix")
        return (value, prefix)
    if kind == "range":
        low = decode_bytestring(match.range.low, width, what)
        high = decode_bytestring(match.range.high, width, what)
        if low > high:
            raise invalid_argument(f"{what}: range low {low} is above high {high}")
        if low == 0 and high == (1 << width) - 1:
            raise invalid_argument(f"{what}: a don't-care range match must be omitted")
        return (low, high)
    if kind == "optional":
        return (decode_bytestring(match.optional.value, width, what),)
    raise invalid_argument(f"{what}: unsupported match type {kind}")


def _field_match_to_proto(info: MatchFieldInfo, match: FieldMatch) -> p4r.FieldMatch:
    width = info.bitwidth
    message = p4r.FieldMatch(field_id=info.id)
    kind = info.match_type
    if kind == "EXACT":
        message.exact.value = encode_int(match[0], width)
    elif kind == "TERNARY":
        message.ternary.value = encode_int(match[0], width)
        message.ternary.mask = encode_int(match[1], width)
    elif kind == "LPM":
        message.lpm.value = encode_int(match[0], width)
        message.lpm.prefix_len = match[1]
    elif kind == "RANGE":
        message.range.low = encode_int(match[0], width)
        message.range.high = encode_int(match[1], width)
    else:
        message.optional.value = encode_int(match[0], width)
    return message
