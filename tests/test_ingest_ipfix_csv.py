from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from controller.base.errors import InputError
from controller.base.macs import mac_to_int
from controller.engine.catalogue import Catalogue
from controller.ingest.ipfix_csv import parse_column_map, read_ipfix_csv
from tests.support.engine import same_activity

HUE = "00:17:88:24:76:ff"
A = "aa:bb:cc:dd:ee:01"
HEADER = (
    "flowStartMilliseconds,sourceMacAddress,destinationMacAddress,protocolIdentifier,"
    "sourceTransportPort,destinationTransportPort,packetTotalCount,octetTotalCount,"
    "reversePacketTotalCount,reverseOctetTotalCount"
)
ROWS = [
    # The Hue bridge answers a client on tcp/80 (forward), the client's requests (reverse).
    "1490000000000,00:17:88:24:76:FF,aa:bb:cc:dd:ee:01,6,80,51000,5,500,4,300",
    # A client asks the bridge's DNS server, a quoted ISO timestamp one hour later.
    '"2017-03-20 09:00:00.500",aa-bb-cc-dd-ee-01,00:17:88:24:76:ff,17,40000,53,1,70,1,120',
    # A non-IP record: empty protocol and ports.
    "1490000000000,aa:bb:cc:dd:ee:01,ff:ff:ff:ff:ff:ff,,,,2,84,0,0",
    # ICMP by name, unidirectional.
    "1490000001000,aa:bb:cc:dd:ee:01,00:17:88:24:76:ff,icmp,0,0,3,252,0,0",
]
EXPECTED = [
    (HUE, 413888, "tcp/80", 5, 500),
    (HUE, 413889, "udp/53", 1, 120),
    (A, 413888, "icmp", 3, 252),
    (A, 413888, "other", 2, 84),
    (A, 413888, "tcp/80", 4, 300),
    (A, 413889, "udp/53", 1, 70),
]


def write(tmp_path: Path, header: str, rows: list[str], name: str = "flows.csv") -> Path:
    path = tmp_path / name
    path.write_text("\n".join([header, *rows]) + "\n")
    return path


def rows_of(path: Path, **kwargs: object) -> list[tuple[object, ...]]:
    table, _ = read_ipfix_csv(path, Catalogue.default(), 3600, **kwargs)  # type: ignore[arg-type]
    return sorted(tuple(r) for r in table.records())


@pytest.mark.parametrize("use_arrow", [True, False])
def test_biflows_timestamps_and_non_ip(tmp_path: Path, use_arrow: bool) -> None:
    path = write(tmp_path, HEADER, ROWS)
    assert rows_of(path, use_arrow=use_arrow) == EXPECTED


@pytest.mark.parametrize("use_arrow", [True, False])
def test_device_filter_and_delta_counts(tmp_path: Path, use_arrow: bool) -> None:
    header = HEADER.replace("TotalCount", "DeltaCount")
    path = write(tmp_path, header, ROWS)
    only = np.array([mac_to_int(HUE)], dtype=np.uint64)
    assert rows_of(path, devices=only, use_arrow=use_arrow) == [r for r in EXPECTED if r[0] == HUE]


def test_column_map_for_other_exports(tmp_path: Path) -> None:
    header = "ts,smac,dmac,proto,sp,dp,pkts,octets"
    rows = ["1490000000000,aa:bb:cc:dd:ee:01,00:17:88:24:76:ff,17,40000,123,2,180"]
    path = write(tmp_path, header, rows)
    mapping = parse_column_map(
        "flowStartMilliseconds=ts,sourceMacAddress=smac,destinationMacAddress=dmac,"
        "protocolIdentifier=proto,sourceTransportPort=sp,destinationTransportPort=dp,"
        "packetDeltaCount=pkts,octetDeltaCount=octets"
    )
    assert rows_of(path, column_map=mapping) == [(A, 413888, "udp/123", 2, 180)]
    with pytest.raises(InputError, match="expected name=column"):
        parse_column_map("flowStartMilliseconds")
    with pytest.raises(InputError, match="'colour' is not an IPFIX field"):
        parse_column_map("colour=c")


def test_many_rows_fast_and_line_paths_agree(tmp_path: Path) -> None:
    rng = np.random.default_rng(11)
    n = 5000
    macs = [f"aa:bb:cc:00:00:{i:02x}" for i in range(20)]
    lines = [
        f"{1490000000000 + int(rng.integers(0, 10 * 3600_000))},{macs[int(rng.integers(20))]},"
        f"{macs[int(rng.integers(20))]},{int(rng.choice([6, 17, 1]))},"
        f"{int(rng.integers(0, 65536))},{int(rng.choice([53, 80, 443, 5353, 8080, 50000]))},"
        f"{int(rng.integers(1, 50))},{int(rng.integers(60, 5000))},"
        f"{int(rng.integers(0, 3))},{int(rng.integers(0, 500))}"
        for _ in range(n)
    ]
    path = write(tmp_path, HEADER, lines)
    fast, fast_stats = read_ipfix_csv(path, Catalogue.default(), 3600)
    slow, slow_stats = read_ipfix_csv(path, Catalogue.default(), 3600, use_arrow=False)
    assert same_activity(fast, slow)
    assert fast_stats.records == slow_stats.records == n
    total = sum(int(line.split(",")[6]) + int(line.split(",")[8]) for line in lines)
    assert int(fast.packets.sum()) == total


@pytest.mark.parametrize("use_arrow", [True, False])
@pytest.mark.parametrize(
    ("row", "message"),
    [
        (
            "1490000000000,aa:bb:cc:dd:ee:01,00:17:88:24:76:ff,6,http,80,1,1,0,0",
            "source port is not a number: 'http'",
        ),
        (
            "1490000000000,aa:bb:cc:dd:ee:01,00:17:88:24:76:ff,6,1,70000,1,1,0,0",
            "destination port out of range: 70000",
        ),
        ("yesterday,aa:bb:cc:dd:ee:01,00:17:88:24:76:ff,6,1,80,1,1,0,0", "start time is neither"),
        ("1490000000000,not-a-mac,00:17:88:24:76:ff,6,1,80,1,1,0,0", "source MAC is not a MAC"),
        ("1490000000000,aa:bb:cc:dd:ee:01,00:17:88:24:76:ff,6,1,80,,1,0,0", "empty packet count"),
        (
            "1490000000000,aa:bb:cc:dd:ee:01,zz:zz,6,1,80,1,1,1,1",
            "destination MAC is not a MAC: 'zz:zz'",
        ),
        (
            "1490000000000,aa:bb:cc:dd:ee:01,00:17:88:24:76:ff,xyz,1,80,1,1,0,0",
            "protocol is not a number",
        ),
    ],
)
def test_bad_values_name_the_line(tmp_path: Path, use_arrow: bool, row: str, message: str) -> None:
    path = write(tmp_path, HEADER, [*ROWS, row])
    with pytest.raises(InputError, match=rf"flows.csv: line 6: {message}"):
        read_ipfix_csv(path, Catalogue.default(), use_arrow=use_arrow)
    table, stats = read_ipfix_csv(
        path, Catalogue.default(), 3600, skip_bad_records=True, use_arrow=use_arrow
    )
    assert stats.skipped == 1 and stats.records == 5
    assert "line 6" in stats.problems[0]
    assert sorted(tuple(r) for r in table.records()) == EXPECTED


# Epoch start times only, so that pyarrow reads the file itself rather than leaving a column of
# mixed times to the line reader.
EPOCH_ROWS = [ROWS[0], ROWS[2], ROWS[3]]
EPOCH_EXPECTED = [r for r in EXPECTED if r[1] == 413888]


def outcome(path: Path, use_arrow: bool, skip: bool) -> object:
    """What reading gives: the error, or the rows and how many records were skipped."""
    try:
        table, stats = read_ipfix_csv(
            path, Catalogue.default(), 3600, skip_bad_records=skip, use_arrow=use_arrow
        )
    except InputError as exc:
        return str(exc)
    return sorted(tuple(r) for r in table.records()), stats.records, stats.skipped


@pytest.mark.parametrize(
    ("row", "message"),
    [
        (
            "1490000000000,aa:bb:cc:dd:ee:01,00:17:88:24:76:ff,6,1,80,0x10,1,0,0",
            "packet count is not a number: '0x10'",
        ),
        (
            "1490000000000,aa:bb:cc:dd:ee:01,00:17:88:24:76:ff,6,0X1F,80,1,1,0,0",
            "source port is not a number: '0X1F'",
        ),
        (
            "1490000000000,aa:bb:cc:dd:ee:01,00:17:88:24:76:ff,6,1,80,1,1,1,0x0",
            "reverse octet count is not a number: '0x0'",
        ),
        (
            "1490000000000,aa:bb:cc:dd:ee:01,00:17:88:24:76:ff,6,1,80,+5,1,0,0",
            "packet count is not a number: '\\+5'",
        ),
        (
            "1490000000000,aa:bb:cc:dd:ee:01,00:17:88:24:76:ff,6,1,80,1_000,1,0,0",
            "packet count is not a number: '1_000'",
        ),
    ],
)
def test_counts_not_in_decimal_are_refused_by_both_readers(
    tmp_path: Path, row: str, message: str
) -> None:
    path = write(tmp_path, HEADER, [*EPOCH_ROWS, row])
    for use_arrow in (True, False):
        with pytest.raises(InputError, match=rf"flows.csv: line 5: {message}"):
            read_ipfix_csv(path, Catalogue.default(), use_arrow=use_arrow)
    expected = (EPOCH_EXPECTED, 4, 1)
    assert outcome(path, True, skip=True) == outcome(path, False, skip=True) == expected


def test_both_readers_agree_on_padded_and_negative_counts(tmp_path: Path) -> None:
    padded = "1490000000000,aa:bb:cc:dd:ee:01,00:17:88:24:76:ff,6,1, 80 ,\t2, 100,0,0"
    negative = "1490000000000,aa:bb:cc:dd:ee:01,00:17:88:24:76:ff,6,1,80,-2,100,0,0"
    path = write(tmp_path, HEADER, [*EPOCH_ROWS, padded])
    added = [
        (A, 413888, "tcp/80", 6, 400) if r[:3] == (A, 413888, "tcp/80") else r
        for r in EPOCH_EXPECTED
    ]
    for skip in (False, True):
        assert outcome(path, True, skip) == outcome(path, False, skip) == (added, 4, 0)
    path = write(tmp_path, HEADER, [*EPOCH_ROWS, negative])
    assert outcome(path, True, skip=False) == outcome(path, False, skip=False)
    expected = (EPOCH_EXPECTED, 4, 1)
    assert outcome(path, True, skip=True) == outcome(path, False, skip=True) == expected


def test_missing_columns_and_files(tmp_path: Path) -> None:
    path = write(tmp_path, "sourceMacAddress,packetTotalCount", ["aa:bb:cc:dd:ee:01,1"])
    with pytest.raises(InputError, match=r"flows.csv: line 1: missing start time column"):
        read_ipfix_csv(path, Catalogue.default())
    path = write(tmp_path, "flowStartMilliseconds,sourceMacAddress", ["1,aa:bb:cc:dd:ee:01"])
    with pytest.raises(InputError, match="missing column packetTotalCount or packetDeltaCount"):
        read_ipfix_csv(path, Catalogue.default())
    header = "flowStartMilliseconds,sourceMacAddress,packetTotalCount,reversePacketTotalCount"
    path = write(tmp_path, header, ["1,aa:bb:cc:dd:ee:01,1,1"])
    with pytest.raises(InputError, match="biflow columns need the destination MAC"):
        read_ipfix_csv(path, Catalogue.default())
    empty = tmp_path / "empty.csv"
    empty.write_text("")
    with pytest.raises(InputError, match=r"empty.csv: empty file"):
        read_ipfix_csv(empty, Catalogue.default())
    with pytest.raises(InputError, match="cannot read"):
        read_ipfix_csv(tmp_path / "absent.csv", Catalogue.default())
