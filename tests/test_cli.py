from __future__ import annotations

import argparse
import subprocess
import sys

import pytest

from controller import __version__
from controller.base.errors import InputError
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
