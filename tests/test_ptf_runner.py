"""The PTF runner's pieces: result parsing, command lines, the namespace it wires up and tears
down, the processes it stops, and its exit statuses when it cannot run."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from ptf_tests import runner

ROOT = Path(__file__).resolve().parent.parent

ALL_OK = """Using packet manipulation module: ptf.packet_scapy
forwarding.KnownUnicast ... ok
forwarding.TapMode ... ok
services.VlanTagged ... ok

----------------------------------------------------------------------
Ran 3 tests in 12.345s

OK
"""

SOME_BAD = """forwarding.KnownUnicast ... ok
forwarding.TapMode ... FAIL
services.VlanTagged ... ERROR
services.Ipv6Services ... skipped 'not on this target'
services.LastCounterCell ... ok

======================================================================
FAIL: forwarding.TapMode
----------------------------------------------------------------------
AssertionError: {'device 1 service 5': (2, 108)} != {}

----------------------------------------------------------------------
Ran 5 tests in 20.000s

FAILED (failures=1, errors=1, skipped=1)
"""


def test_parse_all_passed() -> None:
    results = runner.parse_results(ALL_OK)
    assert (results.ran, results.passed, results.failed) == (3, 3, 0)
    assert results.outcomes == (
        ("forwarding.KnownUnicast", "ok"),
        ("forwarding.TapMode", "ok"),
        ("services.VlanTagged", "ok"),
    )
    assert results.summary() == "3 passed, 0 failed"


def test_parse_failures_errors_and_skips() -> None:
    results = runner.parse_results(SOME_BAD)
    assert (results.ran, results.failures, results.errors, results.skipped) == (5, 1, 1, 1)
    assert results.summary() == "2 passed, 2 failed, 1 skipped"
    assert dict(results.outcomes)["services.Ipv6Services"] == "skipped"
    assert dict(results.outcomes)["services.VlanTagged"] == "ERROR"


def test_a_run_that_never_finished_is_a_failure() -> None:
    crashed = "forwarding.KnownUnicast ... ok\nTraceback (most recent call last):\n  ...\n"
    results = runner.parse_results(crashed)
    assert results.summary() == "1 passed, 1 failed"
    assert runner.parse_results("").summary() == "0 passed, 1 failed"


def test_test_params_use_the_conventional_names() -> None:
    params = runner.test_params("127.0.0.1:9559", Path("/p/x.txtpb"), Path("/b/c.json"), 0)
    assert params == "grpcaddr='127.0.0.1:9559';p4info='/p/x.txtpb';config='/b/c.json';device_id=0"


def test_ptf_ports_are_the_odd_veths() -> None:
    command = runner.ptf_command(Path("/v/ptf"), 3, "grpcaddr='a'", Path("/l/ptf.log"), ["x.Y"])
    assert command == [
        "/v/ptf",
        "--test-dir",
        str(ROOT / "ptf_tests"),
        "-i",
        "0@veth1",
        "-i",
        "1@veth3",
        "-i",
        "2@veth5",
        "--log-file",
        "/l/ptf.log",
        "--test-params=grpcaddr='a'",
        "x.Y",
    ]


def test_switch_ports_are_the_even_veths() -> None:
    log = Path("/l/switch.log")
    veths = ["-i", "0@veth0", "-i", "1@veth2"]
    assert runner.switch_command(None, 2, "127.0.0.1:9559", 0, log) == [
        sys.executable,
        "-m",
        "refswitch",
        "--grpc-addr",
        "127.0.0.1:9559",
        "--device-id",
        "0",
        "--log-file",
        "/l/switch.log",
        *veths,
    ]
    assert runner.switch_command(Path("/b/ssg"), 2, "127.0.0.1:9559", 0, log) == [
        "/b/ssg",
        "--no-p4",
        "--device-id",
        "0",
        *veths,
        "--log-file",
        "/l/switch.log",
        "--log-flush",
        "--thrift-port",
        "9090",
        "--",
        "--grpc-server-addr",
        "127.0.0.1:9559",
    ]


def test_placeholder_device_config_is_written_under_the_build_dir(tmp_path: Path) -> None:
    path = runner.placeholder_device_config(tmp_path / "build" / "ptf")
    assert path.parent == tmp_path / "build" / "ptf"
    assert path.read_text().startswith("{")


def test_not_root_cannot_run(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(os, "geteuid", lambda: 1000)
    assert runner.main(["--target", "refswitch"]) == runner.EXIT_CANNOT_RUN
    assert "must run as root" in capsys.readouterr().err


def test_missing_bmv2_json_without_p4c_is_target_missing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(runner.RunnerError, match="p4c not found") as raised:
        runner.bmv2_json(tmp_path / "fingerprint.json", ROOT / "p4src" / "fingerprint.p4info.txtpb")
    assert raised.value.status == runner.EXIT_TARGET_MISSING


@pytest.mark.root
def test_missing_simple_switch_grpc_is_target_missing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))
    ptf = tmp_path / "ptf"
    ptf.write_text("")
    status = runner.main(["--target", "bmv2", "--ptf", str(ptf), "--logs", str(tmp_path)])
    assert status == runner.EXIT_TARGET_MISSING
    assert "skipped: simple_switch_grpc not found" in capsys.readouterr().err


def _namespaces() -> list[str]:
    listing = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True, check=True)
    return [line.split()[0] for line in listing.stdout.splitlines() if line.strip()]


def _in_ns(name: str, *command: str) -> str:
    return subprocess.run(
        ["ip", "netns", "exec", name, *command], capture_output=True, text=True, check=True
    ).stdout


@pytest.mark.root
def test_namespace_holds_the_veth_pairs_and_is_deleted_after() -> None:
    name = f"svcfp-ptf-test-{os.getpid()}"
    with runner.namespace(name, 2):
        assert name in _namespaces()
        links = _in_ns(name, "ip", "-o", "link", "show")
        for veth, peer in (("veth0", "veth1"), ("veth1", "veth0"), ("veth2", "veth3")):
            assert f" {veth}@{peer}: " in links
            assert "UP" in _in_ns(name, "ip", "-o", "link", "show", veth)
            sysctl = f"net.ipv6.conf.{veth}.disable_ipv6"
            assert _in_ns(name, "sysctl", "-n", sysctl).strip() == "1"
        assert "state UNKNOWN" in _in_ns(name, "ip", "-o", "link", "show", "lo")
    assert name not in _namespaces()


@pytest.mark.root
def test_namespace_is_deleted_when_the_run_fails() -> None:
    name = f"svcfp-ptf-test-{os.getpid()}"
    with pytest.raises(RuntimeError, match="boom"), runner.namespace(name, 1):
        raise RuntimeError("boom")
    assert name not in _namespaces()


def test_started_process_is_stopped_by_pid(tmp_path: Path) -> None:
    command = [sys.executable, "-c", "import time; print('up', flush=True); time.sleep(60)"]
    with runner.started(command, tmp_path / "out") as process:
        deadline = time.monotonic() + 10
        while "up" not in (tmp_path / "out").read_text() and time.monotonic() < deadline:
            time.sleep(0.05)
        assert process.poll() is None
    assert process.returncode == -15
    assert (tmp_path / "out").read_text() == "up\n"


@pytest.mark.root
def test_a_switch_that_dies_is_reported_and_everything_is_removed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    switch = tmp_path / "svcfp"
    switch.write_text("#!/bin/sh\necho 'cannot open veth0' >&2\nexit 3\n")
    switch.chmod(0o755)
    monkeypatch.setattr(runner, "switch_command", lambda *_: [str(switch)])
    ptf = tmp_path / "ptf"
    ptf.write_text("")
    before = set(_namespaces())
    argv = ["--target", "refswitch", "--ptf", str(ptf), "--logs", str(tmp_path / "logs")]
    assert runner.main(argv) == runner.EXIT_FAILED
    err = capsys.readouterr().err
    assert "the switch exited with status 3" in err
    assert "cannot open veth0" in err
    assert set(_namespaces()) == before
    assert "cannot open veth0" in (tmp_path / "logs" / "ptf-refswitch" / "switch.out").read_text()
