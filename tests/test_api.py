"""The Python API does what the command line does: the same references and decisions."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from controller.engine.exporter import ExporterConfig
from controller.engine.identify import References
from svcfp import api
from svcfp.cli import main

# `svcfp enroll` fingerprints with sized intensity unless told otherwise.
EXPORTER = ExporterConfig(granularity=4, tau=0.9, k=2, n_min=4, n_max=8, intensity="sized")
FLAGS = ["--granularity", "4", "--tau", "0.9", "--k", "2", "--n-min", "4", "--n-max", "8"]


@pytest.fixture
def fleet(tmp_path: Path) -> tuple[Path, Path]:
    flows = tmp_path / "flows.csv"
    labels = tmp_path / "labels.csv"
    synth = ["synth", "--devices", "8", "--units", "48", "--seed", "3", "--out", str(flows)]
    assert main([*synth, "--labels-out", str(labels)]) == 0
    return flows, labels


def test_api_and_cli_make_the_same_references_and_decisions(
    tmp_path: Path, fleet: tuple[Path, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    flows, labels = fleet
    data = api.read(api.Sources(files=(flows,), labels=labels), need_labels=True)
    assert len(data.labels) == 8 and data.records > 0
    refs = api.enroll(data, EXPORTER)
    decisions = api.identify(data, refs)
    assert decisions and all(d.label == data.labels[d.device] for d in decisions)

    saved = tmp_path / "refs.json"
    assert main(["enroll", str(flows), "--labels", str(labels), *FLAGS, "--out", str(saved)]) == 0
    assert References.load(saved).to_json() == refs.to_json()
    capsys.readouterr()
    identify = ["identify", str(flows), "--labels", str(labels), "--references", str(saved)]
    identify += ["--output-format", "json"]
    assert main(identify) == 0
    assert json.loads(capsys.readouterr().out) == [d.to_json() for d in decisions]


def test_api_ingest_writes_what_the_cli_writes(tmp_path: Path, fleet: tuple[Path, Path]) -> None:
    flows, labels = fleet
    by_api = tmp_path / "api.csv"
    loaded = api.ingest(api.Sources(files=(flows,), labels=labels), out=by_api)
    by_cli = tmp_path / "cli.csv"
    assert main(["ingest", str(flows), "--labels", str(labels), "--out", str(by_cli)]) == 0
    assert by_api.read_text() == by_cli.read_text()
    assert len(loaded.activity.used_devices()) == 8
