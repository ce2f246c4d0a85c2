"""`svcfp run` on bad input: a clear message, a non-zero status, stored data kept."""

from __future__ import annotations

import math
import time
from dataclasses import replace
from pathlib import Path

import pytest

from controller.control.live import NEXT_UNIT_KEY
from controller.engine.activity import ActivityTable
from controller.engine.exporter import ExporterConfig, export_fingerprints
from controller.engine.identify import enroll
from controller.store.storage import Storage
from svcfp.cli import build_parser, main
from svcfp.cli.run import config_from_args
from tests.support.database import kept
from tests.support.paths import P4INFO
from tests.support.switch import DEVICE_ID, Wire

pytest_plugins = ["tests.support.storage"]


def run(*args: str) -> list[str]:
    return ["run", "--p4info", str(P4INFO), "--connect-timeout", "0.5", *args]


@pytest.fixture
def references(tmp_path: Path) -> Path:
    """References of two types in 0.5 s units, G=4, θ chosen by enrolment."""
    config = ExporterConfig(granularity=4, tau=0.9, k=1, n_min=2, n_max=6)
    activity = ActivityTable.from_records(
        [
            (mac, unit, service, 1, 60)
            for unit in range(8)
            for mac, service in (("aa", "tcp/443"), ("bb", "udp/123"), ("cc", "tcp/443"))
        ],
        unit_seconds=0.5,
    )
    labels = {"aa": "cam", "bb": "plug", "cc": "cam"}
    refs = enroll(export_fingerprints(activity, config), labels, config=config)
    path = tmp_path / "refs.json"
    refs.save(path)
    return path


def test_unreachable_switch(db: Path, capsys: pytest.CaptureFixture[str]) -> None:
    status = main(run("--grpc-addr", "127.0.0.1:1", "--device-id", "0", "--db", str(db)))
    assert status == 3
    assert "switch s1 at 127.0.0.1:1 (device id 0) is unreachable" in capsys.readouterr().err
    assert kept(db)


def test_wrong_device_id(db: Path, capsys: pytest.CaptureFixture[str]) -> None:
    wire = Wire()
    try:
        status = main(run("--grpc-addr", wire.address, "--device-id", "9", "--db", str(db)))
    finally:
        wire.stop()
    assert status == 3
    err = capsys.readouterr().err
    assert f"switch s1 at {wire.address} (device id 9) refused" in err
    assert "Invalid device id 9" in err
    assert kept(db)


def test_unreadable_catalogue(db: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bad = tmp_path / "catalogue.json"
    bad.write_text("{ not json")
    status = main(
        run(
            "--grpc-addr",
            "127.0.0.1:1",
            "--device-id",
            "0",
            "--db",
            str(db),
            "--catalogue",
            str(bad),
        )
    )
    assert status == 2
    assert str(bad) in capsys.readouterr().err
    assert kept(db)


def test_a_bmv2_json_that_is_not_one_is_refused_before_the_switch_is_asked(
    db: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    bad = tmp_path / "fingerprint.json"
    # The switch is unreachable: an error about the file means nothing was asked of it.
    args = run("--grpc-addr", "127.0.0.1:1", "--device-id", "0", "--db", str(db))
    for content, said in [
        (b"{ not json", f"--bmv2-json {bad}: line 1: not JSON"),
        (b"[]", f"--bmv2-json {bad}: not a BMv2 JSON file (p4c-bm2-ss output): it has no "
                "'pipelines' list"),
        (b'{"pipelines": {}}', "it has no 'pipelines' list"),
        (b"\xff\xfe", f"{bad}: cannot read BMv2 JSON: not UTF-8 text (byte 0xff at offset 0)"),
    ]:  # fmt: skip
        bad.write_bytes(content)
        assert main([*args, "--bmv2-json", str(bad)]) == 2
        assert said in capsys.readouterr().err
        assert kept(db)


def test_flag_errors(db: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(run("--grpc-addr", "127.0.0.1:1", "--db", str(db))) == 2
    assert "--device-id is required with --grpc-addr" in capsys.readouterr().err
    switches = tmp_path / "switches.json"
    switches.write_text('[{"name": "s1", "grpc_addr": "127.0.0.1:1"}]')
    assert main(run("--switches", str(switches), "--db", str(db))) == 2
    assert "switch #0: missing 'device_id'" in capsys.readouterr().err
    switches.write_text(
        '[{"name": "s1", "grpc_addr": "127.0.0.1:1", "device_id": 0, "ports": "0-9"}]'
    )
    assert main(run("--switches", str(switches), "--db", str(db))) == 2
    assert "switch #0: ports '0-9': expected a list of port numbers" in capsys.readouterr().err
    assert (
        main(run("--grpc-addr", "x:1", "--device-id", "0", "--time-unit", "1", "--db", str(db)))
        == 2
    )
    assert "written with time_unit_seconds=3600.0, not 1.0" in capsys.readouterr().err
    assert kept(db)
    # Folders written at the end of a run are checked before it starts.
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    for flag in ("--export", "--log-dir"):
        target = str(blocker / "out")
        assert main(run("--grpc-addr", "127.0.0.1:1", "--device-id", "0", "--db", str(db),
                        flag, target)) == 2  # fmt: skip
        assert f"{flag} {target}: cannot make the folder: Not a directory" in (
            capsys.readouterr().err
        )
    assert kept(db)


def test_bounded_run_against_the_reference_switch(db: Path, tmp_path: Path) -> None:
    wire = Wire()
    switches = tmp_path / "switches.json"
    switches.write_text(
        f'[{{"name": "edge", "grpc_addr": "{wire.address}", "device_id": {DEVICE_ID}, '
        f'"ports": [0, 1, 2], "l2": {{"02:00:00:00:00:01": 1}}}}]'
    )
    try:
        status = main(
            run(
                "--switches",
                str(switches),
                "--db",
                str(db),
                "--interval",
                "0.1",
                "--duration",
                "0.5",
                "--export",
                str(tmp_path / "out"),
            )
        )
        assert status == 0
        exported = (tmp_path / "out" / "activity.csv").read_text().splitlines()
        assert exported == ["device,unit,service,packets,bytes", "aa,1,tcp/443,2,20"]
        assert (tmp_path / "out" / "decisions.csv").read_text().startswith("id,device,")
        assert wire.switch.replication.ports() == {1: (0, 1, 2)}
        assert wire.switch.pipeline is not None
    finally:
        wire.stop()
    assert kept(db)


def test_engine_flags_override_the_references_settings(references: Path) -> None:
    args = build_parser().parse_args(
        run(
            *("--grpc-addr", "x:1", "--device-id", "0", "--time-unit", "0.5"),
            *("--references", str(references), "--tau", "0.8", "--n-max", "7", "--theta", "0.25"),
        )
    )
    live = config_from_args(args).live
    assert live is not None and live.references is not None
    base = live.references.config
    assert base == ExporterConfig(granularity=4, tau=0.9, k=1, n_min=2, n_max=6)
    assert live.exporter == replace(base, tau=0.8, n_max=7)
    assert live.references.theta == 0.25
    plain = config_from_args(
        build_parser().parse_args(run("--grpc-addr", "x:1", "--device-id", "0"))
    )
    assert plain.live is not None and plain.live.references is None
    assert plain.live.exporter == ExporterConfig()


def test_references_that_do_not_fit_are_refused(
    db: Path, references: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    base = run("--grpc-addr", "127.0.0.1:1", "--device-id", "0", "--db", str(db))
    assert main([*base, "--references", str(references)]) == 2
    assert (
        f"{references}: references use 0.5 s units, the controller 3600 s"
        in capsys.readouterr().err
    )
    assert (
        main(
            [*base, "--time-unit", "0.5", "--references", str(references), "--granularity", "list"]
        )
        == 2
    )
    assert "references are G=4, --granularity asks for list" in capsys.readouterr().err
    # Prevalence is a setting too, not "as the references say".
    argv = [*base, "--time-unit", "0.5", "--references", str(references)]
    assert main([*argv, "--granularity", "prevalence"]) == 2
    assert "references are G=4, --granularity asks for prevalence" in capsys.readouterr().err
    missing = tmp_path / "none.json"
    assert main([*base, "--time-unit", "0.5", "--references", str(missing)]) == 2
    assert str(missing) in capsys.readouterr().err
    assert kept(db)


def test_bounded_run_with_references_feeds_every_closed_unit(
    references: Path, tmp_path: Path
) -> None:
    wire = Wire()
    fresh = tmp_path / "live.db"
    begun = math.floor(time.time() / 0.5)
    try:
        status = main(
            run(
                *("--grpc-addr", wire.address, "--device-id", str(DEVICE_ID), "--db", str(fresh)),
                *("--time-unit", "0.5", "--interval", "0.1", "--duration", "1.2"),
                *("--references", str(references)),
            )
        )
    finally:
        wire.stop()
    ended = math.floor(time.time() / 0.5)
    assert status == 0
    with Storage(fresh) as store:
        fed_to = int(store.meta(NEXT_UNIT_KEY) or 0)
        assert store.meta("time_unit_seconds") == "0.5"
        assert store.decisions() == [] and store.fingerprints() == []
    # Fed from the first unit through the one the run stopped in (flushed at the stop).
    assert begun + 2 <= fed_to <= ended + 1
