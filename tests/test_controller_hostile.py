"""The controller under hostile traffic and careless input: spoofed source MACs, a full device
table, idle devices, bad flags, signals; and the operator's view of the registry."""

from __future__ import annotations

import asyncio
import logging
import os
import random
import re
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from controller.base.macs import is_unicast
from controller.base.p4info import decode_mac
from controller.control.config import RegisterRate, RunConfig
from controller.control.controller import Controller
from controller.control.registry import RegisterPolicy
from controller.engine.activity import ActivityRecord
from controller.p4rt import entries
from controller.p4rt.forwarding import Forwarding
from controller.store.storage import Baseline, DeviceRow, open_store
from svcfp.cli import main
from tests.support.database import kept
from tests.support.paths import P4INFO, ROOT
from tests.support.switch import (
    CAMERA,
    PLUG,
    SERVER,
    Wire,
    config,
    frame,
    mac_params,
    polls,
    read_tables,
    running,
    until,
)

pytest_plugins = ["tests.support.storage"]

GROUP_SOURCES = ("ff:ff:ff:ff:ff:ff", "01:00:5e:00:00:fb", "33:33:00:00:00:01", "03:00:00:00:00:01")


def spoofed(count: int, seed: int) -> list[str]:
    """`count` random source MACs, about half of them group addresses."""
    rng = random.Random(seed)
    return [":".join(f"{rng.randrange(256):02x}" for _ in range(6)) for _ in range(count)]


def warnings(caplog: pytest.LogCaptureFixture, event: str) -> list[str]:
    return [
        r.getMessage()
        for r in caplog.records
        if r.levelno == logging.WARNING and f"event={event}" in r.getMessage()
    ]


@pytest.mark.slow
def test_spoofed_sources_never_register_group_addresses_and_are_rate_limited(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    wire = Wire()
    macs = [*GROUP_SOURCES, *spoofed(400, seed=1)]

    async def scenario() -> Controller:
        async with running(Controller(config(tmp_path, wire.address))) as controller:
            for mac in macs:
                wire.send(frame(mac, SERVER, 17, 5000, 53, 64), port=2)
            # A real device on another port still gets in.
            wire.send(frame(PLUG, SERVER, 17, 5000, 53, 64), port=3)
            await until(lambda: controller.registry.get(PLUG) is not None)
            await polls(controller)
        return controller

    try:
        with caplog.at_level(logging.INFO):
            controller = asyncio.run(scenario())
        installed = {decode_mac(mac) for mac in wire.devices}
        learned = controller.workers[0].forwarding.learned
    finally:
        wire.stop()
    rate = RegisterRate()
    from_port_2 = [r for r in controller.registry.active() if r.port == 2]
    assert len(from_port_2) == rate.count
    assert all(is_unicast(r.mac) for r in controller.registry.active())
    assert all(is_unicast(mac) for mac in installed) and PLUG in installed
    assert installed == {r.mac for r in controller.registry.active()}
    assert sorted(m for m, port in learned.items() if port == 2) == sorted(
        r.mac for r in from_port_2
    )
    assert len(warnings(caplog, "group_source_refused")) == 1
    assert len(warnings(caplog, "register_rate_limited")) == 1


@pytest.mark.slow
def test_a_full_device_table_is_one_warning(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    wire = Wire()
    newcomers = [f"02:00:00:00:10:{i:02x}" for i in range(20)]

    async def scenario() -> Controller:
        chosen = config(tmp_path, wire.address, capacity=2, register_rate=RegisterRate(100, 60))
        async with running(Controller(chosen)) as controller:
            for mac in newcomers:
                wire.send(frame(mac, SERVER, 17, 5000, 53, 64), port=2)
            await until(
                lambda: all(m in controller.workers[0].forwarding.learned for m in newcomers)
            )
        return controller

    try:
        with caplog.at_level(logging.INFO):
            controller = asyncio.run(scenario())
    finally:
        wire.stop()
    assert {r.mac for r in controller.registry.active()} == {CAMERA, SERVER}
    assert len(warnings(caplog, "registry_full")) == 1
    assert warnings(caplog, "digest_failed") == []


def test_devices_from_digests_are_evicted_when_idle_by_default(tmp_path: Path) -> None:
    chosen = config(tmp_path, "127.0.0.1:1", time_unit=0.1)
    assert chosen.idle_seconds == pytest.approx(2.4)
    assert config(tmp_path, "127.0.0.1:1").idle_seconds == 24 * 3600.0
    assert config(tmp_path, "127.0.0.1:1", idle_timeout=0.0).idle_seconds is None
    wire = Wire()

    async def scenario() -> Controller:
        async with running(Controller(config(tmp_path, wire.address, time_unit=0.1))) as ctl:
            wire.send(frame(PLUG, SERVER, 17, 5000, 53, 64), port=2)
            await until(lambda: ctl.registry.is_active(PLUG))
            await until(lambda: not ctl.registry.is_active(PLUG), timeout=8.0)
            await polls(ctl)
        return ctl

    try:
        controller = asyncio.run(scenario())
        installed = {decode_mac(mac) for mac in wire.devices}
    finally:
        wire.stop()
    assert PLUG not in installed and CAMERA in installed
    assert controller.registry.is_active(CAMERA), "static devices are never evicted"


def status_of(argv: list[str]) -> int:
    try:
        return main(argv)
    except SystemExit as exc:  # argparse refuses unparseable values itself
        return int(exc.code or 0)


BASE = ["--grpc-addr", "127.0.0.1:1", "--device-id", "0", "--connect-timeout", "0.5"]


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--interval", "nan"], "--interval nan: expected a finite number of seconds"),
        (["--interval", "0"], "--interval 0.0: expected a finite number of seconds ≥ 0.01"),
        (["--time-unit", "inf"], "--time-unit inf: expected a finite number"),
        (["--duration", "-1"], "--duration -1.0: expected a finite number"),
        (["--connect-timeout", "-3"], "--connect-timeout -3.0: expected a finite number"),
        (["--connect-timeout", "1e300"], "--connect-timeout 1e+300: expected at most 3600 seconds"),
        (["--idle-timeout", "nan"], "--idle-timeout nan: expected a finite number"),
        (["--time-unit", "1e308"], "--time-unit 1e+308: expected at most 4.10244e+09 seconds"),
        (["--ports", "5-1"], "'5-1': a range runs low-high"),
        (["--ports", "0-100000"], "'0-100000': switch ports lie in 0..511"),
        (["--cpu-port", "99999"], "--cpu-port 99999: switch ports lie in 0..511"),
        (["--capacity", "100000"], "--capacity 100000: the device table has ids 1..1023"),
        (["--capacity", "0"], "--capacity 0: at least one device"),
        (["--device-id", "-1"], "--device-id -1: P4Runtime device ids lie in 0..2^64-1"),
        (["--device-id", str(2**64)], "P4Runtime device ids lie in 0..2^64-1"),
        (["--election-id", f"0,{2**64}"], f"--election-id 0,{2**64}: two 64-bit halves"),
        (["--register-rate", "0/60"], "--register-rate 0/60: count must be ≥ 1"),
        (["--grpc-addr", "127.0.0.1"], "--grpc-addr '127.0.0.1': expected HOST:PORT"),
        (["--grpc-addr", "127.0.0.1:99999"], "expected HOST:PORT with a port in 1..65535"),
    ],
)
def test_bad_run_flags_are_bad_input_and_store_nothing(
    flags: list[str], message: str, db: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = ["run", "--p4info", str(P4INFO), "--db", str(db), *BASE, *flags]
    assert status_of(argv) == 2
    assert message in capsys.readouterr().err
    assert kept(db)


def test_a_bounded_run_waits_for_a_switch_no_longer_than_it_runs(
    db: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = ["run", "--p4info", str(P4INFO), "--db", str(db), "--grpc-addr", "127.0.0.1:1"]
    argv += ["--device-id", "0", "--connect-timeout", "60", "--duration", "1"]
    assert status_of(argv) == 3
    # The message names the time it waited: the run's duration, not the 60 s connect timeout.
    assert re.search(r"is unreachable after \d+ attempt\(s\) in 1 s: ", capsys.readouterr().err)
    assert kept(db)


def test_an_unreachable_switch_is_exit_3_and_stores_nothing(
    db: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert status_of(["run", "--p4info", str(P4INFO), "--db", str(db), *BASE]) == 3
    assert "is unreachable after" in capsys.readouterr().err
    assert kept(db)


@pytest.mark.slow
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_a_signal_stops_a_run_still_connecting_within_a_second(
    sig: int, tmp_path: Path, free_port: Callable[[], int]
) -> None:
    command = [
        sys.executable, "-m", "svcfp", "run", "--p4info", str(P4INFO),
        "--db", str(tmp_path / "svcfp.db"), "--grpc-addr", f"127.0.0.1:{free_port()}",
        "--device-id", "0", "--connect-timeout", "60",
    ]  # fmt: skip
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    process = subprocess.Popen(
        command, cwd=ROOT, env=env, stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True
    )
    try:
        deadline = time.monotonic() + 20
        # Stopped once the controller is connecting (its database exists by then).
        while not (tmp_path / "svcfp.db").exists():
            assert process.poll() is None and time.monotonic() < deadline
            time.sleep(0.05)
        time.sleep(0.5)
        signalled = time.monotonic()
        process.send_signal(sig)
        status = process.wait(timeout=10)
        took = time.monotonic() - signalled
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    err = process.stderr.read() if process.stderr else ""
    assert status == 0, err
    assert took < 2.0
    assert "event=stopped_before_ready" in err


def test_a_device_id_out_of_range_ends_at_once_with_exit_2(tmp_path: Path) -> None:
    command = [
        sys.executable, "-m", "svcfp", "run", "--p4info", str(P4INFO),
        "--db", str(tmp_path / "svcfp.db"), "--grpc-addr", "127.0.0.1:1", "--device-id", "-1",
        "--duration", "1",
    ]  # fmt: skip
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    done = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=30)
    assert done.returncode == 2
    assert "svcfp run: error: --device-id -1: P4Runtime device ids lie in 0..2^64-1" in done.stderr
    assert not (tmp_path / "svcfp.db").exists()


def test_operators_list_and_purge_devices(
    db_location: str | Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = db_location
    with open_store(path) as store:
        store.put_devices(
            [
                DeviceRow(CAMERA, 1, "camera", "s1", 1, "static", 10.0, 20.0),
                DeviceRow(PLUG, 2, "unknown", "s1", 2, "digest", 10.0, 20.0),
                # What an earlier version let in from spoofed frames.
                DeviceRow("ff:ff:ff:ff:ff:ff", 3, "unknown", "s1", 2, "digest", 10.0, 11.0),
                DeviceRow("01:00:5e:00:00:fb", 4, "unknown", "s1", 2, "digest", 10.0, 11.0),
            ]
        )
        store.record_poll(
            "s1", Baseline.zeros(4), [ActivityRecord("ff:ff:ff:ff:ff:ff", 1, "udp/53", 3, 30)], 1
        )
    assert main(["devices", "list", "--db", str(path)]) == 0
    listed = capsys.readouterr().out
    assert "4 devices, 4 holding a device id" in listed
    assert f"{CAMERA}    1 camera       static  s1        1" in listed
    assert main(["devices", "purge", "--db", str(path), "--group", "--dry-run"]) == 0
    assert "2 devices would be purged" in capsys.readouterr().out
    with open_store(path) as store:
        assert len(store.devices()) == 4
    assert (
        main(["devices", "purge", "--db", str(path), "--group", "--mac", "02:00:00:00:99:99"]) == 0
    )
    out = capsys.readouterr().out
    assert "purged ff:ff:ff:ff:ff:ff (digest)" in out and "not registered: 02:00:00:00:99:99" in out
    with open_store(path) as store:
        assert [r.mac for r in store.devices()] == [CAMERA, PLUG]
        # Their activity stays: purging forgets devices, not what was counted.
        assert store.activity() == [ActivityRecord("ff:ff:ff:ff:ff:ff", 1, "udp/53", 3, 30)]
    assert main(["devices", "purge", "--db", str(path)]) == 2
    assert "say which devices to purge" in capsys.readouterr().err
    assert main(["devices", "list", "--db", str(tmp_path / "none.db")]) == 2
    assert not (tmp_path / "none.db").exists()


def test_run_config_defaults_are_sane(tmp_path: Path) -> None:
    chosen = RunConfig(switches=config(tmp_path, "127.0.0.1:1").switches, p4info=P4INFO)
    assert chosen.policy.mode == "all" and chosen.register_rate == RegisterRate(8, 60.0)
    assert chosen.idle_seconds == 24 * 3600.0


def test_forwarding_never_learns_group_sources_nor_past_its_table() -> None:
    forwarding = Forwarding([0, 1, 2], {SERVER: 0}, capacity=3)
    assert not forwarding.learn("ff:ff:ff:ff:ff:ff", 1)
    assert not forwarding.learn("01:00:5e:00:00:fb", 1)
    assert not forwarding.learn("00:00:00:00:00:00", 1)
    assert forwarding.learn(CAMERA, 1) and forwarding.learn(PLUG, 2)
    assert forwarding.full
    assert not forwarding.learn("02:00:00:00:10:01", 2)
    # A known MAC that moved is still updated when the table is full.
    assert forwarding.learn(PLUG, 1)
    assert forwarding.table() == {SERVER: 0, CAMERA: 1, PLUG: 1}


@pytest.mark.slow
def test_a_full_mac_table_under_policy_none_is_one_warning_and_no_failing_write(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    wire = Wire()
    newcomers = [f"02:00:00:00:20:{i:02x}" for i in range(12)]

    async def scenario() -> Controller:
        chosen = config(tmp_path, wire.address, policy=RegisterPolicy("none"))
        controller = Controller(chosen)
        # Room for the two static hosts and two more.
        controller.workers[0].forwarding.capacity = 4
        async with running(controller):
            for i, mac in enumerate(newcomers):
                wire.send(frame(mac, SERVER, 17, 5000, 53, 64), port=i % 4)
            await until(lambda: len(warnings(caplog, "l2_table_full")) > 0)
            await polls(controller)
        return controller

    try:
        with caplog.at_level(logging.INFO):
            controller = asyncio.run(scenario())
        tables = asyncio.run(read_tables(wire.address))
    finally:
        wire.stop()
    assert len(mac_params(tables[entries.L2_TABLE])) == 4
    assert len(controller.workers[0].forwarding.table()) == 4
    assert len(warnings(caplog, "l2_table_full")) == 1
    assert warnings(caplog, "digest_failed") == []
    assert {r.mac for r in controller.registry.active()} == {CAMERA, SERVER}
