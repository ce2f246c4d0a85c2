"""The program the reference switch runs, resolved by name from the P4Info it is given.

The switch implements exactly one P4 program (p4src/fingerprint.p4). A pushed P4Info is accepted
when it declares every object the pipeline model uses, with the same match kinds and widths; sizes
(`-D MAX_DEVICES=...` builds) are taken from the P4Info, never assumed.
"""

from __future__ import annotations

from dataclasses import dataclass

from finsy.proto import p4i

from controller.base.errors import InputError
from controller.base.p4info import (
    ActionInfo,
    CounterInfo,
    DigestInfo,
    P4Schema,
    RegisterInfo,
    TableInfo,
)
from refswitch.status import invalid_argument

# (table, ((field, bitwidth, match kind), ...), actions the table must offer)
_TABLES: tuple[tuple[str, tuple[tuple[str, int, str], ...], tuple[str, ...]], ...] = (
    ("device_table", (("src_mac", 48, "EXACT"),), ("set_device", "unregistered")),
    ("service_by_dst", (("proto", 8, "TERNARY"), ("port", 16, "RANGE")), ("set_service",)),
    ("service_by_src", (("proto", 8, "TERNARY"), ("port", 16, "RANGE")), ("set_service",)),
    ("l2_forward", (("dst_mac", 48, "EXACT"),), ("forward", "flood", "drop")),
)
_ACTIONS: tuple[tuple[str, tuple[tuple[str, int], ...]], ...] = (
    ("set_device", (("device_id", 16),)),
    ("unregistered", ()),
    ("set_service", (("service_id", 16),)),
    ("forward", (("port", 9),)),
    ("flood", ()),
    ("drop", ()),
)
_REGISTERS: tuple[tuple[str, int], ...] = (("digest_mac", 48), ("digest_time", 48))
_DIGEST_MEMBERS: tuple[tuple[str, int], ...] = (("mac", 48), ("port", 9))

NO_ACTION_NAME = "NoAction"


@dataclass(frozen=True)
class Program:
    """Every P4 object the pipeline model uses, with its P4Runtime id and size."""

    schema: P4Schema
    device_table: TableInfo
    service_by_dst: TableInfo
    service_by_src: TableInfo
    l2_forward: TableInfo
    set_device: ActionInfo
    unregistered: ActionInfo
    set_service: ActionInfo
    forward: ActionInfo
    flood: ActionInfo
    drop: ActionInfo
    no_action_id: int
    service_hits: CounterInfo
    digest_mac: RegisterInfo
    digest_time: RegisterInfo
    new_device: DigestInfo

    @property
    def max_devices(self) -> int:
        """MAX_DEVICES: the device table's capacity."""
        return self.device_table.size

    @property
    def max_services(self) -> int:
        """MAX_SERVICES: counter cells per device."""
        return self.service_hits.size // self.device_table.size

    @property
    def digest_cache_size(self) -> int:
        """DIGEST_CACHE_SIZE: slots of the new-device digest de-duplication cache."""
        return self.digest_mac.size

    @classmethod
    def from_p4info(cls, p4info: p4i.P4Info) -> Program:
        """Resolve and check every object; INVALID_ARGUMENT names the first that is wrong."""
        try:
            schema = P4Schema(p4info, source="the pushed P4Info")
        except InputError as exc:
            raise invalid_argument(str(exc)) from None
        try:
            return _resolve(schema)
        except InputError as exc:
            raise invalid_argument(
                f"P4Info does not match the fingerprint.p4 pipeline: {exc}"
            ) from None


def _resolve(schema: P4Schema) -> Program:
    actions = {name: _check_action(schema, name, params) for name, params in _ACTIONS}
    tables = {
        name: _check_table(schema, name, fields, tuple(actions[a].id for a in needed))
        for name, fields, needed in _TABLES
    }
    counter = schema.counter("service_hits")
    if counter.unit != "BOTH":
        raise InputError(f"counter {counter.name} counts {counter.unit}, expected BOTH")
    devices = tables["device_table"].size
    if devices <= 0 or counter.size <= 0 or counter.size % devices:
        raise InputError(
            f"counter {counter.name} has {counter.size} cells, not a whole multiple of "
            f"device_table's {devices} entries (MAX_DEVICES * MAX_SERVICES)"
        )
    registers = {name: _check_register(schema, name, width) for name, width in _REGISTERS}
    if registers["digest_mac"].size != registers["digest_time"].size:
        raise InputError("registers digest_mac and digest_time have different sizes")
    digest = schema.digest("new_device_t")
    if digest.members != _DIGEST_MEMBERS:
        raise InputError(
            f"digest {digest.name} has members {digest.members}, expected {_DIGEST_MEMBERS}"
        )
    no_action = schema.actions.get(NO_ACTION_NAME)
    return Program(
        schema=schema,
        device_table=tables["device_table"],
        service_by_dst=tables["service_by_dst"],
        service_by_src=tables["service_by_src"],
        l2_forward=tables["l2_forward"],
        set_device=actions["set_device"],
        unregistered=actions["unregistered"],
        set_service=actions["set_service"],
        forward=actions["forward"],
        flood=actions["flood"],
        drop=actions["drop"],
        no_action_id=no_action.id if no_action is not None else 0,
        service_hits=counter,
        digest_mac=registers["digest_mac"],
        digest_time=registers["digest_time"],
        new_device=digest,
    )


def _check_action(schema: P4Schema, name: str, params: tuple[tuple[str, int], ...]) -> ActionInfo:
    action = schema.action(name)
    found = tuple((p.name, p.bitwidth) for p in action.params)
    if found != params:
        raise InputError(f"action {action.name} has parameters {found}, expected {params}")
    return action


def _check_table(
    schema: P4Schema,
    name: str,
    fields: tuple[tuple[str, int, str], ...],
    action_ids: tuple[int, ...],
) -> TableInfo:
    table = schema.table(name)
    found = tuple((f.name, f.bitwidth, f.match_type) for f in table.match_fields)
    if found != fields:
        raise InputError(f"table {table.name} has key {found}, expected {fields}")
    for action_id in action_ids:
        if action_id not in table.action_ids:
            action = schema.action(action_id)
            raise InputError(f"table {table.name} does not offer action {action.name}")
    if table.size <= 0:
        raise InputError(f"table {table.name} has size {table.size}")
    return table


def _check_register(schema: P4Schema, name: str, bitwidth: int) -> RegisterInfo:
    register = schema.register(name)
    if register.bitwidth != bitwidth or register.size <= 0:
        raise InputError(
            f"register {register.name} is bit<{register.bitwidth}>[{register.size}], "
            f"expected bit<{bitwidth}> cells"
        )
    return register
