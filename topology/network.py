"""Build and run a Mininet network from a topology graph, with P4 switches, and tear it down.

Only Mininet's Python API is used, never the `mn` command: its cleanup path kills processes by
name. `net.stop()` always runs (the context manager's `finally`), and every interface and host
shell is recorded in the testbed record before it exists, so `teardown` can finish the job after
any interruption.
"""

from __future__ import annotations

import sys
from collections.abc import Collection, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import networkx as nx
from mininet.net import Mininet

from controller.base.errors import SvcfpError
from topology import graph as topo
from topology.state import TestbedState, interface_exists
from topology.switches import P4Switch, switch_class


@dataclass(frozen=True)
class Network:
    """A running emulated network: the Mininet object and the graph it was built from."""

    net: Any
    graph: nx.Graph[str]
    switch_kind: str

    def host(self, name: str) -> Any:
        """The Mininet host `name`."""
        return self.net.get(name)

    def switch(self, name: str) -> P4Switch:
        """The Mininet P4 switch `name`."""
        node = self.net.get(name)
        assert isinstance(node, P4Switch)
        return node


@contextmanager
def running_network(
    graph: nx.Graph[str],
    switch_kind: str,
    logs: Path,
    state: TestbedState | None = None,
    ipv6_hosts: Collection[str] = (),
) -> Iterator[Network]:
    """Build the network, start its switches, yield it, and always stop it.

    Hosts get their address and MAC from the graph, IPv6 off (except `ipv6_hosts`, whose
    profiles use ICMPv6), offloads off (so frames survive the trip through a user-space switch)
    and static ARP entries for every other host (so no ARP broadcast shows up in any device's
    counters).
    """
    topo.validate(graph, str(graph.graph.get("name", "topology")))
    cls = switch_class(switch_kind)
    hosts, switches, interfaces = topo.hosts(graph), topo.switches(graph), topo.interfaces(graph)
    taken = [name for name in interfaces if interface_exists(name)]
    if taken:
        raise SvcfpError(
            f"interfaces {', '.join(taken)} already exist: is another testbed running? "
            "(`svcfp testbed stop` removes what a testbed created)"
        )
    if state is not None:
        state.add_interfaces(interfaces)
        state.info.update({"switch": switch_kind, "grpc_addrs": {}})
    # Nodes, links and addresses come from the graph below; no OpenFlow controller: the P4
    # switches are programmed over P4Runtime.
    net = Mininet(switch=cls, controller=None, build=False)
    try:
        for host in hosts:
            net.addHost(host.name, ip=f"{host.ip}/{host.prefixlen}", mac=host.mac)
        for index, switch in enumerate(switches, start=1):
            net.addSwitch(
                switch.name,
                dpid=f"{index:016x}",
                grpc_port=switch.grpc_port,
                device_id=switch.device_id,
                thrift_port=switch.thrift_port,
                logs=logs,
                state=state,
            )
        for link in topo.links(graph):
            net.addLink(link.node1, link.node2, port1=link.port1, port2=link.port2)
        net.build()
        if state is not None:
            for host in hosts:
                state.add_process(f"host:{host.name}", net.get(host.name).pid)
        for host in hosts:
            _configure_host(net.get(host.name), host, host.name in ipv6_hosts)
        net.staticArp()
        net.start()
        if state is not None:
            state.info["grpc_addrs"] = {s.name: s.grpc_addr for s in switches}
            state.save()
        yield Network(net, graph, switch_kind)
    finally:
        net.stop()


def _configure_host(node: Any, host: topo.Host, ipv6: bool) -> None:
    if ipv6:
        # IPv6 for the device's own ICMPv6 only: usable at once (no DAD), no solicitations.
        for setting in ("accept_dad=0", "router_solicitations=0", "disable_ipv6=0"):
            _check(node, f"sysctl -q -w net.ipv6.conf.{host.interface}.{setting}")
    else:
        for setting in ("all", "default", "lo", host.interface):
            _check(node, f"sysctl -q -w net.ipv6.conf.{setting}.disable_ipv6=1")
    _check(node, f"{sys.executable} -m topology.offload {host.interface}")


def _check(node: Any, command: str) -> None:
    output = node.cmd(command + "; echo __status=$?")
    text, _, status = output.rpartition("__status=")
    if status.strip() != "0":
        raise SvcfpError(f"host {node.name}: `{command}` failed: {text.strip()}")
