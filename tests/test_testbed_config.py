from __future__ import annotations

import argparse
import json
from pathlib import Path

import pytest

from controller.base.errors import InputError
from svcfp.cli import testbed as testbed_cli
from topology import graph as topo
from topology import testbed
from topology.testbed import TestbedConfig, switch_specs, write_devices_file


def config(tmp_path: Path, **changes: object) -> TestbedConfig:
    base = TestbedConfig(
        switch="refswitch",
        grpc_addr="127.0.0.1:9600",
        device_id=0,
        logs=tmp_path,
        p4info=Path("p4src/fingerprint.p4info.txtpb"),
        bmv2_json=None,
        topology=None,
        devices=3,
        units=10,
        time_unit=1.0,
        interval=1.0,
    )
    return TestbedConfig(**{**base.__dict__, **changes})


def test_default_testbed_uses_the_given_switch_address_and_profiles(tmp_path: Path) -> None:
    graph = testbed.testbed_graph(config(tmp_path))
    switch = topo.switches(graph)[0]
    assert (switch.grpc_port, switch.device_id) == (9600, 0)
    assert [(h.name, h.profile) for h in topo.hosts(graph, topo.DEVICE)] == [
        ("d1", "bulb"), ("d2", "camera"), ("d3", "doorbell")
    ]  # fmt: skip
    (spec,) = switch_specs(graph)
    assert (spec.name, spec.grpc_addr, spec.device_id) == ("s1", "127.0.0.1:9600", 0)
    assert spec.ports == (1, 2, 3, 4, 5, 6)
    assert spec.l2["02:00:00:00:02:03"] == 6


def test_topology_file_with_an_unknown_profile_names_file_and_host(tmp_path: Path) -> None:
    graph = topo.default_topology([("d1", "toaster")])
    path = tmp_path / "mine.json"
    topo.save(graph, path)
    with pytest.raises(InputError, match=r"mine\.json: device host 'd1' has profile 'toaster'"):
        testbed.testbed_graph(config(tmp_path, topology=path))
    # Without traffic to play, any profile name will do.
    assert topo.hosts(testbed.testbed_graph(config(tmp_path, topology=path, units=0)), topo.DEVICE)


def test_devices_file_registers_every_host_at_its_switch_port(tmp_path: Path) -> None:
    graph = topo.default_topology([("d1", "camera")])
    path = write_devices_file(graph, tmp_path / "devices.csv")
    # The service hosts (cloud, d1, dns, ntp in name order) are counted, never identified.
    assert path.read_text().splitlines() == [
        "mac,label,port,switch",
        "02:00:00:00:01:03,infrastructure,3,s1",
        "02:00:00:00:02:01,unknown,4,s1",
        "02:00:00:00:01:01,infrastructure,1,s1",
        "02:00:00:00:01:02,infrastructure,2,s1",
    ]


def test_bad_grpc_address_is_an_input_error(tmp_path: Path) -> None:
    with pytest.raises(InputError, match=r"listens on 127\.0\.0\.1:PORT"):
        testbed.testbed_graph(config(tmp_path, grpc_addr="10.1.1.1:9559"))


def test_start_without_root_or_with_bad_numbers_is_refused(tmp_path: Path) -> None:
    args = argparse.Namespace(
        switch="refswitch", grpc_addr="127.0.0.1:9600", device_id=0, logs=tmp_path,
        p4info=Path("x"), bmv2_json=Path("y"), topology=None, devices=-1, units=0,
        time_unit=1.0, interval=1.0, foreground=False,
    )  # fmt: skip
    with pytest.raises(InputError, match="--devices and --units must be ≥ 0"):
        testbed_cli.start(args)
    assert json.dumps(sorted(p.name for p in tmp_path.iterdir())) == "[]"


def test_the_supervisor_is_given_the_same_options_it_was_started_with(tmp_path: Path) -> None:
    parser = argparse.ArgumentParser()
    testbed_cli.register(parser.add_subparsers())
    given = parser.parse_args(
        ["testbed", "start", "--logs", str(tmp_path), "--units", "0", "--time-unit", "0.5",
         "--topology", "mine.json", "--switch", "bmv2", "--grpc-addr", "127.0.0.1:9700"]
    )  # fmt: skip
    forwarded = testbed_cli._forwarded(given)
    assert forwarded[:4] == ["--switch", "bmv2", "--grpc-addr", "127.0.0.1:9700"]
    again = parser.parse_args(["testbed", "start", *forwarded, "--foreground"])
    assert again.foreground and not given.foreground
    assert testbed_cli._config(again) == testbed_cli._config(given)
    assert testbed_cli._config(again).topology == Path("mine.json")
    default = parser.parse_args(["testbed", "start"])
    assert "--topology" not in testbed_cli._forwarded(default)
    assert testbed_cli._config(default).bmv2_json is None
