"""`svcfp demo`: emulated IoT devices identified live by the services they use.

As root, the demo builds a Mininet network around a P4 switch (the reference switch, or BMv2 with
`switch="bmv2"`): a DNS, an NTP and a cloud host, and one host per emulated device, which play
their profiles as real traffic in accelerated time (topology/scenario.py). The controller runs
exactly as `svcfp run --references` does: it programs the switch, polls its counters at every
unit boundary, and its live identification fingerprints every closed unit and stores the
fingerprints and decisions in the demo's database. A terminal table shows what it decided
(topology/live_table.py); at the end a report (decisions, explanations, plots) is written to the
output folder from that database (topology/demo_report.py).

Without root, without Mininet, or when asked, the same devices' traffic is synthesised as frames
into a pcap and replayed through the reference switch process, which the controller reads over
gRPC exactly as in the network mode; the demo says which and why.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any, TextIO

from controller.base.errors import InputError, SvcfpError
from controller.control.config import RunConfig
from controller.control.controller import Controller
from controller.control.live import LiveSettings
from topology import graph as topo
from topology.demo_report import write_report
from topology.emulation import EmulationRun, next_unit_start
from topology.frames import synthesize, write_pcap
from topology.launch import check_switch_kind, launch, refswitch_command
from topology.live_table import LiveView
from topology.scenario import DemoConfig, Scenario, build_scenario
from topology.state import recorded_run
from topology.testbed import controller_config, wait_programmed
from topology.tools import missing_for_mininet, why_missing

if TYPE_CHECKING:
    from controller.web.server import Dashboard
    from controller.web.settings import WebSettings

# Frames of the no-network mode enter the switch here: no host is attached to port 0, and the
# switch counts by source MAC, whatever the port.
REPLAY_PORT = 0
_READY_TIMEOUT = 30.0
DATABASE = "demo.db"


@dataclass(frozen=True)
class Playback:
    """Traffic being played: when it starts and ends (epoch seconds), how to stop it early."""

    start: float
    end: float
    stop: Callable[[], None]


def _run_config(config: DemoConfig, scenario: Scenario) -> RunConfig:
    """The controller of `svcfp run --references`: live identification against the scenario's
    references, into the demo's own database."""
    # Each demo reports on its own run only: a database left by an earlier one goes first.
    config.out.mkdir(parents=True, exist_ok=True)
    for stale in config.out.glob(f"{DATABASE}*"):
        stale.unlink()
    live = LiveSettings(config.exporter, scenario.references)
    live.check(config.unit_seconds, "the demo's references")
    return controller_config(
        scenario.graph,
        config.out / DATABASE,
        config.logs,
        p4info=config.p4info,
        bmv2_json=config.bmv2_json if config.switch == "bmv2" else None,
        interval=config.interval,
        time_unit=config.unit_seconds,
        live=live,
    )


async def _drive(
    run_config: RunConfig,
    view: LiveView,
    play: Callable[[], Playback],
    config: DemoConfig,
) -> bool:
    """Run the controller (and its dashboard when asked); once it has programmed every switch,
    play; stop when play ends or on Ctrl-C / SIGTERM. True when stopped early."""
    controller = Controller(run_config, view.on_units)
    controller.alerts.listeners.append(view.on_alert)
    interrupted = asyncio.Event()
    loop = asyncio.get_running_loop()
    handled = []
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(sig, interrupted.set)
            handled.append(sig)
    dashboard = None
    try:
        if config.http is not None:
            dashboard = await _dashboard(run_config, config.http, controller, view)
        task = asyncio.create_task(controller.run())
        await wait_programmed(controller, task, _READY_TIMEOUT)
        playback = play()
        view.playing(playback.start, run_config.time_unit, config.units)
        # One more unit and poll after the traffic ends, so the last unit closes with its counts.
        end = playback.end + run_config.time_unit + run_config.interval
        try:
            while time.time() < end and not task.done() and not interrupted.is_set():
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(interrupted.wait(), 0.1)
        finally:
            if interrupted.is_set():
                view.stop("interrupted; the controller stores its last poll")
            playback.stop()
            controller.stop.set()
            await task
    finally:
        for sig in handled:
            loop.remove_signal_handler(sig)
        if dashboard is not None:
            await dashboard.stop()
    return interrupted.is_set()


async def _dashboard(
    run_config: RunConfig, settings: WebSettings, controller: Controller, view: LiveView
) -> Dashboard | None:
    """The dashboard beside the demo's controller; None (said why) when it cannot listen."""
    # Imported here: the demo runs without the web extra, only without its dashboard.
    try:
        from controller.web.server import Dashboard
    except ImportError as exc:
        view.out.write(f"no dashboard: {exc.name} is not installed (pip install 'svcfp[web]')\n")
        return None
    for choice in (settings, replace(settings, port=0)):
        dashboard = Dashboard(
            run_config.db, choice, controller, "svcfp demo", run_config.db_timeout
        )
        try:
            view.on_dashboard(await dashboard.start())
        except InputError as exc:
            await dashboard.stop()
            # Another program holds the port: any free one will do for a demo.
            view.out.write(f"dashboard: {exc}\n")
            continue
        return dashboard
    return None


def run_network(
    config: DemoConfig,
    scenario: Scenario,
    view: LiveView,
    before_teardown: Callable[[Any], None] | None = None,
) -> dict[str, Any]:
    """The live demo on a Mininet network (root); returns the emulated hosts' reports.

    `before_teardown` is called with the running network once the traffic and the controller
    have stopped, while the switch still runs (to inspect it).
    """
    # Mininet is imported only here: the no-network mode works where it is not installed.
    from topology.emulation import start_emulation
    from topology.network import running_network

    graph = scenario.graph
    run_config = _run_config(config, scenario)
    runs: list[EmulationRun] = []
    ipv6 = {host for host, plan in scenario.schedules.items() if plan.uses("icmpv6")}
    with (
        recorded_run(config.logs, "demo") as state,
        running_network(graph, config.switch, config.logs, state, ipv6) as network,
    ):

        def play() -> Playback:
            run = start_emulation(
                network, scenario.schedules, config.unit_seconds, config.out / "devices", state
            )
            runs.append(run)
            return Playback(run.start, run.end, run.stop)

        interrupted = asyncio.run(_drive(run_config, view, play, config))
        if before_teardown is not None:
            before_teardown(network)
        if interrupted:
            return {"interrupted": True}
        return runs[0].reports() if runs else {}


def run_replay(config: DemoConfig, scenario: Scenario, view: LiveView) -> dict[str, Any]:
    """The live demo without a network: synthesised frames replayed through the reference
    switch process at their own pace, counted and read over gRPC as in the network mode."""
    graph = scenario.graph
    run_config = _run_config(config, scenario)
    schedules = scenario.schedules
    # The replay keeps the frames' relative timing; where they start is set by the signal.
    origin = next_unit_start(time.time(), config.unit_seconds)
    frames = synthesize(graph, schedules, config.unit_seconds, origin)
    if not frames:
        raise InputError("the devices' schedules produce no traffic to replay")
    pcap = config.out / "demo.pcap"
    write_pcap(frames, pcap)
    with recorded_run(config.logs, "demo") as state:
        switch = topo.switches(graph)[0]
        log_file = config.logs / f"{switch.name}.log"
        command = refswitch_command(
            switch.grpc_addr,
            switch.device_id,
            log_file,
            ["--pcap-in", f"{REPLAY_PORT}@{pcap}", "--pcap-timing", "--replay-start", "signal"],
        )
        process, _ = launch(
            command,
            f"switch:{switch.name}",
            switch.grpc_port,
            [log_file],
            config.logs / f"{switch.name}.console.log",
            state,
        )

        def play() -> Playback:
            start = next_unit_start(time.time() + 1.0, config.unit_seconds)
            delay = start + (frames[0].time - origin) - time.time()
            timer = threading.Timer(max(0.0, delay), os.kill, (process.pid, signal.SIGUSR1))
            timer.start()
            return Playback(start, start + (frames[-1].time - origin) + 0.5, timer.cancel)

        interrupted = asyncio.run(_drive(run_config, view, play, config))
        return {"frames": len(frames), "pcap": str(pcap), "interrupted": interrupted}


def network_mode(config: DemoConfig) -> tuple[bool, str]:
    """Whether the demo builds a Mininet network, and why not when it does not."""
    if config.no_network:
        return False, "--no-network"
    if os.geteuid() != 0:
        return False, "not running as root"
    missing = missing_for_mininet()
    if missing:
        return False, why_missing(missing)
    return True, ""


def run_demo(config: DemoConfig, out: TextIO = sys.stdout) -> dict[str, Any]:
    """Run the whole demo; returns the summary written to `decisions.json`."""
    begun = time.monotonic()
    network, why = network_mode(config)
    if config.switch == "bmv2":
        if not network:
            raise SvcfpError(f"the BMv2 demo runs BMv2 in a Mininet network, and needs root: {why}")
        check_switch_kind("bmv2")
        if not config.bmv2_json.is_file():
            raise InputError(
                f"{config.bmv2_json}: BMv2 needs the compiled program; run `make build`"
            )
    if not network:
        out.write(
            f"svcfp demo: {why}, so no Mininet network: the devices' traffic is synthesised "
            "into a pcap and replayed through the reference switch, read over gRPC\n"
        )
    scenario = build_scenario(config)
    out.write(
        f"references: {len(scenario.references.labels)} fingerprints of "
        f"{', '.join(scenario.references.types)}; θ = {scenario.references.theta:.3f}; "
        f"held out: {scenario.held_out}\n"
    )
    if scenario.change is not None:
        change = scenario.change
        out.write(
            f"{change.host} ({scenario.truth[change.host]}) plays {change.profile} from unit "
            f"{change.at_unit} on: its behaviour changes\n"
        )
    view = LiveView(scenario, out)
    mode = f"mininet ({config.switch})" if network else "pcap replay (refswitch)"
    extra = (run_network if network else run_replay)(config, scenario, view)
    view.close()
    seconds = time.monotonic() - begun
    summary, paths = write_report(config, scenario, config.out / DATABASE, mode, seconds, extra)
    scored = [row for row in summary["devices"] if row["correct"] is not None]
    out.write(
        f"\n{summary['correct']} of {len(scored)} devices answered correctly"
        + (
            f" ({len(summary['devices']) - len(scored)} changed behaviour)"
            if len(scored) < len(summary["devices"])
            else ""
        )
        + f"; {len(summary['alerts'])} alerts; {seconds:.0f} s"
        + (" (interrupted)" if extra.get("interrupted") else "")
        + f"; report: {', '.join(str(p) for p in paths)}\n"
    )
    return summary
