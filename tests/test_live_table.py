"""The demo's terminal table: redrawn in place on a terminal, written line by line elsewhere,
with the progress, the alerts and the dashboard's address; and a demo stopped by Ctrl-C."""

from __future__ import annotations

import io
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import pytest

from controller.control.alerts import make_alert
from controller.control.controller import ClosedUnits
from controller.engine.accumulate import Belief
from controller.engine.activity import ActivityTable
from controller.engine.identify import Decision, explain
from tests.support.paths import P4INFO, ROOT
from topology import graph as topo
from topology.live_table import LiveView
from topology.scenario import DemoConfig, Scenario, build_scenario

UNIT = 1.0
START = 1000


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


@pytest.fixture(scope="module")
def scenario(tmp_path_factory: pytest.TempPathFactory) -> Scenario:
    out = tmp_path_factory.mktemp("demo")
    return build_scenario(DemoConfig(out=out, logs=out, units=30, p4info=P4INFO))


def closing(scenario: Scenario, unit: int, host: str | None = None, label: str = "") -> ClosedUnits:
    macs = {h.name: h.mac for h in topo.hosts(scenario.graph, topo.DEVICE)}
    decisions = []
    if host is not None:
        why = explain([1.0, 0.5], [1.0, 1.0], ["tcp/443", "udp/53"])
        decisions.append(
            Decision(macs[host], unit - 8, unit, label, label, why.similarity,
                     scenario.references.theta, None, None, "ref", why)
        )  # fmt: skip
    table = ActivityTable.from_records([], unit_seconds=UNIT)
    return ClosedUnits(unit, unit, table, (), tuple(decisions))


def test_piped_output_reads_top_to_bottom(scenario: Scenario) -> None:
    out = io.StringIO()
    view = LiveView(scenario, out)
    view.on_dashboard("http://127.0.0.1:8080/")
    view.playing(START * UNIT, UNIT, 30)
    for unit in range(START, START + 12):
        view.on_units(closing(scenario, unit, "d1" if unit == START + 9 else None, "camera"))
    view.on_alert(make_alert("new_unknown_device", "unknown device: …", 1.0, device=None))
    view.close()
    lines = out.getvalue().splitlines()
    assert lines[0] == "dashboard: http://127.0.0.1:8080/"
    assert lines[1] == ("unit 10/30  d1 (camera): camera at similarity 0.75 (units 1001..1009)")
    assert lines[2] == "unit 10/30  1 of 5 devices answered, 1 decisions, 0 alerts"
    assert lines[3] == "unit 12/30  ALERT new_unknown_device: unknown device: …"
    # The table once, at the end, and no terminal control sequence anywhere.
    assert lines[4].startswith("unit 12/30  ·  θ = ")
    assert "dashboard http://127.0.0.1:8080/" in lines[4]
    assert re.match(r"d1 +02:\S+ +camera +camera +0\.75 +1  tcp/443 0\.50, udp/53 0\.25", lines[6])
    assert "\x1b" not in out.getvalue()


def test_a_terminal_is_redrawn_in_place(scenario: Scenario) -> None:
    out = Terminal()
    view = LiveView(scenario, out)
    view.playing(START * UNIT, UNIT, 30)
    view.on_units(closing(scenario, START))
    first = out.getvalue()
    assert first.startswith("\x1b[J") and "unit 1/30" in first
    drawn = first.count("\n")
    view.on_units(closing(scenario, START + 1, "d2", "plug"))
    second = out.getvalue()[len(first) :]
    # Up by exactly the lines drawn before, clear, draw again.
    assert second.startswith(f"\x1b[{drawn}F\x1b[J")
    assert "unit 2/30" in second and re.search(r"d2 .* plug", second)
    assert view.final()["d2"].label == "plug"


def test_a_device_answers_with_its_accumulated_answer(scenario: Scenario) -> None:
    # d2's windows alternate plug / unknown; the controller's accumulated answer stays plug.
    view = LiveView(scenario, io.StringIO())
    labels = ["plug", "unknown", "plug", "unknown"]
    for i, label in enumerate(labels):
        closed = closing(scenario, START + 8 * i, "d2", label)
        belief = Belief(closed.decisions[0].device, START + 8 * i, "plug", 0.9, i + 1, False)
        view.on_units(replace(closed, beliefs=(belief,)))
    assert view.accumulated == {closed.decisions[0].device: "plug"}
    assert view.final()["d2"].label == "plug"
    # Decisions without one (no references' types to accumulate): the latest of the tied labels.
    bare = LiveView(scenario, io.StringIO())
    for i, label in enumerate(labels):
        bare.on_units(closing(scenario, START + 8 * i, "d2", label))
    assert bare.final()["d2"].label == "unknown"


@pytest.mark.slow
def test_ctrl_c_stops_the_demo_cleanly(tmp_path: Path, free_port: Callable[[], int]) -> None:
    command = [
        sys.executable, "-m", "svcfp", "demo", "--no-network", "--units", "60",
        "--grpc-port", str(free_port()), "--http", "127.0.0.1:0",
        "--out", str(tmp_path / "out"), "--logs", str(tmp_path / "logs"),
    ]  # fmt: skip
    process = subprocess.Popen(command, cwd=ROOT, stdout=subprocess.PIPE, text=True)
    try:
        assert process.stdout is not None
        seen = []
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline:
            line = process.stdout.readline()
            seen.append(line)
            if re.match(r"unit \d+/60", line):
                break
        else:
            raise AssertionError("".join(seen))
        assert any(line.startswith("dashboard: http://127.0.0.1:") for line in seen)
        os.kill(process.pid, signal.SIGINT)
        rest, _ = process.communicate(timeout=60)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    assert process.returncode == 130
    assert "stopping: interrupted; the controller stores its last poll" in rest
    assert "(interrupted)" in rest
    report = (tmp_path / "out" / "report.md").read_text()
    assert report.startswith("# svcfp demo")
    # Nothing it started is left: the run record is gone with the switch process.
    assert not (tmp_path / "logs" / "testbed.json").exists()
