"""`svcfp enroll` and `svcfp identify` read the activity the controller stored in SQLite."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from controller.engine.catalogue import Catalogue
from controller.ingest import synth
from controller.store.storage import Storage
from svcfp.cli import main

KINDS = ("camera", "plug", "speaker")


def _store_fleet(db: Path, per_kind: int, seed: int) -> dict[str, str]:
    fleet = synth.make_fleet(synth.load_profiles(), per_kind * len(KINDS), kinds=KINDS)
    with Storage(db) as store:
        store.add_activity(synth.activity(fleet, 48, seed, Catalogue.default(), 3600.0))
    return {d.mac: d.profile.name for d in fleet}


def test_enroll_and_identify_from_the_controller_database(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    db = tmp_path / "svcfp.db"
    labels = _store_fleet(db, 3, seed=5)
    label_file = tmp_path / "labels.csv"
    label_file.write_text("mac,label\n" + "".join(f"{m},{k}\n" for m, k in labels.items()))
    refs = tmp_path / "refs.json"
    inputs = ["--db", str(db), "--labels", str(label_file), "--windows", "whole"]
    assert main(["enroll", *inputs, "--out", str(refs)]) == 0
    assert json.loads(refs.read_text())["unit_seconds"] == 3600.0
    capsys.readouterr()

    assert main(["identify", *inputs, "--references", str(refs), "--output-format", "json"]) == 0
    decisions = json.loads(capsys.readouterr().out)
    assert {d["device"]: d["label"] for d in decisions} == labels


def test_a_database_without_activity_is_refused_by_name(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    db = tmp_path / "empty.db"
    Storage(db).close()
    labels = tmp_path / "labels.csv"
    labels.write_text("mac,label\n02:00:00:00:00:01,camera\n")
    status = main(
        ["enroll", "--db", str(db), "--labels", str(labels), "--out", str(tmp_path / "refs.json")]
    )
    assert status == 2
    assert f"database {db} has no time unit" in capsys.readouterr().err
    assert not (tmp_path / "refs.json").exists()


@pytest.mark.parametrize(
    ("url", "why"),
    [
        ("postgresql://svcfp:secret@[::1/svcfp", "Invalid IPv6 URL"),
        ("postgresql://svcfp:secret@db.example:99999/svcfp", "Port out of range 0-65535"),
    ],
)
def test_a_database_url_that_does_not_parse_is_refused_without_its_password(
    capsys: pytest.CaptureFixture[str], url: str, why: str
) -> None:
    for argv in (["devices", "list"], ["ingest", "flows.csv"], ["enroll", "--out", "r.json"]):
        with pytest.raises(SystemExit) as stop:
            main([*argv, "--db", url])
        assert stop.value.code == 2
        err = capsys.readouterr().err
        assert f"argument --db: not a postgresql://user@host:port/dbname URL: {why}" in err
        assert "secret" not in err
