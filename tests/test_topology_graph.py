from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import networkx as nx
import pytest

from controller.base.errors import InputError
from topology import graph as topo

TUTORIAL = {
    "hosts": {
        "h1": {
            "ip": "10.0.1.1/24",
            "mac": "08:00:00:00:01:11",
            "profile": "camera",
            "commands": ["route add default gw 10.0.1.10 dev eth0"],
        },
        "h2": {"ip": "10.0.2.2/24", "mac": "08:00:00:00:02:22", "profile": "plug"},
        "h3": {"ip": "10.0.3.3/24", "mac": "08:00:00:00:03:33", "services": ["udp/53"]},
    },
    "switches": {"s1": {"runtime_json": "s1-runtime.json"}, "s2": {}, "s3": {}},
    "links": [
        ["h1", "s1-p1"],
        ["h2", "s2-p1"],
        ["h3", "s3-p1"],
        ["s1-p2", "s2-p2", "0ms"],
        ["s2-p3", "s3-p2"],
        ["s1-p3", "s3-p3"],
    ],
}


def write(tmp_path: Path, data: object, name: str = "topology.json") -> Path:
    path = tmp_path / name
    path.write_text(json.dumps(data))
    return path


def test_default_topology_has_service_hosts_then_devices_on_consecutive_ports() -> None:
    graph = topo.default_topology([("d1", "camera"), ("d2", "plug")])
    assert [s.name for s in topo.switches(graph)] == ["s1"]
    assert topo.switch_ports(graph, "s1") == {1: "dns", 2: "ntp", 3: "cloud", 4: "d1", 5: "d2"}
    devices = topo.hosts(graph, topo.DEVICE)
    assert [(h.name, h.profile, h.ip, h.mac) for h in devices] == [
        ("d1", "camera", "10.0.0.101", "02:00:00:00:02:01"),
        ("d2", "plug", "10.0.0.102", "02:00:00:00:02:02"),
    ]
    assert topo.service_hosts_by_service(graph) == {
        "udp/53": "dns",
        "udp/123": "ntp",
        "tcp/80": "cloud",
        "tcp/443": "cloud",
        "tcp/1883": "cloud",
        "tcp/8883": "cloud",
    }
    assert topo.interfaces(graph) == sorted(
        ["cloud-eth0", "d1-eth0", "d2-eth0", "dns-eth0", "ntp-eth0"]
        + [f"s1-eth{n}" for n in range(1, 6)]
    )


def test_save_then_load_round_trips(tmp_path: Path) -> None:
    graph = topo.default_topology([("d1", "camera")])
    path = tmp_path / "t.json"
    topo.save(graph, path)
    loaded = topo.load(path, profiles={"camera"})
    assert topo.hosts(loaded) == topo.hosts(graph)
    assert topo.switches(loaded) == topo.switches(graph)
    assert topo.links(loaded) == topo.links(graph)


def test_tutorial_shape_reads_ports_and_numbers_switches(tmp_path: Path) -> None:
    graph = topo.load(write(tmp_path, TUTORIAL))
    assert [(s.name, s.grpc_port, s.device_id, s.thrift_port) for s in topo.switches(graph)] == [
        ("s1", 9559, 1, 9090),
        ("s2", 9560, 2, 9091),
        ("s3", 9561, 3, 9092),
    ]
    h1 = topo.hosts(graph)[0]
    assert (h1.ip, h1.prefixlen, h1.role, h1.profile) == ("10.0.1.1", 24, "device", "camera")
    assert topo.hosts(graph)[2].role == "service"
    assert topo.Link("s1", 2, "s2", 2) in topo.links(graph)


def test_forwarding_follows_shortest_paths_across_switches(tmp_path: Path) -> None:
    graph = topo.load(write(tmp_path, TUTORIAL))
    assert topo.forwarding(graph) == {
        "s1": {"08:00:00:00:01:11": 1, "08:00:00:00:02:22": 2, "08:00:00:00:03:33": 3},
        "s2": {"08:00:00:00:01:11": 2, "08:00:00:00:02:22": 1, "08:00:00:00:03:33": 3},
        "s3": {"08:00:00:00:01:11": 3, "08:00:00:00:02:22": 2, "08:00:00:00:03:33": 1},
    }


def test_flood_ports_form_a_tree_so_broadcasts_cannot_loop(tmp_path: Path) -> None:
    graph = topo.load(write(tmp_path, TUTORIAL))
    flood = topo.flood_ports(graph)
    inter_switch = sum(
        1
        for sw, ports in flood.items()
        for p in ports
        if graph.nodes[topo.switch_ports(graph, sw)[p]]["kind"] == "switch"
    )
    # 3 switches in a triangle: a spanning tree keeps 2 of the 3 links, each seen from both ends.
    assert inter_switch == 4
    for sw, ports in flood.items():
        host_ports = [
            p for p, n in topo.switch_ports(graph, sw).items() if graph.nodes[n]["kind"] == "host"
        ]
        assert set(host_ports) <= set(ports)


def test_unknown_node_in_node_link_json(tmp_path: Path) -> None:
    graph = topo.default_topology([("d1", "camera")])
    data = nx.node_link_data(graph, edges="links")
    data["links"].append({"source": "d1", "target": "s9", "ports": {"d1": 0, "s9": 1}})
    with pytest.raises(InputError, match=r"t\.json: a link names unknown node 's9'"):
        topo.load(write(tmp_path, data, "t.json"))


@pytest.mark.parametrize(
    ("change", "message"),
    [
        pytest.param(
            lambda data: data["links"].append(["h9", "s1-p7"]),
            r"topology\.json: a link names unknown node 'h9'",
            id="unknown-node-in-a-link",
        ),
        pytest.param(
            lambda data: data["hosts"]["h2"].update(mac="08:00:00:00:01:11"),
            r"host 'h2' has the same MAC 08:00:00:00:01:11 as host 'h1'",
            id="duplicate-mac",
        ),
        pytest.param(
            lambda data: data["hosts"]["h3"].update(ip="10.0.1.1/24"),
            r"host 'h3' has the same IP 10.0.1.1 as host 'h1'",
            id="duplicate-ip",
        ),
        pytest.param(
            lambda data: data["hosts"]["h2"].pop("profile"),
            r"topology\.json: device host 'h2' has no profile",
            id="device-without-profile",
        ),
        pytest.param(
            lambda data: data.update(
                links=[["h2", "s1-p1"] if link[0] == "h2" else link for link in data["links"]]
            ),
            r"'s1' port 1 is used by two links",
            id="switch-port-used-twice",
        ),
        pytest.param(
            lambda data: data.update(
                links=[link for link in data["links"] if link[0].startswith("h")]
            ),
            "not connected",
            id="disconnected",
        ),
        pytest.param(
            lambda data: data["hosts"]["h1"].update(mac="08:00:00:00:01"),
            r"host 'h1' has MAC",
            id="bad-mac",
        ),
    ],
)
def test_a_bad_tutorial_topology_is_an_input_error_naming_what_is_wrong(
    tmp_path: Path, change: Callable[[dict[str, Any]], object], message: str
) -> None:
    data = json.loads(json.dumps(TUTORIAL))
    change(data)
    with pytest.raises(InputError, match=message):
        topo.load(write(tmp_path, data))


def test_profile_not_among_known_profiles_is_rejected(tmp_path: Path) -> None:
    with pytest.raises(InputError, match=r"device host 'h2' has profile 'plug', which is not"):
        topo.load(write(tmp_path, TUTORIAL), profiles={"camera"})


def test_not_json_is_an_input_error(tmp_path: Path) -> None:
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(InputError, match=r"bad\.json: line 1: not JSON"):
        topo.load(bad)
