"""Comparisons the engine's tests make and the library itself never needs: equal activity, a
service entry matching a port, every contribution of an explanation."""

from __future__ import annotations

import math

from controller.engine.activity import ActivityTable
from controller.engine.identify import Explanation, ServiceContribution
from controller.engine.services import Service


def same_activity(one: ActivityTable, other: ActivityTable) -> bool:
    """Same rows (by device key and service name) and the same unit length."""
    return math.isclose(one.unit_seconds, other.unit_seconds) and sorted(one.records()) == sorted(
        other.records()
    )


def matches(service: Service, proto: int, port: int) -> bool:
    """Whether a table entry for `service` matches (proto, port)."""
    return (service.proto is None or service.proto == proto) and (
        service.port_lo <= port <= service.port_hi
    )


def contributions(why: Explanation) -> tuple[ServiceContribution, ...]:
    """Every service's contribution to a similarity, matched first."""
    return why.matched + why.unexpected + why.missing
