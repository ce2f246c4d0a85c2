"""When the controller polls: every interval, and at every time-unit boundary.

Counters have no timestamps, so a poll's deltas go to one unit. If a poll interval straddled a
unit boundary, counts from the two units would be mixed; polling at each boundary (and every
interval in between) makes every interval lie in one unit, so online units mean what offline
units mean: the packets of unit u are those with floor(timestamp / unit) = u. Units are counted as
integers, so a boundary is never lost to rounding.
"""

from __future__ import annotations

from dataclasses import dataclass

from controller.control.collector import UnitClock


@dataclass(frozen=True)
class Poll:
    """One scheduled poll: when, which unit its deltas belong to, and whether it ends that unit."""

    when: float
    unit: int
    closes: bool


class PollSchedule:
    """The sequence of polls from `start`: `interval` apart, and one at every unit boundary."""

    def __init__(self, unit_seconds: float, interval: float, start: float) -> None:
        self.unit_seconds = unit_seconds
        self.interval = interval
        self.clock = UnitClock(unit_seconds, start)
        self.last = start

    @property
    def unit(self) -> int:
        """The open unit: the one the next poll's deltas belong to."""
        return self.clock.open_unit

    def next(self) -> Poll:
        """The next poll after the last one made."""
        end = (self.unit + 1) * self.unit_seconds
        after = self.last + self.interval
        if after < end:
            return Poll(after, self.unit, closes=False)
        return Poll(end, self.unit, closes=True)

    def done(self, poll: Poll, now: float) -> tuple[int, int] | None:
        """Record that `poll` was made at `now`; (first, last) of the units it closed, or None.

        A poll made late, past further boundaries (a suspended machine, a switch that answered
        slowly), closes those units too, and the schedule goes on from `now`.
        """
        first = self.unit
        if poll.closes:
            self.clock.open_unit = poll.unit + 1
        self.last = poll.when
        if self.clock.advance(now) is not None:
            self.last = now
        closed = self.unit - 1
        return (first, closed) if closed >= first else None
