"""The PTF suite end to end: the runner against the reference switch (and BMv2 where present),
every test of the suite required to have run and passed."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from controller.base.p4info import P4Schema
from controller.p4rt.build import compile_p4
from ptf_tests import runner

ROOT = Path(__file__).resolve().parent.parent
SUITE_TIMEOUT_S = 1500


def suite_tests() -> set[str]:
    """Every PTF test the suite defines, as `module.Class`, read from its source."""
    names = set()
    for module in sorted((ROOT / "ptf_tests").glob("*.py")):
        for name in re.findall(r"^class (\w+)\(FingerprintTest\):", module.read_text(), re.M):
            names.add(f"{module.stem}.{name}")
    return names


def run_suite(
    target: str, logs: Path, *extra: str
) -> tuple[subprocess.CompletedProcess[str], runner.Results]:
    completed = subprocess.run(
        [sys.executable, "-m", "ptf_tests.runner", "--target", target, "--logs", str(logs), *extra],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=SUITE_TIMEOUT_S,
    )
    return completed, runner.parse_results(completed.stdout)


@pytest.mark.root
@pytest.mark.slow
@pytest.mark.timeout(SUITE_TIMEOUT_S + 60)
@pytest.mark.parametrize(
    ("target", "p4info"),
    [
        pytest.param("refswitch", "fingerprint.p4info.txtpb", id="reference-switch"),
        # The reference switch programmed with the TNA program's P4Info: the same contract.
        pytest.param("refswitch", "fingerprint_tna.p4info.txtpb", id="reference-switch-tna"),
        pytest.param(
            "bmv2", "fingerprint.p4info.txtpb", id="bmv2", marks=[pytest.mark.bmv2, pytest.mark.p4c]
        ),
    ],
)
def test_ptf_suite_passes(target: str, p4info: str, tmp_path: Path) -> None:
    completed, results = run_suite(target, tmp_path, "--p4info", str(ROOT / "p4src" / p4info))
    expected = suite_tests()
    assert len(expected) >= 15
    passed = {test for test, outcome in results.outcomes if outcome == "ok"}
    assert passed == expected, completed.stdout[-5000:] + completed.stderr[-2000:]
    assert f"{len(expected)} passed, 0 failed" in completed.stdout.splitlines()
    assert completed.returncode == runner.EXIT_PASSED


@pytest.mark.root
@pytest.mark.p4c
@pytest.mark.slow
@pytest.mark.timeout(SUITE_TIMEOUT_S)
@pytest.mark.parametrize(
    "target",
    [
        pytest.param("refswitch", id="reference-switch"),
        pytest.param("bmv2", id="bmv2", marks=[pytest.mark.bmv2]),
    ],
)
def test_a_512_service_build_works_end_to_end_with_no_other_edit(
    target: str, tmp_path: Path
) -> None:
    """`-DMAX_SERVICES=512` reaches the P4Info's contract, the switch accepts the pipeline, and the
    last-cell test (device MAX_DEVICES-1, service MAX_SERVICES-1) passes against it."""
    p4c = shutil.which("p4c")
    assert p4c is not None
    build = compile_p4(
        Path(p4c), ROOT / "p4src" / "fingerprint.p4", tmp_path / "build", {"MAX_SERVICES": "512"}
    )
    assert P4Schema.load(build.p4info).contract.counter_size == 1024 * 512
    command = [
        sys.executable, "-m", "ptf_tests.runner", "--target", target,
        "--logs", str(tmp_path / "logs"), "--p4info", str(build.p4info),
        "--bmv2-json", str(build.bmv2_json), "services.LastCounterCell",
    ]  # fmt: skip
    completed = subprocess.run(
        command,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=SUITE_TIMEOUT_S - 60,
    )
    results = runner.parse_results(completed.stdout)
    assert results.outcomes == (("services.LastCounterCell", "ok"),), completed.stdout[-3000:]
    assert completed.returncode == runner.EXIT_PASSED
