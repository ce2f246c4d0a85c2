"""The demo's terminal table: what the controller decided about each emulated device, live.

The controller hands every closed range of units to this view with the fingerprints it exported
and the decisions it stored for them (its live identification, the same path as `svcfp run
--references`); the view keeps them and shows each device's answer: the controller's verdict over
its decisions so far (controller/control/live.py).
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, field
from typing import TextIO

from controller.control.controller import ClosedUnits
from controller.control.live import verdict
from controller.engine.identify import Decision
from topology import graph as topo
from topology.scenario import Scenario


@dataclass
class LiveView:
    """The controller's decisions on a scenario's devices as units close, and the table that
    shows them. Devices are keyed by host name; the controller keys them by MAC."""

    scenario: Scenario
    out: TextIO = sys.stdout
    decisions: list[Decision] = field(default_factory=list)
    fingerprints: int = 0
    units_seen: int = 0

    def __post_init__(self) -> None:
        self.hosts = {h.mac: h.name for h in topo.hosts(self.scenario.graph, topo.DEVICE)}
        self.macs = {name: mac for mac, name in self.hosts.items()}

    def on_units(self, closed: ClosedUnits) -> None:
        """Keep what the controller decided on the closed units; redraw."""
        self.fingerprints += len(closed.fingerprints)
        mine = [d for d in closed.decisions if d.device in self.hosts]
        self.decisions.extend(mine)
        self.units_seen += closed.last - closed.first + 1
        if self.out.isatty():
            # Redraw in place on a terminal; elsewhere (logs, pipes) print when answers change.
            self.out.write("\x1b[H\x1b[2J" + self.render())
        elif mine or self.units_seen == closed.last - closed.first + 1:
            self.out.write(self.render())
        self.out.flush()

    def final(self) -> dict[str, Decision]:
        """Each device's answer (by host name): the controller's verdict over its decisions."""
        by_device: dict[str, list[Decision]] = {}
        for decision in self.decisions:
            by_device.setdefault(self.hosts[decision.device], []).append(decision)
        return {host: mine[verdict([d.label for d in mine])] for host, mine in by_device.items()}

    def render(self) -> str:
        """The live table: device, MAC, true type, answer, similarity, top services."""
        answers = self.final()
        counts = {host: 0 for host in self.scenario.truth}
        for decision in self.decisions:
            counts[self.hosts[decision.device]] += 1
        theta = self.scenario.references.theta
        lines = [
            f"\nunit {self.units_seen:3d}  (θ = {theta:.2f}; the controller has stored "
            f"{self.fingerprints} fingerprints of all hosts and {len(self.decisions)} decisions "
            "on these devices; answer = majority of each one's decisions)",
            f"{'device':8} {'MAC':17} {'true type':18} {'identified as':18} {'sim':>5} "
            f"{'n':>3}  top services (share of similarity)",
        ]
        for host in sorted(self.scenario.truth):
            mac = self.macs[host]
            if host not in answers:
                lines.append(f"{host:8} {mac:17} {self._truth(host):18} {'…':18}")
                continue
            decision = answers[host]
            top = ", ".join(f"{c.service} {c.share:.2f}" for c in decision.explanation.matched[:3])
            lines.append(
                f"{host:8} {mac:17} {self._truth(host):18} {decision.label:18} "
                f"{decision.similarity:5.2f} {counts[host]:3d}  {top}"
            )
        return "\n".join(lines) + "\n"

    def _truth(self, host: str) -> str:
        truth = self.scenario.truth[host]
        return truth if truth in self.scenario.references.types else f"{truth} (new)"
