"""Alerts: what an operator must hear about, as events that are stored, logged, counted, shown by
the dashboard and optionally POSTed to a webhook.

Kinds and how each is detected:

- `new_unknown_device`: a device's first decision is "unknown" (no reference type is within θ),
  or its first after only unknown ones was never raised; once per device.
- `behaviour_change`: a known device's behaviour changed. With references, when the device's
  accumulated answer declares a change (`controller.engine.accumulate`: the evidence of its
  windows since its answer was last a known type turned against that type, to odds of
  `CHANGE_ODDS` — windows of another type, not a sibling, or "unknown" ones — or most of its
  windows since are unknown; one odd window does not do it).
  Without references, when its new fingerprint leaves its own history: its weighted Jaccard
  similarity to the most similar of the device's last HISTORY fingerprints is below the history
  threshold (successive windows of one device differ by chance: in the demo's profiles a stable
  device stays above 0.6 of its best earlier window, a device playing another profile falls to
  about 0.3). The history similarity is reported either way.
- `registration_storm`: a switch port announced more new MACs than `--register-rate` allows
  (one alert per port per rate interval; admission.py refuses the rest).
- `switch_lost` / `switch_regained`: a switch's P4Runtime session dropped, and came back.
- `compliance`: a device uses a service the MUD profile of its type does not allow (`svcfp run
  --mud`); once per device, type, service and role.
"""

from __future__ import annotations

import concurrent.futures
import json
import logging
import math
import threading
import urllib.error
import urllib.request
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from controller.base.errors import InputError
from controller.control.telemetry import NO_SWITCH, Telemetry
from controller.engine.accumulate import CHANGE_ODDS, Belief
from controller.engine.fingerprints import Fingerprint
from controller.engine.identify import UNKNOWN, Decision
from controller.engine.similarity import weighted_jaccard
from controller.mud.compliance import Finding
from controller.store.records import AlertRecord, DecisionSummary, FingerprintRecord

log = logging.getLogger(__name__)

AlertKind = Literal[
    "new_unknown_device",
    "behaviour_change",
    "registration_storm",
    "switch_lost",
    "switch_regained",
    "compliance",
]
SEVERITY: dict[str, str] = {
    "new_unknown_device": "warning",
    "behaviour_change": "critical",
    "registration_storm": "warning",
    "switch_lost": "critical",
    "switch_regained": "info",
    "compliance": "warning",
}
KINDS: tuple[str, ...] = tuple(SEVERITY)
# A fingerprint sharing less than half its weight with every recent one of the device has left
# its history.
DEFAULT_HISTORY_THRESHOLD = 0.5
# Fingerprints of a device that its history keeps.
HISTORY = 8
# Alerts waiting for the webhook beyond this are dropped (and counted): a webhook that is down
# must not hold the controller's memory.
WEBHOOK_QUEUE = 256


@dataclass(frozen=True)
class AlertSettings:
    """Where alerts go besides the database and the log, and how behaviour change is judged.

    `history_threshold` None is DEFAULT_HISTORY_THRESHOLD.
    """

    webhook: str | None = None
    webhook_timeout: float = 5.0
    history_threshold: float | None = None

    def __post_init__(self) -> None:
        if self.webhook is not None and not self.webhook.startswith(("http://", "https://")):
            raise InputError(f"--alert-webhook {self.webhook!r}: expected an http(s):// URL")
        if not (math.isfinite(self.webhook_timeout) and self.webhook_timeout > 0):
            raise InputError(f"webhook timeout {self.webhook_timeout!r}: a positive number")
        threshold = self.history_threshold
        if threshold is not None and not 0.0 <= threshold <= 1.0:
            raise InputError(f"--history-threshold {threshold!r}: a similarity in 0..1")


def fingerprint_similarity(a: Mapping[str, float], b: Mapping[str, float]) -> float:
    """Weighted Jaccard similarity of two fingerprints given as service → weight."""
    services = sorted(set(a) | set(b))
    if not services:
        return 1.0
    return weighted_jaccard([a.get(s, 0.0) for s in services], [b.get(s, 0.0) for s in services])


@dataclass
class DeviceHistory:
    """What the watch remembers of one device: its decisions' labels, the accumulated answer
    after the latest one (None: decided without one) and its last fingerprints."""

    labels: list[str] = field(default_factory=list)
    fingerprints: list[dict[str, float]] = field(default_factory=list)
    flagged_unknown: bool = False
    accumulated: str | None = None

    def remember(self, fingerprint: dict[str, float]) -> None:
        """Keep `fingerprint` as the newest of the last HISTORY."""
        self.fingerprints.append(fingerprint)
        del self.fingerprints[:-HISTORY]


class BehaviourWatch:
    """Reviews every exported fingerprint and decision for new unknown devices and behaviour
    changes, remembering each device's history (loaded from storage on restart)."""

    def __init__(
        self,
        threshold: float,
        decisions: Iterable[DecisionSummary] = (),
        fingerprints: Iterable[FingerprintRecord] = (),
        flagged: Iterable[str] = (),
    ) -> None:
        self.threshold = threshold
        self.devices: dict[str, DeviceHistory] = {}
        for summary in decisions:
            history = self._history(summary.device)
            history.labels.append(summary.label)
            history.accumulated = summary.accumulated
        for record in fingerprints:
            self._history(record.device).remember(dict(record.fingerprint))
        for mac in flagged:
            self._history(mac).flagged_unknown = True

    def _history(self, mac: str) -> DeviceHistory:
        found = self.devices.get(mac)
        if found is None:
            found = self.devices[mac] = DeviceHistory()
        return found

    def review(
        self,
        fingerprints: Sequence[Fingerprint],
        decisions: Sequence[Decision],
        beliefs: Sequence[Belief],
        switch_of: Callable[[str], str | None],
        now: float,
    ) -> list[AlertRecord]:
        """The alerts that this batch of exported fingerprints, their decisions and the
        accumulated answers after them (one belief per decision) raise, in window order per
        device; the history moves on to them."""
        by_window = {(d.device, d.start_unit, d.end_unit): d for d in decisions}
        belief_of = {
            (d.device, d.start_unit, d.end_unit): b for d, b in zip(decisions, beliefs, strict=True)
        }
        alerts: list[AlertRecord] = []
        for fp in sorted(fingerprints, key=lambda f: (f.end_unit, f.device)):
            history = self._history(fp.device)
            weights = fp.as_dict()
            window = (fp.device, fp.start_unit, fp.end_unit)
            decision, belief = by_window.get(window), belief_of.get(window)
            reasons: list[str] = []
            details: dict[str, Any] = {"window": [fp.start_unit, fp.end_unit]}
            changed = False
            if decision is not None:
                details.update(
                    label=decision.label,
                    best_type=decision.best_type,
                    similarity=decision.similarity,
                    theta=decision.theta,
                )
            if belief is not None and decision is not None:
                details["accumulated"] = belief.to_json()
                reason = _accumulated_change(belief, decision)
                if reason is not None:
                    changed = True
                    reasons.append(reason)
                    details["previous_label"] = belief.previous
            if history.fingerprints:
                own = max(fingerprint_similarity(weights, old) for old in history.fingerprints)
                details["history_similarity"] = own
                if own < self.threshold:
                    reasons.append(
                        f"its fingerprint left its own history (similarity {own:.2f} to the "
                        f"closest of its last {len(history.fingerprints)} < {self.threshold:.2f})"
                    )
                    changed = changed or decision is None
            switch = switch_of(fp.device)
            if changed:
                alerts.append(
                    make_alert(
                        "behaviour_change",
                        f"behaviour changed: {'; '.join(reasons)}",
                        now,
                        device=fp.device,
                        switch=switch,
                        details=details | {"reasons": reasons},
                    )
                )
            elif (
                decision is not None
                and decision.label == UNKNOWN
                and not history.flagged_unknown
                and all(label == UNKNOWN for label in history.labels)
            ):
                history.flagged_unknown = True
                alerts.append(
                    make_alert(
                        "new_unknown_device",
                        f"unknown device: best type {decision.best_type} at similarity "
                        f"{below_theta(decision.similarity, decision.theta)}",
                        now,
                        device=fp.device,
                        switch=switch,
                        details=details,
                    )
                )
            if decision is not None:
                history.labels.append(decision.label)
                history.accumulated = None if belief is None else belief.label
            history.remember(weights)
        return alerts


def below_theta(similarity: float, theta: float) -> str:
    """`0.30 < θ 0.60`: with two decimals, or as many more (up to six) as it takes for the two
    not to read the same (`0.819 < θ 0.820`, not `0.82 < θ 0.82`)."""
    digits = 2
    while digits < 6 and f"{similarity:.{digits}f}" == f"{theta:.{digits}f}":
        digits += 1
    return f"{similarity:.{digits}f} < θ {theta:.{digits}f}"


def _accumulated_change(belief: Belief, decision: Decision) -> str | None:
    """Why a device's accumulated answer says it changed with this window (None: it did not):
    the evidence against its known type reached `CHANGE_ODDS`, or most of its windows since
    it was last identified are unknown."""
    was = belief.previous
    if was == UNKNOWN or not (belief.changed or belief.label == UNKNOWN):
        return None
    window = (
        f"similarity {below_theta(decision.similarity, decision.theta)}"
        if decision.best_type == was
        else f"best type {decision.best_type}, {decision.similarity:.2f}"
    )
    why = (
        f"the evidence against {was} reached {CHANGE_ODDS:g}:1 with this window"
        if belief.changed
        else f"most of its {belief.windows} windows since it was {was} are unknown"
    )
    return f"was {was}, now {belief.label}: {why} ({window})"


class ComplianceWatch:
    """Turns MUD compliance findings into alerts: the first finding of each (device, type,
    service, role) only; a later check that widens it is not news."""

    def __init__(self, alerted: Iterable[AlertRecord] = ()) -> None:
        self.seen = {
            (a.device or "", str(a.details.get("type")), str(a.details.get("service")),
             str(a.details.get("role") or ""))
            for a in alerted
            if a.kind == "compliance"
        }  # fmt: skip

    def review(
        self, findings: Sequence[Finding], switch_of: Callable[[str], str | None], now: float
    ) -> list[AlertRecord]:
        """The alerts for findings not alerted before."""
        alerts = []
        for f in findings:
            if f.key in self.seen:
                continue
            self.seen.add(f.key)
            role = f" as a {f.role}" if f.role else ""
            alerts.append(
                make_alert(
                    "compliance",
                    f"uses {f.service}{role}, which the MUD profile of {f.type} does not allow "
                    f"({f.packets} packets in units {f.first_unit}..{f.last_unit})",
                    now,
                    device=f.device,
                    switch=switch_of(f.device),
                    details={
                        "type": f.type,
                        "service": f.service,
                        "role": f.role,
                        "first_unit": f.first_unit,
                        "last_unit": f.last_unit,
                        "packets": f.packets,
                        "bytes": f.bytes,
                    },
                )
            )
        return alerts


def make_alert(
    kind: AlertKind,
    message: str,
    now: float,
    *,
    device: str | None = None,
    switch: str | None = None,
    details: Mapping[str, Any] | None = None,
) -> AlertRecord:
    """An alert of `kind` with its kind's severity."""
    return AlertRecord(kind, SEVERITY[kind], device, switch, message, dict(details or {}), now)


class Webhook:
    """POSTs each alert as JSON to a URL, one at a time on a thread of its own, bounded in time
    (`timeout` per request) and in memory (WEBHOOK_QUEUE waiting); failures are logged and
    counted, never raised into the controller. `failed` is written by the webhook's thread only,
    `dropped` by the event loop only."""

    def __init__(self, url: str, timeout: float) -> None:
        self.url = url
        self.timeout = timeout
        self.failed = 0
        self.dropped = 0
        self._room = threading.BoundedSemaphore(WEBHOOK_QUEUE)
        self._executor = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="webhook")

    def post(self, alert: AlertRecord) -> None:
        """Queue `alert` for the webhook (dropped and counted when too many are waiting)."""
        if not self._room.acquire(blocking=False):
            self.dropped += 1
            log.warning(
                "event=webhook_dropped kind=%s: %d alerts waiting", alert.kind, WEBHOOK_QUEUE
            )
            return
        future = self._executor.submit(self._send, alert)
        future.add_done_callback(self._done)

    def _send(self, alert: AlertRecord) -> None:
        # "text" lets chat webhooks (Slack, Mattermost) show the alert as it comes.
        body = json.dumps(alert.to_json() | {"text": f"svcfp {alert.kind}: {alert.message}"})
        request = urllib.request.Request(
            self.url,
            data=body.encode(),
            headers={"Content-Type": "application/json"},
            method="POST",
        )
        with urllib.request.urlopen(request, timeout=self.timeout) as response:
            response.read()

    def _done(self, future: concurrent.futures.Future[None]) -> None:
        self._room.release()
        if future.cancelled():
            return
        exc = future.exception()
        if exc is not None:
            self.failed += 1
            reason = exc.reason if isinstance(exc, urllib.error.URLError) else exc
            log.warning("event=webhook_failed url=%s error=%s", self.url, reason)

    def close(self) -> None:
        """Send what is being sent (bounded by the timeout); drop what still waits."""
        self._executor.shutdown(wait=True, cancel_futures=True)


class Alerts:
    """Where the controller raises alerts: each is logged, counted, stored (queued in the
    storage thread), passed to listeners and to the webhook."""

    def __init__(
        self,
        store: Callable[[AlertRecord], None],
        telemetry: Telemetry,
        settings: AlertSettings,
    ) -> None:
        self.store = store
        self.telemetry = telemetry
        self.settings = settings
        self.listeners: list[Callable[[AlertRecord], None]] = []
        self.webhook = (
            None
            if settings.webhook is None
            else Webhook(settings.webhook, settings.webhook_timeout)
        )

    def raise_alert(self, alert: AlertRecord) -> None:
        """Log, count, store and pass on one alert (on the event loop)."""
        log.warning(
            "event=alert kind=%s severity=%s device=%s switch=%s message=%s",
            alert.kind,
            alert.severity,
            alert.device or "-",
            alert.switch or "-",
            json.dumps(alert.message),
        )
        self.telemetry.alerts[(alert.switch or NO_SWITCH, alert.kind)] += 1
        self.store(alert)
        for listener in self.listeners:
            listener(alert)
        if self.webhook is not None:
            self.webhook.post(alert)

    def close(self) -> None:
        """Finish the webhook's current request."""
        if self.webhook is not None:
            self.webhook.close()
