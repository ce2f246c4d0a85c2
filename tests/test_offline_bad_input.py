"""Offline commands on bad input: a clear message naming the input, exit status 2, nothing
stored half-way; ingestion that never counts a file twice; skips that say what was lost."""

from __future__ import annotations

import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest
from scapy.layers.inet import IP, TCP, UDP
from scapy.layers.l2 import Ether

from controller.base.pcapfile import PcapWriter
from svcfp.cli import main
from tests.support.paths import ROOT

CAM = "02:00:00:00:00:0a"
PLUG = "02:00:00:00:00:0b"
SERVER = "02:00:00:00:00:fe"
HEADER = (
    "flowStartMilliseconds,sourceMacAddress,destinationMacAddress,protocolIdentifier,"
    "sourceTransportPort,destinationTransportPort,packetTotalCount,octetTotalCount"
)
GOOD = f"1700000000000,{CAM},{SERVER},6,50000,443,3,300"


def refused_by_its_parser(capsys: pytest.CaptureFixture[str], args: list[str], said: str) -> None:
    """`svcfp args` ends at its argument parser with exit 2, saying `said`."""
    with pytest.raises(SystemExit) as stop:
        main(args)
    assert stop.value.code == 2
    assert said in capsys.readouterr().err


def refused(capsys: pytest.CaptureFixture[str], args: list[str], said: str) -> None:
    """`svcfp args` refuses its input with exit 2, saying `said`."""
    assert main(args) == 2
    assert said in capsys.readouterr().err


def flows(tmp_path: Path, *rows: str, name: str = "flows.csv") -> Path:
    path = tmp_path / name
    path.write_text("\n".join([HEADER, *rows]) + "\n")
    return path


def capture(path: Path, sender: str = CAM, frames: int = 30, start: float = 1.7e9) -> Path:
    """`frames` frames from `sender`: tcp/443 and udp/53 in turn, one every 10 s."""
    with PcapWriter(path) as writer:
        for i in range(frames):
            l4 = TCP(sport=50000 + i, dport=443) if i % 2 else UDP(sport=40000 + i, dport=53)
            writer.write(bytes(Ether(src=sender, dst=SERVER) / IP() / l4), start + 10 * i)
    return path


def activity_rows(db: Path) -> list[tuple[object, ...]]:
    with sqlite3.connect(db) as conn:
        return conn.execute(
            "SELECT device, unit, service, packets, bytes FROM activity ORDER BY 1, 2, 3"
        ).fetchall()


@pytest.mark.parametrize(
    ("row", "message"),
    [
        (
            f"1e33,{CAM},{SERVER},6,50000,443,3,300",
            "flows.csv: line 3: start time 1e+30 s is not between 1970 and 2100",
        ),
        (
            f"-5000,{CAM},{SERVER},6,50000,443,3,300",
            "flows.csv: line 3: start time -5.0 s is not between 1970 and 2100",
        ),
        (
            f"1700000000000,{CAM},{SERVER},6,50000,443,100000000000000000000000,300",
            "flows.csv: line 3: packet count out of range: 100000000000000000000000",
        ),
    ],
    ids=["far-future", "negative", "huge-count"],
)
def test_absurd_records_are_refused_naming_the_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], row: str, message: str
) -> None:
    path = flows(tmp_path, GOOD, row)
    out = tmp_path / "activity.csv"
    db = tmp_path / "svcfp.db"
    assert main(["ingest", str(path), "--out", str(out), "--db", str(db)]) == 2
    assert message in capsys.readouterr().err
    assert not out.exists() and not db.exists()
    # Skipped on request: the good record is stored, the bad one counted.
    args = ["ingest", str(path), "--out", str(out), "--db", str(db), "--skip-bad-records"]
    assert main(args) == 0
    assert "2 records from 1 file(s), 1 skipped" in capsys.readouterr().out
    assert activity_rows(db) == [(CAM, 1700000000 // 3600, "tcp/443", 3, 300)]


def test_an_unwritable_out_is_refused_before_any_work(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = flows(tmp_path, GOOD)
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    assert main(["ingest", str(path), "--out", str(blocker / "activity.csv")]) == 2
    assert f"--out {blocker / 'activity.csv'}: folder {blocker} does not exist" in (
        capsys.readouterr().err
    )
    labels = tmp_path / "labels.csv"
    labels.write_text(f"{CAM},camera\n")
    report = blocker / "report"
    status = main(["evaluate", str(path), "--labels", str(labels), "--out", str(report)])
    assert status == 2
    assert "cannot create the report directory" in capsys.readouterr().err


def test_an_out_that_is_a_directory_or_an_option_out_of_range_is_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = flows(tmp_path, GOOD)
    taken = tmp_path / "taken"
    taken.mkdir()
    (taken / "kept.txt").write_text("kept")
    assert main(["ingest", str(path), "--out", str(taken)]) == 2
    assert f"{taken}: cannot write a file there: it is a directory" in capsys.readouterr().err
    assert main(["synth", "--devices", "2", "--units", "2", "--out", str(taken)]) == 2
    assert f"{taken}: cannot write a file there: it is a directory" in capsys.readouterr().err
    assert [p.name for p in taken.iterdir()] == ["kept.txt"]
    labels = tmp_path / "labels.csv"
    labels.write_text(f"{CAM},camera\n")
    for value in ("101", "-1", "nan"):
        with pytest.raises(SystemExit) as stop:
            main(["evaluate", str(path), "--labels", str(labels), "--out", str(tmp_path / "r"),
                  "--percentile", value])  # fmt: skip
        assert stop.value.code == 2
        assert f"argument --percentile: '{value}': a percentile lies in [0, 100]" in (
            capsys.readouterr().err
        )
    assert not (tmp_path / "r").exists()
    with pytest.raises(SystemExit) as stop:
        main(["enroll", str(path), "--labels", str(labels), "--out", str(tmp_path / "refs.json"),
              "--theta", "2"])  # fmt: skip
    assert stop.value.code == 2
    assert "argument --theta: '2': a similarity lies in [0, 1]" in capsys.readouterr().err


def test_an_out_that_names_an_input_or_another_out_is_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = flows(tmp_path, GOOD)
    before = path.read_bytes()
    assert main(["ingest", str(path), "--out", str(path)]) == 2
    assert f"--out {path}: also an input of this command" in capsys.readouterr().err
    # A directory of inputs stands for its files: an activity file inside it is read too.
    assert main(["ingest", str(tmp_path), "--out", str(path)]) == 2
    assert f"--out {path}: also an input of this command" in capsys.readouterr().err
    assert path.read_bytes() == before
    same = tmp_path / "same.csv"
    args = ["synth", "--devices", "2", "--units", "2", "--out", str(same)]
    assert main([*args, "--labels-out", str(tmp_path / "." / "same.csv")]) == 2
    assert f"--labels-out {tmp_path / '.' / 'same.csv'}: the same file as --out" in (
        capsys.readouterr().err
    )
    assert not same.exists()
    assert main(["ingest", str(path), "--out", str(tmp_path / "b.csv"), "--replace"]) == 2
    assert "--replace replaces files added to a database: give --db" in capsys.readouterr().err
    assert main(["synth", "--start", "-1", "--out", str(same)]) == 2
    assert "--start -1: the first unit must start between 1970 and 2100" in capsys.readouterr().err
    assert main(["synth", "--start", "99999999999", "--out", str(same)]) == 2
    assert "--start 99999999999: the first unit must start between" in capsys.readouterr().err


def test_synth_refuses_counts_beyond_its_limits_before_generating(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "flows.csv"
    for flag, value, limit in [
        ("--units", "1e8", 100000),
        ("--units", "100000000", 100000),
        ("--units", "100001", 100000),
        ("--units", "0", 100000),
        ("--devices", "65536", 65535),
        ("--devices", "-1", 65535),
    ]:
        refused_by_its_parser(
            capsys,
            ["synth", flag, value, "--out", str(out)],
            f"argument {flag}: '{value}': a whole number in 1..{limit}",
        )
    refused(
        capsys,
        ["synth", "--devices", "20", "--units", "100000", "--out", str(out)],
        "--devices 20 × --units 100000: at most 1000000 device-units in one run",
    )
    assert not out.exists()


def test_a_csv_saved_with_a_byte_order_mark_reads_as_without(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    plain = flows(tmp_path, GOOD, name="plain.csv")
    marked = tmp_path / "marked.csv"
    marked.write_bytes(b"\xef\xbb\xbf" + plain.read_bytes())
    for name in ("plain", "marked"):
        out = tmp_path / f"{name}-a.csv"
        assert (
            main(["ingest", str(tmp_path / f"{name}.csv"), "--all-devices", "--out", str(out)]) == 0
        )
    plain_activity = (tmp_path / "plain-a.csv").read_text()
    assert (tmp_path / "marked-a.csv").read_text() == plain_activity
    assert f"{CAM},472222,3600,tcp/443,3,300" in plain_activity
    activity = tmp_path / "marked-a2.csv"
    activity.write_bytes(b"\xef\xbb\xbf" + plain_activity.encode())
    labels = tmp_path / "labels.csv"
    labels.write_text(f"{CAM},camera\n")
    out = tmp_path / "refs.json"
    args = ["enroll", "--activity", str(activity), "--labels", str(labels), "--theta", "0.5"]
    args += ["--windows", "whole"]
    assert main([*args, "--out", str(out)]) == 0
    assert "camera: 1" in capsys.readouterr().out


def test_reading_findings_of_a_missing_database_creates_none(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    db = tmp_path / "nope.db"
    assert main(["mud", "findings", "--db", str(db)]) == 2
    assert f"database {db} does not exist" in capsys.readouterr().err
    assert not db.exists()
    # Reading activity from an empty file leaves it empty.
    db.write_bytes(b"")
    labels = tmp_path / "labels.csv"
    labels.write_text(f"{CAM},camera\n")
    argv = ["enroll", "--db", str(db), "--labels", str(labels), "--out", str(tmp_path / "r.json")]
    assert main(argv) == 2
    assert f"database {db} holds no svcfp tables: it is empty" in capsys.readouterr().err
    assert db.read_bytes() == b""


def test_the_same_file_is_ingested_once_unless_replaced(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    first = capture(tmp_path / "cam.pcap")
    db = tmp_path / "svcfp.db"
    assert main(["ingest", str(first), "--db", str(db)]) == 0
    once = activity_rows(db)
    assert sum(int(r[3]) for r in once) == 30  # type: ignore[call-overload]
    # The same content under another name is the same capture.
    copy = tmp_path / "renamed.pcap"
    copy.write_bytes(first.read_bytes())
    other = capture(tmp_path / "plug.pcap", sender=PLUG, frames=4)
    assert main(["ingest", str(other), str(copy), "--db", str(db)]) == 2
    err = capsys.readouterr().err
    assert f"{copy} was already added to {db}" in err and f"(as {first})" in err
    assert "pass --replace" in err
    assert activity_rows(db) == once, "nothing of the refused command was stored"
    # Nor written beside it: an activity file asked for with the refused database is kept.
    kept_csv = tmp_path / "kept.csv"
    kept_csv.write_text("kept\n")
    assert main(["ingest", str(copy), "--db", str(db), "--out", str(kept_csv)]) == 2
    assert "was already added" in capsys.readouterr().err
    assert kept_csv.read_text() == "kept\n"
    assert main(["ingest", str(other), str(copy), "--db", str(db), "--replace"]) == 0
    rows = activity_rows(db)
    assert [r for r in rows if r[0] == CAM] == once
    assert sum(int(r[3]) for r in rows if r[0] == PLUG) == 4  # type: ignore[call-overload]


def test_a_file_named_twice_counts_once_and_captures_of_one_name_stay_apart(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    folder = tmp_path / "in"
    folder.mkdir()
    first = capture(folder / "cam.pcap", frames=10)
    out = tmp_path / "a.csv"
    again = str(tmp_path / "in" / "." / "cam.pcap")
    assert main(["ingest", str(first), again, str(folder), "--out", str(out)]) == 0
    assert "10 records from 1 file(s)" in capsys.readouterr().out
    rows = out.read_text().splitlines()[1:]
    assert sum(int(row.split(",")[4]) for row in rows) == 10
    # Two captures named cam.pcap in two folders, and cam.pcapng beside one: three tracks.
    (tmp_path / "day2").mkdir()
    capture(tmp_path / "day2" / "cam.pcap", frames=4)
    (folder / "cam.pcapng").write_bytes(capture(tmp_path / "x.pcap", frames=6).read_bytes())
    inputs = [str(first), str(tmp_path / "day2" / "cam.pcap"), str(folder / "cam.pcapng")]
    assert main(["ingest", *inputs, "--tracks", "capture", "--out", str(out)]) == 0
    packets: dict[str, int] = {}
    for row in out.read_text().splitlines()[1:]:
        device = row.split(",")[0]
        packets[device] = packets.get(device, 0) + int(row.split(",")[4])
    assert packets == {f"{CAM}#in/cam.pcap": 10, f"{CAM}#day2/cam": 4, f"{CAM}#in/cam.pcapng": 6}


def test_a_skipped_stretch_says_how_much_was_lost(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = capture(tmp_path / "cam.pcap")
    data = bytearray(path.read_bytes())
    first_record = 24 + 16 + 42  # the global header, then one record of a 42-byte UDP frame
    data[first_record + 8 : first_record + 12] = (0x7FFF0000).to_bytes(4, "little")
    path.write_bytes(bytes(data))
    out = tmp_path / "a.csv"
    assert main(["ingest", str(path), "--out", str(out), "--skip-bad-records"]) == 0
    assert "29 records from 1 file(s), 1 skipped (70 bytes unreadable)" in (capsys.readouterr().out)


def test_engine_commands_can_leave_out_a_damaged_capture(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    folder = tmp_path / "captures"
    folder.mkdir()
    for n in range(4):
        capture(folder / f"cam-{n}.pcap", start=1.7e9 + n * 1000)
    damaged = folder / "cam-2.pcap"
    damaged.write_bytes(damaged.read_bytes()[:-20])
    (folder / "notes.csv").write_text("this is not a flow file\n")
    labels = tmp_path / "labels.csv"
    labels.write_text(f"{CAM},camera\n")
    refs = tmp_path / "refs.json"
    args = ["enroll", str(folder), "--labels", str(labels), "--tracks", "capture"]
    args += ["--windows", "whole", "--time-unit", "10", "--out", str(refs)]
    assert main(args) == 2
    assert "cam-2.pcap: frame 30 is truncated" in capsys.readouterr().err
    assert not refs.exists()
    assert main([*args, "--skip-bad-records"]) == 0
    captured = capsys.readouterr()
    # The damaged capture keeps what lies before the damage; the text file is left out.
    assert "enrolled 4 reference fingerprints of 1 types" in captured.out
    assert "cam-2.pcap: frame 30 is truncated" in captured.err
    assert "notes.csv" in captured.err and "the whole file was left out" in captured.err


def test_a_closed_output_pipe_ends_quietly(tmp_path: Path) -> None:
    # Enough decisions that the JSON outgrows the pipe's buffer after the reader is gone.
    activity = tmp_path / "activity.csv"
    labels = tmp_path / "labels.csv"
    synth = ["synth", "--devices", "60", "--units", "200", "--output-format", "activity"]
    assert main([*synth, "--out", str(activity), "--labels-out", str(labels)]) == 0
    refs = tmp_path / "refs.json"
    enroll = ["enroll", "--activity", str(activity), "--labels", str(labels)]
    assert main([*enroll, "--n-min", "4", "--n-max", "8", "--out", str(refs)]) == 0
    command = [sys.executable, "-m", "svcfp", "identify", "--activity", str(activity)]
    command += ["--references", str(refs), "--output-format", "json"]
    process = subprocess.Popen(command, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert process.stdout is not None and process.stderr is not None
    assert process.stdout.read(1) == b"["
    process.stdout.close()
    status = process.wait(120)
    err = process.stderr.read().decode()
    assert status == 141, err
    assert "Traceback" not in err and "BrokenPipe" not in err


def test_a_time_unit_or_granularity_no_unit_number_can_hold_is_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = flows(tmp_path, GOOD)
    out = tmp_path / "activity.csv"
    for value in ("1e-300", "1e308"):
        refused_by_its_parser(
            capsys,
            ["ingest", str(path), "--all-devices", "--time-unit", value, "--out", str(out)],
            f"argument --time-unit: '{value}': a time unit lies in [1e-06, 4.10244e+09] seconds "
            "(a microsecond to the years 1970-2100)",
        )
    assert not out.exists()
    labels = tmp_path / "labels.csv"
    labels.write_text(f"{CAM},camera\n")
    refs = tmp_path / "refs.json"
    refused_by_its_parser(
        capsys,
        ["enroll", str(path), "--labels", str(labels), "--out", str(refs),
         "--granularity", "99999999999999999999"],
        "argument --granularity: granularity '99999999999999999999': at most 1000000 "
        "(a larger G differs from 'prevalence' by less than 1/G)",
    )  # fmt: skip
    assert not refs.exists()
    synth = tmp_path / "synth.csv"
    refused(
        capsys,
        ["synth", "--devices", "1", "--units", "2", "--time-unit", "4e9", "--out", str(synth)],
        "--units 2 of --time-unit 4e+09 s from --start 1483228800: the last unit must end by 2100",
    )
    assert not synth.exists()


def test_a_damaged_database_is_named_and_one_from_before_findings_has_none(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    good = tmp_path / "good.db"
    assert main(["ingest", str(flows(tmp_path, GOOD)), "--all-devices", "--db", str(good)]) == 0
    labels = tmp_path / "labels.csv"
    labels.write_text(f"{CAM},camera\n")

    def damaged(name: str, *statements: str) -> Path:
        db = tmp_path / name
        db.write_bytes(good.read_bytes())
        conn = sqlite3.connect(db)
        with conn:
            for statement in statements:
                conn.execute(statement)
        conn.close()
        return db

    def enroll(db: Path) -> int:
        out = tmp_path / "refs.json"
        return main(["enroll", "--db", str(db), "--labels", str(labels), "--out", str(out)])

    unit = damaged("unit.db", "UPDATE meta SET value = 'abc' WHERE key = 'time_unit_seconds'")
    for argv in (["mud", "findings", "--db", str(unit)], None):
        assert (main(argv) if argv else enroll(unit)) == 2
        assert (
            f"database {unit} is damaged: its time unit 'abc' is not a number of seconds in "
            "[1e-06, 4.10244e+09]" in capsys.readouterr().err
        )
    # The dashboard refuses it at start, rather than serving pages that all fail.
    dashboard = [sys.executable, "-m", "svcfp", "dashboard", "--db", str(unit)]
    result = subprocess.run(
        [*dashboard, "--http", "127.0.0.1:0"], cwd=ROOT, capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 2
    assert f"database {unit} is damaged: its time unit 'abc'" in result.stderr
    row = damaged("row.db", "UPDATE activity SET packets = 'abc'")
    assert enroll(row) == 2
    assert (
        f"database {row} is damaged: an activity row is not a device, a whole unit, a service and "
        "whole packet and byte counts (invalid literal for int() with base 10: 'abc')"
    ) in capsys.readouterr().err
    # Read as it is, a database an older svcfp wrote (schema version 2) holds no findings yet.
    older = damaged(
        "older.db",
        "DROP TABLE mud_findings",
        "DROP TABLE alerts",
        "DROP TABLE switch_status",
        "DELETE FROM schema_version WHERE version > 2",
    )
    assert main(["mud", "findings", "--db", str(older)]) == 0
    assert f"compliance findings in {older}: 0" in capsys.readouterr().out
    with sqlite3.connect(older) as conn:
        assert conn.execute("SELECT MAX(version) FROM schema_version").fetchone() == (2,)


def test_a_csv_field_past_the_csv_size_limit_is_refused_naming_the_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    long = "x" * 200_000
    limit = "not CSV: field larger than field limit (131072)"
    out = tmp_path / "activity.csv"
    damaged = flows(tmp_path, GOOD, f"{GOOD[:-3]}{long}", name="damaged.csv")
    assert main(["ingest", str(damaged), "--all-devices", "--out", str(out)]) == 2
    assert f"{damaged}: line 3: {limit}" in capsys.readouterr().err
    header = tmp_path / "header.csv"
    header.write_text(f"{HEADER},{long}\n{GOOD},1\n")
    assert main(["ingest", str(header), "--all-devices", "--out", str(out)]) == 2
    assert f"{header}: line 1: {limit}" in capsys.readouterr().err
    labels = tmp_path / "labels.csv"
    labels.write_text(f"mac,label\n{CAM},{long}\n")
    assert main(["ingest", str(flows(tmp_path, GOOD)), "--labels", str(labels),
                 "--out", str(out)]) == 2  # fmt: skip
    assert f"{labels}: line 2: {limit}" in capsys.readouterr().err
    assert not out.exists()
    models = tmp_path / "models.csv"
    models.write_text(f"folder,model\ncam,{long}\n")
    report = tmp_path / "report"
    assert main(["mud", "evaluate", str(tmp_path), "--models", str(models),
                 "--out", str(report)]) == 2  # fmt: skip
    assert f"{models}: line 2: {limit}" in capsys.readouterr().err


def test_a_column_named_twice_is_refused_as_the_reader_cannot_tell_which_holds_it(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    records = tmp_path / "flows.csv"
    records.write_text(f"{HEADER},destinationTransportPort\n{GOOD},80\n")
    out = tmp_path / "activity.csv"
    assert main(["ingest", str(records), "--all-devices", "--out", str(out)]) == 2
    assert (
        f"{records}: line 1: column(s) destinationTransportPort more than once"
        in capsys.readouterr().err
    )
    assert not out.exists()
    activity = tmp_path / "twice.csv"
    activity.write_text(
        f"device,unit,unit_seconds,service,packets,bytes,packets\n{CAM},1,3600,tcp/80,5,500,9\n"
    )
    labels = tmp_path / "labels.csv"
    labels.write_text(f"{CAM},camera\n")
    argv = ["enroll", "--activity", str(activity), "--labels", str(labels)]
    assert main([*argv, "--out", str(tmp_path / "refs.json")]) == 2
    assert f"{activity}: line 1: column(s) packets more than once" in capsys.readouterr().err
    # A field past the csv module's size limit, where the line reader has to read it.
    damaged = tmp_path / "damaged.csv"
    damaged.write_text(
        f"device,unit,unit_seconds,service,packets,bytes\n{CAM},1,3600,tcp/80,{'x' * 200_000},1\n"
    )
    argv = ["enroll", "--activity", str(damaged), "--labels", str(labels)]
    assert main([*argv, "--out", str(tmp_path / "refs.json")]) == 2
    assert (
        f"{damaged}: line 2: not CSV: field larger than field limit (131072)"
        in capsys.readouterr().err
    )
