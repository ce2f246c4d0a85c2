from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

import pytest

from controller import __version__
from controller.base.errors import InputError
from controller.engine.identify import DEFAULT_PERCENTILE
from controller.mud.locations import LocationSettings
from svcfp.cli import build_parser, main


def test_version_flag_prints_version(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        main(["--version"])
    assert exc.value.code == 0
    assert capsys.readouterr().out.strip() == f"svcfp {__version__}"


def test_help_lists_every_registered_subcommand() -> None:
    parser = build_parser()
    help_text = parser.format_help()
    subactions = [a for a in parser._actions if a.dest == "command"]
    assert len(subactions) == 1
    names = sorted(subactions[0].choices or {})
    assert names == [
        "dashboard", "demo", "devices", "enroll", "evaluate", "identify", "ingest", "mud", "run",
        "switch", "synth", "testbed",
    ]  # fmt: skip
    for name in names:
        assert name in help_text


def test_an_svcfp_error_becomes_its_exit_status_and_a_message(
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert main(["demo", "--units", "0"]) == InputError.exit_code == 2
    assert capsys.readouterr().err == (
        "svcfp demo: error: --units must lie in 1..600 and --time-unit in 0.2..10\n"
    )


def test_console_script_runs_as_module() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "svcfp", "--version"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0
    assert result.stdout.strip() == f"svcfp {__version__}"


def test_every_flag_with_a_default_shows_it_in_help() -> None:
    # argparse keeps the subcommands' parsers in the choices of its subparsers action.
    parser = build_parser()
    (subparsers,) = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    silent: list[str] = []
    for name, sub in subparsers.choices.items():
        formatter = sub._get_formatter()
        for action in sub._actions:
            if not action.option_strings or isinstance(action, argparse._HelpAction):
                continue
            if action.default in (None, False, [], argparse.SUPPRESS):
                continue
            if "default" not in formatter._expand_help(action):
                silent.append(f"{name} {action.option_strings[0]} (default {action.default!r})")
    assert silent == []


def test_one_flag_name_per_concept() -> None:
    # The time unit, the input format and the service granularity have one name everywhere.
    parser = build_parser()
    (subparsers,) = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    flags = {
        f for sub in subparsers.choices.values() for a in sub._actions for f in a.option_strings
    }
    assert {"--unit-seconds", "--units-seconds", "--format", "--output"} & flags == set()
    assert {"--time-unit", "--input-format", "--output-format", "--service-granularity"} <= flags


@pytest.mark.parametrize(
    ("command", "percentile"),
    [
        (["enroll", "flows.csv", "--labels", "labels.csv", "--out", "refs.json"], "--percentile"),
        (["evaluate", "flows.csv", "--labels", "labels.csv", "--out", "report"], "--percentile"),
        (["mud", "import", "mud.json", "--out", "refs.json"], "--percentile"),
        (["mud", "evaluate", "captures", "--out", "report"], "--percentiles"),
    ],
)
def test_theta_and_a_percentile_to_choose_it_are_refused_together(
    command: list[str], percentile: str, capsys: pytest.CaptureFixture[str]
) -> None:
    parser = build_parser()
    for order in (["--theta", "0.5", percentile, "90"], [percentile, "90", "--theta", "0.5"]):
        with pytest.raises(SystemExit) as stop:
            parser.parse_args([*command, *order])
        assert stop.value.code == 2
        first, second = (
            ("--theta", percentile) if order[0] == "--theta" else (percentile, "--theta")
        )
        assert f"argument {second}: not allowed with argument {first}" in capsys.readouterr().err
    given = parser.parse_args([*command, "--theta", "0.5"])
    assert given.theta == 0.5
    chosen = parser.parse_args([*command, percentile, "90"])
    neither = parser.parse_args(command)
    assert chosen.theta is None and neither.theta is None
    if percentile == "--percentile":
        assert (chosen.percentile, neither.percentile) == (90.0, DEFAULT_PERCENTILE)
    else:
        assert (chosen.percentiles, neither.percentiles) == (
            (90.0,),
            LocationSettings().percentiles,
        )


def test_enroll_refuses_a_theta_with_per_type_thetas(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "refs.json"
    command = ["enroll", str(tmp_path / "flows.csv"), "--labels", str(tmp_path / "labels.csv")]
    assert main([*command, "--out", str(out), "--theta", "0.5", "--per-type-theta"]) == 2
    assert (
        "--per-type-theta chooses each type's θ at --percentile: not with --theta"
        in capsys.readouterr().err
    )
    assert not out.exists()
