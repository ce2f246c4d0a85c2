from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from controller.base.errors import InputError
from controller.engine.catalogue import Catalogue
from controller.ingest.ipfix_csv import read_ipfix_csv
from controller.ingest.synth import (
    activity,
    flows,
    load_profiles,
    make_fleet,
    schedule,
    uses,
    write_flows_csv,
)
from tests.support.engine import same_activity


def test_builtin_profiles_cover_ten_device_kinds() -> None:
    profiles = load_profiles()
    assert set(profiles) == {
        "camera",
        "plug",
        "hub",
        "speaker",
        "printer",
        "bulb",
        "thermostat",
        "doorbell",
        "health",
        "tv",
    }
    hub = profiles["hub"]
    served = {u.service for u in hub.services if u.role == "server"}
    assert {"tcp/80", "tcp/443"} <= served


def test_generation_is_deterministic_per_seed() -> None:
    fleet = make_fleet(load_profiles(), 12)
    one = flows(fleet, 48, seed=5)
    two = flows(fleet, 48, seed=5)
    other = flows(fleet, 48, seed=6)
    for name in ("start", "src_mac", "proto", "sport", "dport", "packets", "bytes"):
        assert np.array_equal(getattr(one, name), getattr(two, name))
    assert not np.array_equal(one.packets, other.packets) or len(one) != len(other)
    assert fleet[0].mac == "02:00:00:00:00:01" and fleet[11].mac == "02:00:00:00:00:0c"


def test_flows_conserve_the_uses_packets() -> None:
    fleet = make_fleet(load_profiles(), 10)
    used = uses(fleet, 72, seed=3)
    batch = flows(fleet, 72, seed=3)
    assert int(batch.packets.sum()) == int(used.packets.sum())
    assert int(batch.packets.min()) >= 1
    units = np.floor(batch.start / 3600).astype(np.int64)
    assert set(units.tolist()) <= set(used.unit.tolist())
    assert np.all(np.diff(batch.start) >= 0)


def test_prevalence_period_and_schedule() -> None:
    plug = load_profiles()["plug"]
    plan = schedule(plug, 2400, seed=9)
    https_units = {s.unit for s in plan if s.service == "tcp/443"}
    assert 0.9 < len(https_units) / 2400 < 0.99  # prevalence 0.95, mild diurnal factor
    ntp_units = sorted(s.unit for s in plan if s.service == "udp/123")
    assert len(ntp_units) == 400 and set(np.diff(ntp_units).tolist()) == {6}  # period 6
    served = [s for s in plan if s.service == "tcp/9999"]
    assert served and all(s.role == "server" and s.port == 9999 and s.proto == 6 for s in served)
    assert plan == schedule(plug, 2400, seed=9)


def test_activity_equals_ingesting_the_written_flows(tmp_path: Path) -> None:
    fleet = make_fleet(load_profiles(), 10)
    catalogue = Catalogue.default()
    direct = activity(fleet, 48, seed=2, catalogue=catalogue)
    path = tmp_path / "flows.csv"
    write_flows_csv(path, flows(fleet, 48, seed=2))
    assert path.read_text().splitlines()[0].startswith("flowStartMilliseconds,sourceMacAddress")
    devices = np.array(sorted(int(d.mac.replace(":", ""), 16) for d in fleet), dtype=np.uint64)
    for use_arrow in (True, False):
        ingested, stats = read_ipfix_csv(path, catalogue, 3600, devices, use_arrow=use_arrow)
        assert same_activity(ingested, direct)
        assert stats.skipped == 0
    assert set(direct.used_devices()) == {d.mac for d in fleet}
    hub_macs = [d.mac for d in fleet if d.profile.name == "hub"]
    hub_services = set(direct.select(devices=hub_macs).used_services())
    assert {"tcp/80", "tcp/443", "udp/1900", "udp/53", "udp/5353"} <= hub_services


def test_profile_file_errors(tmp_path: Path) -> None:
    path = tmp_path / "p.json"
    path.write_text(
        json.dumps({"profiles": [{"name": "x", "services": [{"service": "tcp/99999"}]}]})
    )
    with pytest.raises(InputError, match=r"p.json: profile 1 \(x\) service 1: not a service name"):
        load_profiles(path)
    path.write_text(
        json.dumps(
            {"profiles": [{"name": "x", "services": [{"service": "tcp/1", "prevalence": 2}]}]}
        )
    )
    with pytest.raises(InputError, match=r"expected a number in 0.0..1.0, got 2"):
        load_profiles(path)
    path.write_text(
        json.dumps(
            {"profiles": [{"name": "x", "services": [{"service": "tcp/1", "role": "peer"}]}]}
        )
    )
    with pytest.raises(InputError, match="role must be"):
        load_profiles(path)
    with pytest.raises(InputError, match="unknown profile"):
        make_fleet(load_profiles(), 3, kinds=["toaster"])
    path.write_text(json.dumps({"profiles": []}))
    with pytest.raises(InputError, match=r"p.json: no profiles"):
        load_profiles(path)
    with pytest.raises(InputError, match=r"the random seed must be 0 or more, got -1"):
        uses(make_fleet(load_profiles(), 2), 24, seed=-1)


def test_range_services_keep_one_session_port_per_device() -> None:
    profiles = load_profiles()
    fleet = make_fleet(profiles, 4, kinds=["camera", "doorbell"])
    batch = flows(fleet, 72, seed=8)
    session = (batch.proto == 17) & (batch.dport >= 49152)
    ports_by_device = {
        mac: set(batch.dport[session & (batch.src_mac == mac)].tolist())
        for mac in set(batch.src_mac[session].tolist())
    }
    assert len(ports_by_device) == 4
    assert all(len(ports) == 1 for ports in ports_by_device.values())
    assert len({p for ports in ports_by_device.values() for p in ports}) == 4
    # The client side of every flow is a fresh ephemeral port.
    assert len(set(batch.sport[session].tolist())) > 0.9 * int(session.sum())


@pytest.mark.parametrize("key", ["services", "noise"])
def test_a_profile_whose_services_are_not_a_list_is_refused(tmp_path: Path, key: str) -> None:
    path = tmp_path / "profiles.json"
    services = [{"service": "tcp/443", "prevalence": 1.0, "packets": 10}]
    profile = {"name": "cam", "services": services, key: 5}
    path.write_text(json.dumps({"profiles": [profile]}))
    with pytest.raises(InputError) as refused:
        load_profiles(path)
    assert str(refused.value) == (
        f'{path}: profile 1 (cam): "{key}" must be a list of services, got 5'
    )
