from __future__ import annotations

import struct
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from scapy.layers.inet import ICMP, IP, TCP, UDP
from scapy.layers.inet6 import IPv6
from scapy.layers.l2 import ARP, Dot1Q, Ether
from scapy.packet import Raw

from controller.base.errors import InputError
from controller.base.macs import mac_to_int
from controller.base.pcapfile import frame_batches, read_frames
from controller.engine.catalogue import Catalogue
from controller.ingest.flows import IngestStats
from controller.ingest.pcap import LINKS, parse_frames, read_pcap
from tests.support.reading import refused_then_skipped

A = "aa:bb:cc:dd:ee:01"
B = "aa:bb:cc:dd:ee:02"


def frames() -> list[tuple[float, bytes, str, str]]:
    """(time, frame, device expected to be counted, service expected)."""
    ab = Ether(src=A, dst=B)
    ba = Ether(src=B, dst=A)
    tcp_trunc = bytes(ab / IP(src="10.0.0.1", dst="10.0.0.2", proto=6))[:34] + b"\x00" * 10
    icmp_trunc = bytes(ab / IP(src="10.0.0.1", dst="10.0.0.2", proto=1))[:34] + b"\x08\x00"
    short_ihl = bytearray(bytes(ab / IP(src="10.0.0.1", dst="10.0.0.2") / ICMP()))
    short_ihl[14] = 0x43  # version 4, IHL 3: the switch stops parsing without an error
    return [
        (1000.0, bytes(ab / IP() / TCP(sport=51000, dport=443)), A, "tcp/443"),
        (1001.5, bytes(ab / IP() / TCP(sport=80, dport=40000)), A, "tcp/80"),
        (1002.0, bytes(ab / IP() / UDP(sport=5353, dport=5353) / Raw(b"x" * 30)), A, "udp/5353"),
        (1003.0, bytes(ab / IP() / ICMP()), A, "icmp"),
        (1004.0, bytes(ab / IPv6() / UDP(sport=40000, dport=123)), A, "udp/123"),
        (1005.0, bytes(ab / Dot1Q(vlan=7) / IP() / UDP(sport=40000, dport=53)), A, "udp/53"),
        (1006.0, bytes(ab / IP(options=b"\x01\x01\x01\x00") / TCP(dport=8883)), A, "tcp/8883"),
        (1007.0, tcp_trunc, A, "other"),
        (1008.0, bytes(ab / IP(frag=10, proto=17) / Raw(b"y" * 20)), A, "other"),
        (1009.0, bytes(ab / ARP()), A, "other"),
        (1010.0, bytes(ab / IP(proto=47) / Raw(b"g" * 8)), A, "ip/other"),
        (1011.0, icmp_trunc, A, "other"),
        (1012.0, bytes(short_ihl), A, "icmp"),
        (1013.0, bytes(ab / IPv6(nh=0) / Raw(b"h" * 8)), A, "ip/0"),
        (1070.0, bytes(ba / IP() / UDP(sport=40000, dport=53)), B, "udp/53"),
        (1071.0, bytes(ba / IP(proto=6) / Raw(b"\x00" * 3)), B, "other"),
    ]


def expected_activity(
    items: list[tuple[float, bytes, str, str]], unit: float = 60.0
) -> list[tuple[str, int, str, int, int]]:
    counts: Counter[tuple[str, int, str]] = Counter()
    sizes: Counter[tuple[str, int, str]] = Counter()
    for t, frame, device, service in items:
        key = (device, int(t // unit), service)
        counts[key] += 1
        sizes[key] += len(frame)
    return sorted((d, u, s, counts[(d, u, s)], sizes[(d, u, s)]) for d, u, s in counts)


def write_pcap(
    path: Path,
    items: list[tuple[float, bytes]],
    order: str = "<",
    nanoseconds: bool = False,
    linktype: int = 1,
) -> None:
    magic = 0xA1B23C4D if nanoseconds else 0xA1B2C3D4
    parts = [struct.pack(order + "IHHiIII", magic, 2, 4, 0, 0, 65535, linktype)]
    for t, frame in items:
        sec = int(t)
        frac = round((t - sec) * (1e9 if nanoseconds else 1e6))
        parts.append(struct.pack(order + "IIII", sec, frac, len(frame), len(frame)) + frame)
    path.write_bytes(b"".join(parts))


def _block(block_type: int, body: bytes) -> bytes:
    body += b"\x00" * (-len(body) % 4)
    length = len(body) + 12
    return struct.pack("<II", block_type, length) + body + struct.pack("<I", length)


def write_pcapng(
    path: Path,
    items: list[tuple[float, bytes]],
    simple_last: bool = False,
    links: tuple[int, ...] = (1,),
    interfaces: list[int] | None = None,
) -> None:
    """A pcapng file with one interface per link type of `links`; frame i is on interface
    `interfaces[i]` (the first one by default)."""
    shb = _block(0x0A0D0D0A, struct.pack("<IHHq", 0x1A2B3C4D, 1, 0, -1))
    tsresol = struct.pack("<HHB", 9, 1, 9) + b"\x00" * 3 + struct.pack("<HH", 0, 0)
    blocks = [shb, *(_block(1, struct.pack("<HHI", link, 0, 0) + tsresol) for link in links)]
    for i, (t, frame) in enumerate(items):
        if simple_last and i == len(items) - 1:
            blocks.append(_block(3, struct.pack("<I", len(frame)) + frame))
            continue
        ticks = round(t * 1e9)
        iface = 0 if interfaces is None else interfaces[i]
        header = struct.pack(
            "<IIIII", iface, ticks >> 32, ticks & 0xFFFFFFFF, len(frame), len(frame)
        )
        blocks.append(_block(6, header + frame))
    path.write_bytes(b"".join(blocks))


def cooked(frame: bytes, v2: bool = False, hatype: int = 1, halen: int = 6) -> bytes:
    """The Linux cooked frame (SLL, or SLL2 with `v2`) that a capture on Linux's "any" interface
    records for an Ethernet `frame` received (packet type 0) on an interface of ARPHRD type
    `hatype` whose addresses are `halen` bytes long."""
    address = frame[6:12] + b"\x00\x00"
    ethertype = frame[12:14]
    if v2:
        header = ethertype + b"\x00\x00" + struct.pack(">IHBB", 3, hatype, 0, halen) + address
    else:
        header = struct.pack(">HHH", 0, hatype, halen) + address + ethertype
    return header + frame[14:]


def records(
    path: Path, unit: float = 60.0, **kwargs: object
) -> list[tuple[str, int, str, int, int]]:
    table, _stats = read_pcap(path, Catalogue.default(), unit, **kwargs)  # type: ignore[arg-type]
    return sorted(tuple(r) for r in table.records())  # type: ignore[misc]


@pytest.mark.parametrize(("order", "ns"), [("<", False), (">", False), ("<", True), (">", True)])
def test_pcap_byte_orders_and_resolutions(tmp_path: Path, order: str, ns: bool) -> None:
    items = frames()
    path = tmp_path / "c.pcap"
    write_pcap(path, [(t, f) for t, f, _, _ in items], order=order, nanoseconds=ns)
    assert records(path) == expected_activity(items)
    stats = IngestStats()
    times = np.concatenate([b.time for b in frame_batches(path, on_skip=stats.skip)])
    assert times.tolist() == pytest.approx([t for t, _, _, _ in items])


def test_scapy_written_pcap_and_small_batches(tmp_path: Path) -> None:
    from scapy.utils import wrpcap

    items = frames()
    packets = []
    for t, frame, _, _ in items:
        packet = Ether(frame)
        packet.time = t
        packets.append(packet)
    path = tmp_path / "scapy.pcap"
    wrpcap(str(path), packets)
    assert records(path) == expected_activity(items)
    assert records(path, batch_size=3) == expected_activity(items)


def test_pcapng_enhanced_and_simple_blocks(tmp_path: Path) -> None:
    items = frames()
    path = tmp_path / "c.pcapng"
    write_pcapng(path, [(t, f) for t, f, _, _ in items])
    assert records(path) == expected_activity(items)
    # A simple packet block has no timestamp: it counts in unit 0.
    write_pcapng(path, [(t, f) for t, f, _, _ in items], simple_last=True)
    want = expected_activity([*items[:-1], (0.0, items[-1][1], B, "other")])
    assert records(path) == want


def test_only_labelled_devices(tmp_path: Path) -> None:
    items = frames()
    path = tmp_path / "c.pcap"
    write_pcap(path, [(t, f) for t, f, _, _ in items])
    only_b = np.array([mac_to_int(B)], dtype=np.uint64)
    assert records(path, devices=only_b) == [r for r in expected_activity(items) if r[0] == B]


def test_parse_frames_fields(tmp_path: Path) -> None:
    path = tmp_path / "c.pcap"
    frame = bytes(Ether(src=A, dst=B) / IP() / TCP(sport=80, dport=40000))
    write_pcap(path, [(5.0, frame), (6.0, b"\x01" * 10)])
    (batch,) = list(frame_batches(path))
    parsed = parse_frames(batch)
    assert len(parsed) == 1  # the 10-byte frame has no Ethernet header
    assert parsed.src_mac.tolist() == [mac_to_int(A)]
    assert parsed.dst_mac.tolist() == [mac_to_int(B)]
    assert (parsed.proto[0], parsed.sport[0], parsed.dport[0]) == (6, 80, 40000)
    assert parsed.bytes.tolist() == [len(frame)]


@pytest.mark.parametrize(("v2", "link"), [(False, 113), (True, 276)])
def test_linux_cooked_captures_count_as_their_ethernet_frames(
    tmp_path: Path, v2: bool, link: int
) -> None:
    items = frames()
    path = tmp_path / "any.pcap"
    sent = [(t, cooked(f, v2)) for t, f, _, _ in items]
    # Frames of a loopback interface (ARPHRD 772, an all-zero address), of an interface without
    # addresses and one shorter than the cooked header name no device.
    ip = bytes(Ether(src=A, dst=B) / IP() / UDP(sport=40000, dport=53))
    nameless = [cooked(ip, v2, hatype=772), cooked(ip, v2, hatype=65534, halen=0), b"\x00" * 15]
    write_pcap(path, sent + [(1003.5, frame) for frame in nameless], linktype=link)
    table, stats = read_pcap(path, Catalogue.default(), 60)
    assert sorted(tuple(r) for r in table.records()) == expected_activity(items)
    assert stats.records == len(items) + 3 and stats.skipped == 0
    (batch,) = list(frame_batches(path, links=LINKS))
    assert batch.link == link
    parsed = parse_frames(batch)
    assert parsed.dst_mac.tolist() == [0] * len(items)  # a cooked header keeps no destination
    # The capture is not Ethernet, so it cannot be replayed into a switch.
    with pytest.raises(InputError, match=rf"any.pcap: link type {link} is not Ethernet \(1\)$"):
        list(read_frames(path))


def test_scapy_written_linux_cooked_capture(tmp_path: Path) -> None:
    from scapy.layers.l2 import CookedLinux
    from scapy.utils import wrpcap

    address = bytes.fromhex(A.replace(":", "")) + b"\x00\x00"
    head = CookedLinux(pkttype=0, lladdrtype=1, lladdrlen=6, src=address)
    packets = [head / IP() / TCP(sport=50000, dport=8883), head / IP() / UDP(dport=123)]
    for i, packet in enumerate(packets):
        packet.time = 1000.0 + i
    path = tmp_path / "scapy-any.pcap"
    wrpcap(str(path), packets)
    assert struct.unpack_from("<I", path.read_bytes(), 20)[0] == 113
    assert records(path) == [
        (A, 16, "tcp/8883", 1, len(packets[0]) - 2),
        (A, 16, "udp/123", 1, len(packets[1]) - 2),
    ]


def test_pcapng_of_ethernet_and_cooked_interfaces(tmp_path: Path) -> None:
    items = frames()
    on = [i % 2 for i in range(len(items))]
    sent = [(t, cooked(f) if on[i] else f) for i, (t, f, _, _) in enumerate(items)]
    path = tmp_path / "two.pcapng"
    write_pcapng(path, sent, links=(1, 113), interfaces=on)
    assert records(path) == expected_activity(items)
    # A batch holds frames of one link type: the link changes with every frame here.
    assert [b.link for b in frame_batches(path, links=LINKS)] == [(1, 113)[i] for i in on]
    with pytest.raises(InputError, match=r"two.pcapng: frame 2: link type 113 is not Ethernet"):
        list(read_frames(path))


def test_truncated_capture_names_frame_and_keeps_earlier_frames(tmp_path: Path) -> None:
    items = frames()
    path = tmp_path / "cut.pcap"
    write_pcap(path, [(t, f) for t, f, _, _ in items])
    data = path.read_bytes()
    path.write_bytes(data[:-5])
    last_offset = len(data) - 16 - len(items[-1][1])
    with pytest.raises(
        InputError, match=rf"cut.pcap: frame 16 is truncated at offset {last_offset}: frame of"
    ):
        read_pcap(path, Catalogue.default(), 60)
    table, stats = read_pcap(path, Catalogue.default(), 60, skip_bad_records=True)
    assert sorted(tuple(r) for r in table.records()) == expected_activity(items[:-1])
    assert stats.records == 15 and stats.skipped == 1
    assert "frame 16" in stats.problems[0]
    assert stats.unread_bytes == len(items[-1][1]) + 16 - 5
    path.write_bytes(data[: -len(items[-1][1]) - 10])
    with pytest.raises(InputError, match="truncated record header"):
        read_pcap(path, Catalogue.default(), 60)


def test_skipping_a_corrupt_record_resumes_at_the_next_intact_one(tmp_path: Path) -> None:
    items = frames()
    path = tmp_path / "damaged.pcap"
    write_pcap(path, [(t, f) for t, f, _, _ in items])
    data = bytearray(path.read_bytes())
    # Record 5's captured length is garbled: nothing after it can be found by walking lengths.
    at = 24 + sum(16 + len(f) for _, f, _, _ in items[:4])
    data[at + 8 : at + 12] = struct.pack("<I", 0x7FFF0000)
    path.write_bytes(bytes(data))
    with pytest.raises(InputError, match=rf"damaged.pcap: frame 5 is corrupt at offset {at}"):
        read_pcap(path, Catalogue.default(), 60)
    table, stats = read_pcap(path, Catalogue.default(), 60, skip_bad_records=True)
    kept = items[:4] + items[5:]
    assert sorted(tuple(r) for r in table.records()) == expected_activity(kept)
    assert stats.records == len(kept) and stats.skipped == 1
    lost = 16 + len(items[4][1])
    assert stats.unread_bytes == lost
    assert (
        f"{lost} bytes skipped to the next intact record at offset {at + lost}"
        in (stats.problems[0])
    )


def test_bad_files(tmp_path: Path) -> None:
    path = tmp_path / "bad.pcap"
    path.write_bytes(b"NOT A CAPTURE AT ALL")
    with pytest.raises(
        InputError, match=r"bad.pcap: not a pcap or pcapng file \(magic 0x4e4f5420\)"
    ):
        read_pcap(path, Catalogue.default())
    write_pcap(path, [(1.0, b"\x00" * 20)], linktype=105)
    refused = (
        r"link type 105 is not Ethernet \(1\), Linux cooked \(113\) or Linux cooked v2 \(276\)"
    )
    with pytest.raises(InputError, match=rf"bad.pcap: {refused}"):
        read_pcap(path, Catalogue.default())
    ng = tmp_path / "bad.pcapng"
    write_pcapng(ng, [(t, f) for t, f, _, _ in frames()])
    data = bytearray(ng.read_bytes())
    data[-4:] = struct.pack("<I", 999)  # trailer disagrees with the block length
    ng.write_bytes(bytes(data))
    with pytest.raises(InputError, match=r"bad.pcapng: block at offset \d+ \(after frame 15\)"):
        read_pcap(ng, Catalogue.default())
    table, stats = read_pcap(ng, Catalogue.default(), 60, skip_bad_records=True)
    assert stats.records == 15 and stats.skipped == 1
    assert sorted(tuple(r) for r in table.records()) == expected_activity(frames()[:15])
    with pytest.raises(InputError, match="cannot read capture"):
        read_pcap(tmp_path / "absent.pcap", Catalogue.default())


def test_pcapng_blocks_too_short_for_their_fields(tmp_path: Path) -> None:
    items = frames()
    good = tmp_path / "good.pcapng"
    write_pcapng(good, [(t, f) for t, f, _, _ in items])
    end = len(good.read_bytes())
    short = tmp_path / "short.pcapng"
    # An enhanced packet block of 12 bytes: a valid length and trailer, but no packet header.
    short.write_bytes(good.read_bytes() + struct.pack("<III", 6, 12, 12))
    too_short = r"block of type 6 is too short \(12 bytes\)"
    table, stats = refused_then_skipped(
        read_pcap,
        short,
        rf"short.pcapng: block at offset {end} \(after frame 16\): {too_short}",
        60,
    )
    assert sorted(tuple(r) for r in table.records()) == expected_activity(items)
    assert stats.skipped == 1
    # An interface option whose value runs past its block.
    shb = _block(0x0A0D0D0A, struct.pack("<IHHq", 0x1A2B3C4D, 1, 0, -1))
    idb = _block(1, struct.pack("<HHI", 1, 0, 0) + struct.pack("<HH", 14, 8) + b"\x00" * 4)
    (tmp_path / "option.pcapng").write_bytes(shb + idb)
    with pytest.raises(
        InputError,
        match=r"option.pcapng: block at offset 28 \(after frame 0\): "
        r"interface description: option 14 of 8 bytes runs past the block",
    ):
        read_pcap(tmp_path / "option.pcapng", Catalogue.default())


@pytest.mark.data
def test_hue_bridge_services_match_the_data_set_facts(shared_data: Path) -> None:
    folder = shared_data / "iot-sentinel" / "captures" / "HueBridge"
    mac = (folder / "_iotdevice-mac.txt").read_text().strip().lower()
    catalogue = Catalogue.default()
    served = client = 0
    services: Counter[str] = Counter()
    for capture in sorted(folder.glob("*.pcap")):
        table, stats = read_pcap(capture, catalogue, 3600)
        assert stats.skipped == 0
        for r in table.select(devices=[mac]).records():
            services[r.service] += r.packets
        for batch in frame_batches(capture):
            parsed = parse_frames(batch)
            mine = (parsed.src_mac == mac_to_int(mac)) & (parsed.proto == 6)
            served += int(((parsed.sport == 80) & mine).sum())
            client += int(((parsed.dport == 80) & mine).sum())
    for service in ("tcp/80", "udp/53", "udp/123", "udp/5353", "udp/1900"):
        assert services[service] > 0, service
    assert served > 0 and client > 0  # tcp/80 both as server and as client


@pytest.mark.data
def test_dlink_and_edimax_facts(shared_data: Path) -> None:
    captures = shared_data / "iot-sentinel" / "captures"
    catalogue = Catalogue.default()

    def services_of(device_type: str) -> set[str]:
        folder = captures / device_type
        mac = (folder / "_iotdevice-mac.txt").read_text().strip().lower()
        found: set[str] = set()
        for capture in sorted(folder.glob("*.pcap")):
            table, _ = read_pcap(capture, catalogue, 3600)
            found |= set(table.select(devices=[mac]).used_services())
        return found

    assert {"tcp/80", "tcp/443", "udp/5353", "udp/53"} <= services_of("D-LinkSiren")
    assert {"udp/8765", "tcp/8767", "tcp/10000"} <= services_of("EdimaxPlug1101W")
    assert {"udp/80", "udp/5353"} <= services_of("Lightify")


@pytest.mark.data
@pytest.mark.parametrize("v2", [False, True])
def test_a_real_capture_taken_as_linux_cooked_gives_the_same_activity(
    shared_data: Path, tmp_path: Path, v2: bool
) -> None:
    capture = shared_data / "iot-sentinel" / "captures" / "HueBridge" / "Setup-A-1-STA.pcap"
    original = [(f.timestamp, f.data) for f in read_frames(capture)]
    path = tmp_path / "any.pcap"
    write_pcap(path, [(t, cooked(f, v2)) for t, f in original], linktype=276 if v2 else 113)
    catalogue = Catalogue.default()
    want, _ = read_pcap(capture, catalogue, 1)
    got, stats = read_pcap(path, catalogue, 1)
    assert stats.records == len(original) > 100
    assert sorted(tuple(r) for r in got.records()) == sorted(tuple(r) for r in want.records())


def test_group_and_zero_source_addresses_are_no_devices(tmp_path: Path) -> None:
    items = frames()
    udp = IP() / UDP(sport=5353, dport=5353)
    strays = [
        bytes(Ether(src=src, dst=B) / udp)
        for src in ("ff:ff:ff:ff:ff:ff", "01:00:5e:00:00:fb", "33:33:00:00:00:01", "0:0:0:0:0:0")
    ]
    path = tmp_path / "c.pcap"
    write_pcap(path, [(t, f) for t, f, _, _ in items] + [(1020.0, f) for f in strays])
    # As the controller admits devices: none of them is one, and the others count as before.
    assert records(path) == expected_activity(items)
