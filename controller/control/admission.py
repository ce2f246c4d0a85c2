"""Which new-device digests the controller acts on: a guard against spoofed source MACs.

Any host can send frames from random source MACs, and every new one makes the switch send a
digest. Without a guard they would fill the device table and the MAC table for good. So: a group
(multicast or broadcast) or all-zero address is never a device and is never learned; each switch
port may register or teach at most a few new MACs per interval; and a full table is said once,
until it has room again, not once per frame.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from controller.base.macs import is_unicast
from controller.control.config import RegisterRate

log = logging.getLogger(__name__)


@dataclass
class PortBudget:
    """New MACs accepted on one port in the current interval."""

    started: float
    used: int = 0
    refused: int = 0


@dataclass
class Admission:
    """Per switch: the rate limit per port, and whether the full-table warning was given.

    `on_refusal(reason)` hears of every refused digest (`group_source`, `rate_limited`);
    `on_storm(port, mac)` of the first refusal on a port in an interval: a registration storm.
    """

    switch: str
    rate: RegisterRate
    budgets: dict[int, PortBudget] = field(default_factory=dict)
    full_warned: set[str] = field(default_factory=set)
    group_refused: int = 0
    on_refusal: Callable[[str], None] | None = None
    on_storm: Callable[[int, str], None] | None = None

    def admit(self, mac: str, port: int, now: float | None = None) -> bool:
        """Whether to act on a digest of `mac` on `port`: a unicast MAC within the port's budget.

        The first refusal on a port in an interval is logged (with what the interval refused
        before); the rest are counted.
        """
        if not is_unicast(mac):
            self.group_refused += 1
            if self.on_refusal is not None:
                self.on_refusal("group_source")
            if self.group_refused == 1:
                log.warning(
                    "switch=%s event=group_source_refused mac=%s port=%d: a group or zero "
                    "address is never registered or learned (further ones are not logged)",
                    self.switch,
                    mac,
                    port,
                )
            return False
        stamp = time.monotonic() if now is None else now
        budget = self.budgets.get(port)
        if budget is None or stamp - budget.started >= self.rate.seconds:
            if budget is not None and budget.refused > 1:
                log.warning(
                    "switch=%s event=register_rate_limited port=%d refused=%d in %g s",
                    self.switch,
                    port,
                    budget.refused,
                    self.rate.seconds,
                )
            budget = self.budgets[port] = PortBudget(stamp)
        if budget.used >= self.rate.count:
            budget.refused += 1
            if self.on_refusal is not None:
                self.on_refusal("rate_limited")
            if budget.refused == 1:
                if self.on_storm is not None:
                    self.on_storm(port, mac)
                log.warning(
                    "switch=%s event=register_rate_limited port=%d mac=%s: more than %d new "
                    "MACs on this port in %g s; further ones are ignored until the interval ends",
                    self.switch,
                    port,
                    mac,
                    self.rate.count,
                    self.rate.seconds,
                )
            return False
        budget.used += 1
        return True

    def full(self, event: str, message: str) -> None:
        """A table is full (`event` names which): one warning until `room(event)` says it has
        space again."""
        if event not in self.full_warned:
            self.full_warned.add(event)
            log.warning("switch=%s event=%s %s", self.switch, event, message)

    def room(self, event: str) -> None:
        """The table of `event` has space again: the next time it is full is said again."""
        self.full_warned.discard(event)
