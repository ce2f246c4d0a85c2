"""The program the reference switch runs, resolved by name from the P4Info it is given.

The switch implements exactly one P4 program (p4src/fingerprint.p4). A pushed P4Info is accepted
when it carries that program's contract (`controller.base.contract`: every object with the same
match kinds and widths, and the compile-time constants p4c copied from `@svcfp_contract`); sizes
and constants of `-D` builds come from it, never from a copy here.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from finsy.proto import p4i

from controller.base import contract as names
from controller.base.contract import Contract
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


@dataclass(frozen=True)
class Program:
    """Every P4 object the pipeline model uses, with its P4Runtime id and size."""

    schema: P4Schema
    contract: Contract
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
    # (action id, parameter id) → the exclusive bound that keeps the counter layout intact, and
    # the constant it is.
    param_limits: Mapping[tuple[int, int], tuple[int, str]]

    @property
    def max_devices(self) -> int:
        """MAX_DEVICES of the build."""
        return self.contract.max_devices

    @property
    def max_services(self) -> int:
        """MAX_SERVICES of the build: counter cells per device."""
        return self.contract.max_services

    @property
    def digest_cache_size(self) -> int:
        """DIGEST_CACHE_SIZE: slots of the new-device digest de-duplication cache."""
        return self.contract.digest_cache_size

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
    contract = schema.contract
    limits: dict[tuple[int, int], tuple[int, str]] = {}
    for action_name, params in names.ACTIONS.items():
        action = schema.action(action_name)
        for param_name, _ in params:
            limit = contract.param_limit(action_name, param_name)
            if limit is not None:
                limits[(action.id, action.param(param_name).id)] = limit
    no_action = schema.actions.get(names.NO_ACTION)
    return Program(
        schema=schema,
        contract=contract,
        device_table=schema.table(names.DEVICE_TABLE),
        service_by_dst=schema.table(names.SERVICE_BY_DST),
        service_by_src=schema.table(names.SERVICE_BY_SRC),
        l2_forward=schema.table(names.L2_TABLE),
        set_device=schema.action(names.SET_DEVICE),
        unregistered=schema.action(names.UNREGISTERED),
        set_service=schema.action(names.SET_SERVICE),
        forward=schema.action(names.FORWARD),
        flood=schema.action(names.FLOOD),
        drop=schema.action(names.DROP),
        no_action_id=no_action.id if no_action is not None else 0,
        service_hits=schema.counter(names.COUNTER),
        digest_mac=schema.register(names.DIGEST_MAC),
        digest_time=schema.register(names.DIGEST_TIME),
        new_device=schema.digest(names.NEW_DEVICE_DIGEST),
        param_limits=limits,
    )
