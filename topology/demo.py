"""`svcfp demo`: emulated IoT devices identified live by the services they use.

As root, the demo builds a Mininet network around a P4 switch (the reference switch, or BMv2 with
`--switch bmv2`): a DNS, an NTP and a cloud host, and one host per emulated device. Reference
fingerprints of the known device types are enrolled from synthetic activity of their profiles;
then devices of those types, and of one type the references leave out, play their profiles as
real traffic in accelerated time (one unit of a second stands for an hour). The controller
programs the switch, reads its counters every poll, and each closed unit goes through the
fingerprint exporter and the identification; a terminal table shows every device's current
answer. At the end a report (decisions, explanations, plots) is written to `--out`.

Without root (or with `--no-network`) the same devices' traffic is synthesised as frames into a
pcap and replayed through the reference switch process, which the controller reads over gRPC
exactly as in the network mode.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, TextIO

import networkx as nx
import numpy as np
from matplotlib.figure import Figure

from controller.base.errors import InputError, SvcfpError
from controller.base.fileio import replace_atomically, write_text_atomically
from controller.control.live import identify_fingerprints
from controller.control.config import RunConfig
from controller.control.controller import Controller
from controller.engine.activity import ActivityTable
from controller.engine.catalogue import Catalogue
from controller.engine.evaluate import closed_set
from controller.engine.fingerprint import (
    ExporterConfig,
    Fingerprint,
    FingerprintSet,
    StreamingExporter,
    export_fingerprints,
    representation_name,
)
from controller.engine.identify import UNKNOWN, Decision, References, enroll
from controller.engine.report import plot_confusion
from controller.ingest import synth
from topology import graph as topo
from topology.emulation import DeviceSchedule, EmulationRun, next_unit_start
from topology.files import write_json_atomic
from topology.frames import synthesize, write_pcap
from topology.launch import SWITCH_KINDS, check_switch_kind, launch, refswitch_command
from topology.schedules import synthetic_schedules
from topology.state import recorded_run
from topology.testbed import (
    DEFAULT_BMV2_JSON,
    DEFAULT_P4INFO,
    controller_config,
    wait_programmed,
)

# The demo's exporter: short windows, so fingerprints converge within a few dozen units.
DEMO_EXPORTER = ExporterConfig(granularity=4, tau=0.9, k=3, n_min=8, n_max=24)
# The default mix: four known types whose services differ, and a hub the references lack.
DEFAULT_KNOWN = ("camera", "plug", "speaker", "thermostat")
DEFAULT_HELD_OUT = "hub"
# Synthetic reference devices per known type.
REFERENCE_DEVICES = 5
# Frames of the no-network mode enter the switch here: no host is attached to port 0, and the
# switch counts by source MAC, whatever the port.
REPLAY_PORT = 0
_READY_TIMEOUT = 30.0


@dataclass(frozen=True)
class DemoConfig:
    """Everything `svcfp demo` was asked to do."""

    switch: str = "refswitch"
    out: Path = Path("logs/demo")
    logs: Path = Path("logs")
    units: int = 60
    reference_units: int = 96
    unit_seconds: float = 1.0
    interval: float = 0.25
    seed: int = 7
    devices_per_type: int = 1
    known: tuple[str, ...] = ()
    held_out: str | None = None
    no_network: bool = False
    p4info: Path = DEFAULT_P4INFO
    bmv2_json: Path = DEFAULT_BMV2_JSON
    grpc_port: int = topo.FIRST_GRPC_PORT
    exporter: ExporterConfig = DEMO_EXPORTER


@dataclass(frozen=True)
class Scenario:
    """Who plays what: emulated hosts with their true type and schedule, the references, and the
    network they play in."""

    truth: dict[str, str]
    held_out: str
    references: References
    schedules: dict[str, DeviceSchedule]
    graph: nx.Graph[str]


@dataclass
class LiveView:
    """Identification of a scenario's devices as units close, and the terminal table that shows
    it."""

    scenario: Scenario
    exporter_config: ExporterConfig
    unit_seconds: float
    out: TextIO = sys.stdout
    decisions: list[Decision] = field(default_factory=list)
    exported: list[Fingerprint] = field(default_factory=list)
    current: dict[str, Decision] = field(default_factory=dict)
    units_seen: int = 0
    activity: list[ActivityTable] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.exporter = StreamingExporter(self.exporter_config, self.unit_seconds)
        # MAC → host name of the emulated devices: the switch counts by MAC.
        self.hosts = {h.mac: h.name for h in topo.hosts(self.scenario.graph, topo.DEVICE)}

    def on_unit(self, table: ActivityTable) -> None:
        """Feed a closed unit's activity (MAC keys) of the emulated hosts, identify, redraw."""
        mine = _rename(table, self.hosts)
        self.activity.append(mine)
        exported = self.exporter.feed_table(mine)
        if exported:
            self.exported.extend(exported)
            self.decisions.extend(self._identify(exported))
        self.units_seen += 1
        provisional = {d.device: d for d in self._identify(self.exporter.pending())}
        final = {d.device: d for d in self.decisions}
        self.current = {**provisional, **final}
        if self.out.isatty():
            # Redraw in place on a terminal; elsewhere (logs, pipes) print when answers change.
            self.out.write("\x1b[H\x1b[2J" + self.render())
        elif exported or self.units_seen == 1:
            self.out.write(self.render())
        self.out.flush()

    def _identify(self, fingerprints: Sequence[Fingerprint]) -> list[Decision]:
        return identify_fingerprints(fingerprints, self.scenario.references)

    def render(self) -> str:
        """The live table: device, MAC, true type, answer, similarity, top services."""
        macs = {host: mac for mac, host in self.hosts.items()}
        exported = {d.device for d in self.decisions}
        answers = self.final()
        theta = self.scenario.references.theta
        lines = [
            f"\nunit {self.units_seen:3d}  (θ = {theta:.2f}; * = majority of the exported "
            "fingerprints, otherwise the window so far)",
            f"{'device':8} {'MAC':17} {'true type':18} {'identified as':18} {'sim':>5}  "
            "top services (share of similarity)",
        ]
        for host in sorted(self.scenario.truth):
            decision = answers.get(host)
            if decision is None:
                lines.append(f"{host:8} {macs[host]:17} {self._truth(host):18} {'…':18}")
                continue
            mark = "*" if host in exported else " "
            top = ", ".join(f"{c.service} {c.share:.2f}" for c in decision.explanation.matched[:3])
            lines.append(
                f"{host:8} {macs[host]:17} {self._truth(host):18} "
                f"{decision.label + mark:18} {decision.similarity:5.2f}  {top}"
            )
        return "\n".join(lines) + "\n"

    def _truth(self, host: str) -> str:
        truth = self.scenario.truth[host]
        return truth if truth in self.scenario.references.types else f"{truth} (new)"

    def final(self) -> dict[str, Decision]:
        """Each device's answer: the majority label of its exported decisions (the latest of
        them on a tie), or its open window's decision if it never exported."""
        answers = dict(self.current)
        by_device: dict[str, list[Decision]] = {}
        for decision in self.decisions:
            by_device.setdefault(decision.device, []).append(decision)
        for device, decisions in by_device.items():
            votes = Counter(d.label for d in decisions)
            top = max(votes.values())
            answers[device] = next(d for d in reversed(decisions) if votes[d.label] == top)
        return answers


def _rename(table: ActivityTable, names: Mapping[str, str]) -> ActivityTable:
    """Rows of the devices in `names` (MAC → host name), keyed by host name."""
    keep = [i for i, mac in enumerate(table.devices) if mac in names]
    rows = np.isin(table.device, np.array(keep, dtype=np.int32))
    return ActivityTable.from_records(
        (
            (names[table.devices[int(d)]], int(u), table.services[int(s)], int(p), int(b))
            for d, u, s, p, b in zip(
                table.device[rows],
                table.unit[rows],
                table.service[rows],
                table.packets[rows],
                table.bytes[rows],
                strict=True,
            )
        ),
        unit_seconds=table.unit_seconds,
    )


def choose_types(config: DemoConfig, names: Sequence[str]) -> tuple[list[str], str]:
    """The known types and the held-out type (defaults: DEFAULT_KNOWN and DEFAULT_HELD_OUT)."""
    known = list(config.known) or [n for n in DEFAULT_KNOWN if n != config.held_out]
    held_out = config.held_out or DEFAULT_HELD_OUT
    for name in [*known, held_out]:
        if name not in names:
            raise InputError(f"unknown profile {name!r}; profiles: {', '.join(names)}")
    if held_out in known:
        raise InputError(f"the held-out type {held_out!r} is also among the known types")
    return known, held_out


def build_scenario(config: DemoConfig) -> Scenario:
    """Enroll references of the known types from synthetic activity of their profiles, and give
    every emulated host (each known type and the held-out one) a schedule of its own."""
    profiles = synth.load_profiles()
    known, held_out = choose_types(config, sorted(profiles))
    fleet = synth.make_fleet(profiles, REFERENCE_DEVICES * len(known), kinds=known)
    # Synthetic units are hours, so the profiles' daily rhythm applies; each plays as one unit.
    enrolled = synth.activity(
        fleet, config.reference_units, config.seed, Catalogue.default(), unit_seconds=3600.0
    )
    # The same units, each now standing for a unit of emulated time.
    accelerated = replace(enrolled, unit_seconds=config.unit_seconds)
    fingerprints = export_fingerprints(accelerated, config.exporter)
    labels = {device.mac: device.profile.name for device in fleet}
    references = enroll(fingerprints, labels, config=config.exporter)
    kinds = [kind for kind in [*known, held_out] for _ in range(config.devices_per_type)]
    truth = {f"d{i + 1}": kind for i, kind in enumerate(kinds)}
    graph = topo.default_topology(sorted(truth.items()), grpc_port=config.grpc_port)
    schedules = synthetic_schedules(graph, config.units, config.seed + 1000, profiles)
    return Scenario(truth, held_out, references, schedules, graph)


@dataclass(frozen=True)
class Playback:
    """Traffic being played: when it ends (epoch seconds), and how to stop it early."""

    end: float
    stop: Callable[[], None]


def _run_config(config: DemoConfig, graph: nx.Graph[str]) -> RunConfig:
    # Each demo reports on its own run only: a database left by an earlier one goes first.
    for stale in config.out.glob("demo.db*"):
        stale.unlink()
    return controller_config(
        graph,
        config.out / "demo.db",
        config.logs,
        p4info=config.p4info,
        bmv2_json=config.bmv2_json if config.switch == "bmv2" else None,
        interval=config.interval,
        time_unit=config.unit_seconds,
    )


async def _drive(run_config: RunConfig, view: LiveView, play: Callable[[], Playback]) -> None:
    """Run the controller; once it has programmed every switch, play; stop when play ends."""
    controller = Controller(run_config, view.on_unit)
    task = asyncio.create_task(controller.run())
    await wait_programmed(controller, task, _READY_TIMEOUT)
    playback = play()
    # One more unit and poll after the traffic ends, so the last unit closes with its counts.
    end = playback.end + run_config.time_unit + run_config.interval
    try:
        while time.time() < end and not task.done():
            await asyncio.sleep(0.1)
    finally:
        playback.stop()
        controller.stop.set()
        await task


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
    run_config = _run_config(config, graph)
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
            return Playback(run.end, run.stop)

        asyncio.run(_drive(run_config, view, play))
        if before_teardown is not None:
            before_teardown(network)
        return runs[0].reports() if runs else {}


def run_replay(config: DemoConfig, scenario: Scenario, view: LiveView) -> dict[str, Any]:
    """The live demo without a network: synthesised frames replayed through the reference
    switch process at their own pace, counted and read over gRPC as in the network mode."""
    graph = scenario.graph
    run_config = _run_config(config, graph)
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
            return Playback(start + (frames[-1].time - origin) + 0.5, timer.cancel)

        asyncio.run(_drive(run_config, view, play))
        return {"frames": len(frames), "pcap": str(pcap)}


def outcome(view: LiveView, scenario: Scenario) -> list[dict[str, Any]]:
    """Per emulated device: its true type, the answer, and whether the answer is right (a known
    type identified as itself, the held-out type as unknown)."""
    macs = {host: mac for mac, host in view.hosts.items()}
    rows = []
    final = view.final()
    for host in sorted(scenario.truth):
        truth = scenario.truth[host]
        expected = truth if truth in scenario.references.types else UNKNOWN
        decision = final.get(host)
        rows.append(
            {
                "device": host,
                "mac": macs[host],
                "true_type": truth,
                "expected": expected,
                "identified": decision.label if decision else None,
                "best_type": decision.best_type if decision else None,
                "similarity": decision.similarity if decision else None,
                "exported": any(d.device == host for d in view.decisions),
                "correct": decision is not None and decision.label == expected,
                "explanation": decision.explanation.to_json() if decision else None,
            }
        )
    return rows


def write_report(
    config: DemoConfig,
    scenario: Scenario,
    view: LiveView,
    mode: str,
    seconds: float,
    extra: Mapping[str, Any],
) -> list[Path]:
    """decisions.json, activity.csv, report.md and plots under `config.out`."""
    out = config.out
    out.mkdir(parents=True, exist_ok=True)
    rows = outcome(view, scenario)
    summary = {
        "mode": mode,
        "switch": config.switch,
        "seconds": round(seconds, 1),
        "units": config.units,
        "unit_seconds": config.unit_seconds,
        "known_types": list(scenario.references.types),
        "held_out": scenario.held_out,
        "theta": scenario.references.theta,
        "exporter": config.exporter.to_json(),
        "correct": sum(r["correct"] for r in rows),
        "devices": rows,
        "decisions": [d.to_json() for d in view.decisions],
        "playback": dict(extra),
    }
    written = [out / "decisions.json", out / "activity.csv", out / "report.md"]
    write_json_atomic(out / "decisions.json", summary)
    activity = ActivityTable.concat(view.activity) if view.activity else None
    if activity is not None:
        activity.to_csv(out / "activity.csv")
    else:
        written.remove(out / "activity.csv")
    plots = {"Similarity over time": "similarity.png"}
    _plot_timeline(view, scenario, out / "similarity.png")
    known_fps = [
        fp for fp in view.exported if scenario.truth[fp.device] in scenario.references.types
    ]
    if known_fps:
        fps = FingerprintSet.from_fingerprints(known_fps)
        result = {
            "closed_set": closed_set(
                scenario.references, fps, [scenario.truth[d] for d in fps.device_names]
            ),
            "representation": representation_name(config.exporter.granularity),
            "mode": scenario.references.mode,
            "unit_seconds": config.unit_seconds,
        }
        plots["Confusion of exported fingerprints (known types)"] = "confusion.png"
        plot_confusion(result, out / "confusion.png")
    write_text_atomically(out / "report.md", _markdown(summary, rows, plots))
    return written + [out / name for name in plots.values()]


def _plot_timeline(view: LiveView, scenario: Scenario, path: Path) -> None:
    """Similarity of every exported fingerprint to its best type, per device, with θ."""
    fig = Figure(figsize=(8.0, 4.0))
    ax = fig.add_subplot()
    first = min((d.start_unit for d in view.decisions), default=0)
    for host in sorted(scenario.truth):
        mine = [d for d in view.decisions if d.device == host]
        if mine:
            ax.plot(
                [d.end_unit - first for d in mine],
                [d.similarity for d in mine],
                marker="o",
                label=f"{host} ({scenario.truth[host]})",
            )
    ax.axhline(scenario.references.theta, color="grey", linestyle="--", label="θ (unknown below)")
    ax.set_xlabel(f"unit ({view.unit_seconds:g} s each) when the fingerprint was exported")
    ax.set_ylabel("similarity to the best type")
    ax.set_ylim(0.0, 1.02)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    replace_atomically(path, lambda temp: fig.savefig(temp, format="png", dpi=110))


def _markdown(
    summary: Mapping[str, Any], rows: Sequence[Mapping[str, Any]], plots: Mapping[str, str]
) -> str:
    lines = [
        "# svcfp demo",
        "",
        f"Mode: {summary['mode']} ({summary['switch']} switch), {summary['units']} units of "
        f"{summary['unit_seconds']:g} s, {summary['seconds']:.0f} s in all. Known types: "
        f"{', '.join(summary['known_types'])}; held out of the references: "
        f"{summary['held_out']}. θ = {summary['theta']:.3f}.",
        "",
        f"**{summary['correct']} of {len(rows)} devices answered correctly** (a known type as "
        "itself, the held-out type as unknown).",
        "",
        "| device | MAC | true type | identified as | similarity | exported | right |",
        "|---|---|---|---|---|---|---|",
    ]
    for row in rows:
        similarity = "–" if row["similarity"] is None else f"{row['similarity']:.3f}"
        lines.append(
            f"| {row['device']} | {row['mac']} | {row['true_type']} | {row['identified']} | "
            f"{similarity} | {'yes' if row['exported'] else 'no'} | "
            f"{'yes' if row['correct'] else 'NO'} |"
        )
    lines += ["", "## Why", ""]
    for row in rows:
        why = row["explanation"]
        if why is None:
            continue
        parts = []
        for group in ("matched", "unexpected", "missing"):
            services = ", ".join(f"{c['service']} ({c['share']:.2f})" for c in why[group])
            parts.append(f"{group}: {services or '–'}")
        lines.append(f"- **{row['device']}** → {row['identified']}: " + "; ".join(parts))
    for title, name in plots.items():
        lines += ["", f"## {title}", "", f"![{title}]({name})"]
    return "\n".join(lines) + "\n"


def run_demo(config: DemoConfig, out: TextIO = sys.stdout) -> dict[str, Any]:
    """Run the whole demo; returns the summary written to `decisions.json`."""
    begun = time.monotonic()
    network = not config.no_network and os.geteuid() == 0
    if config.switch == "bmv2":
        if not network:
            raise SvcfpError("the BMv2 demo needs root: it runs BMv2 in a Mininet network")
        check_switch_kind("bmv2")
        if not config.bmv2_json.is_file():
            raise InputError(
                f"{config.bmv2_json}: BMv2 needs the compiled program; run `make build`"
            )
    if not network:
        why = "--no-network" if config.no_network else "not running as root"
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
    view = LiveView(scenario, config.exporter, config.unit_seconds, out)
    mode = f"mininet ({config.switch})" if network else "pcap replay (refswitch)"
    extra = (run_network if network else run_replay)(config, scenario, view)
    seconds = time.monotonic() - begun
    paths = write_report(config, scenario, view, mode, seconds, extra)
    summary: dict[str, Any] = json.loads((config.out / "decisions.json").read_text())
    out.write(
        f"\n{summary['correct']} of {len(summary['devices'])} devices answered correctly; "
        f"{seconds:.0f} s; report: {', '.join(str(p) for p in paths)}\n"
    )
    return summary


def _names(text: str) -> tuple[str, ...]:
    return tuple(name.strip() for name in text.split(",") if name.strip())


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add `svcfp demo`."""
    parser = subparsers.add_parser(
        "demo", help="emulated IoT devices identified live by their services", description=__doc__
    )
    parser.add_argument("--switch", choices=SWITCH_KINDS, default="refswitch")
    parser.add_argument("--out", type=Path, default=Path("logs/demo"), help="report folder")
    parser.add_argument("--logs", type=Path, default=Path("logs"), help="switch logs, run record")
    parser.add_argument("--units", type=int, default=60, help="time units the devices play")
    parser.add_argument("--unit-seconds", type=float, default=1.0, help="seconds per unit")
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--known", type=_names, default=(), help="known types, comma-separated")
    parser.add_argument("--held-out", default=None, help="the type left out of the references")
    parser.add_argument("--devices-per-type", type=int, default=1)
    parser.add_argument(
        "--no-network", action="store_true", help="replay synthesised frames even as root"
    )
    parser.add_argument("--p4info", type=Path, default=DEFAULT_P4INFO)
    parser.add_argument("--bmv2-json", type=Path, default=DEFAULT_BMV2_JSON)
    parser.add_argument("--grpc-port", type=int, default=topo.FIRST_GRPC_PORT)
    parser.set_defaults(func=main)


def main(args: argparse.Namespace) -> int:
    """Entry point of `svcfp demo`."""
    if not 1 <= args.units <= 600 or not 0.2 <= args.unit_seconds <= 10:
        raise InputError("--units must lie in 1..600 and --unit-seconds in 0.2..10")
    if args.devices_per_type < 1 or args.devices_per_type > 5:
        raise InputError("--devices-per-type must lie in 1..5")
    config = DemoConfig(
        switch=args.switch,
        out=args.out,
        logs=args.logs,
        units=args.units,
        unit_seconds=args.unit_seconds,
        seed=args.seed,
        known=args.known,
        held_out=args.held_out,
        devices_per_type=args.devices_per_type,
        no_network=args.no_network,
        p4info=args.p4info,
        bmv2_json=args.bmv2_json,
        grpc_port=args.grpc_port,
    )
    run_demo(config)
    return 0
