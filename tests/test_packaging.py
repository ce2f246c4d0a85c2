"""The package as a user installs it: a wheel carrying its data (the P4Info, the BMv2 JSON, the
built-in catalogue and profiles) that runs `svcfp demo` from any folder, no checkout needed."""

from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from tests.support.paths import ROOT

pytestmark = pytest.mark.slow


def test_the_wheel_runs_the_demo_outside_the_checkout(tmp_path: Path) -> None:
    dist = tmp_path / "dist"
    build = [sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "--no-build-isolation"]
    subprocess.run([*build, str(ROOT), "-w", str(dist)], check=True, timeout=300)
    (wheel,) = dist.glob("svcfp-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    for data in (
        "p4src/fingerprint.p4info.txtpb",
        "p4src/fingerprint.json",
        "controller/engine/data/catalogue.json",
        "controller/ingest/data/profiles.json",
    ):
        assert data in names, data
    site = tmp_path / "site"
    install = [sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--target"]
    subprocess.run([*install, str(site), str(wheel)], check=True, timeout=300)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    env = {"PYTHONPATH": str(site), "PATH": "/usr/bin:/bin", "HOME": str(tmp_path)}
    where = subprocess.run(
        [sys.executable, "-c", "import p4src, svcfp; print(p4src.P4INFO); print(svcfp.__file__)"],
        cwd=elsewhere,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert where.returncode == 0, where.stderr
    assert all(line.startswith(str(site)) for line in where.stdout.split()), where.stdout
    demo = [sys.executable, "-m", "svcfp", "--log-level", "WARNING", "demo", "--no-network"]
    demo += ["--units", "12", "--grpc-port", "0", "--out", "report", "--logs", "logs"]
    result = subprocess.run(
        demo, cwd=elsewhere, env=env, capture_output=True, text=True, timeout=600
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert (elsewhere / "report" / "report.md").is_file()
    assert (elsewhere / "report" / "decisions.json").is_file()
