"""The data-plane contract of fingerprint.p4, read from the P4Info p4c wrote for it.

Two halves, each written once:

- The P4Runtime names, key fields, parameters and widths of every object the controller, the
  reference switch and the PTF suite use: the constants below, checked against any P4Info before
  it is used, so a program that differs is refused naming the object.
- The compile-time constants (`MAX_DEVICES`, `MAX_SERVICES`, `DIGEST_CACHE_SIZE`,
  `DIGEST_REPEAT_US`, `FLOOD_GROUP`): the P4 program annotates its `main` with
  `@svcfp_contract[...]`, and p4c evaluates the values of the build (`-D` overrides included)
  into `pkg_info.structured_annotations`. Nothing else in Python states them.

Only the standard library is imported: the P4Info message is read through its attributes, so
the same code serves the controller's protobuf and the PTF environment's protobuf 3.20.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from controller.base.errors import InputError

if TYPE_CHECKING:
    from finsy.proto import p4i

DEVICE_TABLE = "IngressImpl.device_table"
SERVICE_BY_DST = "IngressImpl.service_by_dst"
SERVICE_BY_SRC = "IngressImpl.service_by_src"
SERVICE_TABLES = (SERVICE_BY_DST, SERVICE_BY_SRC)
L2_TABLE = "IngressImpl.l2_forward"

SET_DEVICE = "IngressImpl.set_device"
UNREGISTERED = "IngressImpl.unregistered"
SET_SERVICE = "IngressImpl.set_service"
FORWARD = "IngressImpl.forward"
FLOOD = "IngressImpl.flood"
DROP = "IngressImpl.drop"
NO_ACTION = "NoAction"

COUNTER = "IngressImpl.service_hits"
DIGEST_MAC = "IngressImpl.digest_mac"
DIGEST_TIME = "IngressImpl.digest_time"
NEW_DEVICE_DIGEST = "new_device_t"

SRC_MAC, DST_MAC, PROTO, PORT = "src_mac", "dst_mac", "proto", "port"
DEVICE_ID, SERVICE_ID = "device_id", "service_id"

ANNOTATION = "svcfp_contract"
CONSTANTS = ("max_devices", "max_services", "digest_cache_size", "digest_repeat_us", "flood_group")

# P4Info MatchField.MatchType values (p4/config/v1/p4info.proto).
MATCH_TYPES = {2: "EXACT", 3: "LPM", 4: "TERNARY", 5: "RANGE", 6: "OPTIONAL"}
COUNTER_UNIT_BOTH = 3

# table → ((key field, bitwidth, match kind), ...), actions it must offer
TABLES: dict[str, tuple[tuple[tuple[str, int, str], ...], tuple[str, ...]]] = {
    DEVICE_TABLE: (((SRC_MAC, 48, "EXACT"),), (SET_DEVICE, UNREGISTERED)),
    SERVICE_BY_DST: (((PROTO, 8, "TERNARY"), (PORT, 16, "RANGE")), (SET_SERVICE,)),
    SERVICE_BY_SRC: (((PROTO, 8, "TERNARY"), (PORT, 16, "RANGE")), (SET_SERVICE,)),
    L2_TABLE: (((DST_MAC, 48, "EXACT"),), (FORWARD, FLOOD, DROP)),
}
# action → ((parameter, bitwidth), ...)
ACTIONS: dict[str, tuple[tuple[str, int], ...]] = {
    SET_DEVICE: ((DEVICE_ID, 16),),
    UNREGISTERED: (),
    SET_SERVICE: ((SERVICE_ID, 16),),
    FORWARD: ((PORT, 9),),
    FLOOD: (),
    DROP: (),
}
REGISTERS: dict[str, int] = {DIGEST_MAC: 48, DIGEST_TIME: 48}
# The de-duplication cache is the data plane's own (no controller reads it), so its cell widths
# follow the architecture: TNA keeps the MAC as a pair of 32-bit halves (mac_pair_t) and the time
# in 32 bits (p4src/README.md, "Tofino").
ARCH_REGISTERS: dict[str, dict[str, int]] = {
    "v1model": REGISTERS,
    "tna": {DIGEST_MAC: 64, DIGEST_TIME: 32},
    "t2na": {DIGEST_MAC: 64, DIGEST_TIME: 32},
}


def register_widths(arch: str) -> dict[str, int]:
    """The digest cache's register widths for a P4Info's `pkg_info.arch` (v1model's when the
    architecture is not one the project builds for)."""
    return ARCH_REGISTERS.get(arch, REGISTERS)


def type_width(type_spec: Any, p4info: Any) -> int:
    """The bit width of a P4Info `P4DataTypeSpec`: a bitstring's width, or the sum of a struct's
    members' (from `type_info`); 0 for anything else."""
    kind = type_spec.WhichOneof("type_spec")
    if kind == "bitstring":
        return int(type_spec.bitstring.bit.bitwidth)
    if kind == "struct" and type_spec.struct.name in p4info.type_info.structs:
        members = p4info.type_info.structs[type_spec.struct.name].members
        return sum(type_width(member.type_spec, p4info) for member in members)
    return 0


DIGEST_MEMBERS: tuple[tuple[str, int], ...] = (("mac", 48), ("port", 9))


@dataclass(frozen=True)
class Contract:
    """The compile-time constants of one build of fingerprint.p4."""

    max_devices: int
    max_services: int
    digest_cache_size: int
    digest_repeat_us: int
    flood_group: int

    @property
    def counter_size(self) -> int:
        """Cells of `service_hits`: MAX_DEVICES × MAX_SERVICES."""
        return self.max_devices * self.max_services

    def cell(self, device_id: int, service_id: int) -> int:
        """The counter index of (device, service)."""
        return device_id * self.max_services + service_id

    def param_limit(self, action: str, param: str) -> tuple[int, str] | None:
        """The exclusive bound an action parameter must stay below so the counter layout holds,
        with the constant's name: device ids below MAX_DEVICES, service ids below MAX_SERVICES;
        None for the other parameters."""
        limits = {
            (SET_DEVICE, DEVICE_ID): (self.max_devices, "MAX_DEVICES"),
            (SET_SERVICE, SERVICE_ID): (self.max_services, "MAX_SERVICES"),
        }
        return limits.get((action, param))

    @classmethod
    def from_p4info(cls, p4info: p4i.P4Info, source: str = "P4Info") -> Contract:
        """Read the constants and check every object against the names and widths above;
        `InputError` names the first thing that differs."""
        contract = cls(**_constants(p4info, source))
        _check(p4info, contract, source)
        return contract


def _constants(p4info: p4i.P4Info, source: str) -> dict[str, int]:
    for annotation in p4info.pkg_info.structured_annotations:
        if annotation.name != ANNOTATION:
            continue
        found = {
            pair.key: int(pair.value.int64_value)
            for pair in annotation.kv_pair_list.kv_pairs
            if pair.value.WhichOneof("value") == "int64_value"
        }
        missing = [key for key in CONSTANTS if key not in found]
        if missing:
            raise InputError(f"{source}: @{ANNOTATION} lacks {', '.join(missing)}")
        bad = [key for key in CONSTANTS if found[key] <= 0]
        if bad:
            raise InputError(
                f"{source}: @{ANNOTATION} " + ", ".join(f"{k}={found[k]}" for k in bad)
            )
        return {key: found[key] for key in CONSTANTS}
    raise InputError(
        f"{source} has no @{ANNOTATION} annotation in pkg_info: it was not compiled from "
        "fingerprint.p4 by p4c"
    )


def _named(objects: Iterable[Any], kind: str, name: str, source: str) -> Any:
    for item in objects:
        if name in (item.preamble.name, item.preamble.alias):
            return item
    raise InputError(f"{source} has no {kind} {name!r}")


def _check(p4info: p4i.P4Info, contract: Contract, source: str) -> None:
    action_ids = {}
    for name, params in ACTIONS.items():
        action = _named(p4info.actions, "action", name, source)
        found = tuple((p.name, p.bitwidth) for p in action.params)
        if found != params:
            raise InputError(f"{source}: action {name} has parameters {found}, expected {params}")
        action_ids[name] = action.preamble.id
    for name, (fields, actions) in TABLES.items():
        table = _named(p4info.tables, "table", name, source)
        found_fields = tuple(
            (f.name, f.bitwidth, MATCH_TYPES.get(f.match_type, "UNSPECIFIED"))
            for f in table.match_fields
        )
        if found_fields != fields:
            raise InputError(f"{source}: table {name} has key {found_fields}, expected {fields}")
        offered = {ref.id for ref in table.action_refs}
        for action_name in actions:
            if action_ids[action_name] not in offered:
                raise InputError(f"{source}: table {name} does not offer action {action_name}")
        if table.size <= 0:
            raise InputError(f"{source}: table {name} has size {table.size}")
    devices = _named(p4info.tables, "table", DEVICE_TABLE, source).size
    if devices != contract.max_devices:
        raise InputError(
            f"{source}: table {DEVICE_TABLE} holds {devices} entries, "
            f"MAX_DEVICES is {contract.max_devices}"
        )
    counter = _named(p4info.counters, "counter", COUNTER, source)
    if counter.spec.unit != COUNTER_UNIT_BOTH:
        raise InputError(f"{source}: counter {COUNTER} does not count packets and bytes")
    if counter.size != contract.counter_size:
        shape = "" if counter.size % devices == 0 else " (not a whole multiple of MAX_DEVICES)"
        raise InputError(
            f"{source}: counter {COUNTER} has {counter.size} cells{shape}, MAX_DEVICES × "
            f"MAX_SERVICES is {contract.max_devices} × {contract.max_services}"
        )
    for name, width in register_widths(p4info.pkg_info.arch).items():
        register = _named(p4info.registers, "register", name, source)
        found_width = type_width(register.type_spec, p4info)
        if (found_width, register.size) != (width, contract.digest_cache_size):
            raise InputError(
                f"{source}: register {name} is bit<{found_width}>[{register.size}], expected "
                f"bit<{width}>[{contract.digest_cache_size}] (DIGEST_CACHE_SIZE)"
            )
    digest = _named(p4info.digests, "digest", NEW_DEVICE_DIGEST, source)
    struct = digest.type_spec.struct.name
    members: tuple[tuple[str, int], ...] = ()
    if struct in p4info.type_info.structs:
        members = tuple(
            (m.name, m.type_spec.bitstring.bit.bitwidth)
            for m in p4info.type_info.structs[struct].members
        )
    if members != DIGEST_MEMBERS:
        raise InputError(
            f"{source}: digest {NEW_DEVICE_DIGEST} has members {members}, expected {DIGEST_MEMBERS}"
        )
