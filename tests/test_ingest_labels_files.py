from __future__ import annotations

import sqlite3
import struct
from pathlib import Path

import numpy as np
import pytest
from scapy.layers.inet import IP, TCP, UDP
from scapy.layers.l2 import Ether
from scapy.utils import wrpcap

from controller.base.errors import InputError
from controller.base.macs import host_macs, int_to_mac, is_unicast, mac_key, mac_to_int
from controller.engine.activity import ActivityTable
from controller.engine.catalogue import Catalogue
from controller.ingest.files import (
    IngestOptions,
    catalogue_for,
    detect_format,
    expand_paths,
    ingest_files,
)
from controller.ingest.labels import Labels
from controller.ingest.sources import Sources, load
from svcfp.cli import main
from svcfp.cli.inputs import read_paths
from tests.support.engine import same_activity
from tests.support.listing import count_listings

A = "aa:bb:cc:dd:ee:01"
B = "aa:bb:cc:dd:ee:02"
T0 = 1_490_000_000


def test_mac_keys() -> None:
    assert mac_key("AA-BB-CC-DD-EE-01") == A
    assert mac_key("aabb.ccdd.ee01") == A
    assert mac_key(" aabbccddee01\n") == A
    assert int_to_mac(mac_to_int(A)) == A
    with pytest.raises(ValueError, match="not a MAC address"):
        mac_key("aa:bb:cc:dd:ee")
    # A host's source address: neither a group address (I/G bit) nor all zeros.
    macs = ["02:00:00:00:00:0a", "ff:ff:ff:ff:ff:ff", "01:00:5e:00:00:fb", "00:00:00:00:00:00", A]
    assert [is_unicast(m) for m in macs] == [True, False, False, False, True]
    values = np.array([mac_to_int(m) for m in macs], dtype=np.uint64)
    assert host_macs(values).tolist() == [True, False, False, False, True]


def test_label_csv(tmp_path: Path) -> None:
    path = tmp_path / "labels.csv"
    path.write_text("mac,label\nAA:BB:CC:DD:EE:01,camera\n# a comment\naa-bb-cc-dd-ee-02,plug\n")
    labels = Labels.load(path)
    assert labels.by_mac == {A: "camera", B: "plug"}
    assert labels.label("AA:BB:CC:DD:EE:02") == "plug"
    assert labels.label("aa:bb:cc:dd:ee:09", default="unknown") == "unknown"
    with pytest.raises(InputError, match=r"labels.csv: no label for device aa:bb:cc:dd:ee:09"):
        labels.label("aa:bb:cc:dd:ee:09")
    assert labels.mac_ints().tolist() == [mac_to_int(A), mac_to_int(B)]
    path.write_text("mac,label\naa:bb:cc:dd:ee:01,camera\nnonsense,plug\n")
    with pytest.raises(InputError, match=r"labels.csv: line 3: not a MAC address"):
        Labels.load(path)
    path.write_text("aa:bb:cc:dd:ee:01,camera\naa:bb:cc:dd:ee:01,plug\n")
    with pytest.raises(InputError, match=r"line 2: aa:bb:cc:dd:ee:01 already labelled 'camera'"):
        Labels.load(path)
    path.write_text("aa:bb:cc:dd:ee:01\n")
    with pytest.raises(InputError, match=r"line 1: expected 'mac,label'"):
        Labels.load(path)
    # Saved with a byte-order mark and no header: the first row is a label, not a header.
    path.write_bytes(b"\xef\xbb\xbfaa:bb:cc:dd:ee:01,camera\r\naa:bb:cc:dd:ee:02,plug\r\n")
    assert Labels.load(path).by_mac == {A: "camera", B: "plug"}
    path.write_bytes(b"aa:bb:cc:dd:ee:01,cam\xe9ra\n")  # Latin-1
    with pytest.raises(
        InputError, match=r"labels.csv: cannot read labels: not UTF-8 text \(byte 0xe9\)"
    ):
        Labels.load(path)
    (tmp_path / "Cam" / "_iotdevice-mac.txt").mkdir(parents=True)
    with pytest.raises(
        InputError, match=r"Cam/_iotdevice-mac.txt: cannot read the device's MAC: Is a directory"
    ):
        Labels.load(tmp_path)


def test_label_directory_labels_shared_macs_per_capture(tmp_path: Path) -> None:
    for kind, mac in (("HueBridge", A), ("HueSwitch", A), ("Plug", B)):
        (tmp_path / "captures" / kind).mkdir(parents=True)
        (tmp_path / "captures" / kind / "_iotdevice-mac.txt").write_text(mac.upper() + "\n")
    labels = Labels.load(tmp_path)
    assert labels.by_mac == {B: "Plug"}
    assert labels.shared == {A: ("HueBridge", "HueSwitch")}
    assert labels.macs() == (A, B)
    assert labels.mac_ints().tolist() == [mac_to_int(A), mac_to_int(B)]
    assert labels.labels() == ("HueBridge", "HueSwitch", "Plug")
    assert len(labels.notes) == 1
    assert f"{A} appears under HueBridge, HueSwitch: labelled per capture" in labels.notes[0]
    with pytest.raises(InputError, match=r"appears under HueBridge, HueSwitch"):
        labels.label(A, default="unknown")
    assert labels.label(B) == "Plug"
    captures = tmp_path / "captures"
    assert labels.for_capture(captures / "HueSwitch" / "Setup-A-1-STA.pcap") == {A: "HueSwitch"}
    assert labels.for_capture(captures / "HueBridge" / "Setup-A-1-STA.pcap") == {A: "HueBridge"}
    assert labels.for_capture(captures / "Plug" / "x.pcap") == {B: "Plug"}
    assert labels.for_capture(tmp_path / "elsewhere.pcap") == {B: "Plug"}
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(InputError, match=r"no _iotdevice-mac.txt files"):
        Labels.load(empty)


def _capture(path: Path) -> None:
    packets = []
    for i, (src, dst, layer) in enumerate(
        [
            (A, B, TCP(sport=50000, dport=443)),
            (A, B, TCP(sport=50001, dport=8888)),
            (B, A, UDP(sport=40000, dport=53)),
            (A, B, TCP(sport=50002, dport=8888)),
        ]
    ):
        p = Ether(src=src, dst=dst) / IP() / layer
        p.time = T0 + i * 3600
        packets.append(p)
    wrpcap(str(path), packets)


def test_detect_and_expand(tmp_path: Path) -> None:
    _capture(tmp_path / "a.pcap")
    (tmp_path / "f.csv").write_text("flowStartMilliseconds,sourceMacAddress,packetTotalCount\n")
    (tmp_path / "x.ipfix").write_bytes(b"\x00\x0a\x00\x10" + b"\x00" * 12)
    (tmp_path / "junk.bin").write_bytes(b"\xff\xfe\x00\x01")
    assert detect_format(tmp_path / "a.pcap") == "pcap"
    assert detect_format(tmp_path / "f.csv") == "ipfix-csv"
    assert detect_format(tmp_path / "x.ipfix") == "ipfix"
    # A pcapng file's magic begins with a newline byte; big-endian files read 0a 0d 0d 0a too.
    for order in ("<", ">"):
        shb = struct.pack(order + "IIIHHqI", 0x0A0D0D0A, 28, 0x1A2B3C4D, 1, 0, -1, 28)
        (tmp_path / "c.pcapng").write_bytes(shb)
        assert detect_format(tmp_path / "c.pcapng") == "pcap"
    (tmp_path / "c.pcapng").unlink()
    (tmp_path / "nothing.csv").write_bytes(b"")
    with pytest.raises(InputError, match=r"nothing.csv: empty file"):
        detect_format(tmp_path / "nothing.csv")
    (tmp_path / "nothing.csv").unlink()
    with pytest.raises(InputError, match="cannot tell the format"):
        detect_format(tmp_path / "junk.bin")
    assert [p.name for p in expand_paths([tmp_path])] == ["a.pcap", "f.csv", "x.ipfix"]
    assert [p.name for p in expand_paths([tmp_path], (".csv",))] == ["f.csv"]
    assert expand_paths([tmp_path / "junk.bin"]) == [tmp_path / "junk.bin"]
    with pytest.raises(InputError, match=r"no \.cap, \.pcapng files in this directory"):
        expand_paths([tmp_path], (".pcapng", ".cap"))
    with pytest.raises(InputError, match=r"missing\.pcap: no such file or directory"):
        expand_paths([tmp_path / "missing.pcap"])


def test_a_folder_of_inputs_is_listed_once_for_the_outputs_check_and_the_reading(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    folder = tmp_path / "flows"
    (folder / "day2").mkdir(parents=True)
    header = "flowStartMilliseconds,sourceMacAddress,packetTotalCount\n"
    for path in (folder / "b.csv", folder / "day2" / "a.csv", tmp_path / "extra.csv"):
        path.write_text(header + f"{T0}000,{A},1\n")
    (folder / "notes.txt").write_text("not an input\n")
    listed = count_listings(monkeypatch)
    # A file named twice, or also inside a folder given, is read once, where it first came.
    sources = Sources(files=(folder, folder / "b.csv", tmp_path / "extra.csv", folder))
    checked = read_paths(sources)
    assert checked == [folder / "b.csv", folder / "day2" / "a.csv", tmp_path / "extra.csv"]
    # A file that appears after the outputs were checked is not read either.
    (folder / "late.csv").write_text(header + f"{T0}000,{B},1\n")
    loaded = load(sources)
    assert list(loaded.stats) == checked
    assert listed == {folder: 1, folder / "day2": 1}
    (folder / "late.csv").unlink()
    listed.clear()
    assert main(["ingest", str(folder), "--out", str(tmp_path / "activity.csv")]) == 0
    assert "2 records from 2 file(s), 0 skipped" in capsys.readouterr().out
    assert listed == {folder: 1, folder / "day2": 1}


def test_labels_filter_and_learned_catalogue(tmp_path: Path) -> None:
    _capture(tmp_path / "a.pcap")
    labels = Labels.from_pairs([(A, "camera")])
    only_labelled = IngestOptions(labels=labels)
    result = ingest_files([tmp_path / "a.pcap"], Catalogue.default(), 3600, only_labelled)
    assert [tuple(r) for r in result.activity.records()] == [
        (A, T0 // 3600, "tcp/443", 1, 54),
        (A, T0 // 3600 + 1, "tcp/49152-65535", 1, 54),  # by its own port: src table
        (A, T0 // 3600 + 3, "tcp/49152-65535", 1, 54),
    ]
    everyone = ingest_files(
        [tmp_path / "a.pcap"],
        Catalogue.default(),
        options=IngestOptions(labels=labels, all_devices=True),
    )
    assert set(everyone.activity.used_devices()) == {A, B}
    learned = catalogue_for("learned", [tmp_path / "a.pcap"], options=only_labelled)
    assert "tcp/8888" in learned.names  # used in two units by the labelled device
    assert "tcp/443" not in learned.names  # used once: not yet a service
    assert "udp/53" not in learned.names  # only the unlabelled device used it


def test_ingest_cli_end_to_end(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    _capture(tmp_path / "a.pcap")
    labels = tmp_path / "labels.csv"
    labels.write_text(f"{A},camera\n{B},plug\n")
    out = tmp_path / "activity.csv"
    db = tmp_path / "svcfp.db"
    saved = tmp_path / "catalogue.json"
    status = main(
        [
            "ingest",
            str(tmp_path / "a.pcap"),
            "--labels",
            str(labels),
            "--out",
            str(out),
            "--db",
            str(db),
            "--save-catalogue",
            str(saved),
        ]
    )
    assert status == 0
    assert "4 records from 1 file(s), 0 skipped; 2 devices" in capsys.readouterr().out
    table = ActivityTable.from_csv(out)
    assert len(table) == 4 and table.unit_seconds == 3600
    assert Catalogue.load(saved) == Catalogue.default()
    with sqlite3.connect(db) as conn:
        rows = conn.execute(
            "SELECT device, unit, service, packets FROM activity ORDER BY device, unit"
        ).fetchall()
    assert rows[0] == (A, T0 // 3600, "tcp/443", 1) and len(rows) == 4
    # Bad input: exit status 2, a message naming the file, the old output untouched.
    before = out.read_bytes()
    (tmp_path / "bad.pcap").write_bytes(b"garbage!")
    status = main(
        ["ingest", str(tmp_path / "bad.pcap"), "--input-format", "pcap", "--out", str(out)]
    )
    assert status == 2
    assert "bad.pcap: not a pcap or pcapng file" in capsys.readouterr().err
    assert out.read_bytes() == before
    assert main(["ingest", str(tmp_path / "a.pcap")]) == 2
    assert "give --out FILE" in capsys.readouterr().err


def test_synth_cli(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    flows_csv = tmp_path / "flows.csv"
    labels = tmp_path / "labels.csv"
    fleet = ("synth", "--devices", "6", "--units", "24", "--seed", "4")
    assert main([*fleet, "--out", str(flows_csv), "--labels-out", str(labels)]) == 0
    assert "for 6 devices over 24 units" in capsys.readouterr().out
    direct = tmp_path / "direct.csv"
    assert main([*fleet, "--output-format", "activity", "--out", str(direct)]) == 0
    ingested = tmp_path / "ingested.csv"
    assert main(["ingest", str(flows_csv), "--labels", str(labels), "--out", str(ingested)]) == 0
    assert same_activity(ActivityTable.from_csv(direct), ActivityTable.from_csv(ingested))
    assert len(Labels.load(labels).by_mac) == 6
    assert main(["synth", "--kinds", "toaster", "--out", str(direct)]) == 2


@pytest.mark.data
def test_ingest_iot_sentinel_folders_with_learned_services(
    shared_data: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    captures = shared_data / "iot-sentinel" / "captures"
    folders = [str(captures / name) for name in ("HueBridge", "Lightify", "EdimaxPlug1101W")]
    out = tmp_path / "activity.csv"
    saved = tmp_path / "learned.json"
    args = [
        "ingest",
        *folders,
        "--labels",
        str(captures),
        "--service-granularity",
        "learned",
        "--save-catalogue",
        str(saved),
        "--time-unit",
        "60",
        "--out",
        str(out),
    ]
    assert main(args) == 0
    assert "0 skipped; 3 devices" in capsys.readouterr().out
    learned = Catalogue.load(saved)
    for name in ("tcp/80", "udp/53", "udp/5353", "udp/8765", "tcp/8767", "udp/80"):
        assert name in learned.names, name
    table = ActivityTable.from_csv(out)
    assert table.unit_seconds == 60
    labels = Labels.load(captures)
    lightify = [m for m, label in labels.by_mac.items() if label == "Lightify"]
    assert {"udp/80", "udp/5353"} <= set(table.select(devices=lightify).used_services())
