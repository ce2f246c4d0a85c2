"""`svcfp run --config FILE` (TOML; the command line overrides it), the effective configuration
logged at start, and logs as JSON lines."""

from __future__ import annotations

import argparse
import json
import logging
import subprocess
import sys
from pathlib import Path

import pytest

from controller.base.errors import InputError
from controller.base.logformat import JsonFormatter, message_fields
from controller.control.config import RegisterRate, RunConfig
from svcfp.cli import build_parser, config_file, main
from svcfp.cli.run import config_from_args, port_list, resolve
from tests.support.database import kept
from tests.support.paths import P4INFO, ROOT
from tests.support.switch import DEVICE_ID, Wire

pytest_plugins = ["tests.support.storage"]

CONFIG = """
p4info = "{p4info}"
db = "state/svcfp.db"
interval = 2
time-unit = 60
register_rate = "4/30"
tap = true
alert_webhook = "http://127.0.0.1:9/hook"

[[switch]]
name = "edge"
grpc_addr = "127.0.0.1:9559"
device_id = 1
ports = "0-3"
cpu_port = 255
register_rate = "2/60"
l2 = {{ "02:00:00:00:00:01" = 1 }}

[[switch]]
name = "core"
grpc_addr = "127.0.0.1:9560"
device_id = 2
ports = [0, 1]
tap = false
"""


SWITCH = "[[switch]]\ngrpc_addr = '127.0.0.1:1'\ndevice_id = 0\n"


def parsed(*argv: str) -> tuple[RunConfig, argparse.Namespace]:
    args = build_parser().parse_args(["run", *argv])
    merged, switches = resolve(args)
    return config_from_args(merged, switches), merged


def test_the_file_gives_every_setting_and_switches_with_their_own(tmp_path: Path) -> None:
    path = tmp_path / "svcfp.toml"
    path.write_text(CONFIG.format(p4info=P4INFO))
    config, _ = parsed("--config", str(path))
    assert config.db == tmp_path / "state" / "svcfp.db"  # relative to the file
    assert (config.interval, config.time_unit, config.tap) == (2.0, 60.0, True)
    assert config.register_rate == RegisterRate(4, 30.0)
    assert config.alerts.webhook == "http://127.0.0.1:9/hook"
    edge, core = config.switches
    assert (edge.name, edge.device_id, edge.ports, edge.l2) == (
        "edge", 1, (0, 1, 2, 3), {"02:00:00:00:00:01": 1}
    )  # fmt: skip
    assert config.cpu_port_of(edge) == 255 and config.cpu_port_of(core) is None
    assert config.register_rate_of(edge) == RegisterRate(2, 60.0)
    assert config.register_rate_of(core) == RegisterRate(4, 30.0)
    assert (config.tap_of(edge), config.tap_of(core)) == (True, False)


def test_flags_override_the_file_even_when_they_say_the_default(tmp_path: Path) -> None:
    path = tmp_path / "svcfp.toml"
    path.write_text(CONFIG.format(p4info=P4INFO))
    # --interval 5.0 is the flag's default: given, it still wins over the file's 2.
    config, _ = parsed(
        "--config", str(path), "--interval", "5.0", "--db", "here.db",
        "--grpc-addr", "127.0.0.1:9999", "--device-id", "7",
    )  # fmt: skip
    assert config.interval == 5.0 and config.db == Path("here.db")
    assert config.time_unit == 60.0  # not given: the file's
    # Switches on the command line replace the file's.
    assert [(s.name, s.grpc_addr, s.device_id) for s in config.switches] == [
        ("s1", "127.0.0.1:9999", 7)
    ]


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("intervall = 3\n", "unknown setting 'intervall'; settings: .*interval"),
        ("interval = 'fast'\n", "interval: .*fast"),
        ("tap = 'yes'\n", "tap: expected true or false"),
        ("role = 'boss'\n", "'boss' is not one of primary, monitor"),
        ("interval = [1\n", "not a TOML config file"),
        ("deep = " + "[" * 5000 + "]" * 5000 + "\n", "TOML nested too deeply to read"),
        ("[[switch]]\nname = 'x'\n", r"switch #0: missing 'grpc_addr'"),
        (SWITCH + "colour = 'red'\n", "unknown keys colour"),
        (SWITCH + "ports = '3-1'\n", "a range runs low-high"),
    ],
)  # fmt: skip
def test_bad_config_files_are_bad_input_naming_the_file(
    tmp_path: Path, text: str, message: str
) -> None:
    path = tmp_path / "bad.toml"
    path.write_text(f'p4info = "{P4INFO}"\n{text}')
    with pytest.raises(InputError, match=message) as caught:
        parsed("--config", str(path))
    assert str(path) in str(caught.value)


def test_no_switch_anywhere_is_bad_input(tmp_path: Path) -> None:
    path = tmp_path / "svcfp.toml"
    path.write_text(f'p4info = "{P4INFO}"\n')
    with pytest.raises(InputError, match="no switch: give --grpc-addr, --switches, or"):
        parsed("--config", str(path))
    with pytest.raises(InputError, match="--p4info is required"):
        parsed("--grpc-addr", "127.0.0.1:1", "--device-id", "0")


def test_a_run_from_a_file_logs_its_effective_configuration(
    db: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    wire = Wire()
    path = tmp_path / "svcfp.toml"
    path.write_text(
        f'p4info = "{P4INFO}"\ndb = "{db}"\ninterval = 0.1\nduration = 0.4\n'
        f'[[switch]]\nname = "edge"\ngrpc_addr = "{wire.address}"\ndevice_id = {DEVICE_ID}\n'
    )
    try:
        with caplog.at_level(logging.INFO):
            assert main(["run", "--config", str(path), "--duration", "0.3"]) == 0
    finally:
        wire.stop()
    (line,) = [r.getMessage() for r in caplog.records if "event=config " in r.getMessage()]
    settings = message_fields(line)["settings"]
    assert settings["duration"] == 0.3 and settings["interval"] == 0.1
    assert settings["switches"][0]["name"] == "edge" and settings["db"] == str(db)
    assert settings["http"] is None and settings["alerts"]["webhook"] is None
    assert kept(db)


def test_json_log_lines_carry_the_same_fields_everywhere() -> None:
    record = logging.LogRecord(
        "controller.control.worker", logging.WARNING, __file__, 1,
        "switch=%s event=poll_failed error=%s level=%d", ("s1", "timed out", 3), None,
    )  # fmt: skip
    line = json.loads(JsonFormatter().format(record))
    assert set(line) == {
        "time", "level", "logger", "event", "message", "switch", "error", "field_level"
    }  # fmt: skip
    assert (line["level"], line["event"], line["switch"]) == ("WARNING", "poll_failed", "s1")
    assert line["error"] == "timed out" and line["field_level"] == 3
    assert line["time"].endswith("Z")
    plain = json.loads(JsonFormatter().format(logging.LogRecord("x", 20, "", 1, "hello", (), None)))
    assert plain["event"] is None and plain["message"] == "hello"
    assert message_fields('event=alert message="a b c" settings={"a": [1, 2]} n=1.5') == {
        "event": "alert", "message": "a b c", "settings": {"a": [1, 2]}, "n": 1.5
    }  # fmt: skip
    assert message_fields("event=limited port=3 mac=02:00:00:00:00:01: more than 8 MACs") == {
        "event": "limited", "port": 3, "mac": "02:00:00:00:00:01"
    }  # fmt: skip


def test_svcfp_run_logs_json_lines(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "svcfp", "--log-format", "json", "run", "--p4info", str(P4INFO),
         "--grpc-addr", "127.0.0.1:1", "--device-id", "0", "--db", str(tmp_path / "x.db"),
         "--connect-timeout", "0.3"],
        cwd=ROOT, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert result.returncode == 3
    lines = [json.loads(line) for line in result.stderr.splitlines() if line.startswith("{")]
    config = next(line for line in lines if line["event"] == "config")
    assert config["settings"]["switches"][0]["grpc_addr"] == "127.0.0.1:1"
    assert all({"time", "level", "logger", "event", "message"} <= set(line) for line in lines)
    # The error itself is the command's one line, as with text logs.
    assert "svcfp run: error: switch s1 at 127.0.0.1:1" in result.stderr


def test_the_readme_example_is_a_valid_config_file(tmp_path: Path) -> None:
    readme = (ROOT / "README.md").read_text()
    example = readme.split("```toml\n", 1)[1].split("```", 1)[0]
    path = tmp_path / "svcfp.toml"
    path.write_text(example)
    args = build_parser().parse_args(["run", "--config", str(path)])
    options = {a.dest: a for a in args.run_parser._actions}
    merged, switches, from_file = config_file.merge(args, options, path, port_list)
    assert merged.time_unit == 3600.0 and merged.log_format == "json"
    assert merged.references == tmp_path / "refs.json"
    assert merged.http == "127.0.0.1:8080"
    assert switches is not None and switches[0].ports == (0, 1, 2, 3)
    assert switches[0].register_rate == RegisterRate(4, 60.0)
    assert "alert_webhook" in from_file


def test_svcfp_run_serves_its_dashboard_while_it_runs(
    db: Path, caplog: pytest.LogCaptureFixture
) -> None:
    wire = Wire()
    args = ["run", "--p4info", str(P4INFO), "--grpc-addr", wire.address, "--device-id"]
    args += [str(DEVICE_ID), "--db", str(db), "--interval", "0.1", "--duration", "0.6"]
    try:
        with caplog.at_level(logging.INFO):
            assert main([*args, "--http", "127.0.0.1:0"]) == 0
    finally:
        wire.stop()
    messages = [r.getMessage() for r in caplog.records]
    ready = [message_fields(m) for m in messages if "event=dashboard_ready" in m]
    assert len(ready) == 1 and str(ready[0]["url"]).startswith("http://127.0.0.1:")
    config = next(message_fields(m) for m in messages if "event=config " in m)
    assert config["settings"]["http"] == {"listen": "127.0.0.1:0", "token": False}
    assert kept(db)
