"""`svcfp enroll`, `svcfp identify` and `svcfp evaluate` end to end on small files."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from scapy.layers.inet import IP, TCP, UDP
from scapy.layers.l2 import Ether
from scapy.utils import wrpcap

from controller.engine.activity import ActivityTable
from controller.ingest.sources import Sources, load, merge_instances
from svcfp.cli import main

SERVICES = {
    "camera": ["tcp/443", "tcp/554", "udp/53"],
    "plug": ["udp/9999", "udp/53"],
    "hub": ["tcp/80", "udp/1900", "udp/5353"],
}


def mac(kind: str, i: int) -> str:
    return f"02:00:00:00:{list(SERVICES).index(kind):02x}:{i:02x}"


def write_inputs(tmp_path: Path, devices: int, units: int, first: int = 1) -> tuple[Path, Path]:
    rows = []
    labels = ["mac,label"]
    for kind, used in SERVICES.items():
        for i in range(first, first + devices):
            labels.append(f"{mac(kind, i)},{kind}")
            for unit in range(units):
                rows += [(mac(kind, i), unit, s, 3, 300) for s in used]
    activity = tmp_path / f"activity-{first}.csv"
    ActivityTable.from_records(rows, unit_seconds=60.0).to_csv(activity)
    label_file = tmp_path / "labels.csv"
    label_file.write_text("\n".join(labels) + "\n")
    return activity, label_file


EXPORTER = ["--time-unit", "60", "--tau", "0.9", "--k", "2", "--n-min", "4", "--n-max", "8"]


def test_enroll_then_identify(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    train, labels = write_inputs(tmp_path, devices=2, units=12)
    refs = tmp_path / "refs.json"
    status = main(
        [
            *("enroll", "--activity", str(train), "--labels", str(labels), "--out", str(refs)),
            *(*EXPORTER, "--granularity", "list"),
        ]
    )
    assert status == 0
    saved = json.loads(refs.read_text())
    # 12 units in windows of 4: 3 windows per device, 6 devices.
    assert len(saved["references"]) == 18
    # Enrolment is sized intensity unless told otherwise.
    assert (saved["representation"], saved["mode"]) == ("list+intensity+sizes", "nearest")
    assert saved["theta"] == pytest.approx(1.0)
    capsys.readouterr()

    test, _ = write_inputs(tmp_path, devices=1, units=4, first=9)
    status = main(
        ["identify", "--activity", str(test), "--references", str(refs), "--output-format", "json"]
    )
    assert status == 0
    decisions = json.loads(capsys.readouterr().out)
    assert sorted((d["device"], d["label"]) for d in decisions) == [
        (mac("camera", 9), "camera"),
        (mac("plug", 9), "plug"),
        (mac("hub", 9), "hub"),
    ]
    assert [d["similarity"] for d in decisions] == pytest.approx([1.0, 1.0, 1.0])
    matched = {c["service"] for d in decisions for c in d["explanation"]["matched"]}
    assert matched == {s for used in SERVICES.values() for s in used}

    status = main(["identify", "--activity", str(test), "--references", str(refs)])
    table = capsys.readouterr().out.splitlines()
    assert status == 0
    assert table[0] == "device\twindow\tlabel\tbest type\tsimilarity\texplanation"
    assert sorted(line.split("\t")[:5] for line in table[1:]) == sorted(
        [mac(kind, 9), "0-4", kind, kind, "1.000"] for kind in ("camera", "plug", "hub")
    )
    for line in table[1:]:
        assert line.endswith("\tunexpected: -\tmissing: -")


def test_identify_rejects_a_different_representation(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    train, labels = write_inputs(tmp_path, devices=2, units=8)
    refs = tmp_path / "refs.json"
    args = ["--activity", str(train), *EXPORTER]
    assert main(["enroll", *args, "--labels", str(labels), "--out", str(refs)]) == 0
    status = main(["identify", *args, "--references", str(refs), "--granularity", "list"])
    assert status == 2
    assert "refs.json: references are prevalence" in capsys.readouterr().err


def test_evaluate_writes_a_report(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    activity, labels = write_inputs(tmp_path, devices=2, units=16)
    out = tmp_path / "report"
    status = main(
        [
            *("evaluate", "--activity", str(activity), "--labels", str(labels), "--out", str(out)),
            *(*EXPORTER, "--granularities", "list,prevalence", "--intensities", "none"),
            "--no-progress",
        ]
    )
    assert status == 0
    assert "best: list, nearest, unit 60 s: accuracy 1.000" in capsys.readouterr().out
    metrics = json.loads((out / "metrics.json").read_text())
    assert [r["closed_set"]["accuracy"] for r in metrics["results"]] == [1.0] * 4
    assert {p.name for p in out.iterdir()} == {
        "metrics.json",
        "report.md",
        "confusion.png",
        "convergence_cdf.png",
        "similarity.png",
    }


def test_bad_input_names_the_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    broken = tmp_path / "broken.csv"
    broken.write_text("device,unit,service,packets,bytes\naa:bb:cc:dd:ee:01,x,tcp/443,1,1\n")
    refs = tmp_path / "refs.json"
    status = main(
        ["enroll", "--activity", str(broken), "--labels", str(broken), "--out", str(refs)]
    )
    assert status == 2
    assert "broken.csv" in capsys.readouterr().err
    assert not refs.exists()


def test_merge_instances() -> None:
    merged = merge_instances(
        {"EdimaxCam1", "EdimaxCam2", "WeMoSwitch", "WeMoSwitch2", "iKettle2", "HS100", "HS110"}
    )
    assert merged == {
        "EdimaxCam1": "EdimaxCam",
        "EdimaxCam2": "EdimaxCam",
        "WeMoSwitch": "WeMoSwitch",
        "WeMoSwitch2": "WeMoSwitch",
        "iKettle2": "iKettle2",
        "HS100": "HS100",
        "HS110": "HS110",
    }


HUB = "02:00:00:00:aa:01"
PLUG = "02:00:00:00:bb:01"


def _setup_capture(path: Path, device: str, dport: int) -> None:
    frames = []
    for i in range(3):
        frame = Ether(src=device, dst="02:00:00:00:ff:ff") / IP() / TCP(sport=40000, dport=dport)
        frame.time = 1_490_000_000 + i
        frames.append(frame)
    frames.append(Ether(src="02:00:00:00:cc:01") / IP() / UDP(sport=5353, dport=5353))
    wrpcap(str(path), frames)


def test_capture_folders_label_a_shared_mac_per_capture(tmp_path: Path) -> None:
    # The IoT Sentinel layout: the hub's MAC is in the Hub and the Sensor folders (the sensor was
    # captured through its hub), the plug's only in its own.
    for kind, device, dport in (("Hub", HUB, 80), ("Sensor", HUB, 443), ("Plug", PLUG, 9999)):
        folder = tmp_path / kind
        folder.mkdir()
        (folder / "_iotdevice-mac.txt").write_text(device.upper() + "\n")
        for n in (1, 2):
            _setup_capture(folder / f"Setup-A-{n}-STA.pcap", device, dport)
    inputs = load(Sources(files=(tmp_path,), labels=tmp_path), need_labels=True)
    assert inputs.labels == {
        f"{HUB}#Hub/Setup-A-1-STA": "Hub",
        f"{HUB}#Hub/Setup-A-2-STA": "Hub",
        f"{HUB}#Sensor/Setup-A-1-STA": "Sensor",
        f"{HUB}#Sensor/Setup-A-2-STA": "Sensor",
        PLUG: "Plug",
    }
    # Only each folder's device counts: the third MAC in every capture is left out.
    assert sorted(inputs.activity.used_devices()) == sorted(inputs.labels)
    sensor = inputs.activity.select(devices=[f"{HUB}#Sensor/Setup-A-1-STA"])
    assert [(r.service, r.packets) for r in sensor.records()] == [("tcp/443", 3)]
    assert inputs.groups is None


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("nan", "must be a positive number of seconds"),
        ("inf", "must be a positive number of seconds"),
        ("1e308", "a time unit lies in [1e-06, 4.10244e+09] seconds"),
        ("1e-300", "a time unit lies in [1e-06, 4.10244e+09] seconds"),
    ],
)
def test_time_units_outside_the_range_of_a_time_unit_are_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], value: str, message: str
) -> None:
    out = tmp_path / "report"
    argv = ["evaluate", str(tmp_path / "flows.csv"), "--labels", str(tmp_path / "labels.csv")]
    with pytest.raises(SystemExit) as stop:
        main([*argv, "--out", str(out), "--time-units", f"3600,{value}"])
    assert stop.value.code == 2
    assert f"argument --time-units: '{value}': {message}" in capsys.readouterr().err
    assert not out.exists()
