"""The demo's terminal table: what the controller decided about each emulated device, live.

The controller hands every closed range of units to this view with the fingerprints it exported
and the decisions it stored for them (its live identification, the same path as `svcfp run
--references`), and every alert it raises; the view keeps them and shows each device's answer:
the controller's verdict over its decisions so far (controller/control/live.py).

On a terminal the table is redrawn in place, under a status line with the progress (`unit
9/60`), the alerts and the dashboard's address. Elsewhere (a pipe, a log file) it writes one
line per decision and alert and a progress line every PROGRESS_EVERY units, and `close` writes
the table once at the end, so the output reads top to bottom.
"""

from __future__ import annotations

import shutil
import sys
from dataclasses import dataclass, field
from typing import TextIO

from controller.control.controller import ClosedUnits
from controller.control.live import verdict
from controller.engine.identify import Decision
from controller.store.records import AlertRecord
from topology import graph as topo
from topology.scenario import Scenario

# Units between two progress lines when the output is not a terminal.
PROGRESS_EVERY = 10
# Alerts the terminal table lists under the devices.
SHOWN_ALERTS = 4
# ANSI: to the start of the line N lines up, and clear from there to the end of the screen.
_UP = "\x1b[{}F"
_CLEAR_DOWN = "\x1b[J"


@dataclass
class LiveView:
    """The controller's decisions on a scenario's devices as units close, and the table that
    shows them. Devices are keyed by host name; the controller keys them by MAC."""

    scenario: Scenario
    out: TextIO = sys.stdout
    decisions: list[Decision] = field(default_factory=list)
    # Each device's accumulated answer after its latest decision (by MAC; None without one).
    accumulated: dict[str, str | None] = field(default_factory=dict)
    alerts: list[AlertRecord] = field(default_factory=list)
    fingerprints: int = 0
    units_seen: int = 0
    total_units: int | None = None
    # The first unit of the devices' traffic (epoch seconds / unit), once it plays.
    first_unit: int | None = None
    url: str | None = None
    stopping: str | None = None

    def __post_init__(self) -> None:
        self.hosts = {h.mac: h.name for h in topo.hosts(self.scenario.graph, topo.DEVICE)}
        self.macs = {name: mac for mac, name in self.hosts.items()}
        # Every host by MAC, service hosts too: alerts name whichever host they are about.
        self.names = {h.mac: h.name for h in topo.hosts(self.scenario.graph)}
        self.tty = self.out.isatty()
        self._drawn = 0
        self._last_progress = 0
        self._last_unit: int | None = None

    # -- what the controller tells ---------------------------------------------------------------

    def on_units(self, closed: ClosedUnits) -> None:
        """Keep what the controller decided on the closed units; show it."""
        self.fingerprints += sum(1 for fp in closed.fingerprints if fp.device in self.hosts)
        mine = [d for d in closed.decisions if d.device in self.hosts]
        self.decisions.extend(mine)
        beliefs = closed.beliefs or (None,) * len(closed.decisions)
        for decision, belief in zip(closed.decisions, beliefs, strict=True):
            if decision.device in self.hosts:
                self.accumulated[decision.device] = None if belief is None else belief.label
        self.units_seen += closed.last - closed.first + 1
        self._last_unit = closed.last
        if self.tty:
            self.redraw()
            return
        for decision in mine:
            self.out.write(f"{self.progress()}  {self._decision_line(decision)}\n")
        played = self.played()
        if played is not None and played - self._last_progress >= PROGRESS_EVERY:
            self._last_progress = played
            answered = len(self.final())
            self.out.write(
                f"{self.progress()}  {answered} of {len(self.scenario.truth)} devices "
                f"answered, {len(self.decisions)} decisions, {len(self.alerts)} alerts\n"
            )
        self.out.flush()

    def on_alert(self, alert: AlertRecord) -> None:
        """An alert the controller raised: listed under the table, or written as a line."""
        self.alerts.append(alert)
        if self.tty:
            self.redraw()
        else:
            self.out.write(f"{self.progress()}  ALERT {alert.kind}: {self._named(alert)}\n")
            self.out.flush()

    def on_dashboard(self, url: str) -> None:
        """The dashboard listens at `url`."""
        self.url = url
        if self.tty:
            self.redraw()
        else:
            self.out.write(f"dashboard: {url}\n")
            self.out.flush()

    def playing(self, start: float, unit_seconds: float, units: int) -> None:
        """The devices' traffic starts at epoch `start` and lasts `units` units."""
        self.first_unit = int(start // unit_seconds)
        self.total_units = units

    def stop(self, why: str) -> None:
        """The demo is stopping early (`why`: e.g. Ctrl-C)."""
        self.stopping = why
        if self.tty:
            self.redraw()
        else:
            self.out.write(f"{self.progress()}  stopping: {why}\n")
            self.out.flush()

    def close(self) -> None:
        """The end of the run: the table stays on a terminal; elsewhere it is written once."""
        if self.tty:
            self.redraw()
        else:
            self.out.write(self.render())
        self.out.flush()

    # -- what is shown ---------------------------------------------------------------------------

    def played(self) -> int | None:
        """Units of the devices' traffic closed so far (None before it plays)."""
        if self.first_unit is None or self._last_unit is None:
            return None
        done = self._last_unit - self.first_unit + 1
        return max(0, min(done, self.total_units or done))

    def progress(self) -> str:
        """`unit 9/60` once the traffic plays, `waiting` before."""
        played = self.played()
        if played is None:
            return "waiting"
        return f"unit {played}/{self.total_units}"

    def final(self) -> dict[str, Decision]:
        """Each device's answer (by host name): the controller's verdict over its decisions."""
        by_device: dict[str, list[Decision]] = {}
        for decision in self.decisions:
            by_device.setdefault(decision.device, []).append(decision)
        return {
            self.hosts[mac]: mine[verdict([d.label for d in mine], self.accumulated.get(mac))]
            for mac, mine in by_device.items()
        }

    def redraw(self) -> None:
        """Draw the table over the one drawn before (a terminal only; lines are cut to its
        width, so that none wraps and the next redraw lands where this one began)."""
        width = max(20, shutil.get_terminal_size().columns - 1)
        text = "".join(line[:width] + "\n" for line in self.render().splitlines())
        up = _UP.format(self._drawn) if self._drawn else ""
        self.out.write(up + _CLEAR_DOWN + text)
        self._drawn = text.count("\n")
        self.out.flush()

    def render(self) -> str:
        """The live table: status line, then device, MAC, true type, answer, similarity, top
        services, then the latest alerts."""
        answers = self.final()
        counts = {host: 0 for host in self.scenario.truth}
        for decision in self.decisions:
            counts[self.hosts[decision.device]] += 1
        theta = self.scenario.references.theta
        status = [
            self.progress(),
            f"θ = {theta:.2f}",
            f"{self.fingerprints} fingerprints, {len(self.decisions)} decisions, "
            f"{len(self.alerts)} alerts",
        ]
        if self.url:
            status.append(f"dashboard {self.url}")
        if self.stopping:
            status.append(f"stopping: {self.stopping}")
        lines = [
            "  ·  ".join(status),
            f"{'device':8} {'MAC':17} {'true type':22} {'identified as':18} {'sim':>5} "
            f"{'n':>3}  top services (share of similarity)",
        ]
        for host in sorted(self.scenario.truth):
            mac = self.macs[host]
            if host not in answers:
                lines.append(f"{host:8} {mac:17} {self._truth(host):22} {'…':18}")
                continue
            decision = answers[host]
            top = ", ".join(f"{c.service} {c.share:.2f}" for c in decision.explanation.matched[:3])
            lines.append(
                f"{host:8} {mac:17} {self._truth(host):22} {decision.label:18} "
                f"{decision.similarity:5.2f} {counts[host]:3d}  {top}"
            )
        if self.alerts:
            lines.append("latest alerts:")
            lines.extend(f"  {a.kind:19} {self._named(a)}" for a in self.alerts[-SHOWN_ALERTS:])
        return "\n".join(lines) + "\n"

    def _decision_line(self, decision: Decision) -> str:
        host = self.hosts[decision.device]
        return (
            f"{host} ({self._truth(host)}): {decision.label} at similarity "
            f"{decision.similarity:.2f} (units {decision.start_unit}..{decision.end_unit})"
        )

    def _named(self, alert: AlertRecord) -> str:
        """The alert's message after its device: the host name of an emulated one, else MAC."""
        if alert.device is None:
            return alert.message
        return f"{self.names.get(alert.device, alert.device)}: {alert.message}"

    def _truth(self, host: str) -> str:
        truth = self.scenario.truth[host]
        change = self.scenario.change
        if change is not None and change.host == host:
            return f"{truth}→{change.profile}@{change.at_unit}"
        return truth if truth in self.scenario.references.types else f"{truth} (new)"
