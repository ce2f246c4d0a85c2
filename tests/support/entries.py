"""Table entries built by hand, field by field, to check the switch against entries the
controller's own builders did not make."""

from __future__ import annotations

from finsy.proto import p4r

from controller.base.p4info import P4Schema, encode_int
from tests.support.paths import P4INFO

SCHEMA = P4Schema.load(P4INFO)


def device_entry(mac: str, device_id: int) -> p4r.TableEntry:
    entry = p4r.TableEntry(table_id=SCHEMA.table("device_table").id)
    entry.match.add(field_id=1).exact.value = bytes.fromhex(mac.replace(":", ""))
    action = entry.action.action
    action.action_id = SCHEMA.action("set_device").id
    action.params.add(param_id=1, value=encode_int(device_id, 16))
    return entry


def service_entry(
    table: str, proto: int, low: int, high: int, service_id: int, priority: int = 10
) -> p4r.TableEntry:
    entry = p4r.TableEntry(table_id=SCHEMA.table(table).id, priority=priority)
    ternary = entry.match.add(field_id=1).ternary
    ternary.value, ternary.mask = bytes([proto]), b"\xff"
    port = entry.match.add(field_id=2).range
    port.low, port.high = encode_int(low, 16), encode_int(high, 16)
    action = entry.action.action
    action.action_id = SCHEMA.action("set_service").id
    action.params.add(param_id=1, value=encode_int(service_id, 16))
    return entry
