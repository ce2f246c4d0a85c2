"""Pure builders of every P4Runtime entity the controller writes.

Each function turns registry, catalogue or forwarding state into protobuf entities, resolving every
table, action, field and digest by name (`controller.base.contract`) through the `P4Schema`, and
refusing ids the switch's counter layout cannot hold (its contract's MAX_DEVICES and
MAX_SERVICES). Nothing here talks to a switch, so the exact bytes of each entry are testable
against the committed P4Info.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from finsy.proto import p4r

from controller.base import contract

# Re-exported: callers name the tables and the counter through this module.
from controller.base.contract import COUNTER as COUNTER
from controller.base.contract import DEVICE_TABLE as DEVICE_TABLE
from controller.base.contract import L2_TABLE as L2_TABLE
from controller.base.contract import NEW_DEVICE_DIGEST as NEW_DEVICE_DIGEST
from controller.base.contract import SERVICE_TABLES as SERVICE_TABLES
from controller.base.errors import InputError
from controller.base.p4info import P4Schema, encode_int, encode_mac
from controller.engine.catalogue import Catalogue
from controller.engine.services import Service

# What an Update can carry: a table entry, a digest entry, or an already wrapped entity.
Writable = p4r.TableEntry | p4r.DigestEntry | p4r.Entity


def _action(schema: P4Schema, name: str, **params: int) -> p4r.TableAction:
    action = schema.action(name)
    return p4r.TableAction(
        action=p4r.Action(
            action_id=action.id,
            params=[
                p4r.Action.Param(
                    param_id=action.param(key).id,
                    value=encode_int(value, action.param(key).bitwidth),
                )
                for key, value in params.items()
            ],
        )
    )


def _mac_entry(
    schema: P4Schema, table_name: str, field_name: str, mac: str, action: str, **params: int
) -> p4r.TableEntry:
    table = schema.table(table_name)
    field = table.field(field_name)
    return p4r.TableEntry(
        table_id=table.id,
        match=[
            p4r.FieldMatch(field_id=field.id, exact=p4r.FieldMatch.Exact(value=encode_mac(mac)))
        ],
        action=_action(schema, action, **params),
    )


def _check_id(schema: P4Schema, action: str, param: str, value: int, what: str) -> None:
    limit = schema.contract.param_limit(action, param)
    if limit is not None and not 0 <= value < limit[0]:
        raise InputError(
            f"{what}: {param} {value} is out of range for {schema.source} "
            f"({limit[1]} is {limit[0]})"
        )


def device_entry(schema: P4Schema, mac: str, device_id: int) -> p4r.TableEntry:
    """device_table: src_mac exact `mac` → set_device(device_id)."""
    _check_id(schema, contract.SET_DEVICE, contract.DEVICE_ID, device_id, f"device {mac}")
    return _mac_entry(
        schema, DEVICE_TABLE, contract.SRC_MAC, mac, contract.SET_DEVICE, device_id=device_id
    )


def service_entries(
    schema: P4Schema, dst: Iterable[Service], src: Iterable[Service]
) -> list[p4r.TableEntry]:
    """service_by_dst entries for `dst`, then service_by_src entries for `src` (id 0 has none).

    A wildcard protocol and a port range covering every port are don't-care matches, which
    P4Runtime requires to be omitted from the key.
    """
    entries: list[p4r.TableEntry] = []
    for table_name, services in zip(SERVICE_TABLES, (list(dst), list(src)), strict=True):
        table = schema.table(table_name)
        proto_field = table.field(contract.PROTO)
        port_field = table.field(contract.PORT)
        full_port = (1 << port_field.bitwidth) - 1
        for service in services:
            if service.id == 0:
                continue
            _check_id(
                schema, contract.SET_SERVICE, contract.SERVICE_ID, service.id,
                f"service {service.name}",
            )  # fmt: skip
            if service.priority <= 0:
                raise InputError(f"service {service.name}: priority must be > 0")
            if not 0 <= service.port_lo <= service.port_hi <= full_port:
                raise InputError(
                    f"service {service.name}: bad port range {service.port_lo}-{service.port_hi}"
                )
            match: list[p4r.FieldMatch] = []
            if service.proto is not None:
                match.append(
                    p4r.FieldMatch(
                        field_id=proto_field.id,
                        ternary=p4r.FieldMatch.Ternary(
                            value=encode_int(service.proto, proto_field.bitwidth),
                            mask=encode_int((1 << proto_field.bitwidth) - 1, proto_field.bitwidth),
                        ),
                    )
                )
            if (service.port_lo, service.port_hi) != (0, full_port):
                match.append(
                    p4r.FieldMatch(
                        field_id=port_field.id,
                        range=p4r.FieldMatch.Range(
                            low=encode_int(service.port_lo, port_field.bitwidth),
                            high=encode_int(service.port_hi, port_field.bitwidth),
                        ),
                    )
                )
            entries.append(
                p4r.TableEntry(
                    table_id=table.id,
                    match=match,
                    action=_action(schema, contract.SET_SERVICE, service_id=service.id),
                    priority=service.priority,
                )
            )
    return entries


def catalogue_entries(schema: P4Schema, catalogue: Catalogue) -> list[p4r.TableEntry]:
    """Both service tables' entries for a catalogue."""
    return service_entries(schema, catalogue.dst_services(), catalogue.src_services())


def l2_entry(schema: P4Schema, mac: str, port: int) -> p4r.TableEntry:
    """l2_forward: dst_mac exact `mac` → forward(port)."""
    return _mac_entry(schema, L2_TABLE, contract.DST_MAC, mac, contract.FORWARD, port=port)


def l2_default(schema: P4Schema, tap: bool) -> p4r.TableEntry:
    """The l2_forward default: flood() normally, drop() in tap mode (count, then drop)."""
    return p4r.TableEntry(
        table_id=schema.table(L2_TABLE).id,
        action=_action(schema, contract.DROP if tap else contract.FLOOD),
        is_default_action=True,
    )


def flood_group(schema: P4Schema, ports: Sequence[int]) -> p4r.Entity:
    """The multicast group flood() uses (the contract's FLOOD_GROUP) with every port; the data
    plane prunes the ingress port."""
    return p4r.Entity(
        packet_replication_engine_entry=p4r.PacketReplicationEngineEntry(
            multicast_group_entry=p4r.MulticastGroupEntry(
                multicast_group_id=schema.contract.flood_group,
                replicas=[p4r.Replica(egress_port=port, instance=1) for port in sorted(set(ports))],
            )
        )
    )


def digest_entry(
    schema: P4Schema,
    max_timeout_ns: int = 0,
    max_list_size: int = 1,
    ack_timeout_ns: int = 1_000_000_000,
) -> p4r.DigestEntry:
    """Enable new-device digests; by default every digest is sent at once."""
    return p4r.DigestEntry(
        digest_id=schema.digest(NEW_DEVICE_DIGEST).id,
        config=p4r.DigestEntry.Config(
            max_timeout_ns=max_timeout_ns,
            max_list_size=max_list_size,
            ack_timeout_ns=ack_timeout_ns,
        ),
    )


def table_wildcard(schema: P4Schema, table_name: str) -> p4r.Entity:
    """The read of every entry of one table."""
    return p4r.Entity(table_entry=p4r.TableEntry(table_id=schema.table(table_name).id))


def counter_wildcard(schema: P4Schema) -> p4r.Entity:
    """The read of every cell of the service counter in one request."""
    return p4r.Entity(counter_entry=p4r.CounterEntry(counter_id=schema.counter(COUNTER).id))


def entity(item: Writable) -> p4r.Entity:
    """Wrap a table or digest entry as an Entity."""
    if isinstance(item, p4r.Entity):
        return item
    if isinstance(item, p4r.TableEntry):
        return p4r.Entity(table_entry=item)
    return p4r.Entity(digest_entry=item)


def updates(kind: p4r.Update.Type.ValueType, items: Iterable[Writable]) -> list[p4r.Update]:
    """One Update of `kind` (p4r.Update.INSERT/MODIFY/DELETE) per item."""
    return [p4r.Update(type=kind, entity=entity(item)) for item in items]


def match_key(entry: p4r.TableEntry) -> bytes:
    """Identity of a table entry for reconciliation: table, key fields and priority.

    Fields are ordered by id so the key does not depend on the order a switch returns them in.
    """
    ordered = p4r.TableEntry(
        table_id=entry.table_id,
        match=sorted(entry.match, key=lambda m: m.field_id),
        priority=entry.priority,
        is_default_action=entry.is_default_action,
    )
    return ordered.SerializeToString(deterministic=True)


def max_services(schema: P4Schema) -> int:
    """MAX_SERVICES of the switch's build, from its P4Info's contract."""
    return schema.contract.max_services
