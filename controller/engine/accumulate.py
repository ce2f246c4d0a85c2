"""Decisions that accumulate over a device's successive windows, and notice when it changes.

One window's decision is a guess with a calibrated confidence p (`identify`). A device keeps
sending windows, so its answer should get more certain with time: the accumulator adds each
window's evidence as a log-likelihood — log p for the window's best type, log((1 − p)/(T − 1))
for each of the other T − 1 known types — and the device's label is the type with the most
evidence since its behaviour last changed. p is clipped to [`FLOOR`, 1 − `FLOOR`]: windows of one
device are not independent, and one overconfident window must not outvote a day of others.

A change of behaviour (a device replaced, re-purposed or compromised) is a CUSUM on the evidence
against the current label: S ← max(0, S + log(p_window(best) / p_window(label))), an "unknown"
window adding log(`UNKNOWN_ODDS`). When S reaches log(`CHANGE_ODDS`) the device has changed:
its evidence restarts from the window that tipped it. A label that stays is never touched by
this, since windows agreeing with it pull S back to 0.

Windows whose best similarity is below θ ("unknown") add no evidence to any type; a device whose
windows since the last change are mostly unknown is unknown.

Siblings (`controller.engine.identify.sibling_families`): a window whose best type is in the
current label's family counts against a change as one of the label's own would. The references
cannot tell the family's types apart, so a device whose windows alternate between them has not
changed; without this, two windows of a sibling at confidence 0.55 among 27 types
(log(0.55 / (0.45 / 26)) = 3.46 each) would declare a change. Evidence still accumulates per
type, so the label may move within the family, as the evidence says, without a declared change.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from controller.base.errors import InputError
from controller.engine.identify import UNKNOWN, family_of

FLOOR = 0.02
"""Confidences are clipped to [FLOOR, 1 − FLOOR] before they become evidence."""
CHANGE_ODDS = 1_000.0
"""Odds against the current label at which a change of behaviour is declared."""
UNKNOWN_ODDS = 4.0
"""Odds for a change that one "unknown" window adds."""


@dataclass(frozen=True)
class Belief:
    """A device's accumulated answer after one more window.

    `label` is the type with the most evidence since the last change (or "unknown"),
    `confidence` its posterior probability, `windows` the windows since the last change,
    `changed` whether this window declared a change of behaviour, and `previous` the label
    before this window.
    """

    device: str
    end_unit: int
    label: str
    confidence: float
    windows: int
    changed: bool
    previous: str = UNKNOWN

    def to_json(self) -> dict[str, Any]:
        """A JSON-ready dict (NaN confidence as None)."""
        return {
            "label": self.label,
            "confidence": None if math.isnan(self.confidence) else self.confidence,
            "windows": self.windows,
            "changed": self.changed,
            "previous": self.previous,
        }


@dataclass
class _State:
    evidence: dict[str, float] = field(default_factory=dict)
    cusum: float = 0.0
    windows: int = 0
    unknown: int = 0
    label: str = UNKNOWN


class Accumulator:
    """Per-device accumulation of window decisions over a set of known types."""

    def __init__(self, types: Sequence[str], families: Sequence[Sequence[str]] = ()) -> None:
        if not types:
            raise InputError("accumulating decisions needs at least one known type")
        self.types = tuple(types)
        self._kin = family_of(families)
        self._states: dict[str, _State] = {}

    def update(
        self, device: str, end_unit: int, best_type: str, confidence: float, known: bool
    ) -> Belief:
        """Add one window of `device`: its best type, that type's calibrated confidence (NaN:
        uncalibrated, taken as 1 − FLOOR), and whether it cleared θ."""
        if best_type not in self.types:
            raise InputError(f"type {best_type!r} is not one of the accumulator's types")
        state = self._states.setdefault(device, _State())
        previous = state.label
        p = 1.0 - FLOOR if math.isnan(confidence) else min(max(confidence, FLOOR), 1.0 - FLOOR)
        others = (1.0 - p) / max(1, len(self.types) - 1)
        changed = False
        if state.windows and state.label != UNKNOWN:
            if not known:
                step = math.log(UNKNOWN_ODDS)
            elif best_type == state.label or best_type in self._kin.get(state.label, ()):
                step = math.log(others / p)
            else:
                step = math.log(p / others)
            state.cusum = max(0.0, state.cusum + step)
            if state.cusum >= math.log(CHANGE_ODDS):
                state = self._states[device] = _State()
                changed = True
        state.windows += 1
        if known:
            for name in self.types:
                gain = math.log(p if name == best_type else others)
                state.evidence[name] = state.evidence.get(name, 0.0) + gain
        else:
            state.unknown += 1
        label, posterior = UNKNOWN, math.nan
        if state.evidence and 2 * state.unknown <= state.windows:
            names = list(state.evidence)
            values = np.array([state.evidence[n] for n in names])
            probs = np.exp(values - values.max())
            probs /= probs.sum()
            best = int(np.argmax(probs))
            label, posterior = names[best], float(probs[best])
        state.label = label
        return Belief(device, end_unit, label, posterior, state.windows, changed, previous)


@dataclass(frozen=True)
class WindowDecision:
    """What accumulation needs of one window's decision."""

    device: str
    start_unit: int
    end_unit: int
    best_type: str
    confidence: float
    known: bool


def _time_order(window: WindowDecision) -> tuple[int, int, str]:
    return window.end_unit, window.start_unit, window.device


def feed(accumulator: Accumulator, windows: Sequence[WindowDecision]) -> list[Belief]:
    """The belief after each of `windows`, in their order, having fed them to `accumulator` in
    time order (ties by device), as each device's windows follow one another."""
    beliefs: dict[int, Belief] = {}
    for i in sorted(range(len(windows)), key=lambda i: _time_order(windows[i])):
        w = windows[i]
        beliefs[i] = accumulator.update(w.device, w.end_unit, w.best_type, w.confidence, w.known)
    return [beliefs[i] for i in range(len(windows))]


def accumulate(
    types: Sequence[str],
    windows: Iterable[WindowDecision],
    families: Sequence[Sequence[str]] = (),
) -> list[Belief]:
    """Beliefs after every window, feeding each device's windows in time order (ties by
    device); the result is in that order too. `families`: the references' sibling families."""
    return feed(Accumulator(types, families), sorted(windows, key=_time_order))
