"""Alerts: which fingerprints and decisions raise which alert, registration storms, the webhook,
and alerts as stored rows."""

from __future__ import annotations

import http.server
import json
import math
import sqlite3
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from controller.base.errors import InputError
from controller.control.admission import Admission
from controller.control.alerts import (
    Alerts,
    AlertSettings,
    BehaviourWatch,
    ComplianceWatch,
    Webhook,
    below_theta,
    fingerprint_similarity,
    make_alert,
)
from controller.control.config import RegisterRate
from controller.control.telemetry import Histogram, Telemetry
from controller.engine.accumulate import Accumulator
from controller.engine.fingerprints import Fingerprint
from controller.engine.identify import Decision, explain
from controller.mud.compliance import Finding
from controller.store.records import (
    AlertRecord,
    DecisionSummary,
    FingerprintRecord,
    SwitchStatusRecord,
)
from controller.store.storage import Storage, open_store

pytest_plugins = ["tests.support.storage"]

MAC = "02:00:00:00:00:01"


def fingerprint(weights: dict[str, float], start: int, end: int, mac: str = MAC) -> Fingerprint:
    services = tuple(sorted(weights))
    return Fingerprint(mac, start, end, 4, services, np.array([weights[s] for s in services]))


def decision(fp: Fingerprint, label: str, best: str, similarity: float) -> Decision:
    return Decision(
        fp.device, fp.start_unit, fp.end_unit, label, best, similarity, 0.6, None, None, "ref",
        explain([1.0], [1.0], ["tcp/443"]),
    )  # fmt: skip


TYPES = ("camera", "plug", "hub")
# Uncalibrated decisions (confidence 0.98 once clipped) over three types: a window of another
# type adds log(0.98 / 0.01) = 4.59 to the evidence against the device's answer, an unknown one
# log 4 = 1.39; a change is declared at log 1000 = 6.91, so after 2 and 5 such windows.
ACCUMULATORS: dict[int, Accumulator] = {}


def review(watch: BehaviourWatch, fp: Fingerprint, d: Decision | None) -> list[AlertRecord]:
    """Review one window, its decision accumulated as the live path does (one accumulator per
    watch)."""
    accumulator = ACCUMULATORS.setdefault(id(watch), Accumulator(TYPES))
    beliefs = []
    if d is not None:
        beliefs.append(accumulator.update(d.device, d.end_unit, d.best_type, d.confidence, d.known))
    return watch.review([fp], [] if d is None else [d], beliefs, lambda mac: "s1", 100.0)


CAMERA = {"tcp/443": 1.0, "udp/53": 1.0, "udp/123": 0.5}
HUB = {"tcp/80": 1.0, "udp/1900": 1.0, "udp/5353": 0.75}


def test_similarity_of_fingerprints_is_weighted_jaccard() -> None:
    assert fingerprint_similarity(CAMERA, CAMERA) == 1.0
    assert fingerprint_similarity(CAMERA, HUB) == 0.0
    assert fingerprint_similarity({"a": 1.0, "b": 0.5}, {"a": 0.5}) == pytest.approx(0.5 / 1.5)


def test_an_unknown_device_is_raised_once_and_a_known_one_never() -> None:
    watch = BehaviourWatch(0.5)
    first = fingerprint(HUB, 0, 8)
    (alert,) = review(watch, first, decision(first, "unknown", "camera", 0.3))
    assert (alert.kind, alert.severity, alert.device, alert.switch) == (
        "new_unknown_device", "warning", MAC, "s1"
    )  # fmt: skip
    assert alert.message == "unknown device: best type camera at similarity 0.30 < θ 0.60"
    assert alert.details["window"] == [0, 8]
    again = fingerprint(HUB, 8, 16)
    assert review(watch, again, decision(again, "unknown", "camera", 0.3)) == []
    other = BehaviourWatch(0.5)
    known = fingerprint(CAMERA, 0, 8, "02:00:00:00:00:02")
    assert review(other, known, decision(known, "camera", "camera", 0.9)) == []


def test_a_known_device_that_changes_is_a_behaviour_change() -> None:
    watch = BehaviourWatch(0.5)
    windows = [fingerprint(CAMERA, 8 * i, 8 * i + 8) for i in range(3)]
    for fp in windows:
        assert review(watch, fp, decision(fp, "camera", "camera", 0.9)) == []
    # Unknown windows: the first one leaves the camera's history but is one odd window; with
    # the fourth most of the device's seven windows are unknown.
    changed = [fingerprint(HUB, 24 + 8 * i, 32 + 8 * i) for i in range(4)]
    for fp in changed[:3]:
        assert review(watch, fp, decision(fp, "unknown", "camera", 0.2)) == []
    (alert,) = review(watch, changed[3], decision(changed[3], "unknown", "camera", 0.2))
    assert alert.kind == "behaviour_change" and alert.severity == "critical"
    assert alert.message == (
        "behaviour changed: was camera, now unknown: most of its 7 windows since it was camera "
        "are unknown (similarity 0.20 < θ 0.60)"
    )
    assert alert.details["previous_label"] == "camera"
    assert alert.details["window"] == [48, 56]
    assert alert.details["accumulated"] == {
        "label": "unknown",
        "confidence": None,
        "windows": 7,
        "changed": False,
        "previous": "camera",
    }
    assert alert.details["history_similarity"] == 1.0
    # Now unknown, it is not "a new unknown device" afterwards.
    later = fingerprint(HUB, 56, 64)
    assert review(watch, later, decision(later, "unknown", "camera", 0.2)) == []
    # Its verdict (the metrics' type) is the accumulated answer: unknown, though three of its
    # eight windows were camera and five unknown.
    history = watch.devices[MAC]
    assert (history.accumulated, history.labels.count("camera")) == ("unknown", 3)


def test_matching_another_type_is_a_change_and_history_alone_works_without_references() -> None:
    watch = BehaviourWatch(0.5)
    fp = fingerprint(CAMERA, 0, 8)
    review(watch, fp, decision(fp, "camera", "camera", 0.9))
    other = fingerprint(CAMERA | {"tcp/80": 1.0}, 8, 16)
    assert review(watch, other, decision(other, "plug", "plug", 0.8)) == []
    again = fingerprint(CAMERA | {"tcp/80": 1.0}, 16, 24)
    (alert,) = review(watch, again, decision(again, "plug", "plug", 0.8))
    assert "was camera, now plug: the evidence against camera reached 1000:1" in alert.message
    assert alert.message.endswith("(best type plug, 0.80)")
    assert alert.details["accumulated"]["label"] == "plug"
    assert "left its own history" not in alert.message
    # No references: no decisions, only the fingerprints' own history.
    bare = BehaviourWatch(0.5)
    assert review(bare, fingerprint(CAMERA, 0, 8), None) == []
    assert review(bare, fingerprint(CAMERA, 8, 16), None) == []
    (alert,) = review(bare, fingerprint(HUB, 16, 24), None)
    assert alert.kind == "behaviour_change" and "left its own history" in alert.message


def test_the_watch_resumes_from_what_was_stored() -> None:
    watch = BehaviourWatch(
        0.5,
        [DecisionSummary(1, MAC, 8, "camera", 0.9, 1.0)],
        [FingerprintRecord(MAC, 0, 8, "G=4", CAMERA, True)],
        flagged=["02:00:00:00:00:09"],
    )
    # The live path resumes its accumulated answers from the stored decisions too.
    ACCUMULATORS[id(watch)] = Accumulator(TYPES)
    ACCUMULATORS[id(watch)].update(MAC, 8, "camera", math.nan, True)
    changed = [fingerprint(HUB, 8 * i, 8 * i + 8) for i in range(1, 4)]
    alerts = [review(watch, fp, decision(fp, "unknown", "camera", 0.1)) for fp in changed]
    assert [len(a) for a in alerts] == [0, 1, 0]
    assert alerts[1][0].kind == "behaviour_change"
    flagged = fingerprint(HUB, 0, 8, "02:00:00:00:00:09")
    assert review(watch, flagged, decision(flagged, "unknown", "camera", 0.1)) == []


def test_a_port_past_its_rate_is_one_storm_per_interval() -> None:
    storms: list[tuple[int, str]] = []
    refusals: list[str] = []
    admission = Admission(
        "s1",
        RegisterRate(2, 10.0),
        on_refusal=refusals.append,
        on_storm=lambda p, m: storms.append((p, m)),
    )
    macs = [f"02:00:00:00:01:{i:02x}" for i in range(5)]
    assert [admission.admit(m, 3, now=0.0) for m in macs] == [True, True, False, False, False]
    assert storms == [(3, macs[2])]
    assert not admission.admit("01:00:5e:00:00:01", 3, now=1.0)
    assert refusals == ["rate_limited"] * 3 + ["group_source"]
    # The next interval has its budget back, and a new storm is a new alert.
    assert [admission.admit(m, 3, now=20.0) for m in macs] == [True, True, False, False, False]
    assert storms == [(3, macs[2]), (3, macs[2])]


@pytest.fixture
def receiver() -> Iterator[tuple[str, list[dict[str, Any]]]]:
    """A loopback HTTP server that keeps every JSON body POSTed to it."""
    received: list[dict[str, Any]] = []

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            length = int(self.headers["Content-Length"])
            received.append(json.loads(self.rfile.read(length)))
            self.send_response(204)
            self.end_headers()

        def log_message(self, *args: object) -> None:
            return

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/hook", received
    finally:
        server.shutdown()
        server.server_close()


def test_alerts_are_counted_stored_passed_on_and_posted(
    receiver: tuple[str, list[dict[str, Any]]],
) -> None:
    url, received = receiver
    kept: list[AlertRecord] = []
    heard: list[AlertRecord] = []
    telemetry = Telemetry()
    alerts = Alerts(kept.append, telemetry, AlertSettings(webhook=url, webhook_timeout=2.0))
    alerts.listeners.append(heard.append)
    alert = make_alert("switch_lost", "switch s1 lost: reset", 5.0, switch="s1")
    alerts.raise_alert(alert)
    alerts.close()
    assert kept == heard == [alert]
    assert telemetry.alerts == {("s1", "switch_lost"): 1}
    assert received == [
        {
            "kind": "switch_lost", "severity": "critical", "device": None, "switch": "s1",
            "message": "switch s1 lost: reset", "details": {}, "raised_at": 5.0, "id": None,
            "text": "svcfp switch_lost: switch s1 lost: reset",
        }
    ]  # fmt: skip


def test_a_webhook_that_is_down_is_counted_not_raised(free_port: Any) -> None:
    hook = Webhook(f"http://127.0.0.1:{free_port()}/nobody", timeout=1.0)
    hook.post(make_alert("switch_regained", "back", 1.0, switch="s1"))
    hook.close()
    assert (hook.failed, hook.dropped) == (1, 0)


def test_alert_settings_refuse_bad_values() -> None:
    with pytest.raises(InputError, match="expected an http"):
        AlertSettings(webhook="ftp://x")
    with pytest.raises(InputError, match=r"a similarity in 0\.\.1"):
        AlertSettings(history_threshold=1.5)


def test_stored_alerts_read_back_newest_first(db_location: str | Path) -> None:
    first = make_alert("new_unknown_device", "unknown device", 1.0, device=MAC, switch="s1")
    second = make_alert("switch_lost", "lost", 2.0, switch="s1", details={"reason": "reset"})
    with open_store(db_location) as storage:
        assert storage.add_alerts([first, second]) == [1, 2]
        newest = storage.alerts()
        assert [(a.id, a.kind, a.details) for a in newest] == [
            (2, "switch_lost", {"reason": "reset"}), (1, "new_unknown_device", {})
        ]  # fmt: skip
        assert storage.alerts(after_id=1) == [newest[0]]
        assert storage.alerts(device=MAC) == [newest[1]]
        assert storage.alerts(limit=1) == [newest[0]]
        assert storage.alert_counts() == {MAC: 1}
        assert storage.change_marks()["alerts"] == 2.0
        status = SwitchStatusRecord("s1", {"polls": 3, "connected": True}, 5.0)
        storage.put_switch_status(status)
        storage.put_switch_status(SwitchStatusRecord("s1", {"polls": 4}, 6.0))
        assert storage.switch_status() == [SwitchStatusRecord("s1", {"polls": 4}, 6.0)]


def test_a_read_only_database_reads_and_refuses_writes(tmp_path: Path) -> None:
    db = tmp_path / "svcfp.db"
    with Storage(db) as storage:
        storage.add_alerts([make_alert("switch_lost", "lost", 2.0, switch="s1")])
    with Storage(db, readonly=True) as reader:
        assert [a.kind for a in reader.alerts()] == ["switch_lost"]
        with pytest.raises(sqlite3.OperationalError, match="readonly"):
            reader.add_alerts([make_alert("switch_lost", "lost", 3.0)])
    # A database from before the alerts table reads as having none.
    old = tmp_path / "old.db"
    sqlite3.connect(old).execute("CREATE TABLE devices (mac TEXT)").connection.close()
    with Storage(old, readonly=True) as reader:
        assert reader.alerts() == [] and reader.switch_status() == []
    with pytest.raises(InputError, match="does not exist"):
        Storage(tmp_path / "none.db", readonly=True)


def test_poll_latency_histogram_counts_into_buckets() -> None:
    h = Histogram((0.01, 0.1, 1.0))
    for value in (0.005, 0.01, 0.05, 2.0):
        h.observe(value)
    assert h.cumulative() == [(0.01, 2), (0.1, 3), (1.0, 3), (float("inf"), 4)]
    assert h.total == pytest.approx(2.065) and h.count == 4


def test_a_compliance_finding_is_alerted_once_per_device_type_service_and_role() -> None:
    telnet = Finding(MAC, "camera", "tcp/23", None, 20, 20, 1, 1, 60)
    watch = ComplianceWatch()
    (alert,) = watch.review([telnet], lambda mac: "s1", 7.0)
    assert (alert.kind, alert.severity, alert.device, alert.switch) == (
        "compliance", "warning", MAC, "s1"
    )  # fmt: skip
    assert alert.message == (
        "uses tcp/23, which the MUD profile of camera does not allow (1 packets in units 20..20)"
    )
    # The same finding widened by a later check is not news; a served port is.
    wider = Finding(MAC, "camera", "tcp/23", None, 20, 22, 2, 4, 240)
    served = Finding(MAC, "camera", "tcp/8080", "server", 22, 22, 1, 2, 120)
    assert [a.details["service"] for a in watch.review([wider, served], lambda m: None, 8.0)] == [
        "tcp/8080"
    ]
    # A restarted controller remembers what it alerted.
    again = ComplianceWatch([alert])
    assert again.review([wider], lambda m: None, 9.0) == []


def test_a_similarity_just_below_theta_reads_below_it() -> None:
    assert below_theta(0.3, 0.6) == "0.30 < θ 0.60"
    # Rounded to two decimals both would read 0.82.
    assert below_theta(0.8193, 0.8204) == "0.819 < θ 0.820"
    assert below_theta(0.81996, 0.82) == "0.81996 < θ 0.82000"
    assert below_theta(0.8199999999, 0.82) == "0.820000 < θ 0.820000"
