from __future__ import annotations

import argparse
import io
import json
import os
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import dpkt
import pytest

from controller.base.errors import InputError, SvcfpError
from controller.control.live import answering
from controller.engine.identify import UNKNOWN
from controller.ingest import synth
from controller.store.storage import Storage
from svcfp.cli import main as cli_main
from svcfp.cli.demo import main
from topology import graph as topo
from topology.demo import DATABASE, run_demo
from topology.scenario import DemoConfig, build_scenario, choose_types
from topology.state import (
    STATE_FILE,
    TestbedState,
    interface_exists,
    is_ours,
    namespace_exists,
)

ROOT = Path(__file__).resolve().parent.parent


def config(tmp_path: Path, **changes: object) -> DemoConfig:
    base = DemoConfig(
        out=tmp_path / "out",
        logs=tmp_path / "logs",
        units=36,
        p4info=ROOT / "p4src" / "fingerprint.p4info.txtpb",
    )
    return DemoConfig(**{**base.__dict__, **changes})


def test_default_types_are_known_profiles_and_choices_are_checked(tmp_path: Path) -> None:
    names = sorted(synth.load_profiles())
    known, held_out = choose_types(config(tmp_path), names)
    assert (known, held_out) == (["camera", "plug", "speaker", "thermostat"], "hub")
    assert set(known) <= set(names) and held_out in names
    # A default known type chosen as the held-out one leaves the known types.
    assert choose_types(config(tmp_path, held_out="plug"), names) == (
        ["camera", "speaker", "thermostat"], "plug"
    )  # fmt: skip
    with pytest.raises(InputError, match="unknown profile 'toaster'"):
        choose_types(config(tmp_path, held_out="toaster"), names)
    with pytest.raises(InputError, match="'plug' is also among the known types"):
        choose_types(config(tmp_path, known=("camera", "plug"), held_out="plug"), names)


def test_scenario_enrolls_only_known_types_and_schedules_every_host(tmp_path: Path) -> None:
    scenario = build_scenario(config(tmp_path, known=("camera", "plug"), held_out="hub"))
    assert scenario.references.types == ("camera", "plug")
    assert scenario.truth == {"d1": "camera", "d2": "plug", "d3": "hub"}
    assert set(scenario.schedules) == {"d1", "d2", "d3"}
    assert all(len(s.units) == 36 for s in scenario.schedules.values())
    # The hub serves tcp/80 (a peer probes it); the camera never serves anything.
    assert any(service == "tcp/80" for _, service in scenario.schedules["d3"].serve)
    assert scenario.schedules["d1"].serve == ()


def test_bmv2_demo_without_bmv2_is_a_clear_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Where BMv2 is installed, hide it: the demo looks it up on PATH.
    folders = os.environ.get("PATH", "").split(os.pathsep)
    kept = [f for f in folders if not (Path(f) / "simple_switch_grpc").exists()]
    monkeypatch.setenv("PATH", os.pathsep.join(kept))
    assert shutil.which("simple_switch_grpc") is None
    with pytest.raises(SvcfpError, match=r"simple_switch_grpc is not on PATH|needs root"):
        run_demo(config(tmp_path, switch="bmv2"), io.StringIO())
    assert not (tmp_path / "logs" / STATE_FILE).exists()


@pytest.mark.parametrize(
    ("units", "unit_seconds", "devices_per_type", "message"),
    [
        (0, 1.0, 1, r"--units must lie in 1\.\.600 and --time-unit in 0\.2\.\.10"),
        (601, 1.0, 1, r"--units must lie in 1\.\.600"),
        (10, 0.1, 1, r"--time-unit in 0\.2\.\.10"),
        (10, 1.0, 0, r"--devices-per-type must lie in 1\.\.5"),
        (10, 1.0, 6, r"--devices-per-type must lie in 1\.\.5"),
    ],
)
def test_bad_arguments_are_input_errors(
    units: int, unit_seconds: float, devices_per_type: int, message: str
) -> None:
    args = argparse.Namespace(
        units=units, time_unit=unit_seconds, devices_per_type=devices_per_type
    )
    with pytest.raises(InputError, match=message):
        main(args)


@pytest.mark.parametrize("flag", ["--out", "--logs"])
def test_a_folder_that_cannot_be_made_is_refused_naming_its_flag(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], flag: str
) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    folders = {"--out": tmp_path / "demo", "--logs": tmp_path / "logs"}
    folders[flag] = blocker / "sub"
    argv = ["demo", "--no-network", "--units", "2"]
    argv += [arg for name, folder in folders.items() for arg in (name, str(folder))]
    assert cli_main(argv) == 2
    assert capsys.readouterr().err == (
        f"svcfp demo: error: {flag} {blocker / 'sub'}: cannot make the folder: Not a directory\n"
    )


@pytest.mark.slow
def test_no_network_mode_identifies_known_devices_and_flags_the_held_out_type(
    tmp_path: Path, free_port: Callable[[], int]
) -> None:
    chosen = config(tmp_path, no_network=True, grpc_port=free_port())
    shown = io.StringIO()
    summary = run_demo(chosen, shown)
    text = shown.getvalue()
    assert "no Mininet network" in text
    assert summary["mode"] == "pcap replay (refswitch)"
    rows = {row["device"]: row for row in summary["devices"]}
    assert {host: row["true_type"] for host, row in rows.items()} == {
        "d1": "camera", "d2": "plug", "d3": "speaker", "d4": "thermostat", "d5": "hub"
    }  # fmt: skip
    for host in ("d1", "d2", "d3", "d4"):
        assert rows[host]["identified"] == rows[host]["true_type"], rows[host]
        assert rows[host]["exported"]
    assert rows["d5"]["identified"] == "unknown"
    assert rows["d5"]["best_type"] in {"camera", "plug", "speaker", "thermostat"}
    assert summary["correct"] == 5
    assert summary["seconds"] < 300
    # Every decision carries its explanation, and the shares add up to the similarity.
    for decision in summary["decisions"]:
        why = decision["explanation"]
        shares = sum(c["share"] for g in ("matched", "unexpected", "missing") for c in why[g])
        assert shares == pytest.approx(decision["similarity"])
    out = chosen.out
    for name in ("decisions.json", "report.md", "similarity.png", "confusion.png", "activity.csv"):
        assert (out / name).stat().st_size > 0, name
    assert json.loads((out / "decisions.json").read_text()) == summary
    with (out / "demo.pcap").open("rb") as handle:
        frames = sum(1 for _ in dpkt.pcap.Reader(handle))
    assert frames == summary["playback"]["frames"] > 0
    # The switch process was stopped and the run record removed.
    assert not (chosen.logs / STATE_FILE).exists()
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", chosen.grpc_port))


def run_recorded(command: list[str], logs: Path, timeout: float) -> tuple[int, TestbedState]:
    """Run `command` to its end; its exit status and every process, interface and namespace its
    run record (`logs`/testbed.json) listed while it ran, each seen running when first listed."""
    seen = TestbedState(path=logs / STATE_FILE)
    process = subprocess.Popen(command, cwd=ROOT, stdout=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + timeout
        while process.poll() is None:
            assert time.monotonic() < deadline, f"{command} still runs after {timeout} s"
            state = TestbedState.load(logs)
            for record in state.processes if state is not None else ():
                if record not in seen.processes:
                    assert is_ours(record), record
                    seen.processes.append(record)
            for kind in ("interfaces", "namespaces"):
                names = getattr(seen, kind)
                names.extend(n for n in getattr(state, kind, ()) if n not in names)
            time.sleep(0.1)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    return process.returncode, seen


@pytest.mark.root
@pytest.mark.mininet
@pytest.mark.bmv2
@pytest.mark.slow
def test_bmv2_demo_identifies_every_device_and_leaves_nothing_behind(
    tmp_path: Path, free_port: Callable[[], int]
) -> None:
    # What `make demo SWITCH=bmv2` runs, in 36 units rather than 60.
    chosen = config(tmp_path, switch="bmv2", grpc_port=free_port())
    scenario = build_scenario(chosen)
    created = topo.interfaces(scenario.graph)
    assert not any(interface_exists(name) for name in created)
    command = [
        sys.executable, "-m", "svcfp", "demo", "--switch", "bmv2",
        "--units", str(chosen.units), "--time-unit", str(chosen.unit_seconds),
        "--grpc-port", str(chosen.grpc_port), "--http", "off",
        "--out", str(chosen.out), "--logs", str(chosen.logs),
    ]  # fmt: skip
    status, recorded = run_recorded(command, chosen.logs, timeout=240)
    assert status == 0

    # Each device's answer, from its decisions stored in the demo's database (its verdict: the
    # accumulated answer after its latest decision): known types as themselves, the held-out hub
    # as unknown. The report says the same.
    expected = {
        h.mac: UNKNOWN if scenario.truth[h.name] == "hub" else scenario.truth[h.name]
        for h in topo.hosts(scenario.graph, topo.DEVICE)
    }
    with Storage(chosen.out / DATABASE) as storage:
        stored = [r for r in storage.decisions() if r.device in expected]
    assert all(r.accumulated is not None for r in stored), "every decision accumulates"
    answers = {mac: answering([r for r in stored if r.device == mac]) for mac in expected}
    assert {mac: a.label if a else None for mac, a in answers.items()} == expected, [
        (r.device, r.label, r.accumulated) for r in stored
    ]
    summary = json.loads((chosen.out / "decisions.json").read_text())
    assert summary["mode"] == "mininet (bmv2)"
    assert summary["correct"] == len(expected) == 5
    assert {row["mac"]: row["identified"] for row in summary["devices"]} == expected
    assert len(summary["decisions"]) == len(stored)

    # It ran BMv2, the hosts and their programs; none of them runs now, and every interface and
    # namespace it created is gone.
    labels_run = {p.label for p in recorded.processes}
    assert {"demo", "switch:s1", "host:dns", "host:d1", "devices:d1"} <= labels_run, labels_run
    assert not any(is_ours(p) for p in recorded.processes)
    assert set(created) <= set(recorded.interfaces)
    assert not any(interface_exists(name) for name in recorded.interfaces)
    assert not any(namespace_exists(name) for name in recorded.namespaces)
    assert not (chosen.logs / STATE_FILE).exists()
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", chosen.grpc_port))
