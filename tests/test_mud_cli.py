"""`svcfp mud` and `--mud` on identify, evaluate and run, from the command line."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from controller.engine.activity import ActivityTable
from controller.engine.identify import References
from controller.mud.compliance import Finding
from controller.store.compliance import add_findings
from controller.store.storage import Storage
from svcfp.cli import build_parser, main
from svcfp.cli.run import config_from_args
from tests.support.listing import count_listings
from tests.support.mud import camera, write_flows
from tests.support.paths import P4INFO

CAM = "02:00:00:00:00:01"
PLUG = "02:00:00:00:00:02"


@pytest.fixture
def mud_folder(tmp_path: Path) -> Path:
    folder = tmp_path / "profiles"
    folder.mkdir()
    (folder / "camMud.json").write_text(json.dumps(camera()), encoding="utf-8")
    plug = camera()
    plug["ietf-mud:mud"]["model-name"] = "plug-1"
    # The plug only queries DNS.
    for acl in plug["ietf-access-control-list:acls"]["acl"]:
        acl["aces"]["ace"] = [acl["aces"]["ace"][1]]
    (folder / "plugMud.json").write_text(json.dumps(plug), encoding="utf-8")
    (folder / "index.json").write_text("[]", encoding="utf-8")
    return folder


def activity(tmp_path: Path) -> Path:
    """The camera uses its services plus telnet; the plug DNS and tcp/9999."""
    table = ActivityTable.from_records(
        [(CAM, u, s, 2, 120) for u in range(3) for s in ("tcp/443", "udp/53", "udp/123", "icmp")]
        + [(CAM, 1, "tcp/23", 5, 300)]
        + [(PLUG, u, s, 1, 60) for u in range(3) for s in ("udp/53", "tcp/9999")],
        unit_seconds=3600.0,
    )
    path = tmp_path / "activity.csv"
    table.to_csv(path)
    return path


def test_import_writes_references_and_the_catalogue_and_says_what_it_dropped(
    tmp_path: Path, mud_folder: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    refs, catalogue = tmp_path / "refs.json", tmp_path / "cat.json"
    status = main(
        ["mud", "import", str(mud_folder), "--out", str(refs), "--catalogue-out", str(catalogue)]
    )
    assert status == 0
    out, err = capsys.readouterr()
    lines = out.splitlines()
    assert lines[0] == (
        f"{mud_folder / 'camMud.json'}: cam-1: 4 services (icmp, tcp/443, udp/123, udp/53); "
        "dropped: address 1, controller 2, dns-name 2, icmp-type 1, local-networks 2"
    )
    assert lines[1] == (
        f"{mud_folder / 'plugMud.json'}: plug-1: 1 services (udp/53); dropped: controller 2"
    )
    assert (
        lines[2]
        == f"skipped: {mud_folder / 'index.json'}: not a MUD file: expected a JSON object, "
        "got a list"
    )
    assert "2 reference fingerprints of 2 types (list, nearest, θ = 0.0000)" in err
    loaded = References.load(refs)
    assert loaded.labels == ("cam-1", "plug-1")
    names = {s["name"] for s in json.loads(catalogue.read_text())["services"]}
    assert {"icmp", "tcp/443", "udp/123", "udp/53"} <= names


def test_import_lists_each_folder_once_and_reads_what_it_checked(
    tmp_path: Path, mud_folder: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (mud_folder / "vendor").mkdir()
    upper = camera()
    upper["ietf-mud:mud"]["model-name"] = "cam-2"
    (mud_folder / "vendor" / "CAM2.JSON").write_text(json.dumps(upper), encoding="utf-8")
    listed = count_listings(monkeypatch)
    refs = tmp_path / "refs.json"
    # The folder named twice, and a file in it named as well: each is read once.
    args = [str(mud_folder), str(mud_folder / "plugMud.json"), str(mud_folder)]
    assert main(["mud", "import", *args, "--out", str(refs)]) == 0
    assert listed == {mud_folder: 1, mud_folder / "vendor": 1}
    assert References.load(refs).labels == ("cam-1", "plug-1", "cam-2")
    # An output inside the folder read is refused before anything is written.
    (mud_folder / "old.json").write_text("{}", encoding="utf-8")
    assert main(["mud", "import", str(mud_folder), "--out", str(mud_folder / "old.json")]) == 2
    assert (mud_folder / "old.json").read_text(encoding="utf-8") == "{}"


def test_a_bad_mud_file_exits_2_naming_the_element(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    bad = camera()
    bad["ietf-access-control-list:acls"]["acl"][0]["aces"]["ace"][0]["matches"]["tcp"][
        "destination-port"
    ]["port"] = "https"
    path = tmp_path / "bad.json"
    path.write_text(json.dumps(bad), encoding="utf-8")
    assert main(["mud", "import", str(path), "--out", str(tmp_path / "r.json")]) == 2
    assert (
        f"{path}: ietf-access-control-list:acls/acl[0]/aces/ace[0]/matches/tcp/destination-port"
        "/port: expected an integer in 0..65535, got 'https'" in capsys.readouterr().err
    )
    assert not (tmp_path / "r.json").exists()


def test_export_of_a_type_and_of_a_device_validate(
    tmp_path: Path, mud_folder: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    refs = tmp_path / "refs.json"
    assert main(["mud", "import", str(mud_folder), "--out", str(refs)]) == 0
    capsys.readouterr()
    exported = tmp_path / "cam.json"
    args = ["mud", "export", "--references", str(refs), "--type", "cam-1", "--out", str(exported)]
    assert main([*args, "--mud", str(mud_folder)]) == 0
    assert capsys.readouterr().out.startswith(
        f"wrote {exported}: cam-1, 4 services (icmp, tcp/443 client, udp/53 client, udp/123 server)"
    )
    device = tmp_path / "device.json"
    status = main(
        [
            *("mud", "export", "--activity", str(activity(tmp_path)), "--device", CAM),
            *("--windows", "whole", "--granularity", "list", "--type", "cam-x"),
            *("--served", "udp/123", "--out", str(device)),
        ]
    )
    assert status == 0
    assert "5 services (icmp, tcp/23 client, tcp/443 client, udp/53 client, udp/123 server)" in (
        capsys.readouterr().out
    )
    assert main(["mud", "validate", str(exported), str(device)]) == 0
    before = device.read_bytes()
    assert main([*args[:-1], str(device), "--served", "udp/123,nonsense"]) == 2
    assert "--served 'nonsense': not a service name (e.g. tcp/80)" in capsys.readouterr().err
    assert device.read_bytes() == before
    broken = tmp_path / "broken.json"
    doc = json.loads(device.read_text())
    del doc["ietf-mud:mud"]["is-supported"]
    broken.write_text(json.dumps(doc), encoding="utf-8")
    assert main(["mud", "validate", str(device), str(broken)]) == 2
    out = capsys.readouterr().out
    assert f"valid: {device}" in out
    assert (
        f"invalid: {broken}: not valid RFC 8520 JSON: /ietf-mud:mud: missing-data: expected "
        "'is-supported'" in out
    )


def test_export_refuses_an_out_it_reads(
    tmp_path: Path, mud_folder: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    refs = tmp_path / "refs.json"
    assert main(["mud", "import", str(mud_folder), "--out", str(refs)]) == 0
    kept = refs.read_bytes()
    profile = mud_folder / "camMud.json"
    data = activity(tmp_path)
    for out, args in [
        (refs, ["--references", str(refs), "--type", "cam-1"]),
        (profile, ["--references", str(refs), "--type", "cam-1", "--mud", str(profile)]),
        (data, ["--activity", str(data), "--device", CAM]),
    ]:
        before = out.read_bytes()
        assert main(["mud", "export", *args, "--out", str(out)]) == 2
        assert (
            f"--out {out}: also an input of this command; writing it would replace what is read"
            in capsys.readouterr().err
        )
        assert out.read_bytes() == before
    assert refs.read_bytes() == kept


def test_identify_and_evaluate_report_compliance(
    tmp_path: Path, mud_folder: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    refs = tmp_path / "refs.json"
    assert main(["mud", "import", str(mud_folder), "--out", str(refs)]) == 0
    capsys.readouterr()
    data = activity(tmp_path)
    base = ["identify", "--activity", str(data), "--references", str(refs), "--windows", "whole"]
    assert main([*base, "--mud", str(mud_folder)]) == 0
    out = capsys.readouterr().out
    assert "MUD compliance findings: 2" in out
    assert f"{CAM}\tcam-1\ttcp/23\t-\t1970-01-01 01:00:00\t1970-01-01 02:00:00\t1\t5\t300" in out
    assert (
        f"{PLUG}\tplug-1\ttcp/9999\t-\t1970-01-01 00:00:00\t1970-01-01 03:00:00\t3\t3\t180" in out
    )
    assert main([*base, "--mud", str(mud_folder), "--output-format", "json"]) == 0
    decisions = json.loads(capsys.readouterr().out)
    by_device = {d["device"]: d for d in decisions}
    assert [f["service"] for f in by_device[CAM]["compliance"]] == ["tcp/23"]
    assert by_device[CAM]["compliance"][0]["first_seen"] == 3600.0
    assert [f["service"] for f in by_device[PLUG]["compliance"]] == ["tcp/9999"]

    labels = tmp_path / "labels.csv"
    labels.write_text(f"{CAM},cam-1\n{PLUG},plug-1\n", encoding="utf-8")
    out_dir = tmp_path / "report"
    status = main(
        [
            *("evaluate", "--activity", str(data), "--labels", str(labels), "--out", str(out_dir)),
            *("--windows", "whole", "--granularities", "list", "--theta", "0", "--no-progress"),
            *("--mud", str(mud_folder)),
        ]
    )
    # Two devices, one window each: nothing to split into training and test.
    assert status == 2
    assert "need some of each" in capsys.readouterr().err


def test_evaluate_report_has_the_compliance_section(
    tmp_path: Path, mud_folder: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    table = ActivityTable.from_records(
        [
            (mac, u, s, 1, 60)
            for mac, services in (
                (CAM, ("tcp/443", "udp/53")),
                ("02:00:00:00:00:03", ("tcp/443", "udp/53", "tcp/23")),
                (PLUG, ("udp/53", "tcp/9999")),
                ("02:00:00:00:00:04", ("udp/53",)),
            )
            for u in range(12)
            for s in services
        ],
        unit_seconds=60.0,
    )
    data = tmp_path / "activity.csv"
    table.to_csv(data)
    labels = tmp_path / "labels.csv"
    labels.write_text(
        f"{CAM},cam-1\n02:00:00:00:00:03,cam-1\n{PLUG},plug-1\n02:00:00:00:00:04,plug-1\n",
        encoding="utf-8",
    )
    out_dir = tmp_path / "report"
    status = main(
        [
            *("evaluate", "--activity", str(data), "--labels", str(labels), "--out", str(out_dir)),
            *("--granularities", "list", "--k", "1", "--n-min", "2", "--n-max", "3"),
            *("--no-progress", "--mud", str(mud_folder)),
        ]
    )
    assert status == 0
    report = (out_dir / "report.md").read_text()
    assert "## MUD compliance" in report
    assert (
        "| 02:00:00:00:00:03 | cam-1 | tcp/23 | – | 1970-01-01 00:00:00 | 1970-01-01 00:12:00 "
        "| 12 | 12 | 720 |" in report
    )
    assert f"| {PLUG} | plug-1 | tcp/9999 | – |" in report
    findings = json.loads((out_dir / "compliance.json").read_text())
    assert [(f["device"], f["service"]) for f in findings] == [
        (PLUG, "tcp/9999"),
        ("02:00:00:00:00:03", "tcp/23"),
    ]


def test_run_takes_profiles_and_findings_shows_what_it_stored(
    tmp_path: Path, mud_folder: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    args = build_parser().parse_args(
        [
            *("run", "--p4info", str(P4INFO), "--grpc-addr", "x:1", "--device-id", "0"),
            *("--mud", str(mud_folder)),
        ]
    )
    live = config_from_args(args).live
    assert live is not None and live.mud is not None
    assert live.mud.types == ("cam-1", "plug-1")
    db = tmp_path / "svcfp.db"
    with Storage(db) as store:
        store.check_time_unit(60.0)
        add_findings(store, [Finding(CAM, "cam-1", "tcp/23", None, 2, 4, 2, 7, 420)], 1.0)
    assert main(["mud", "findings", "--db", str(db)]) == 0
    out = capsys.readouterr().out
    assert out.splitlines() == [
        f"compliance findings in {db}: 1",
        "device\ttype\tservice\tdirection\tfirst seen\tlast seen\tunits\tpackets\tbytes",
        f"{CAM}\tcam-1\ttcp/23\t-\t1970-01-01 00:02:00\t1970-01-01 00:05:00\t2\t7\t420",
    ]


def test_identify_reads_mudgee_flows_files(
    tmp_path: Path, mud_folder: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    refs = tmp_path / "refs.json"
    assert main(["mud", "import", str(mud_folder), "--out", str(refs)]) == 0
    flows = write_flows(
        tmp_path / "020000000001_ipflows.csv",
        [
            f"{CAM},*,0x0800,*,*,*,6,*,443,900,*,*,40000,50",
            f"{CAM},*,0x0800,*,*,*,17,*,53,900,*,*,600,6",
            f"{CAM},*,0x0800,*,*,*,17,123,*,610,*,*,360,4",
            f"{CAM},*,0x0800,*,*,*,1,*,*,601,8,0,196,2",
        ],
    )
    status = main(
        [
            *("identify", str(flows), "--references", str(refs), "--windows", "whole"),
            *("--all-devices", "--mud", str(mud_folder)),
        ]
    )
    assert status == 0
    out = capsys.readouterr().out
    assert f"{CAM}\t0-1\tcam-1\tcam-1\t1.000" in out
    assert "MUD compliance findings: 0" in out
