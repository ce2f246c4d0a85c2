"""Live identification: closed time units → fingerprint exporter → decisions, stored and logged.

The controller hands every range of closed units to `LiveIdentification.close_units`. The units
go through the streaming exporter; each exported fingerprint is identified against the enrolled
references (when there are any) and accumulated into the device's answer over its successive
windows (`controller.engine.accumulate`: the answer firms up with evidence, and a change of
behaviour is declared when the evidence against it reaches `CHANGE_ODDS`); fingerprints,
decisions with their accumulated answer, and the next unit to feed are stored in one
transaction.

Restart: the exporter's open windows are not kept. A restarted controller starts new windows at
the first unit after the last one fed (stored as `live_next_unit`), so no unit is ever fed twice
and no window spans the time the controller was down. The unit open when the controller stops is
fed as it stands; activity counted in that unit after a restart is stored but not fingerprinted.
The accumulated answers resume from the stored decisions of the references' representation.
"""

from __future__ import annotations

import logging
import math
import time
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol, TypeVar

from controller.base.errors import InputError
from controller.engine.accumulate import Accumulator, Belief, WindowDecision, feed
from controller.engine.activity import ActivityTable
from controller.engine.exporter import ExporterConfig, StreamingExporter
from controller.engine.fingerprints import Fingerprint, FingerprintSet
from controller.engine.identify import (
    UNKNOWN,
    Decision,
    References,
    ServiceContribution,
    identify,
)
from controller.mud.compliance import Finding
from controller.mud.profile import MudProfiles
from controller.store.records import DecisionRecord, FingerprintRecord
from controller.store.store import Store

log = logging.getLogger(__name__)

NEXT_UNIT_KEY = "live_next_unit"
# Services named per group in a decision's log line.
TOP_SERVICES = 3


@dataclass(frozen=True)
class LiveSettings:
    """How the controller fingerprints and identifies: exporter settings, optional references,
    and optional MUD profiles to check identified devices against."""

    exporter: ExporterConfig
    references: References | None = None
    mud: MudProfiles | None = None

    def check(self, unit_seconds: float, source: str) -> None:
        """Refuse references made with other units or another representation."""
        refs = self.references
        if refs is None:
            return
        if not math.isclose(refs.unit_seconds, unit_seconds):
            raise InputError(
                f"{source}: references use {refs.unit_seconds:g} s units, the controller "
                f"{unit_seconds:g} s; pass --time-unit {refs.unit_seconds:g}"
            )
        if (refs.granularity, refs.intensity) != (
            self.exporter.granularity,
            self.exporter.intensity,
        ):
            raise InputError(
                f"{source}: references are {refs.representation}, "
                f"{'--granularity' if refs.intensity == self.exporter.intensity else '--intensity'}"
                f" asks for {self.exporter.representation}"
            )


def verdict(labels: Sequence[str], accumulated: str | None = None) -> int:
    """Which of a device's decisions (oldest first, by label) answers for it. With the device's
    accumulated answer after its latest decision (`accumulated`, `controller.engine.accumulate`)
    the latest decision with that label: the answer that grows more certain with the device's
    windows and starts again when its behaviour changes. Without one (references without types,
    decisions stored before answers accumulated) the latest of those with the most frequent
    label, so one odd window does not flip the answer."""
    if not labels:
        raise ValueError("a verdict needs at least one decision")
    if accumulated is not None and accumulated in labels:
        return max(i for i, label in enumerate(labels) if label == accumulated)
    votes = Counter(labels)
    top = max(votes.values())
    return max(i for i, label in enumerate(labels) if votes[label] == top)


class Decided(Protocol):
    """A stored decision as a verdict reads it: its label and the accumulated answer after it."""

    @property
    def label(self) -> str: ...

    @property
    def accumulated(self) -> str | None: ...


D = TypeVar("D", bound=Decided)


def answering(decisions: Sequence[D]) -> D | None:
    """The decision (of one device, oldest first) that answers for it by `verdict`; None
    before it has any."""
    if not decisions:
        return None
    return decisions[verdict([d.label for d in decisions], decisions[-1].accumulated)]


def identify_fingerprints(
    fingerprints: Sequence[Fingerprint], references: References
) -> list[Decision]:
    """Decisions for exported fingerprints (none for none)."""
    if not fingerprints:
        return []
    return identify(FingerprintSet.from_fingerprints(fingerprints), references)


def fingerprint_record(fp: Fingerprint) -> FingerprintRecord:
    """An exported fingerprint as stored."""
    return FingerprintRecord(
        fp.device, fp.start_unit, fp.end_unit, fp.representation, fp.as_dict(), fp.converged
    )


def decision_record(
    decision: Decision, representation: str, when: float, belief: Belief | None = None
) -> DecisionRecord:
    """A decision as stored: its explanation with the runner-up, the matched reference, the
    calibrated confidence, the types the references cannot tell the best one apart from and
    the device's accumulated answer after it."""
    why = decision.explanation.to_json()
    why.update(
        best_type=decision.best_type,
        theta=decision.theta,
        runner_up=decision.runner_up,
        runner_up_similarity=decision.runner_up_similarity,
        reference=decision.reference,
        confidence=None if math.isnan(decision.confidence) else decision.confidence,
        siblings=list(decision.siblings),
    )
    if belief is not None:
        why["accumulated"] = belief.to_json()
    return DecisionRecord(
        decision.device,
        decision.start_unit,
        decision.end_unit,
        representation,
        decision.label,
        decision.similarity,
        why,
        when,
    )


def decision_line(decision: Decision, device_id: int | None, belief: Belief | None = None) -> str:
    """One structured log line: device, MAC, label, similarity, the accumulated answer and the
    top services: matched ones with their share of the similarity, unexpected ones with the
    device's weight, missing ones with the reference's (neither adds to the similarity)."""
    why = decision.explanation
    accumulated = (
        ""
        if belief is None
        else f"accumulated={belief.label} changed={str(belief.changed).lower()} "
    )

    def top(
        group: Sequence[ServiceContribution], weight: Callable[[ServiceContribution], float]
    ) -> str:
        return ",".join(f"{c.service}:{weight(c):.3f}" for c in group[:TOP_SERVICES]) or "-"

    return (
        f"event=decision device={'-' if device_id is None else device_id} mac={decision.device} "
        f"window={decision.start_unit}..{decision.end_unit} label={decision.label} "
        f"best_type={decision.best_type} similarity={decision.similarity:.3f} "
        f"theta={decision.theta:.3f} {accumulated}matched={top(why.matched, lambda c: c.share)} "
        f"unexpected={top(why.unexpected, lambda c: c.observed)} "
        f"missing={top(why.missing, lambda c: c.reference)}"
    )


@dataclass(frozen=True)
class LiveResult:
    """What closing units produced: the exported fingerprints, their decisions, each decision's
    device's accumulated answer after it (`beliefs`, one per decision), and the unit the exporter
    is to be fed from next; with MUD profiles also the units fed (from `first_unit`), for their
    compliance check."""

    fingerprints: tuple[Fingerprint, ...]
    decisions: tuple[Decision, ...]
    next_unit: int
    decided_at: float
    fed: ActivityTable | None = None
    first_unit: int = 0
    beliefs: tuple[Belief, ...] = ()


class LiveIdentification:
    """Feeds closed units to the exporter, identifies what it exports, stores and logs it.

    `close_units` does all three in the caller's thread. The controller splits them: `identify`
    (the computation) on a thread of its own, `store` in the storage thread, `log` on the loop.
    """

    def __init__(self, storage: Store, settings: LiveSettings, unit_seconds: float) -> None:
        self.storage = storage
        self.settings = settings
        self.exporter = StreamingExporter(settings.exporter, unit_seconds)
        # Controllers sharing a database each feed their own exporter: one mark per scope.
        self.next_unit_key = f"{NEXT_UNIT_KEY}:{storage.scope}" if storage.scope else NEXT_UNIT_KEY
        stored = storage.meta(self.next_unit_key)
        self.next_unit = None if stored is None else int(stored)
        self.representation = settings.exporter.representation
        refs = settings.references
        self.accumulator = None if refs is None else Accumulator(refs.types, refs.families)
        if self.accumulator is not None:
            self._resume(storage.decisions())
        self.compliance = None
        if settings.mud is not None:
            # Imported here: the compliance check uses this module's verdict.
            from controller.control.compliance import LiveCompliance

            self.compliance = LiveCompliance(storage, settings.mud)

    def _resume(self, stored: Sequence[DecisionRecord]) -> None:
        """Accumulate the stored decisions of this representation again, oldest first."""
        assert self.accumulator is not None
        types = set(self.accumulator.types)
        for record in stored:
            why = record.explanation
            best = why.get("best_type")
            if record.representation != self.representation or best not in types:
                continue
            confidence = why.get("confidence")
            self.accumulator.update(
                record.device,
                record.window_end_unit,
                str(best),
                math.nan if confidence is None else float(confidence),
                record.label != UNKNOWN,
            )

    def accumulate(self, decisions: Sequence[Decision]) -> tuple[Belief, ...]:
        """Each decision's device's accumulated answer after it (in the decisions' order; fed
        in window order, as `controller.engine.accumulate.accumulate` does offline)."""
        if self.accumulator is None:
            return ()
        windows = [
            WindowDecision(d.device, d.start_unit, d.end_unit, d.best_type, d.confidence, d.known)
            for d in decisions
        ]
        return tuple(feed(self.accumulator, windows))

    def close_units(self, table: ActivityTable, end_unit: int) -> list[Decision]:
        """Feed the activity of the units before `end_unit` not fed yet; store what comes out."""
        result = self.identify(table, end_unit)
        if result is None:
            return []
        self.store(result)
        self.log(result, {row.mac: row.device_id for row in self.storage.devices()})
        return list(result.decisions)

    def identify(self, table: ActivityTable, end_unit: int) -> LiveResult | None:
        """Feed the units before `end_unit` not fed yet and identify what is exported; None when
        every one of them was fed before. Touches no storage."""
        if self.next_unit is not None:
            if end_unit <= self.next_unit:
                return None
            table = table.select(units=(self.next_unit, end_unit))
        span = table.unit_range()
        first_unit = self.next_unit if self.next_unit is not None else span[0] if span else end_unit
        exported = self.exporter.feed_table(table, end_unit=end_unit)
        references = self.settings.references
        decisions = [] if references is None else identify_fingerprints(exported, references)
        self.next_unit = end_unit
        fed = table if self.compliance is not None else None
        beliefs = self.accumulate(decisions)
        return LiveResult(
            tuple(exported), tuple(decisions), end_unit, time.time(), fed, first_unit, beliefs
        )

    def store(self, result: LiveResult) -> list[Finding]:
        """Store a result's fingerprints, decisions and next unit in one transaction; the MUD
        compliance findings of its units (none without MUD profiles)."""
        self.storage.add_results(
            [fingerprint_record(fp) for fp in result.fingerprints],
            [
                decision_record(d, self.representation, result.decided_at, belief)
                for d, belief in zip(result.decisions, _beliefs(result), strict=True)
            ],
            meta={self.next_unit_key: str(result.next_unit)},
            when=result.decided_at,
        )
        if self.compliance is not None and result.fed is not None:
            return self.compliance.close_units(
                result.fed, result.decisions, result.first_unit, _beliefs(result)
            )
        return []

    def log(self, result: LiveResult, ids: Mapping[str, int | None]) -> None:
        """One line per exported fingerprint and per decision, with the devices' ids."""
        for fp in result.fingerprints:
            log.info(
                "event=fingerprint device=%s mac=%s window=%d..%d converged=%s services=%s",
                "-" if ids.get(fp.device) is None else ids[fp.device],
                fp.device,
                fp.start_unit,
                fp.end_unit,
                fp.converged,
                ",".join(f"{s}:{w:.3f}" for s, w in fp.as_dict().items()) or "-",
            )
        for decision, belief in zip(result.decisions, _beliefs(result), strict=True):
            log.info("%s", decision_line(decision, ids.get(decision.device), belief))


def _beliefs(result: LiveResult) -> Sequence[Belief | None]:
    """A result's beliefs, one per decision (None each without references to accumulate)."""
    return result.beliefs if result.beliefs else [None] * len(result.decisions)
