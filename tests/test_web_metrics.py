"""The metrics a Prometheus server scrapes from `svcfp run --http`, checked against what the
controller stored, during a run over real gRPC: a camera identified, a device the references do
not know flagged, a switch lost and regained. Also: the shipped Grafana dashboard and Prometheus
example name only metrics the controller serves."""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import threading
import time
from collections import Counter
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from prometheus_client.parser import text_string_to_metric_families

from controller.control.config import RunConfig
from controller.control.controller import Controller
from controller.control.live import LiveSettings
from controller.engine.activity import ActivityTable
from controller.engine.exporter import ExporterConfig, export_fingerprints
from controller.engine.identify import References, enroll
from controller.store.storage import Storage
from controller.web.server import Dashboard
from controller.web.settings import WebSettings
from tests.support.paths import ROOT
from tests.support.switch import CAMERA, PLUG, SERVER, Wire, config, frame, until

pytestmark = pytest.mark.slow

UNIT = 0.5
EXPORTER = ExporterConfig(granularity=4, tau=0.9, k=1, n_min=2, n_max=4)
Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def references() -> References:
    """A camera (tcp/443) and a plug (udp/123), in 0.5 s units."""
    activity = ActivityTable.from_records(
        [
            (mac, unit, service, 1, 60)
            for unit in range(8)
            for mac, service in (("aa", "tcp/443"), ("bb", "udp/123"), ("cc", "tcp/443"))
        ],
        unit_seconds=UNIT,
    )
    return enroll(
        export_fingerprints(activity, EXPORTER),
        {"aa": "camera", "bb": "plug", "cc": "camera"},
        config=EXPORTER,
    )


def parse(text: str) -> Samples:
    """Every sample of a scrape: (name, sorted labels) → value."""
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def total(samples: Samples, name: str, **labels: str) -> float:
    """The sum of `name`'s samples whose labels include `labels`."""
    return sum(
        v
        for (n, ls), v in samples.items()
        if n == name and all(dict(ls).get(k) == want for k, want in labels.items())
    )


@dataclass(frozen=True)
class Stored:
    """What the database holds, read as a dashboard reads it."""

    packets: int
    decisions: Counter[str]
    alerts: Counter[str]
    devices: int
    status: dict[str, dict[str, Any]]

    @classmethod
    def read(cls, db: Path) -> Stored:
        with Storage(db, readonly=True) as storage:
            return cls(
                sum(r.packets for r in storage.activity()),
                Counter(d.label for d in storage.decisions()),
                Counter(a.kind for a in storage.alerts()),
                len(storage.devices()),
                {s.switch: s.status for s in storage.switch_status()},
            )


@contextlib.asynccontextmanager
async def served(run: RunConfig) -> AsyncIterator[tuple[Controller, str]]:
    """A controller running with its dashboard: the controller and the dashboard's URL."""
    controller = Controller(run)
    dashboard = Dashboard(run.db, WebSettings("127.0.0.1", 0), controller)
    url = await dashboard.start()
    task = asyncio.create_task(controller.run())
    try:
        yield controller, url
    finally:
        controller.stop.set()
        await task
        await dashboard.stop()


def test_metrics_scraped_during_a_run_match_the_database(tmp_path: Path) -> None:
    wires = [Wire()]
    port = wires[0].server.port
    refs = references()
    live = LiveSettings(EXPORTER, refs)
    run = config(tmp_path, wires[0].address, time_unit=UNIT, interval=0.1, live=live)
    scrapes: list[Samples] = []

    async def scenario() -> Stored:
        async with served(run) as (controller, url), aiohttp.ClientSession() as http:

            async def scrape() -> Samples:
                async with http.get(f"{url}metrics") as response:
                    assert response.status == 200
                    assert response.headers["Content-Type"].startswith("text/plain")
                    return parse(await response.text())

            await until(lambda: all(w.session is not None for w in controller.workers))
            # A camera using its one service, and a device no reference knows (udp/53),
            # registered from its digest, for a few units each.
            deadline = time.time() + 8 * UNIT
            while time.time() < deadline:
                wires[-1].send(frame(CAMERA, SERVER, 6, 50000, 443, 100), port=1, count=2)
                wires[-1].send(frame(PLUG, SERVER, 17, 5000, 53, 64), port=2)
                await asyncio.sleep(UNIT / 2)
            # Ten new MACs at once on port 3, two more than --register-rate's 8 a minute: a
            # registration storm.
            for i in range(10):
                storm = f"02:00:00:00:0a:{i:02x}"
                wires[-1].send(frame(storm, SERVER, 17, 5000, 53, 64), port=3)
            await until(lambda: controller.telemetry.alerts[("s1", "registration_storm")], 10.0)
            await until(lambda: controller.telemetry.alerts, timeout=10.0)
            await until(lambda: sum(controller.telemetry.decisions.values()) >= 2, timeout=10.0)
            # The switch dies and comes back on the same address.
            wires[-1].stop()
            await until(lambda: controller.telemetry.alerts[("s1", "switch_lost")], 10.0)
            wires.append(Wire(address=f"127.0.0.1:{port}"))
            await until(lambda: controller.telemetry.alerts[("s1", "switch_regained")], 10.0)
            # Two polls of the switch that came back, so its latest status is stored.
            regained = controller.telemetry.switches["s1"].polls
            await until(lambda: controller.telemetry.switches["s1"].polls >= regained + 2)

            # Hold the storage thread once every queued write has landed: no poll, decision or
            # alert can be counted until it is released (each is counted once stored). Then the
            # metrics and the database must say exactly the same, at one moment of the run.
            # A poll writes twice: its activity, then (once counted) its switch status; a hold
            # queued between the two finds the status one poll behind, and is placed again
            # (at most four times) after the next poll.
            switch = controller.telemetry.switches["s1"]
            for _ in range(4):
                held, release = threading.Event(), threading.Event()

                def hold(held: threading.Event = held, release: threading.Event = release) -> None:
                    held.set()
                    release.wait(10.0)

                await until(lambda n=switch.polls: switch.polls > n)
                blocker = controller.store.queued(hold)
                try:
                    await until(held.is_set)
                    # What the loop does with the last stored poll (counting it) happens first.
                    await asyncio.sleep(0.3)
                    before = await scrape()
                    db = await asyncio.to_thread(Stored.read, Path(run.db))
                    after = await scrape()
                finally:
                    release.set()
                    await blocker
                if total(before, "svcfp_polls_total", switch="s1") == db.status["s1"]["polls"]:
                    break
            assert before == after, "the metrics moved while storage was held"
            scrapes.append(before)
            return db

    try:
        db = asyncio.run(scenario())
    finally:
        wires[-1].stop()

    samples = scrapes[-1]
    assert total(samples, "svcfp_activity_packets_total", switch="s1") == db.packets > 0
    decisions = db.decisions
    assert decisions["camera"] >= 1 and decisions["unknown"] >= 1
    for label, n in decisions.items():
        assert total(samples, "svcfp_decisions_total", label=label) == n, label
    alerts = db.alerts
    assert alerts["new_unknown_device"] >= 1 and alerts["registration_storm"] == 1
    assert alerts["switch_lost"] == 1 and alerts["switch_regained"] == 1
    for kind, n in alerts.items():
        assert total(samples, "svcfp_alerts_total", kind=kind) == n, kind
    assert total(samples, "svcfp_alerts_total", switch="s1", kind="registration_storm") == 1
    assert total(samples, "svcfp_registration_refusals_total", reason="rate_limited") == 2
    # Devices: the static camera and server, the plug and eight of the storm's MACs.
    assert total(samples, "svcfp_devices") == db.devices == 11
    assert total(samples, "svcfp_devices", state="active", type="camera") == 1
    assert total(samples, "svcfp_unknown_devices", switch="s1") >= 1
    s1 = db.status["s1"]
    assert total(samples, "svcfp_polls_total", switch="s1") == s1["polls"] > 0
    assert total(samples, "svcfp_read_bytes_total", switch="s1") == s1["read_bytes"] > 0
    assert total(samples, "svcfp_poll_duration_seconds_count", switch="s1") == s1["polls"]
    assert total(samples, "svcfp_connects_total", switch="s1") == s1["connects"] == 2
    assert total(samples, "svcfp_switch_up", switch="s1") == 1
    assert total(samples, "svcfp_registrations_total", switch="s1") == s1["registered"] == 9
    assert total(samples, "svcfp_digests_total", switch="s1") == s1["digests"] >= 1
    devices_table = s1["tables"]["devices"]
    assert total(samples, "svcfp_table_entries", switch="s1", table="devices") == devices_table[0]
    assert devices_table == [11, 1023]


def test_grafana_dashboard_and_prometheus_example_name_served_metrics(tmp_path: Path) -> None:
    wire = Wire()
    live = LiveSettings(EXPORTER, references())
    run = config(tmp_path, wire.address, time_unit=UNIT, interval=0.1, live=live)

    async def scrape_once() -> str:
        async with served(run) as (controller, url):
            await until(lambda: controller.telemetry.switches["s1"].polls > 0)
            async with aiohttp.ClientSession() as http, http.get(f"{url}metrics") as response:
                return await response.text()

    try:
        text = asyncio.run(scrape_once())
    finally:
        wire.stop()
    exposed = {s.name for family in text_string_to_metric_families(text) for s in family.samples}
    grafana = json.loads((ROOT / "deploy" / "grafana" / "svcfp.json").read_text())
    exprs = [t["expr"] for panel in grafana["panels"] for t in panel.get("targets", [])]
    assert len(exprs) >= 8
    named = {m for e in exprs for m in re.findall(r"\bsvcfp_[a-z_]+", e)}
    assert named and named <= exposed, named - exposed
    prometheus = (ROOT / "deploy" / "prometheus.yml").read_text()
    assert "metrics_path: /metrics" in prometheus
    rules = (ROOT / "deploy" / "alerts.yml").read_text()
    assert set(re.findall(r"\bsvcfp_[a-z_]+", rules)) <= exposed
