"""Prometheus metrics of a running controller, labelled by switch, computed when scraped.

The controller counts in plain numbers (controller/control/telemetry.py); this collector turns
them into metric families at every scrape, so nothing is counted twice and a scrape sees one
consistent moment (it runs on the controller's event loop, between its steps).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from typing import TYPE_CHECKING

from prometheus_client import CollectorRegistry
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector

from controller import __version__
from controller.control.alerts import KINDS
from controller.control.live import verdict
from controller.control.telemetry import NO_SWITCH

if TYPE_CHECKING:
    from controller.control.controller import Controller

# A device without a decision yet.
UNIDENTIFIED = "unidentified"
# The errors a switch's worker counts (controller/control/worker.py).
ERROR_EVENTS = ("digest_failed", "poll_failed", "session_failed")


def _bound(value: float) -> str:
    """A bucket's upper bound as Prometheus writes it."""
    return "+Inf" if value == float("inf") else repr(value)


def device_states(controller: Controller) -> Counter[tuple[str, str, str]]:
    """(switch, state, type) → devices: state active, evicting or evicted; type the verdict
    over the device's decisions (its accumulated answer when it has one), or "unidentified"."""
    registry = controller.registry
    histories = controller.watch.devices
    counts: Counter[tuple[str, str, str]] = Counter()
    for row in registry.rows():
        mac = row.mac
        if row.device_id is None:
            state = "evicted"
        elif registry.is_active(mac):
            state = "active"
        else:
            state = "evicting"
        history = histories.get(mac)
        kind = UNIDENTIFIED
        if history is not None and history.labels:
            kind = history.labels[verdict(history.labels, history.accumulated)]
        counts[(row.switch or NO_SWITCH, state, kind)] += 1
    return counts


class ControllerCollector(Collector):
    """Every metric of one controller."""

    def __init__(self, controller: Controller) -> None:
        self.controller = controller

    def collect(self) -> Iterator[Metric]:
        """The metric families at this moment."""
        controller = self.controller
        telemetry = controller.telemetry
        switches = telemetry.switches
        info = GaugeMetricFamily(
            "svcfp_controller_info", "The controller: version and role", labels=["version", "role"]
        )
        info.add_metric([__version__, controller.config.role], 1.0)
        yield info
        unit = GaugeMetricFamily("svcfp_time_unit_seconds", "Seconds per time unit")
        unit.add_metric([], controller.config.time_unit)
        yield unit

        up = GaugeMetricFamily(
            "svcfp_switch_up", "1 while the switch's session is up", labels=["switch"]
        )
        poll = HistogramMetricFamily(
            "svcfp_poll_duration_seconds",
            "Time to read a switch's counter array and its device map",
            labels=["switch"],
        )
        families: dict[str, CounterMetricFamily] = {
            name: CounterMetricFamily(f"svcfp_{name}", text, labels=["switch"])
            for name, text in (
                ("connects", "P4Runtime sessions established"),
                ("polls", "Counter polls stored"),
                ("poll_failures", "Counter polls that failed"),
                ("read_bytes", "Bytes of counter read responses"),
                ("activity_rows", "Activity rows stored (device, unit, service)"),
                ("activity_packets", "Packets counted into stored activity"),
                ("unregistered_packets", "Packets counted under device 0 (unregistered)"),
                ("digests", "New-device digest items received"),
                ("registrations", "Devices registered from digests"),
                ("write_failures", "P4Runtime writes the switch refused"),
            )
        }
        last_read = GaugeMetricFamily(
            "svcfp_counter_read_bytes", "Size of the latest counter read", labels=["switch"]
        )
        refusals = CounterMetricFamily(
            "svcfp_registration_refusals",
            "New-device digests not acted on, by reason",
            labels=["switch", "reason"],
        )
        errors = CounterMetricFamily(
            "svcfp_errors", "Errors the controller logged and survived", labels=["switch", "event"]
        )
        entries = GaugeMetricFamily(
            "svcfp_table_entries", "Entries a switch table holds", labels=["switch", "table"]
        )
        sizes = GaugeMetricFamily(
            "svcfp_table_size", "Entries a switch table can hold", labels=["switch", "table"]
        )
        for name, t in sorted(switches.items()):
            up.add_metric([name], 1.0 if t.connected else 0.0)
            poll.add_metric(
                [name],
                buckets=[(_bound(b), n) for b, n in t.poll_seconds.cumulative()],
                sum_value=t.poll_seconds.total,
            )
            values = {
                "connects": t.connects,
                "polls": t.polls,
                "poll_failures": t.poll_failures,
                "read_bytes": t.read_bytes,
                "activity_rows": t.activity_rows,
                "activity_packets": t.activity_packets,
                "unregistered_packets": t.unregistered_packets,
                "digests": t.digests,
                "registrations": t.registered,
                "write_failures": t.write_failures,
            }
            for key, family in families.items():
                family.add_metric([name], values[key])
            last_read.add_metric([name], t.last_read_bytes)
            for reason in ("group_source", "rate_limited", "registry_full"):
                refusals.add_metric([name, reason], t.refusals.get(reason, 0))
            for event in sorted(set(ERROR_EVENTS) | set(t.errors)):
                errors.add_metric([name, event], t.errors.get(event, 0))
            for table, (held, size) in sorted(t.tables.items()):
                entries.add_metric([name, table], held)
                sizes.add_metric([name, table], size)
        yield up
        yield poll
        yield from families.values()
        yield from (last_read, refusals, errors, entries, sizes)

        devices = GaugeMetricFamily(
            "svcfp_devices",
            "Registered devices by state (active, evicting, evicted) and identified type",
            labels=["switch", "state", "type"],
        )
        unknown = GaugeMetricFamily(
            "svcfp_unknown_devices",
            "Active devices whose verdict is unknown (no reference type within θ)",
            labels=["switch"],
        )
        states = device_states(controller)
        unknown_by: Counter[str] = Counter()
        for (switch, state, kind), n in sorted(states.items()):
            devices.add_metric([switch, state, kind], n)
            if state == "active" and kind == "unknown":
                unknown_by[switch] += n
        for switch in sorted(set(switches) | set(unknown_by)):
            unknown.add_metric([switch], unknown_by.get(switch, 0))
        yield devices
        yield unknown

        decisions = CounterMetricFamily(
            "svcfp_decisions",
            "Identification decisions stored, by label",
            labels=["switch", "label"],
        )
        # Every series a query may ask for exists from the start, at 0 until counted.
        live = controller.config.live
        labels = ["unknown", *live.references.types] if live and live.references else []
        counted = Counter({(s, label): 0 for s in switches for label in labels})
        counted.update(telemetry.decisions)
        for (switch, label), n in sorted(counted.items()):
            decisions.add_metric([switch, label], n)
        yield decisions
        fingerprints = CounterMetricFamily(
            "svcfp_fingerprints", "Fingerprints exported", labels=["switch"]
        )
        for switch, n in sorted(telemetry.fingerprints.items()):
            fingerprints.add_metric([switch], n)
        yield fingerprints
        alerts = CounterMetricFamily(
            "svcfp_alerts", "Alerts raised, by kind", labels=["switch", "kind"]
        )
        raised = Counter({(s, kind): 0 for s in switches for kind in KINDS})
        raised.update(telemetry.alerts)
        for (switch, kind), n in sorted(raised.items()):
            alerts.add_metric([switch, kind], n)
        yield alerts
        webhook = controller.alerts.webhook
        failures = CounterMetricFamily(
            "svcfp_webhook_failures", "Alerts the webhook did not take (failed or dropped)"
        )
        failures.add_metric([], 0 if webhook is None else webhook.failed + webhook.dropped)
        yield failures


def controller_registry(controller: Controller) -> CollectorRegistry:
    """A registry of this controller's metrics (one per server, not the global one)."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(ControllerCollector(controller))
    return registry
