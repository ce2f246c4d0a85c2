"""`make build`: compiling with p4c when present, and the P4Info drift check."""

from __future__ import annotations

import json
import shutil
import stat
from pathlib import Path

import pytest

from controller.base.errors import InputError
from controller.base.p4info import P4Schema
from controller.p4rt import build as p4build

ROOT = Path(__file__).resolve().parent.parent
P4_SOURCE = ROOT / "p4src" / "fingerprint.p4"
P4INFO = ROOT / "p4src" / "fingerprint.p4info.txtpb"
BMV2_JSON = ROOT / "p4src" / "fingerprint.json"

# A stand-in p4c: records its arguments and writes the outputs the real one writes, taking the
# P4Info text from $EMIT_P4INFO. It exercises everything p4build does around the compiler.
FAKE_P4C = """#!/bin/sh
printf '%s\\n' "$@" > "$RECORD"
while [ $# -gt 0 ]; do
    case "$1" in
        --p4runtime-files) p4info="$2"; shift 2 ;;
        -o) out="$2"; shift 2 ;;
        *) shift ;;
    esac
done
[ -n "$FAIL" ] && { echo "fingerprint.p4(12): syntax error" >&2; exit 1; }
cp "$EMIT_P4INFO" "$p4info"
echo '{"program": "fingerprint.p4"}' > "$out/fingerprint.json"
"""


@pytest.fixture
def fake_p4c(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    script = bin_dir / "p4c"
    script.write_text(FAKE_P4C)
    script.chmod(script.stat().st_mode | stat.S_IXUSR)
    monkeypatch.setenv("RECORD", str(tmp_path / "argv"))
    monkeypatch.setenv("EMIT_P4INFO", str(P4INFO))
    monkeypatch.delenv("FAIL", raising=False)
    return bin_dir


def run(out: Path, path: str, *extra: str) -> int:
    argv = ["--p4", str(P4_SOURCE), "--p4info", str(P4INFO), "--out", str(out), *extra]
    return p4build.main(argv, environ={"PATH": path})


def test_without_p4c_it_says_so_and_succeeds(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    assert run(tmp_path / "build", str(empty)) == 0
    printed = capsys.readouterr().out
    assert "p4c not found on PATH" in printed
    assert str(P4INFO) in printed
    assert not (tmp_path / "build").exists()


def test_without_p4c_a_missing_committed_p4info_is_an_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = ["--p4", str(P4_SOURCE), "--p4info", str(tmp_path / "nope.txtpb"), "--out", "x"]
    assert p4build.main(argv, environ={"PATH": str(tmp_path)}) == InputError.exit_code
    assert "nope.txtpb: committed P4Info not found" in capsys.readouterr().err


def test_identical_p4info_passes_and_writes_the_json(
    tmp_path: Path, fake_p4c: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "build"
    assert run(out, str(fake_p4c)) == 0
    assert json.loads((out / "fingerprint.json").read_text()) == {"program": "fingerprint.p4"}
    assert (out / "fingerprint.p4info.txtpb").read_text() == P4INFO.read_text()
    # p4c runs in a staging folder on relative paths, so its JSON does not depend on where the
    # checkout or the output folder are.
    assert (tmp_path / "argv").read_text().splitlines() == [
        "--target",
        "bmv2",
        "--arch",
        "v1model",
        "--p4runtime-files",
        "p4src/fingerprint.p4info.txtpb",
        "-o",
        "p4src",
        "p4src/fingerprint.p4",
    ]
    assert "matches what p4c generated" in capsys.readouterr().out


def test_drifted_p4info_fails_with_a_unified_diff(
    tmp_path: Path,
    fake_p4c: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    drifted = tmp_path / "drifted.txtpb"
    drifted.write_text(P4INFO.read_text().replace("size: 262144", "size: 131072"))
    monkeypatch.setenv("EMIT_P4INFO", str(drifted))
    assert run(tmp_path / "build", str(fake_p4c)) == 1
    err = capsys.readouterr().err
    assert f"--- {P4INFO}" in err
    assert f"+++ {tmp_path / 'build' / 'fingerprint.p4info.txtpb'}" in err
    assert "-  size: 262144\n+  size: 131072\n" in err


def test_defines_are_passed_to_p4c_and_skip_the_comparison(
    tmp_path: Path, fake_p4c: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "build"
    assert run(out, str(fake_p4c), "-D", "MAX_DEVICES=4096", "-D", "MAX_SERVICES=64") == 0
    argv = (tmp_path / "argv").read_text().splitlines()
    assert argv[-3:] == ["-DMAX_DEVICES=4096", "-DMAX_SERVICES=64", "p4src/fingerprint.p4"]
    assert f"use {out / 'fingerprint.p4info.txtpb'}" in capsys.readouterr().out


def test_a_malformed_define_is_rejected(tmp_path: Path, fake_p4c: Path) -> None:
    assert run(tmp_path / "build", str(fake_p4c), "-D", "1BAD=3") == InputError.exit_code
    assert not (tmp_path / "argv").exists()


def test_p4c_failure_reports_its_error(
    tmp_path: Path,
    fake_p4c: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.setenv("FAIL", "1")
    assert run(tmp_path / "build", str(fake_p4c)) == 1
    err = capsys.readouterr().err
    assert "p4c failed with status 1" in err
    assert "fingerprint.p4(12): syntax error" in err


def test_diff_is_empty_for_identical_files(tmp_path: Path) -> None:
    copy = tmp_path / "copy.txtpb"
    copy.write_text(P4INFO.read_text())
    assert p4build.p4info_diff(P4INFO, copy) == ""


def test_bare_define_means_one() -> None:
    assert p4build.parse_defines(["DEBUG", "MAX_DEVICES=64"]) == {"DEBUG": "1", "MAX_DEVICES": "64"}


@pytest.mark.p4c
def test_real_p4c_compiles_and_matches_the_committed_p4info(tmp_path: Path) -> None:
    p4c = shutil.which("p4c")
    assert p4c is not None
    out = tmp_path / "build"
    assert run(out, str(Path(p4c).parent)) == 0
    config = json.loads((out / "fingerprint.json").read_text())
    assert {"parsers", "pipelines", "deparsers"} <= set(config)
    assert (out / "fingerprint.p4info.txtpb").read_text() == P4INFO.read_text()
    # The committed BMv2 JSON is p4c's own output too, byte for byte, wherever it was built.
    assert (out / "fingerprint.json").read_bytes() == BMV2_JSON.read_bytes()


def test_in_place_build_rewrites_the_committed_files_and_says_so(
    tmp_path: Path, fake_p4c: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    folder = tmp_path / "p4src"
    folder.mkdir()
    source = folder / "fingerprint.p4"
    source.write_text(P4_SOURCE.read_text())
    committed = folder / "fingerprint.p4info.txtpb"
    committed.write_text(P4INFO.read_text())
    argv = ["--p4", str(source), "--p4info", str(committed), "--out", str(folder)]
    assert p4build.main(argv, environ={"PATH": str(fake_p4c)}) == 0
    assert f"rewritten by p4c: {folder / 'fingerprint.json'} (commit them)" in (
        capsys.readouterr().out
    )
    assert p4build.main(argv, environ={"PATH": str(fake_p4c)}) == 0
    assert "exactly what p4c generated" in capsys.readouterr().out
    assert p4build.main([*argv, "-D", "MAX_SERVICES=512"], environ={"PATH": str(fake_p4c)}) == 2
    assert "would overwrite the committed" in capsys.readouterr().err


@pytest.mark.p4c
def test_real_p4c_honours_defines(tmp_path: Path) -> None:
    p4c = shutil.which("p4c")
    assert p4c is not None
    out = tmp_path / "build"
    assert run(out, str(Path(p4c).parent), "-D", "MAX_DEVICES=64", "-D", "MAX_SERVICES=32") == 0
    assert "size: 2048\n" in (out / "fingerprint.p4info.txtpb").read_text()
    # The constants reach the contract the controller and the reference switch read.
    schema = P4Schema.load(out / "fingerprint.p4info.txtpb")
    assert (schema.contract.max_devices, schema.contract.max_services) == (64, 32)
    assert schema.table("device_table").size == 64
