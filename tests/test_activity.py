from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from controller.base.errors import InputError
from controller.engine.activity import ActivityRecord, ActivityTable, units_of
from tests.support.engine import same_activity

A = "aa:bb:cc:dd:ee:01"
B = "aa:bb:cc:dd:ee:02"


def test_from_records_sums_duplicates_and_sorts() -> None:
    table = ActivityTable.from_records(
        [
            (B, 5, "udp/53", 2, 200),
            (A, 7, "tcp/443", 1, 60),
            (A, 5, "tcp/443", 3, 300),
            (A, 5, "tcp/443", 4, 400),
            (A, 5, "udp/53", 1, 90),
        ],
        unit_seconds=60,
    )
    assert table.devices == (A, B)
    assert table.services == ("tcp/443", "udp/53")
    assert list(table.records()) == [
        ActivityRecord(A, 5, "tcp/443", 7, 700),
        ActivityRecord(A, 5, "udp/53", 1, 90),
        ActivityRecord(A, 7, "tcp/443", 1, 60),
        ActivityRecord(B, 5, "udp/53", 2, 200),
    ]
    assert table.unit_seconds == 60.0
    assert table.unit_range() == (5, 7)


def test_from_arrays_drops_zero_packet_rows() -> None:
    table = ActivityTable.from_arrays(
        devices=(A,),
        services=("tcp/80", "icmp"),
        device=[0, 0, 0],
        unit=[1, 1, 2],
        service=[0, 1, 0],
        packets=[0, 2, 5],
        bytes=[0, 100, 500],
    )
    assert list(table.records()) == [
        ActivityRecord(A, 1, "icmp", 2, 100),
        ActivityRecord(A, 2, "tcp/80", 5, 500),
    ]
    assert table.device.dtype == np.int32 and table.unit.dtype == np.int64


@pytest.mark.parametrize(
    ("bad", "message"),
    [
        ({"unit": [1, 2]}, "differ in length"),
        ({"service": [1]}, "service codes"),
        ({"packets": [-1]}, "negative"),
    ],
)
def test_from_arrays_rejects_bad_columns(bad: dict[str, list[int]], message: str) -> None:
    columns = {"device": [0], "unit": [1], "service": [0], "packets": [1], "bytes": [1]} | bad
    with pytest.raises(InputError, match=message):
        ActivityTable.from_arrays(devices=(A,), services=("x",), **columns)  # type: ignore[arg-type]


def test_large_aggregation_matches_bincount() -> None:
    rng = np.random.default_rng(3)
    n = 200_000
    dev = rng.integers(0, 50, n)
    unit = rng.integers(1_000_000, 1_000_100, n)
    svc = rng.integers(0, 30, n)
    pkt = rng.integers(1, 10, n)
    table = ActivityTable.from_arrays(
        devices=[f"d{i}" for i in range(50)],
        services=[f"s{i}" for i in range(30)],
        device=dev,
        unit=unit,
        service=svc,
        packets=pkt,
        bytes=pkt * 100,
    )
    flat = (dev * 100 + (unit - 1_000_000)) * 30 + svc
    expected = np.bincount(flat, weights=pkt, minlength=50 * 100 * 30)
    got = np.zeros_like(expected)
    got[(table.device * 100 + (table.unit - 1_000_000)) * 30 + table.service] = table.packets
    assert np.array_equal(got, expected)
    assert int(table.bytes.sum()) == int(pkt.sum()) * 100
    assert np.all(
        np.diff((table.device.astype(np.int64) * 100 + table.unit) * 30 + table.service) > 0
    )


def test_concat_merges_vocabularies() -> None:
    one = ActivityTable.from_records([(A, 1, "tcp/443", 1, 10)], unit_seconds=10)
    two = ActivityTable.from_records([(B, 1, "udp/53", 2, 20), (A, 1, "tcp/443", 3, 30)], 10)
    both = ActivityTable.concat([one, two])
    assert both.devices == (A, B)
    assert both.services == ("tcp/443", "udp/53")
    assert list(both.records()) == [
        ActivityRecord(A, 1, "tcp/443", 4, 40),
        ActivityRecord(B, 1, "udp/53", 2, 20),
    ]
    with pytest.raises(InputError, match="units of"):
        ActivityTable.concat([one, ActivityTable.empty(20)])


def test_select_and_regroup() -> None:
    table = ActivityTable.from_records(
        [(A, u, "tcp/443", 1, 10) for u in range(-3, 7)] + [(B, 2, "udp/53", 5, 50)],
        unit_seconds=60,
    )
    picked = table.select(devices=[A], units=(0, 3))
    assert [(r.device, r.unit) for r in picked.records()] == [(A, 0), (A, 1), (A, 2)]
    assert len(table.select(services=["udp/53"])) == 1
    hourly = table.with_unit_seconds(180)
    assert [(r.device, r.unit, r.packets) for r in hourly.records()] == [
        (A, -1, 3),
        (A, 0, 3),
        (A, 1, 3),
        (A, 2, 1),
        (B, 0, 5),
    ]
    assert hourly.unit_seconds == 180
    with pytest.raises(InputError, match="integer multiple"):
        table.with_unit_seconds(90)


def test_renamed_keeps_rows_under_new_keys() -> None:
    table = ActivityTable.from_records([(A, 1, "tcp/443", 2, 20), (B, 1, "udp/53", 5, 50)])
    renamed = table.renamed([f"{d}#x" for d in table.devices])
    assert list(renamed.records()) == [
        ActivityRecord(f"{A}#x", 1, "tcp/443", 2, 20),
        ActivityRecord(f"{B}#x", 1, "udp/53", 5, 50),
    ]
    with pytest.raises(InputError, match="needs as many distinct names, got 2 \\(1 distinct\\)"):
        table.renamed(["same", "same"])


def test_units_of_floors_negative_and_fractional_times() -> None:
    assert units_of([0, 3599.9, 3600, -0.5], 3600).tolist() == [0, 0, 1, -1]


def test_csv_round_trip_and_errors(tmp_path: Path) -> None:
    table = ActivityTable.from_records(
        [(A, 1, "tcp/443", 1, 10), (B, 2, "udp/49152-65535", 2, 20)], unit_seconds=0.5
    )
    path = tmp_path / "activity.csv"
    table.to_csv(path)
    assert path.read_text().splitlines()[0] == "device,unit,unit_seconds,service,packets,bytes"
    back = ActivityTable.from_csv(path)
    assert same_activity(back, table) and back.unit_seconds == 0.5
    assert list(tmp_path.iterdir()) == [path]

    bad = tmp_path / "bad.csv"
    bad.write_text("device,unit,service,packets\nx,1,tcp/1,1\n")
    with pytest.raises(InputError, match=r"bad.csv: line 1: missing column\(s\) bytes"):
        ActivityTable.from_csv(bad, unit_seconds=1)
    bad.write_text("device,unit,service,packets,bytes\nx,1,tcp/1,1,5\ny,one,tcp/1,1,5\n")
    with pytest.raises(InputError, match=r"bad.csv: line 3: not a number"):
        ActivityTable.from_csv(bad, unit_seconds=1)
    with pytest.raises(InputError, match="no unit_seconds column"):
        ActivityTable.from_csv(bad)
    with pytest.raises(InputError, match="cannot read"):
        ActivityTable.from_csv(tmp_path / "absent.csv")


@pytest.mark.parametrize(
    ("row", "message"),
    [
        ("x,-3,60,tcp/1,1,5", r"line 3: unit -3 of 60 s does not start between 1970 and 2100"),
        (
            "x,99999999999999999999,60,tcp/1,1,5",
            r"line 3: unit 99999999999999999999 of 60 s does not start between 1970 and 2100",
        ),
        ("x,68400001,60,tcp/1,1,5", r"line 3: unit 68400001 of 60 s does not start between"),
        ("x,2,60,tcp/1,1,99999999999999999999", r"line 3: packet or byte count out of range"),
        ("x,2,0,tcp/1,1,5", r"line 2: unit_seconds must be a positive number of seconds, got 0"),
    ],
)
def test_csv_rows_that_cannot_be_measurements(tmp_path: Path, row: str, message: str) -> None:
    bad = tmp_path / "bad.csv"
    first = "y,1,60,tcp/1,1,5" if ",0,tcp" not in row else row
    bad.write_text(f"device,unit,unit_seconds,service,packets,bytes\n{first}\n{row}\n")
    with pytest.raises(InputError, match=rf"bad.csv: {message}"):
        ActivityTable.from_csv(bad)


def test_csv_that_is_not_text(tmp_path: Path) -> None:
    bad = tmp_path / "bad.csv"
    bad.write_bytes(b"device,unit,service,packets,bytes\n\x8e\xff\x00,1,tcp/1,1,5\n")
    with pytest.raises(
        InputError, match=r"bad.csv: cannot read activity file: not UTF-8 text \(byte 0x8e\)"
    ):
        ActivityTable.from_csv(bad, unit_seconds=60)


def test_csv_with_mixed_units_and_duplicates(tmp_path: Path) -> None:
    path = tmp_path / "mixed.csv"
    path.write_text(
        "device,unit,unit_seconds,service,packets,bytes\n"
        f"{A},1,60,tcp/443,1,10\n{A},1,60,tcp/443,2,20\n{B},1,60,udp/53,1,5\n"
    )
    table = ActivityTable.from_csv(path)
    assert list(table.records()) == [
        ActivityRecord(A, 1, "tcp/443", 3, 30),
        ActivityRecord(B, 1, "udp/53", 1, 5),
    ]
    path.write_text(
        "device,unit,unit_seconds,service,packets,bytes\n"
        f"{A},1,60,tcp/443,1,10\n{B},1,3600,udp/53,1,5\n"
    )
    with pytest.raises(InputError, match=r"mixed.csv: line 3: unit_seconds 3600.0 differs"):
        ActivityTable.from_csv(path)
    path.write_text(f"device,unit,unit_seconds,service,packets,bytes\n{A},1,60,tcp/443,-1,10\n")
    with pytest.raises(InputError, match=r"mixed.csv: line 2: negative packet or byte count"):
        ActivityTable.from_csv(path)


def test_csv_quotes_names_that_need_it(tmp_path: Path) -> None:
    table = ActivityTable.from_records(
        [("lab, bench 1", 4, 'odd "service"', 2, 20), (A, 4, "tcp/443", 1, 10)], unit_seconds=60
    )
    path = tmp_path / "quoted.csv"
    table.to_csv(path)
    assert '"lab, bench 1",4,60,"odd ""service""",2,20' in path.read_text()
    assert same_activity(ActivityTable.from_csv(path), table)
    plain = tmp_path / "plain.csv"
    ActivityTable.from_records([(A, 4, "tcp/443", 1, 10)], unit_seconds=60).to_csv(plain)
    assert plain.read_text() == (
        "device,unit,unit_seconds,service,packets,bytes\naa:bb:cc:dd:ee:01,4,60,tcp/443,1,10\n"
    )
