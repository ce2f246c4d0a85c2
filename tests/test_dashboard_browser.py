"""The dashboard in a real browser while the demo's devices play: what an operator sees.

The demo runs in its replay mode (the reference switch process fed the devices' frames, read
over gRPC) with its dashboard on an ephemeral loopback port; one device (d2, a plug) starts
playing the hub's profile at unit 20. A headless Chromium keeps the devices page open from the
start and watches it change by itself: devices identified, the held-out hub flagged unknown,
and the behaviour change alerted, all while the traffic still runs. Then it opens the device,
switches and alerts pages. Screenshots of every page are saved under logs/dashboard/.
"""

from __future__ import annotations

import functools
import io
import re
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

from controller.web.settings import WebSettings
from tests.support.paths import P4INFO
from topology import graph as topo
from topology.demo import run_demo
from topology.scenario import BehaviourChange, DemoConfig, build_scenario

if TYPE_CHECKING:
    from selenium.webdriver.remote.webdriver import WebDriver

pytest_plugins = ["tests.support.browser"]
pytestmark = pytest.mark.slow

# The change is alerted once the device's accumulated answer turns: three or more windows after
# it, so the demo runs its default 60 units, 40 of them after the change.
UNITS = 60
CHANGE = BehaviourChange("d2", "hub", 20)
# Bounded waits: the whole demo takes about a minute and a half.
DEMO_TIMEOUT = 180.0


def wait_for(condition: Callable[[], Any], timeout: float, what: str) -> Any:
    """Poll `condition` until it is truthy (its value) or `timeout` seconds pass."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.2)
    raise AssertionError(f"not seen within {timeout:.0f} s: {what}")


def row_label(driver: WebDriver, mac: str) -> str | None:
    """The 'identified as' cell of a device's row on the devices page, as shown."""
    from selenium.common.exceptions import NoSuchElementException, StaleElementReferenceException
    from selenium.webdriver.common.by import By

    try:
        cell = driver.find_element(By.CSS_SELECTOR, f'#devices tr[data-mac="{mac}"] td.label')
        return str(cell.text).strip()
    except (NoSuchElementException, StaleElementReferenceException):
        return None


def retry_stale(check: Callable[[], None], attempts: int = 5) -> None:
    """Run `check`, again (at most `attempts` times) when the page replaced an element it held."""
    from selenium.common.exceptions import StaleElementReferenceException

    for attempt in range(attempts):
        try:
            check()
            return
        except StaleElementReferenceException:
            if attempt == attempts - 1:
                raise
            time.sleep(0.5)


def alert_texts(driver: WebDriver) -> list[str]:
    from selenium.common.exceptions import StaleElementReferenceException
    from selenium.webdriver.common.by import By

    try:
        return [str(e.text) for e in driver.find_elements(By.CSS_SELECTOR, "li.alert")]
    except StaleElementReferenceException:
        return []


def test_dashboard_shows_identification_unknown_devices_and_a_behaviour_change_live(
    tmp_path: Path, browser: WebDriver, free_port: Callable[[], int]
) -> None:
    from selenium.webdriver.common.by import By

    from tests.support.browser import screenshot

    config = DemoConfig(
        out=tmp_path / "out",
        logs=tmp_path / "logs",
        units=UNITS,
        no_network=True,
        grpc_port=free_port(),
        p4info=P4INFO,
        http=WebSettings("127.0.0.1", 0),
        change=CHANGE,
    )
    scenario = build_scenario(config)
    macs = {h.name: h.mac for h in topo.hosts(scenario.graph, topo.DEVICE)}
    shown = io.StringIO()
    result: dict[str, Any] = {}

    def play() -> None:
        try:
            result["summary"] = run_demo(config, shown)
        except BaseException as exc:
            result["error"] = exc

    demo = threading.Thread(target=play, name="demo")
    demo.start()
    try:
        url = wait_for(
            lambda: re.search(r"dashboard: (http://127\.0\.0\.1:\d+/)", shown.getvalue()),
            60,
            "the dashboard's address in the demo's output",
        ).group(1)
        browser.get(url)
        assert browser.title.startswith("Devices")
        # Set once: a reload of the page would lose it, so what follows is the live update.
        browser.execute_script("window.svcfpNotReloaded = true;")
        wait_for(
            lambda: browser.find_element(By.ID, "live-status").text == "live",
            10,
            "the event stream connected",
        )

        # Known devices are identified as their types, row by row, without a reload.
        def identified(host: str) -> bool:
            return row_label(browser, macs[host]) == scenario.truth[host]

        for host in ("d1", "d3", "d4"):
            wait_for(functools.partial(identified, host), DEMO_TIMEOUT, f"{host} identified")
        # The hub the references leave out is flagged unknown, with its alert.
        wait_for(lambda: row_label(browser, macs["d5"]) == "unknown", DEMO_TIMEOUT, "d5 unknown")
        wait_for(
            lambda: any(
                "new unknown device" in t and macs["d5"] in t for t in alert_texts(browser)
            ),
            DEMO_TIMEOUT,
            "the new-unknown-device alert of d5",
        )
        # d2 was a plug; once it plays the hub's profile its behaviour change is alerted,
        # while the demo's traffic is still running.
        wait_for(
            lambda: any("behaviour change" in t and macs["d2"] in t for t in alert_texts(browser)),
            DEMO_TIMEOUT,
            "the behaviour-change alert of d2",
        )
        assert demo.is_alive(), "the alert came only after the demo ended"
        assert browser.execute_script("return window.svcfpNotReloaded === true;")

        def counted_unknown() -> None:
            # The counters are replaced live too.
            assert int(browser.find_element(By.ID, "count-unknown").text) >= 1

        retry_stale(counted_unknown)
        screenshot(browser, "devices")

        # One device: heat map, the latest fingerprint beside its reference, the history with
        # each decision's explanation.
        # Parts of the page are replaced live while the demo runs: a check that meets a
        # replaced element starts again on the fresh page.
        def device_page() -> None:
            browser.get(f"{url}devices/{macs['d2']}")
            heat_rows = browser.find_elements(By.CSS_SELECTOR, "#heatmap text.svc")
            assert len(heat_rows) >= 3
            services = {e.text for e in heat_rows}
            assert "tcp/443" in services
            assert browser.find_elements(By.CSS_SELECTOR, "#fingerprint tbody tr")
            decisions = browser.find_elements(By.CSS_SELECTOR, "#history tr.decision")
            labels = [d.find_element(By.CSS_SELECTOR, "td:nth-child(3)").text for d in decisions]
            assert "plug" in labels and "unknown" in labels, labels
            first = decisions[-1]
            first.find_element(By.TAG_NAME, "summary").click()
            explanation = first.find_element(By.CSS_SELECTOR, ".explanation").text
            assert "matched:" in explanation and "tcp/443" in explanation, explanation
            alerts_here = browser.find_element(By.ID, "alerts").text
            assert "behaviour change" in alerts_here and "was plug" in alerts_here

        retry_stale(device_page)
        screenshot(browser, "device")

        def switches_page() -> None:
            browser.get(f"{url}switches")
            row = browser.find_element(By.CSS_SELECTOR, '#switches tr[data-switch="s1"]')
            assert "up" in row.text
            assert re.search(r"\d+\.\d ms / \d+\.\d ms", row.text), row.text
            assert re.search(r"devices\s+\d+/1023", row.text), row.text

        retry_stale(switches_page)
        screenshot(browser, "switches")

        def alerts_page() -> None:
            browser.get(f"{url}alerts")
            cells = browser.find_elements(By.CSS_SELECTOR, "#alerts td:nth-child(3)")
            kinds = {e.text for e in cells}
            assert {"new unknown device", "behaviour change"} <= kinds, kinds

        retry_stale(alerts_page)
        screenshot(browser, "alerts")
    finally:
        demo.join(DEMO_TIMEOUT)
    assert not demo.is_alive()
    if "error" in result:
        raise result["error"]
    summary = result["summary"]
    stored = {(a["kind"], a["device"]) for a in summary["alerts"]}
    assert ("behaviour_change", macs["d2"]) in stored
    assert ("new_unknown_device", macs["d5"]) in stored
    rows = {r["device"]: r for r in summary["devices"]}
    assert rows["d2"]["correct"] is None and rows["d2"]["changed"] == {
        "profile": "hub",
        "at_unit": 20,
    }
    assert all(rows[h]["correct"] for h in ("d1", "d3", "d4", "d5"))
