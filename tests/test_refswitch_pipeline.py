"""The reference switch's pipeline model against hand-built frames, case by case of p4src/README."""

from __future__ import annotations

import pytest
from scapy.layers.inet import ICMP, IP, TCP, UDP
from scapy.layers.inet6 import ICMPv6EchoRequest, IPv6
from scapy.layers.l2 import ARP, Dot1Q, Ether

from controller.base.p4info import P4Schema
from refswitch.pipeline import (
    DROP,
    FLOOD,
    PACKET_TOO_SHORT,
    Pipeline,
    ServiceRule,
    TableState,
    crc16,
)
from refswitch.program import Program
from tests.support.paths import P4INFO

DEV_MAC = "aa:bb:cc:dd:ee:01"
DEV_RAW = bytes.fromhex("aabbccddee01")
OTHER_MAC = "aa:bb:cc:dd:ee:02"
OTHER_RAW = bytes.fromhex("aabbccddee02")
SERVER_MAC = "02:00:00:00:00:fe"
SERVER_RAW = bytes.fromhex("0200000000fe")
DEVICE_ID = 5
# The committed build's constants, as its P4Info carries them.
CONTRACT = P4Schema.load(P4INFO).contract
DIGEST_REPEAT_US = CONTRACT.digest_repeat_us
FLOOD_GROUP = CONTRACT.flood_group

S_HTTPS, S_DNS, S_HTTP, S_ICMP, S_ICMPV6, S_EPHEMERAL, S_ANY_UDP = 3, 4, 5, 6, 7, 8, 9

RULES_BY_DST = (
    ServiceRule(100, 6, 0xFF, 443, 443, S_HTTPS),
    ServiceRule(100, 17, 0xFF, 53, 53, S_DNS),
    ServiceRule(100, 6, 0xFF, 80, 80, S_HTTP),
    ServiceRule(100, 1, 0xFF, 0, 0xFFFF, S_ICMP),
    ServiceRule(100, 58, 0xFF, 0, 0xFFFF, S_ICMPV6),
    ServiceRule(10, 17, 0xFF, 49152, 65535, S_EPHEMERAL),
    ServiceRule(1, 17, 0xFF, 0, 0xFFFF, S_ANY_UDP),
)
RULES_BY_SRC = (ServiceRule(100, 6, 0xFF, 80, 80, S_HTTP),)


class Clock:
    def __init__(self) -> None:
        self.now = 10_000_000

    def __call__(self) -> int:
        return self.now


@pytest.fixture(scope="module")
def program() -> Program:
    return Program.from_p4info(P4Schema.load(P4INFO).p4info)


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def digests() -> list[tuple[int, int]]:
    return []


@pytest.fixture
def pipe(program: Program, clock: Clock, digests: list[tuple[int, int]]) -> Pipeline:
    pipeline = Pipeline(
        program, clock=clock, digest_sink=lambda mac, port: digests.append((mac, port))
    )
    pipeline.install(
        TableState(
            devices={DEV_RAW: DEVICE_ID},
            by_dst=RULES_BY_DST,
            by_src=RULES_BY_SRC,
            l2={SERVER_RAW: 2, DEV_RAW: 1},
            groups={FLOOD_GROUP: (1, 2, 3)},
        )
    )
    return pipeline


def cell(pipe: Pipeline, device: int, service: int) -> tuple[int, int]:
    return pipe.read_counter(device * pipe.max_services + service)


def tcp(dport: int, sport: int = 40000, src: str = DEV_MAC, dst: str = SERVER_MAC) -> bytes:
    return bytes(
        Ether(src=src, dst=dst) / IP(src="10.0.0.1", dst="10.0.0.2") / TCP(sport=sport, dport=dport)
    )


def test_limits_come_from_the_p4info(program: Program) -> None:
    assert (program.max_devices, program.max_services, program.digest_cache_size) == (
        1024,
        256,
        256,
    )


def _bmv2_crc16(data: bytes) -> int:
    """BMv2's calculations.cpp algorithm, literally: reflect each byte, MSB-first table for
    0x8005, reflect the 16-bit remainder."""

    def reflect(value: int, bits: int) -> int:
        return int(f"{value:0{bits}b}"[::-1], 2)

    table = []
    for byte in range(256):
        remainder = byte << 8
        for _ in range(8):
            remainder = ((remainder << 1) ^ 0x8005) if remainder & 0x8000 else remainder << 1
        table.append(remainder & 0xFFFF)
    remainder = 0
    for byte in data:
        remainder = (table[reflect(byte, 8) ^ (remainder >> 8)] ^ (remainder << 8)) & 0xFFFF
    return reflect(remainder, 16)


def test_crc16_is_bmv2s_crc16_arc() -> None:
    assert crc16(b"123456789") == 0xBB3D  # the CRC-16/ARC check value
    assert crc16(b"") == 0
    for data in (DEV_RAW, OTHER_RAW, SERVER_RAW, bytes(6), b"\xff" * 6):
        assert crc16(data) == _bmv2_crc16(data)


def test_tcp_to_a_service_counts_the_device_cell_and_forwards(pipe: Pipeline) -> None:
    frame = tcp(443)
    verdict = pipe.trace(frame, 1)
    assert (verdict.device_id, verdict.service_id) == (DEVICE_ID, S_HTTPS)
    assert verdict.counter_index == DEVICE_ID * 256 + S_HTTPS
    assert verdict.egress_ports == (2,)
    assert verdict.valid_headers == ("ethernet", "ipv4", "tcp")
    assert cell(pipe, DEVICE_ID, S_HTTPS) == (1, len(frame))
    pipe.process(frame + b"\x00" * 40, 1)
    assert cell(pipe, DEVICE_ID, S_HTTPS) == (2, 2 * len(frame) + 40)


def test_source_port_maps_a_server_response(pipe: Pipeline) -> None:
    verdict = pipe.trace(tcp(dport=51000, sport=80), 1)
    assert verdict.service_id == S_HTTP


def test_both_tables_miss_is_service_zero(pipe: Pipeline) -> None:
    assert pipe.trace(tcp(dport=8443), 1).service_id == 0
    assert cell(pipe, DEVICE_ID, 0)[0] == 1


def test_priority_decides_between_overlapping_entries(pipe: Pipeline) -> None:
    udp = Ether(src=DEV_MAC, dst=SERVER_MAC) / IP() / UDP(sport=1234, dport=50000)
    assert pipe.trace(bytes(udp), 1).service_id == S_EPHEMERAL
    udp[UDP].dport = 5000
    assert pipe.trace(bytes(udp), 1).service_id == S_ANY_UDP
    udp[UDP].dport = 53
    assert pipe.trace(bytes(udp), 1).service_id == S_DNS


def test_ternary_mask_matches_a_protocol_family(program: Program) -> None:
    pipeline = Pipeline(program)
    pipeline.install(TableState(by_dst=(ServiceRule(5, 0x10, 0xF0, 0, 0xFFFF, 11),)))
    udp = bytes(Ether() / IP() / UDP(dport=7))
    assert pipeline.trace(udp, 0).service_id == 11  # 17 & 0xF0 == 0x10
    assert pipeline.trace(tcp(7), 0).service_id == 0  # 6 & 0xF0 == 0x00


def test_vlan_tag_is_parsed(pipe: Pipeline) -> None:
    frame = Ether(src=DEV_MAC, dst=SERVER_MAC) / Dot1Q(vlan=7) / IP() / TCP(dport=443)
    verdict = pipe.trace(bytes(frame), 1)
    assert verdict.service_id == S_HTTPS
    assert verdict.valid_headers == ("ethernet", "vlan", "ipv4", "tcp")


def test_second_vlan_tag_is_not_parsed(pipe: Pipeline) -> None:
    frame = (
        Ether(src=DEV_MAC, dst=SERVER_MAC) / Dot1Q(vlan=7) / Dot1Q(vlan=8) / IP() / TCP(dport=443)
    )
    verdict = pipe.trace(bytes(frame), 1)
    assert verdict.valid_headers == ("ethernet", "vlan")
    assert verdict.service_id == 0
    assert cell(pipe, DEVICE_ID, 0) == (1, len(frame))


def test_ipv4_options_are_skipped(pipe: Pipeline) -> None:
    frame = Ether(src=DEV_MAC, dst=SERVER_MAC) / IP(ihl=15, options=b"\x01" * 40) / TCP(dport=443)
    raw = bytes(frame)
    assert raw[14] & 0x0F == 15
    verdict = pipe.trace(raw, 1)
    assert verdict.valid_headers == ("ethernet", "ipv4", "ipv4_options", "tcp")
    assert verdict.service_id == S_HTTPS


def test_truncated_ipv4_options_are_a_parser_error(pipe: Pipeline) -> None:
    raw = bytes(
        Ether(src=DEV_MAC, dst=SERVER_MAC) / IP(ihl=15, options=b"\x01" * 40) / TCP(dport=443)
    )
    cut = raw[: 14 + 20 + 12]
    verdict = pipe.trace(cut, 1)
    assert verdict.parser_error == PACKET_TOO_SHORT
    assert verdict.valid_headers == ("ethernet", "ipv4")
    assert verdict.service_id == 0
    assert verdict.egress_ports == (2,)
    assert cell(pipe, DEVICE_ID, 0) == (1, len(cut))


def test_truncated_tcp_is_counted_as_service_zero_and_forwarded(pipe: Pipeline) -> None:
    raw = tcp(443)
    cut = raw[: 14 + 20 + 1]
    verdict = pipe.trace(cut, 1)
    assert verdict.parser_error == PACKET_TOO_SHORT
    assert verdict.valid_headers == ("ethernet", "ipv4")
    assert (verdict.service_id, verdict.egress_ports) == (0, (2,))
    assert cell(pipe, DEVICE_ID, 0) == (1, 35)


def test_truncated_udp_is_service_zero(pipe: Pipeline) -> None:
    raw = bytes(Ether(src=DEV_MAC, dst=SERVER_MAC) / IP() / UDP(dport=53))
    assert pipe.trace(raw[:-1], 1).service_id == 0
    assert pipe.trace(raw, 1).service_id == S_DNS


def test_ihl_below_five_stops_parsing(pipe: Pipeline) -> None:
    raw = bytearray(tcp(443))
    raw[14] = 0x44  # version 4, IHL 4
    verdict = pipe.trace(bytes(raw), 1)
    assert verdict.valid_headers == ("ethernet", "ipv4")
    assert verdict.parser_error == "NoError"
    assert verdict.service_id == 0  # TCP without its header is never looked up
    icmp = bytearray(bytes(Ether(src=DEV_MAC, dst=SERVER_MAC) / IP() / ICMP()))
    icmp[14] = 0x43
    # A protocol other than TCP/UDP keeps its key (proto, 0, 0) when parsing ended without error.
    assert pipe.trace(bytes(icmp), 1).service_id == S_ICMP


def test_later_fragments_carry_no_l4_header(pipe: Pipeline) -> None:
    later = Ether(src=DEV_MAC, dst=SERVER_MAC) / IP(frag=100, proto=6) / (b"\x01\xbb" * 20)
    verdict = pipe.trace(bytes(later), 1)
    assert verdict.valid_headers == ("ethernet", "ipv4")
    assert verdict.service_id == 0
    first = Ether(src=DEV_MAC, dst=SERVER_MAC) / IP(flags="MF", frag=0) / TCP(dport=443)
    assert pipe.trace(bytes(first), 1).service_id == S_HTTPS
    icmp_later = Ether(src=DEV_MAC, dst=SERVER_MAC) / IP(frag=10, proto=1) / (b"\x00" * 16)
    assert pipe.trace(bytes(icmp_later), 1).service_id == S_ICMP


def test_icmp_and_its_truncation(pipe: Pipeline) -> None:
    raw = bytes(Ether(src=DEV_MAC, dst=SERVER_MAC) / IP() / ICMP())
    verdict = pipe.trace(raw, 1)
    assert verdict.valid_headers == ("ethernet", "ipv4", "icmp")
    assert verdict.service_id == S_ICMP
    cut = pipe.trace(raw[: 14 + 20 + 3], 1)
    assert cut.parser_error == PACKET_TOO_SHORT
    assert cut.service_id == 0


def test_ipv6_udp_and_icmpv6(pipe: Pipeline) -> None:
    udp = bytes(Ether(src=DEV_MAC, dst=SERVER_MAC) / IPv6() / UDP(sport=5353, dport=53))
    verdict = pipe.trace(udp, 1)
    assert verdict.valid_headers == ("ethernet", "ipv6", "udp")
    assert verdict.service_id == S_DNS
    icmp6 = bytes(Ether(src=DEV_MAC, dst=SERVER_MAC) / IPv6() / ICMPv6EchoRequest())
    verdict = pipe.trace(icmp6, 1)
    assert verdict.valid_headers == ("ethernet", "ipv6", "icmp")
    assert verdict.service_id == S_ICMPV6
    short = pipe.trace(udp[: 14 + 30], 1)
    assert short.parser_error == PACKET_TOO_SHORT
    assert short.valid_headers == ("ethernet",)


def test_arp_and_other_ethertypes_are_service_zero(pipe: Pipeline) -> None:
    arp = bytes(Ether(src=DEV_MAC, dst="ff:ff:ff:ff:ff:ff") / ARP())
    verdict = pipe.trace(arp, 1)
    assert verdict.valid_headers == ("ethernet", "arp")
    assert verdict.service_id == 0
    assert verdict.egress_ports == (2, 3)  # flooded, not back to port 1
    lldp = bytes(Ether(src=DEV_MAC, dst=SERVER_MAC, type=0x88CC) / (b"\x00" * 40))
    assert pipe.trace(lldp, 1).valid_headers == ("ethernet",)


def test_runt_frame_reads_zero_macs(
    pipe: Pipeline, digests: list[tuple[int, int]], clock: Clock
) -> None:
    clock.now = 1000  # µs since the switch started
    verdict = pipe.trace(b"\x01\x02\x03", 2)
    assert verdict.parser_error == PACKET_TOO_SHORT
    assert verdict.valid_headers == ()
    assert (verdict.device_id, verdict.service_id) == (0, 0)
    assert cell(pipe, 0, 0) == (1, 3)
    # The zero MAC equals the registers' initial content: announced only once it is "stale".
    assert digests == []
    clock.now = DIGEST_REPEAT_US
    assert pipe.trace(b"\x01\x02\x03", 2).digest == (0, 2)


def test_flood_never_returns_to_the_ingress_port(pipe: Pipeline) -> None:
    unknown = tcp(443, dst="02:00:00:00:00:99")
    assert pipe.trace(unknown, 2).egress_ports == (1, 3)
    assert pipe.trace(unknown, 7).egress_ports == (1, 2, 3)


def test_unicast_back_to_the_ingress_port_is_allowed(pipe: Pipeline) -> None:
    assert pipe.trace(tcp(443), 2).egress_ports == (2,)


def test_flood_without_a_group_sends_nothing(program: Program) -> None:
    pipeline = Pipeline(program)
    verdict = pipeline.trace(tcp(443), 1)
    assert verdict.egress_ports == ()
    assert pipeline.read_counter(0) == (1, len(tcp(443)))


def test_tap_mode_counts_then_drops(pipe: Pipeline) -> None:
    tables = pipe.tables
    pipe.install(TableState(devices=tables.devices, by_dst=tables.by_dst, l2={}, l2_default=DROP))
    verdict = pipe.trace(tcp(443), 1)
    assert verdict.egress_ports == ()
    assert cell(pipe, DEVICE_ID, S_HTTPS) == (1, len(tcp(443)))


def test_explicit_forward_flood_and_drop_entries(pipe: Pipeline) -> None:
    pipe.install(
        TableState(
            l2={SERVER_RAW: FLOOD, OTHER_RAW: DROP, DEV_RAW: 511},
            groups={FLOOD_GROUP: (0, 1, 2)},
        )
    )
    assert pipe.trace(tcp(1, dst=SERVER_MAC), 0).egress_ports == (1, 2)
    assert pipe.trace(tcp(1, dst=OTHER_MAC), 0).egress_ports == ()
    assert pipe.trace(tcp(1, dst=DEV_MAC), 0).egress_ports == ()


def test_last_device_and_last_service_hit_the_last_cell(program: Program) -> None:
    pipeline = Pipeline(program)
    last_device, last_service = program.max_devices - 1, program.max_services - 1
    pipeline.install(
        TableState(
            devices={DEV_RAW: last_device},
            by_dst=(ServiceRule(1, 6, 0xFF, 443, 443, last_service),),
        )
    )
    frame = tcp(443)
    verdict = pipeline.trace(frame, 0)
    assert verdict.counter_index == program.service_hits.size - 1
    packets, byte_counts = pipeline.read_counters()
    assert packets[-1] == 1 and byte_counts[-1] == len(frame)
    assert packets[:-1].sum() == 0


def test_ids_beyond_the_counter_count_as_unregistered_and_other(program: Program) -> None:
    """As fingerprint.p4 guards the index: a device id >= MAX_DEVICES is a device_table miss
    (device 0, announced), a service id >= MAX_SERVICES is service 0; no other cell moves."""
    sent: list[tuple[int, int]] = []
    pipeline = Pipeline(program, digest_sink=lambda mac, port: sent.append((mac, port)))
    pipeline.install(
        TableState(
            devices={DEV_RAW: program.max_devices, OTHER_RAW: 7},
            by_dst=(
                ServiceRule(1, 6, 0xFF, 443, 443, S_HTTPS),
                ServiceRule(1, 17, 0xFF, 53, 53, program.max_services),
            ),
        )
    )
    frame = tcp(443)
    verdict = pipeline.trace(frame, 2)
    assert (verdict.device_id, verdict.service_id) == (0, S_HTTPS)
    assert sent == [(int(DEV_RAW.hex(), 16), 2)]
    dns = bytes(Ether(src=OTHER_MAC, dst=SERVER_MAC) / IP() / UDP(dport=53))
    assert pipeline.trace(dns, 2).counter_index == 7 * program.max_services
    packets, byte_counts = pipeline.read_counters()
    assert {int(i): int(packets[i]) for i in packets.nonzero()[0]} == {
        S_HTTPS: 1,
        7 * program.max_services: 1,
    }
    assert byte_counts.sum() == len(frame) + len(dns)


def test_unregistered_device_is_device_zero_and_announced_once(
    pipe: Pipeline, digests: list[tuple[int, int]], clock: Clock
) -> None:
    frame = tcp(443, src=OTHER_MAC)
    verdict = pipe.trace(frame, 3)
    assert (verdict.device_id, verdict.service_id) == (0, S_HTTPS)
    mac = int(OTHER_RAW.hex(), 16)
    assert verdict.digest == (mac, 3)
    slot = crc16(OTHER_RAW) % 256
    assert (pipe.digest_mac[slot], pipe.digest_time[slot]) == (mac, clock.now)
    clock.now += DIGEST_REPEAT_US - 1
    assert pipe.trace(frame, 3).digest is None
    clock.now += 1
    assert pipe.trace(frame, 4).digest == (mac, 4)
    assert digests == [(mac, 3), (mac, 4)]
    assert cell(pipe, 0, S_HTTPS) == (3, 3 * len(frame))


def test_registered_device_sends_no_digest(pipe: Pipeline, digests: list[tuple[int, int]]) -> None:
    assert pipe.trace(tcp(443), 1).digest is None
    assert digests == []


def test_colliding_macs_share_a_cache_slot(pipe: Pipeline, digests: list[tuple[int, int]]) -> None:
    base = crc16(OTHER_RAW) % 256
    collider = next(
        raw
        for raw in (bytes.fromhex("02aabb00") + i.to_bytes(2, "big") for i in range(65536))
        if crc16(raw) % 256 == base and raw != OTHER_RAW
    )
    a = tcp(443, src=OTHER_MAC)
    b = tcp(443, src=":".join(f"{x:02x}" for x in collider))
    for frame in (a, b, a):
        pipe.process(frame, 1)
    assert [mac for mac, _ in digests] == [
        int(OTHER_RAW.hex(), 16),
        int(collider.hex(), 16),
        int(OTHER_RAW.hex(), 16),
    ]


def test_timestamp_wraps_at_48_bits(program: Program, clock: Clock) -> None:
    pipeline = Pipeline(program, clock=clock)
    clock.now = (1 << 48) - 10
    assert pipeline.trace(tcp(1, src=OTHER_MAC), 0).digest == (int(OTHER_RAW.hex(), 16), 0)
    clock.now = (1 << 48) + 100  # 110 µs later, modulo 2^48
    assert pipeline.trace(tcp(1, src=OTHER_MAC), 0).digest is None


def test_default_set_service_then_service_by_src(program: Program) -> None:
    pipeline = Pipeline(program)
    pipeline.install(TableState(by_dst_default=12, by_src=(ServiceRule(1, 6, 0xFF, 80, 80, 13),)))
    # by_dst misses: its default sets 12, and since it missed, by_src is still applied.
    assert pipeline.trace(tcp(dport=9999, sport=80), 0).service_id == 13
    assert pipeline.trace(tcp(dport=9999, sport=81), 0).service_id == 12


def test_default_device_action_set_device(program: Program, digests: list[tuple[int, int]]) -> None:
    pipeline = Pipeline(program, digest_sink=lambda m, p: digests.append((m, p)))
    pipeline.install(TableState(device_default=9))
    verdict = pipeline.trace(tcp(1), 0)
    assert (verdict.device_id, verdict.digest) == (9, None)
    assert digests == []


def test_new_tables_invalidate_memoised_lookups(pipe: Pipeline) -> None:
    assert pipe.trace(tcp(443), 1).service_id == S_HTTPS
    tables = pipe.tables
    pipe.install(
        TableState(
            devices=tables.devices, by_dst=(ServiceRule(1, 6, 0xFF, 443, 443, 77),), l2=tables.l2
        )
    )
    assert pipe.trace(tcp(443), 1).service_id == 77


def _resized(devices: int, cells: int) -> Program:
    """The P4Info of a build with other sizes, as p4c would write it (sizes and contract)."""
    p4info = P4Schema.load(P4INFO).p4info
    for table in p4info.tables:
        if table.preamble.alias == "device_table":
            table.size = devices
    p4info.counters[0].size = cells
    (contract,) = p4info.pkg_info.structured_annotations
    for pair in contract.kv_pair_list.kv_pairs:
        if pair.key == "max_devices":
            pair.value.int64_value = devices
        elif pair.key == "max_services":
            pair.value.int64_value = cells // devices
    return Program.from_p4info(p4info)


def test_sizes_of_a_smaller_build_come_from_the_p4info() -> None:
    program = _resized(64, 64 * 16)
    assert (program.max_devices, program.max_services) == (64, 16)
    pipeline = Pipeline(program)
    pipeline.install(
        TableState(devices={DEV_RAW: 63}, by_dst=(ServiceRule(1, 6, 0xFF, 443, 443, 15),))
    )
    assert pipeline.trace(tcp(443), 0).counter_index == 63 * 16 + 15 == 64 * 16 - 1


def test_a_counter_that_is_not_devices_times_services_is_refused() -> None:
    from refswitch.status import P4RuntimeError

    with pytest.raises(P4RuntimeError, match="not a whole multiple"):
        _resized(64, 1000)


def test_switch_passes_its_digest_repeat_interval_to_the_pipeline(clock: Clock) -> None:
    from finsy.proto import p4r

    from refswitch.switch import Switch

    switch = Switch(0, clock_us=clock, digest_repeat_us=1000)
    try:
        config = p4r.ForwardingPipelineConfig()
        config.p4info.CopyFrom(P4Schema.load(P4INFO).p4info)
        switch.set_pipeline(p4r.SetForwardingPipelineConfigRequest.VERIFY_AND_COMMIT, config)
        pipeline = switch.pipeline
        assert pipeline is not None
        frame = tcp(1, src=OTHER_MAC)
        announced = (int(OTHER_RAW.hex(), 16), 0)
        assert pipeline.trace(frame, 0).digest == announced
        clock.now += 999
        assert pipeline.trace(frame, 0).digest is None
        clock.now += 1
        assert pipeline.trace(frame, 0).digest == announced
    finally:
        switch.close()
