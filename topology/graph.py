"""Testbed topologies as networkx graphs: hosts, P4 switches and the links between their ports.

A topology is an undirected `networkx.Graph`. Host nodes carry `kind="host"`, `role`
("device" or "service"), `mac`, `ip`, `prefixlen`, and either a `profile` (devices: the device
type they emulate) or `services` (service hosts: the services they answer, e.g. "udp/53").
Switch nodes carry `kind="switch"`, `grpc_port`, `device_id` and `thrift_port`. Each edge carries
`ports`, a mapping from each end's node name to its port number (switch ports count from 1, a
host's only interface is port 0), so a switch port N is the Mininet interface `<switch>-eth<N>`.

Files are node-link JSON (`save`/`load`); `load` also reads the p4lang tutorials' `topology.json`
shape. Everything is validated before anything is started.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import networkx as nx

from controller.base.errors import InputError
from controller.base.fileio import parse_json
from topology.files import write_json_atomic

DEVICE = "device"
SERVICE = "service"
ROLES = (DEVICE, SERVICE)

# Ports 9559 and up are the conventional P4Runtime ports; BMv2's Thrift ports start at 9090.
FIRST_GRPC_PORT = 9559
FIRST_THRIFT_PORT = 9090

_MAC = re.compile(r"^[0-9a-f]{2}(:[0-9a-f]{2}){5}$")
_SWITCH_PORT = re.compile(r"^(?P<node>.+)-p(?P<port>\d+)$")
# Linux limits interface names to 15 characters; Mininet names them `<node>-eth<port>`.
_MAX_IFNAME = 15


def interface_name(node: str, port: int) -> str:
    """The interface Mininet creates for port `port` of `node`."""
    return f"{node}-eth{port}"


@dataclass(frozen=True)
class Host:
    """An emulated end host: an IoT device or a service host answering devices."""

    name: str
    mac: str
    ip: str
    prefixlen: int
    role: str
    profile: str | None = None
    services: tuple[str, ...] = ()

    @property
    def interface(self) -> str:
        """The host's only interface (port 0)."""
        return interface_name(self.name, 0)


@dataclass(frozen=True)
class Switch:
    """A P4 switch and the addresses its control plane listens on."""

    name: str
    grpc_port: int
    device_id: int
    thrift_port: int

    @property
    def grpc_addr(self) -> str:
        """The P4Runtime address: switches of a testbed listen on the loopback only."""
        return f"127.0.0.1:{self.grpc_port}"


@dataclass(frozen=True)
class Link:
    """A link between two nodes, with the port number each end uses."""

    node1: str
    port1: int
    node2: str
    port2: int


@dataclass(frozen=True)
class DefaultServices:
    """The service hosts of the built-in topology and what each one answers."""

    dns: tuple[str, ...] = ("udp/53",)
    ntp: tuple[str, ...] = ("udp/123",)
    cloud: tuple[str, ...] = ("tcp/80", "tcp/443", "tcp/1883", "tcp/8883")
    extra: Mapping[str, tuple[str, ...]] = field(default_factory=dict)


def default_topology(
    devices: Sequence[tuple[str, str]],
    services: DefaultServices | None = None,
    grpc_port: int = FIRST_GRPC_PORT,
    device_id: int = 1,
    thrift_port: int = FIRST_THRIFT_PORT,
) -> nx.Graph[str]:
    """The built-in topology: one switch `s1`, hosts `dns`, `ntp`, `cloud`, and one host per device.

    `devices` lists (host name, profile) pairs. Service hosts take ports 1-3, devices follow in
    order. Addresses are 10.0.0.0/24; MACs are locally administered (02:...), so they never
    collide with a real vendor's. `grpc_port`, `device_id` and `thrift_port` (BMv2's CLI port)
    are the switch's.
    """
    chosen = services or DefaultServices()
    graph: nx.Graph[str] = nx.Graph(name="default")
    graph.add_node(
        "s1", kind="switch", grpc_port=grpc_port, device_id=device_id, thrift_port=thrift_port
    )
    if len(devices) > 150:
        raise InputError(
            f"default topology: at most 150 devices fit in 10.0.0.0/24, got {len(devices)}"
        )
    offered = {"dns": chosen.dns, "ntp": chosen.ntp, "cloud": chosen.cloud, **chosen.extra}
    # Node attributes of every host, in the order of the switch ports they attach to.
    placed: list[tuple[str, str, str, str, dict[str, Any]]] = [
        (name, SERVICE, f"01:{index:02x}", f"10.0.0.{index}", {"services": list(answered)})
        for index, (name, answered) in enumerate(offered.items(), start=1)
    ] + [
        (name, DEVICE, f"02:{index:02x}", f"10.0.0.{100 + index}", {"profile": profile})
        for index, (name, profile) in enumerate(devices, start=1)
    ]
    for port, (name, role, mac_suffix, ip, attributes) in enumerate(placed, start=1):
        graph.add_node(
            name,
            kind="host",
            role=role,
            mac=f"02:00:00:00:{mac_suffix}",
            ip=ip,
            prefixlen=24,
            **attributes,
        )
        graph.add_edge(name, "s1", ports={name: 0, "s1": port})
    validate(graph, "default topology")
    return graph


def _nodes(graph: nx.Graph[str]) -> list[tuple[str, dict[str, Any]]]:
    return [(name, graph.nodes[name]) for name in sorted(graph.nodes)]


def hosts(graph: nx.Graph[str], role: str | None = None) -> list[Host]:
    """The graph's hosts in name order, optionally only those with `role`."""
    found = []
    for name, data in _nodes(graph):
        if data.get("kind") != "host" or (role is not None and data.get("role") != role):
            continue
        found.append(
            Host(
                name=name,
                mac=data["mac"],
                ip=data["ip"],
                prefixlen=int(data.get("prefixlen", 24)),
                role=data["role"],
                profile=data.get("profile"),
                services=tuple(data.get("services", ())),
            )
        )
    return found


def switches(graph: nx.Graph[str]) -> list[Switch]:
    """The graph's switches in name order."""
    return [
        Switch(
            name=name,
            grpc_port=int(data["grpc_port"]),
            device_id=int(data["device_id"]),
            thrift_port=int(data["thrift_port"]),
        )
        for name, data in _nodes(graph)
        if data.get("kind") == "switch"
    ]


def links(graph: nx.Graph[str]) -> list[Link]:
    """The graph's links, each with its ends in name order."""
    found = []
    for a, b, data in graph.edges(data=True):
        first, second = sorted((a, b))
        ports = data["ports"]
        found.append(Link(first, int(ports[first]), second, int(ports[second])))
    return sorted(found, key=lambda link: (link.node1, link.port1, link.node2))


def switch_ports(graph: nx.Graph[str], switch: str) -> dict[int, str]:
    """Port number → neighbouring node, for one switch."""
    return {
        int(graph.edges[switch, other]["ports"][switch]): other for other in graph.neighbors(switch)
    }


def forwarding(graph: nx.Graph[str]) -> dict[str, dict[str, int]]:
    """Per switch, host MAC → egress port along a networkx shortest path to that host.

    Every switch gets an entry for every host, so known unicast traffic never floods.
    """
    table: dict[str, dict[str, int]] = {}
    all_hosts = hosts(graph)
    for switch in switches(graph):
        paths = nx.single_source_shortest_path(graph, switch.name)
        entries = {}
        for host in all_hosts:
            next_hop = paths[host.name][1]
            entries[host.mac] = int(graph.edges[switch.name, next_hop]["ports"][switch.name])
        table[switch.name] = dict(sorted(entries.items()))
    return table


def flood_ports(graph: nx.Graph[str]) -> dict[str, list[int]]:
    """Per switch, the ports a broadcast leaves through: those on one spanning tree.

    Flooding only along a tree keeps broadcasts and multicast (mDNS, SSDP) from looping in
    topologies with redundant switch links.
    """
    tree = nx.minimum_spanning_tree(graph)
    return {
        switch.name: sorted(
            int(graph.edges[switch.name, other]["ports"][switch.name])
            for other in tree.neighbors(switch.name)
        )
        for switch in switches(graph)
    }


def validate(graph: nx.Graph[str], source: str, profiles: Collection[str] | None = None) -> None:
    """Check a topology before anything starts; raise `InputError` naming `source` and the node.

    Checks node attributes, unique MACs, IPs, switch ports, gRPC/Thrift ports and device ids,
    that every host has exactly one link and it goes to a switch, and that the graph is
    connected. With `profiles`, every device host must name one of them.
    """
    if graph.number_of_nodes() == 0:
        raise InputError(f"{source}: the topology has no nodes")
    macs: dict[str, str] = {}
    ips: dict[str, str] = {}
    for name, data in _nodes(graph):
        kind = data.get("kind")
        if kind == "host":
            _validate_host(graph, source, name, data, profiles)
            for value, seen, what in ((data["mac"], macs, "MAC"), (data["ip"], ips, "IP")):
                if value in seen:
                    raise InputError(
                        f"{source}: host {name!r} has the same {what} {value} "
                        f"as host {seen[value]!r}"
                    )
                seen[value] = name
        elif kind == "switch":
            _validate_switch(source, name, data)
        else:
            raise InputError(
                f"{source}: node {name!r} has no kind 'host' or 'switch' "
                "(an unknown node in a link?)"
            )
    for attribute in ("grpc_port", "device_id", "thrift_port"):
        seen_switch: dict[int, str] = {}
        for switch in switches(graph):
            value = getattr(switch, attribute)
            if value in seen_switch:
                raise InputError(
                    f"{source}: switch {switch.name!r} has the same {attribute} {value} "
                    f"as switch {seen_switch[value]!r}"
                )
            seen_switch[value] = switch.name
    _validate_links(graph, source)
    if not nx.is_connected(graph):
        parts = sorted(sorted(part) for part in nx.connected_components(graph))
        raise InputError(f"{source}: the topology is not connected; separate parts: {parts}")


def _validate_host(
    graph: nx.Graph[str],
    source: str,
    name: str,
    data: Mapping[str, Any],
    profiles: Collection[str] | None,
) -> None:
    role = data.get("role")
    if role not in ROLES:
        raise InputError(f"{source}: host {name!r} has role {role!r}, expected one of {ROLES}")
    mac = data.get("mac")
    if not isinstance(mac, str) or not _MAC.match(mac):
        raise InputError(
            f"{source}: host {name!r} has MAC {mac!r}, expected lower-case aa:bb:cc:dd:ee:ff"
        )
    try:
        ipaddress.IPv4Address(data.get("ip"))
    except ValueError as exc:
        raise InputError(f"{source}: host {name!r} has a bad IPv4 address: {exc}") from exc
    prefixlen = data.get("prefixlen", 24)
    if not isinstance(prefixlen, int) or not 1 <= prefixlen <= 32:
        raise InputError(f"{source}: host {name!r} has prefix length {prefixlen!r}, expected 1-32")
    if len(interface_name(name, 0)) > _MAX_IFNAME:
        raise InputError(f"{source}: host name {name!r} is too long for a Linux interface name")
    if role == DEVICE:
        profile = data.get("profile")
        if not profile:
            raise InputError(f"{source}: device host {name!r} has no profile")
        if profiles is not None and profile not in profiles:
            raise InputError(
                f"{source}: device host {name!r} has profile {profile!r}, which is not a known "
                f"profile (known: {', '.join(sorted(profiles))})"
            )
    elif not isinstance(data.get("services", []), list | tuple):
        raise InputError(f"{source}: service host {name!r} has 'services' that is not a list")
    degree = graph.degree[name]
    if degree != 1:
        raise InputError(f"{source}: host {name!r} has {degree} links, expected exactly one")
    neighbour = next(iter(graph.neighbors(name)))
    if graph.nodes[neighbour].get("kind") != "switch":
        raise InputError(f"{source}: host {name!r} links to {neighbour!r}, which is not a switch")


def _validate_switch(source: str, name: str, data: Mapping[str, Any]) -> None:
    for attribute, low, high in (
        ("grpc_port", 1, 65535),
        ("thrift_port", 1, 65535),
        ("device_id", 0, 2**64 - 1),
    ):
        value = data.get(attribute)
        if not isinstance(value, int) or isinstance(value, bool) or not low <= value <= high:
            raise InputError(
                f"{source}: switch {name!r} has {attribute} {value!r}, expected an integer "
                f"{low}..{high}"
            )


def _validate_links(graph: nx.Graph[str], source: str) -> None:
    used: dict[tuple[str, int], str] = {}
    for a, b, data in sorted(graph.edges(data=True), key=lambda edge: sorted(edge[:2])):
        ports = data.get("ports")
        if not isinstance(ports, Mapping) or set(ports) != {a, b}:
            raise InputError(f"{source}: link {a}-{b} does not give a port for both ends")
        for node in sorted((a, b)):
            port = ports[node]
            kind = graph.nodes[node]["kind"]
            if not isinstance(port, int) or isinstance(port, bool):
                raise InputError(f"{source}: link {a}-{b} gives {node!r} port {port!r}")
            if kind == "switch" and not 1 <= port <= 510:
                raise InputError(
                    f"{source}: switch {node!r} port {port} is out of range 1..510 (link {a}-{b})"
                )
            if kind == "switch" and len(interface_name(node, port)) > _MAX_IFNAME:
                raise InputError(
                    f"{source}: switch name {node!r} is too long for a Linux interface name"
                )
            if kind == "host" and port != 0:
                raise InputError(f"{source}: host {node!r} must use port 0, got {port}")
            if (node, port) in used:
                raise InputError(
                    f"{source}: {node!r} port {port} is used by two links ({used[node, port]} "
                    f"and {a}-{b})"
                )
            used[node, port] = f"{a}-{b}"


def save(graph: nx.Graph[str], path: Path) -> None:
    """Write `graph` as node-link JSON, atomically (temp file, then rename)."""
    data = nx.node_link_data(graph, edges="links")
    write_json_atomic(path, data)


def load(path: Path, profiles: Collection[str] | None = None) -> nx.Graph[str]:
    """Read and validate a topology: node-link JSON, or the p4lang tutorials' `topology.json`."""
    try:
        text = path.read_text()
    except (OSError, UnicodeDecodeError) as exc:
        raise InputError(f"{path}: cannot read the topology: {exc}") from exc
    data = parse_json(text, str(path))
    if not isinstance(data, dict):
        raise InputError(f"{path}: expected a JSON object at the top level")
    source = str(path)
    if "nodes" in data:
        graph = _from_node_link(data, source)
    elif "hosts" in data and "links" in data:
        graph = from_tutorial(data, source)
    else:
        raise InputError(
            f"{path}: neither node-link JSON ('nodes', 'links') nor a tutorial topology "
            "('hosts', 'switches', 'links')"
        )
    validate(graph, source, profiles)
    return graph


def _from_node_link(data: dict[str, Any], source: str) -> nx.Graph[str]:
    nodes = data.get("nodes")
    edges = data.get("links")
    if not isinstance(nodes, list) or not isinstance(edges, list):
        raise InputError(f"{source}: 'nodes' and 'links' must be lists")
    known = set()
    for node in nodes:
        if not isinstance(node, dict) or "id" not in node:
            raise InputError(f"{source}: a node without an 'id': {node!r}")
        known.add(node["id"])
    for edge in edges:
        if not isinstance(edge, dict) or "source" not in edge or "target" not in edge:
            raise InputError(f"{source}: a link without 'source' and 'target': {edge!r}")
        for end in (edge["source"], edge["target"]):
            if end not in known:
                raise InputError(f"{source}: a link names unknown node {end!r}")
    try:
        graph = nx.node_link_graph(data, directed=False, multigraph=False, edges="links")
    except (KeyError, TypeError, nx.NetworkXError) as exc:
        raise InputError(f"{source}: malformed node-link JSON: {exc}") from exc
    return graph


def from_tutorial(data: Mapping[str, Any], source: str) -> nx.Graph[str]:
    """Build a graph from the p4lang tutorials' `topology.json` shape.

    Hosts: `{name: {ip: "10.0.1.1/24", mac, commands}}` (our extra keys `role`, `profile`,
    `services` are honoured; `commands` are ignored). Switches: `{name: {...}}` with optional
    `grpc_port`, `device_id`, `thrift_port`, else numbered in name order. Links: `[a, b, ...]`
    where a switch end is `s1-p3` (port 3); extra elements (latency, bandwidth) are ignored.
    """
    raw_hosts = data.get("hosts", {})
    raw_switches = data.get("switches", {})
    raw_links = data.get("links", [])
    if not isinstance(raw_hosts, dict) or not isinstance(raw_switches, dict):
        raise InputError(f"{source}: 'hosts' and 'switches' must be objects keyed by name")
    if not isinstance(raw_links, list):
        raise InputError(f"{source}: 'links' must be a list of [a, b] pairs")
    graph: nx.Graph[str] = nx.Graph(name=Path(source).stem)
    for index, (name, spec) in enumerate(sorted(raw_switches.items())):
        spec = spec if isinstance(spec, dict) else {}
        graph.add_node(
            name,
            kind="switch",
            grpc_port=spec.get("grpc_port", FIRST_GRPC_PORT + index),
            device_id=spec.get("device_id", index + 1),
            thrift_port=spec.get("thrift_port", FIRST_THRIFT_PORT + index),
        )
    for name, spec in sorted(raw_hosts.items()):
        if not isinstance(spec, dict):
            raise InputError(f"{source}: host {name!r} must be an object")
        ip_text = str(spec.get("ip", ""))
        try:
            interface = ipaddress.IPv4Interface(ip_text)
        except ValueError as exc:
            raise InputError(f"{source}: host {name!r} has a bad IPv4 address: {exc}") from exc
        attributes: dict[str, Any] = {
            "kind": "host",
            "role": spec.get("role", SERVICE if "services" in spec else DEVICE),
            "mac": str(spec.get("mac", "")).lower(),
            "ip": str(interface.ip),
            "prefixlen": interface.network.prefixlen if "/" in ip_text else 24,
        }
        if "profile" in spec:
            attributes["profile"] = spec["profile"]
        if "services" in spec:
            attributes["services"] = list(spec["services"])
        graph.add_node(name, **attributes)
    for entry in raw_links:
        if not isinstance(entry, list) or len(entry) < 2:
            raise InputError(f"{source}: a link must be a list [a, b, ...], got {entry!r}")
        (a, port_a), (b, port_b) = (_tutorial_end(graph, source, str(end)) for end in entry[:2])
        if graph.has_edge(a, b):
            raise InputError(f"{source}: two links between {a!r} and {b!r}")
        graph.add_edge(a, b, ports={a: port_a, b: port_b})
    return graph


def _tutorial_end(graph: nx.Graph[str], source: str, end: str) -> tuple[str, int]:
    if end in graph.nodes:
        if graph.nodes[end]["kind"] == "switch":
            raise InputError(
                f"{source}: link end {end!r} is a switch without a port (use {end}-pN)"
            )
        return end, 0
    match = _SWITCH_PORT.match(end)
    if match and match["node"] in graph.nodes and graph.nodes[match["node"]]["kind"] == "switch":
        return match["node"], int(match["port"])
    raise InputError(f"{source}: a link names unknown node {end!r}")


def interfaces(graph: nx.Graph[str]) -> list[str]:
    """Every interface name Mininet creates for this topology (both ends of every link)."""
    return sorted(
        interface_name(node, port)
        for link in links(graph)
        for node, port in ((link.node1, link.port1), (link.node2, link.port2))
    )


def service_hosts_by_service(graph: nx.Graph[str]) -> dict[str, str]:
    """Service name → the service host that answers it (first host in name order wins)."""
    answers: dict[str, str] = {}
    for host in hosts(graph, SERVICE):
        for service in host.services:
            answers.setdefault(service, host.name)
    return answers
