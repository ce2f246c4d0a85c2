"""Device registry: ids, persistence, capacity, policy, static files, safe eviction."""

from __future__ import annotations

from pathlib import Path

import pytest

from controller.base.errors import InputError
from controller.control.registry import (
    RegisterPolicy,
    Registry,
    RegistryFull,
    StaticDevice,
    load_devices_file,
)
from controller.store.storage import Storage

pytest_plugins = ["tests.support.storage"]


def test_ids_start_at_one_and_persist(store: Storage, tmp_path: Path) -> None:
    registry = Registry(store, max_devices=8)
    first = registry.register("02:00:00:00:00:0A", "camera", now=10.0)
    second = registry.register("02-00-00-00-00-0b", source="digest", switch="s1", port=2, now=11.0)
    assert (first.mac, first.device_id, first.label) == ("02:00:00:00:00:0a", 1, "camera")
    assert (second.device_id, second.label, second.switch, second.port) == (2, "unknown", "s1", 2)
    assert registry.register("02:00:00:00:00:0a").device_id == 1, "registering again keeps the id"
    again = Registry(store, max_devices=8)
    assert [(r.mac, r.device_id) for r in again.active()] == [
        ("02:00:00:00:00:0a", 1),
        ("02:00:00:00:00:0b", 2),
    ]
    macs = again.macs_by_id()
    assert macs.tolist() == ["", "02:00:00:00:00:0a", "02:00:00:00:00:0b", "", "", "", "", ""]


def test_capacity_limit(store: Storage) -> None:
    registry = Registry(store, max_devices=1024, capacity=2)
    registry.register("02:00:00:00:00:01")
    registry.register("02:00:00:00:00:02")
    with pytest.raises(RegistryFull, match=r"2 of 2 device ids in use; 02:00:00:00:00:03"):
        registry.register("02:00:00:00:00:03")
    assert len(registry) == 2
    full = Registry(store, max_devices=3)
    with pytest.raises(RegistryFull):
        full.register("02:00:00:00:00:04")


def test_eviction_frees_the_id_only_after_the_next_poll(store: Storage) -> None:
    registry = Registry(store, max_devices=8, capacity=3)
    registry.register("02:00:00:00:00:01", source="digest", now=0.0)
    registry.register("02:00:00:00:00:02", source="static", now=0.0)
    registry.register("02:00:00:00:00:03", source="digest", now=90.0)
    assert [r.mac for r in registry.idle(now=100.0, idle_seconds=50)] == ["02:00:00:00:00:01"]
    registry.begin_eviction(["02:00:00:00:00:01"], cycle=5)
    assert [r.device_id for r in registry.active()] == [2, 3]
    assert registry.macs_by_id()[1] == "02:00:00:00:00:01", "still mapped for the last deltas"
    with pytest.raises(RegistryFull):
        registry.register("02:00:00:00:00:04")
    assert registry.release_evicted(polled_cycle=5) == [], "no poll after the removal yet"
    assert registry.release_evicted(polled_cycle=6) == ["02:00:00:00:00:01"]
    assert registry.macs_by_id()[1] == ""
    newcomer = registry.register("02:00:00:00:00:04")
    assert newcomer.device_id == 1
    evicted = registry.get("02:00:00:00:00:01")
    assert evicted is not None and evicted.device_id is None
    with pytest.raises(RegistryFull):
        registry.register("02:00:00:00:00:01", now=200.0)
    back = Registry(store, max_devices=8).register("02:00:00:00:00:01", now=200.0)
    assert (back.device_id, back.first_seen, back.last_seen) == (4, 0.0, 200.0)


def test_a_device_back_during_eviction_keeps_its_id(store: Storage) -> None:
    registry = Registry(store, max_devices=8)
    registry.register("02:00:00:00:00:01", source="digest", now=0.0)
    registry.begin_eviction(["02:00:00:00:00:01"], cycle=1)
    assert not registry.is_active("02:00:00:00:00:01")
    assert registry.register("02:00:00:00:00:01", source="digest").device_id == 1
    assert registry.is_active("02:00:00:00:00:01")
    assert registry.release_evicted(polled_cycle=9) == []
    assert registry.macs_by_id()[1] == "02:00:00:00:00:01"


def test_policy(tmp_path: Path) -> None:
    allow = tmp_path / "allow.txt"
    allow.write_text("# cameras\n02:00:00:00:00:0A\n\n02:00:00:00:00:0b, plug\n")
    policy = RegisterPolicy.parse("allowlist", allow)
    assert policy.allows("02:00:00:00:00:0a") and policy.allows("02:00:00:00:00:0b")
    assert not policy.allows("02:00:00:00:00:0c")
    assert RegisterPolicy.parse("all").allows("02:00:00:00:00:0c")
    assert not RegisterPolicy.parse("none").allows("02:00:00:00:00:0c")
    allow.write_text("02:00:00:00:00:0a\nnot-a-mac\n")
    with pytest.raises(InputError, match=r"allow.txt:2: 'not-a-mac' is not a MAC"):
        RegisterPolicy.parse("allowlist", allow)
    with pytest.raises(InputError, match="needs an allowlist file"):
        RegisterPolicy.parse("allowlist")
    with pytest.raises(InputError, match="choose all, none or allowlist"):
        RegisterPolicy.parse("some")


def test_devices_file(tmp_path: Path) -> None:
    path = tmp_path / "devices.csv"
    path.write_text(
        "mac,label,port,switch\n02:00:00:00:00:0A,camera,1\n02:00:00:00:00:0b,plug,,s2\n"
    )
    assert load_devices_file(path) == [
        StaticDevice("02:00:00:00:00:0a", "camera", 1, None),
        StaticDevice("02:00:00:00:00:0b", "plug", None, "s2"),
    ]
    path.write_text("02:00:00:00:00:0a,camera\n02:00:00:00:00:0A,plug\n")
    with pytest.raises(InputError, match=r"devices.csv:2: 02:00:00:00:00:0a is listed twice"):
        load_devices_file(path)
    path.write_text("02:00:00:00:00:0a,camera,port9\n")
    with pytest.raises(InputError, match=r"devices.csv:1: port 'port9' is not a number"):
        load_devices_file(path)
    with pytest.raises(InputError, match="cannot read devices file"):
        load_devices_file(tmp_path / "missing.csv")
    path.write_text("mac,label\n02:00:00:00:00:0a," + "x" * 200_000 + "\n")
    with pytest.raises(InputError) as refused:
        load_devices_file(path)
    assert str(refused.value) == (
        f"{path}: line 2: not CSV: field larger than field limit (131072)"
    )
