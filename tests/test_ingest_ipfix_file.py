from __future__ import annotations

import shutil
import socket
import struct
import subprocess
import time
from collections import Counter
from pathlib import Path

import pytest
from scapy.layers.inet import IP, TCP, UDP
from scapy.layers.l2 import Ether
from scapy.utils import wrpcap

from controller.base.errors import InputError
from controller.engine.catalogue import Catalogue
from controller.ingest.ipfix_file import read_ipfix
from controller.ingest.pcap import read_pcap
from tests.support.engine import same_activity
from tests.support.reading import refused_then_skipped

A = "aa:bb:cc:dd:ee:01"
B = "aa:bb:cc:dd:ee:02"
MAC_A = bytes.fromhex("aabbccddee01")
MAC_B = bytes.fromhex("aabbccddee02")
T0 = 1_490_000_000


def field(element: int, length: int, pen: int = 0) -> bytes:
    if pen:
        return struct.pack(">HHI", element | 0x8000, length, pen)
    return struct.pack(">HH", element, length)


def ipfix_set(set_id: int, body: bytes) -> bytes:
    return struct.pack(">HH", set_id, len(body) + 4) + body


def message(sets: list[bytes], export_time: int = T0, domain: int = 1) -> bytes:
    body = b"".join(sets)
    return struct.pack(">HHIII", 10, len(body) + 16, export_time, 0, domain) + body


# Template 300: start ms, src MAC, dst MAC, proto, ports, packets, bytes (reduced to 4 bytes),
# an enterprise field of 3 bytes nobody knows, a variable-length interface name, and the
# reverse packet count of RFC 5103.
FIELDS_300 = [
    field(152, 8),
    field(56, 6),
    field(80, 6),
    field(4, 1),
    field(7, 2),
    field(11, 2),
    field(2, 4),
    field(1, 4),
    field(99, 3, pen=12345),
    field(82, 65535),
    field(2, 8, pen=29305),
]
TEMPLATE_300 = struct.pack(">HH", 300, len(FIELDS_300)) + b"".join(FIELDS_300)


def record_300(
    ms: int,
    src: bytes,
    dst: bytes,
    proto: int,
    sp: int,
    dp: int,
    pk: int,
    octets: int,
    name: bytes,
    rev: int,
) -> bytes:
    name_field = (
        bytes([len(name)]) + name
        if len(name) < 255
        else b"\xff" + struct.pack(">H", len(name)) + name
    )
    return (
        struct.pack(">Q", ms)
        + src
        + dst
        + struct.pack(">BHHII", proto, sp, dp, pk, octets)
        + b"\x01\x02\x03"
        + name_field
        + struct.pack(">Q", rev)
    )


# Options template 400 (scope: observation domain id) carrying systemInitTimeMilliseconds, and
# template 301 whose flows give their start as flowStartSysUpTime.
OPTIONS_400 = struct.pack(">HHH", 400, 2, 1) + field(149, 4) + field(160, 8)
TEMPLATE_301 = (
    struct.pack(">HH", 301, 5)
    + field(22, 4)
    + field(56, 6)
    + field(4, 1)
    + field(11, 2)
    + field(86, 8)
)


def hand_built_file(path: Path) -> None:
    data_early = ipfix_set(300, b"\x00" * 10)  # before its template: skipped and counted
    first = message([data_early, ipfix_set(2, TEMPLATE_300)])
    records = ipfix_set(
        300,
        record_300((T0 + 10) * 1000, MAC_A, MAC_B, 6, 51000, 443, 5, 400, b"eth0", 4)
        + record_300((T0 + 3600) * 1000, MAC_B, MAC_A, 17, 40000, 53, 1, 60, b"x" * 300, 1)
        + b"\x00\x00",  # padding shorter than any record
    )
    second = message([records])
    options = message(
        [
            ipfix_set(3, OPTIONS_400),
            ipfix_set(400, struct.pack(">IQ", 1, (T0 + 7200) * 1000)),
            ipfix_set(2, TEMPLATE_301),
            ipfix_set(301, struct.pack(">I6sBHQ", 1500, MAC_A, 17, 123, 2)),
        ]
    )
    path.write_bytes(first + second + options)


def test_hand_built_messages(tmp_path: Path) -> None:
    path = tmp_path / "flows.ipfix"
    hand_built_file(path)
    table, stats = read_ipfix(path, Catalogue.default(), 3600)
    assert sorted(tuple(r) for r in table.records()) == [
        (A, T0 // 3600, "tcp/443", 5, 400),
        (A, (T0 + 3600) // 3600, "udp/53", 1, 0),  # the reverse of B's DNS query
        (A, (T0 + 7201) // 3600, "udp/123", 2, 0),  # init time + 1.5 s of uptime
        (B, T0 // 3600, "tcp/443", 4, 0),  # the server's answers on tcp/443
        (B, (T0 + 3600) // 3600, "udp/53", 1, 60),
    ]
    assert stats.records == 3
    assert stats.skipped == 1 and "unknown template 300" in stats.problems[0]


def test_corrupt_set_length_and_truncation(tmp_path: Path) -> None:
    path = tmp_path / "bad.ipfix"
    hand_built_file(path)
    good = path.read_bytes()
    first_len = struct.unpack_from(">H", good, 2)[0]
    broken = bytearray(good)
    struct.pack_into(">H", broken, first_len + 16 + 2, 9999)  # second message's set length
    path.write_bytes(bytes(broken))
    table, stats = refused_then_skipped(
        read_ipfix,
        path,
        rf"bad.ipfix: message 2 at offset {first_len}: set at offset {first_len + 16} has "
        "invalid length 9999",
        3600,
    )
    assert stats.skipped == 2  # the early data set and the corrupt message
    assert [r.service for r in table.records()] == ["udp/123"]

    path.write_bytes(good[:-7])
    with pytest.raises(InputError, match=r"message 3 at offset .*runs past the end of the file"):
        read_ipfix(path, Catalogue.default())
    path.write_bytes(b"\x00\x05" + good[2:])
    with pytest.raises(InputError, match="message 1 at offset 0: version 5 is neither"):
        read_ipfix(path, Catalogue.default())
    path.write_bytes(b"")
    with pytest.raises(InputError, match=r"bad.ipfix: empty file, expected IPFIX or NetFlow v9"):
        read_ipfix(path, Catalogue.default())


def test_fields_wider_than_their_type_and_a_missing_length_byte(tmp_path: Path) -> None:
    # Template 400: start ms, a 16-byte source MAC, proto, 8-byte ports, packets.
    wide = [field(152, 8), field(56, 16), field(4, 1), field(7, 8), field(11, 8), field(2, 8)]
    template = ipfix_set(2, struct.pack(">HH", 400, len(wide)) + b"".join(wide))
    ok = struct.pack(">Q16sBQQQ", T0 * 1000, bytes(10) + MAC_A, 17, 5353, 5353, 3)
    huge_mac = struct.pack(">Q16sBQQQ", T0 * 1000, b"\xff" * 16, 6, 1, 443, 1)
    huge_port = struct.pack(">Q16sBQQQ", T0 * 1000, bytes(10) + MAC_A, 6, 1 << 40, 443, 1)
    path = tmp_path / "wide.ipfix"
    path.write_bytes(message([template, ipfix_set(400, ok + huge_mac + huge_port)]))
    wider = r"source MAC address 0xf{32} is wider than its field allows \(at most 0xf{12}\)"
    table, stats = refused_then_skipped(
        read_ipfix, path, rf"wide.ipfix: flow record 2: {wider}", 3600
    )
    assert [(r.device, r.service, r.packets) for r in table.records()] == [(A, "udp/5353", 3)]
    assert stats.records == 3 and stats.skipped == 2
    assert "flow record 3: source port 0x10000000000 is wider" in stats.problems[1]
    # Two variable-length fields: the record's first one fills the set, the second's length
    # byte lies past its end.
    varying = [field(152, 8), field(56, 6), field(82, 65535), field(83, 65535)]
    template = ipfix_set(2, struct.pack(">HH", 401, len(varying)) + b"".join(varying))
    cut = struct.pack(">Q6sBc", T0 * 1000, MAC_A, 1, b"e")
    path.write_bytes(message([template, ipfix_set(401, cut)]))
    with pytest.raises(
        InputError, match=r"message 1 at offset 0: variable-length field runs past its set"
    ):
        read_ipfix(path, Catalogue.default())


def _softflowd(pcap: Path, tmp_path: Path, args: list[str], expect_packets: int) -> bytes:
    """Export `pcap` with softflowd to a UDP socket on loopback; the datagrams, concatenated."""
    receiver = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    receiver.bind(("127.0.0.1", 0))
    receiver.settimeout(1.0)
    control = tmp_path / "softflowd.ctl"
    port = receiver.getsockname()[1]
    process = subprocess.Popen(
        [
            "softflowd",
            "-r",
            str(pcap),
            "-n",
            f"127.0.0.1:{port}",
            "-d",
            "-c",
            str(control),
            "-p",
            str(tmp_path / "softflowd.pid"),
            "-a",
            *args,
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        # softflowd 1.1 reading a file waits for a control connection between read loops:
        # ask for statistics until every packet is processed, then shut it down (which exports).
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            if not control.exists():
                time.sleep(0.05)
                continue
            out = subprocess.run(
                ["softflowctl", "-c", str(control), "statistics"],
                capture_output=True,
                text=True,
                timeout=5,
            ).stdout
            if f"Packets processed: {expect_packets}" in out:
                break
        subprocess.run(
            ["softflowctl", "-c", str(control), "shutdown"], capture_output=True, timeout=5
        )
        process.wait(timeout=10)
        datagrams = []
        try:
            while True:
                datagrams.append(receiver.recv(65535))
        except TimeoutError:
            pass
        return b"".join(datagrams)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(timeout=5)
        receiver.close()


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("softflowd") is None, reason="softflowd is not installed")
@pytest.mark.parametrize("args", [["-v", "10", "-b"], ["-v", "10"], ["-v", "9"]])
def test_softflowd_export_matches_pcap_ingestion(tmp_path: Path, args: list[str]) -> None:
    packets = []
    flows = [
        (A, B, TCP, 51000, 443, 3),
        (B, A, TCP, 443, 51000, 2),
        (A, B, UDP, 40000, 53, 1),
        (B, A, UDP, 53, 40000, 1),
        (A, B, UDP, 5353, 5353, 4),
        (B, A, TCP, 52000, 80, 2),
        (A, B, TCP, 80, 52000, 2),
        (A, B, UDP, 40001, 123, 1),
    ]
    for i, (src, dst, l4, sp, dp, count) in enumerate(flows):
        ips = ("10.0.0.1", "10.0.0.2") if src == A else ("10.0.0.2", "10.0.0.1")
        for k in range(count):
            p = Ether(src=src, dst=dst) / IP(src=ips[0], dst=ips[1]) / l4(sport=sp, dport=dp)
            p.time = T0 + i * 0.1 + k * 0.01
            packets.append(p)
    packets.sort(key=lambda p: float(p.time))
    pcap = tmp_path / "in.pcap"
    wrpcap(str(pcap), packets)
    exported = tmp_path / "export.bin"
    exported.write_bytes(
        _softflowd(pcap, tmp_path, [*args, "-T", "ether"], expect_packets=len(packets))
    )
    catalogue = Catalogue.default()
    from_flows, stats = read_ipfix(exported, catalogue, 60)
    from_packets, _ = read_pcap(pcap, catalogue, 60)
    # softflowd counts IP bytes, the switch whole frames: compare packets.
    want = Counter({(r.device, r.unit, r.service): r.packets for r in from_packets.records()})
    got = Counter({(r.device, r.unit, r.service): r.packets for r in from_flows.records()})
    assert got == want
    assert got[(A, T0 // 60, "tcp/443")] == 3 and got[(A, T0 // 60, "tcp/80")] == 2
    assert stats.skipped == 0


def test_netflow_v9_messages(tmp_path: Path) -> None:
    # Template 260: FIRST_SWITCHED, IN_SRC_MAC, PROTOCOL, L4_SRC_PORT, L4_DST_PORT, IN_PKTS.
    template = struct.pack(">HH", 260, 6) + b"".join(
        struct.pack(">HH", t, n) for t, n in ((22, 4), (56, 6), (4, 1), (7, 2), (11, 2), (2, 4))
    )
    uptime_ms, unix_secs = 100_000, T0 + 100
    records = struct.pack(">I6sBHHI", 40_000, MAC_A, 17, 40000, 53, 3) + struct.pack(
        ">I6sBHHI", 95_000, MAC_B, 6, 80, 51000, 7
    )
    records += b"\x00" * (-len(records) % 4)

    def v9(flowsets: bytes, count: int) -> bytes:
        return struct.pack(">HHIIII", 9, count, uptime_ms, unix_secs, 0, 7) + flowsets

    flowset_template = struct.pack(">HH", 0, len(template) + 4) + template
    flowset_data = struct.pack(">HH", 260, len(records) + 4) + records
    path = tmp_path / "flows.nf9"
    # The second message's count is wrong on purpose: exporters get it wrong, framing must not
    # depend on it.
    path.write_bytes(v9(flowset_template, 1) + v9(flowset_data, 99))
    table, stats = read_ipfix(path, Catalogue.default(), 60)
    # start = export time - uptime + FIRST_SWITCHED: T0 + 40 s and T0 + 95 s.
    assert sorted(tuple(r) for r in table.records()) == [
        (A, (T0 + 40) // 60, "udp/53", 3, 0),
        (B, (T0 + 95) // 60, "tcp/80", 7, 0),
    ]
    assert stats.records == 2 and stats.skipped == 0


def test_capture_of_exporter_traffic(tmp_path: Path) -> None:
    flat = tmp_path / "flows.ipfix"
    hand_built_file(flat)
    data = flat.read_bytes()
    datagrams = []
    pos = 0
    while pos < len(data):
        length = struct.unpack_from(">H", data, pos + 2)[0]
        datagrams.append(data[pos : pos + length])
        pos += length
    assert len(datagrams) == 3
    exporter = Ether(src="02:00:00:00:00:99", dst="02:00:00:00:00:98")
    packets = [exporter / IP() / UDP(sport=50000, dport=4739) / d for d in datagrams]
    packets.insert(1, Ether(src=A, dst=B) / IP() / TCP(dport=80))  # not an export: ignored
    capture = tmp_path / "exports.pcap"
    wrpcap(str(capture), packets)
    from_capture, capture_stats = read_ipfix(capture, Catalogue.default(), 3600)
    from_file, file_stats = read_ipfix(flat, Catalogue.default(), 3600)
    assert same_activity(from_capture, from_file) and len(from_capture) == 5
    assert capture_stats.records == file_stats.records == 3
