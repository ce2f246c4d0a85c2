"""Packet I/O of the reference switch: pcap files, the `svcfp switch` replay, raw sockets."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import grpc
import pytest
from finsy.proto import p4r, p4r_grpc
from scapy.layers.inet import IP, TCP, UDP
from scapy.layers.l2 import Dot1Q, Ether

from controller.base.errors import InputError
from controller.base.p4info import P4Schema, encode_int
from controller.base.pcapfile import PcapWriter, read_frames
from refswitch.ports import Ports
from refswitch.server import P4RUNTIME_API_VERSION
from refswitch.switch import Switch
from tests.support.entries import device_entry
from tests.support.paths import P4INFO, ROOT
from tests.support.processes import SwitchProcess

SCHEMA = P4Schema.load(P4INFO)
DEV_MAC = "aa:bb:cc:dd:ee:01"
SERVER_MAC = "02:00:00:00:00:fe"


def frames() -> list[bytes]:
    return [
        bytes(Ether(src=DEV_MAC, dst=SERVER_MAC) / IP() / TCP(sport=40000, dport=443)),
        bytes(Ether(src=DEV_MAC, dst=SERVER_MAC) / IP() / UDP(sport=40000, dport=53)) + b"q" * 30,
        bytes(Ether(src=DEV_MAC, dst=SERVER_MAC) / IP() / TCP(sport=40001, dport=443)) + b"x" * 100,
    ]


def write_pcap(path: Path, data: list[bytes], start: float = 1_700_000_000.25) -> None:
    with PcapWriter(path) as writer:
        for offset, frame in enumerate(data):
            writer.write(frame, start + offset * 0.5)


def test_pcap_round_trip(tmp_path: Path) -> None:
    path = tmp_path / "t.pcap"
    write_pcap(path, frames())
    read = list(read_frames(path))
    assert [f.data for f in read] == frames()
    assert [f.timestamp for f in read] == pytest.approx(
        [1_700_000_000.25, 1_700_000_000.75, 1_700_000_001.25]
    )


def test_pcap_readable_by_scapy(tmp_path: Path) -> None:
    from scapy.utils import rdpcap

    path = tmp_path / "t.pcap"
    write_pcap(path, frames())
    assert [bytes(p) for p in rdpcap(str(path))] == frames()


def test_truncated_pcap_names_the_frame_after_yielding_the_rest(tmp_path: Path) -> None:
    path = tmp_path / "cut.pcap"
    write_pcap(path, frames())
    path.write_bytes(path.read_bytes()[:-10])
    seen: list[bytes] = []
    with pytest.raises(InputError, match=r"cut\.pcap: frame 3 is truncated"):
        for frame in read_frames(path):
            seen.append(frame.data)
    assert seen == frames()[:2]


def test_not_a_pcap(tmp_path: Path) -> None:
    path = tmp_path / "x.pcap"
    path.write_bytes(b"hello world, this is not a capture file")
    with pytest.raises(InputError, match="not a pcap or pcapng file"):
        list(read_frames(path))


def push_pipeline(stub: p4r_grpc.P4RuntimeStub) -> None:
    """Commit the fingerprint pipeline as the primary with election id 1."""
    request = p4r.SetForwardingPipelineConfigRequest(
        device_id=0, action=p4r.SetForwardingPipelineConfigRequest.VERIFY_AND_COMMIT
    )
    request.election_id.low = 1
    request.config.p4info.CopyFrom(SCHEMA.p4info)
    stub.SetForwardingPipelineConfig(request)


def install(stub: p4r_grpc.P4RuntimeStub) -> None:
    """Pipeline, one device, two services, forwarding to port 1 (election id 1)."""
    push_pipeline(stub)
    write = p4r.WriteRequest(device_id=0)
    write.election_id.low = 1
    device = write.updates.add(type=p4r.Update.INSERT).entity.table_entry
    device.table_id = SCHEMA.table("device_table").id
    device.match.add(field_id=1).exact.value = bytes.fromhex(DEV_MAC.replace(":", ""))
    device.action.action.action_id = SCHEMA.action("set_device").id
    device.action.action.params.add(param_id=1, value=b"\x02")
    for proto, port, service in ((6, 443, 3), (17, 53, 4)):
        entry = write.updates.add(type=p4r.Update.INSERT).entity.table_entry
        entry.table_id = SCHEMA.table("service_by_dst").id
        entry.priority = 10
        entry.match.add(field_id=1).ternary.value = bytes([proto])
        entry.match[0].ternary.mask = b"\xff"
        entry.match.add(field_id=2).range.low = encode_int(port, 16)
        entry.match[1].range.high = encode_int(port, 16)
        entry.action.action.action_id = SCHEMA.action("set_service").id
        entry.action.action.params.add(param_id=1, value=bytes([service]))
    l2 = write.updates.add(type=p4r.Update.INSERT).entity.table_entry
    l2.table_id = SCHEMA.table("l2_forward").id
    l2.match.add(field_id=1).exact.value = bytes.fromhex(SERVER_MAC.replace(":", ""))
    l2.action.action.action_id = SCHEMA.action("forward").id
    l2.action.action.params.add(param_id=1, value=b"\x01")
    stub.Write(write)


@pytest.fixture
def switch_process() -> Iterator[list[SwitchProcess]]:
    started: list[SwitchProcess] = []
    yield started
    for process in started:
        process.stop()


def test_replay_with_a_controller_then_counters_and_pcap_out(
    tmp_path: Path, switch_process: list[SwitchProcess]
) -> None:
    pcap_in, pcap_out, counters = tmp_path / "in.pcap", tmp_path / "out.pcap", tmp_path / "c.json"
    log = tmp_path / "logs" / "s1.log"
    data = frames()
    write_pcap(pcap_in, data)
    process = SwitchProcess(
        "--pcap-in", f"0@{pcap_in}", "--pcap-out", f"1@{pcap_out}", "--counters-out", str(counters),
        "--replay-start", "signal", "--exit-when-done", "--log-file", str(log),
    )  # fmt: skip
    switch_process.append(process)
    with primary(process.address) as stub:
        install(stub)
        process.process.send_signal(signal.SIGUSR1)
        assert process.process.wait(30) == 0
    document = json.loads(counters.read_text())
    assert document["cells"] == [
        {"index": 2 * 256 + 3, "device_id": 2, "service_id": 3, "packets": 2,
         "bytes": len(data[0]) + len(data[2])},
        {"index": 2 * 256 + 4, "device_id": 2, "service_id": 4, "packets": 1,
         "bytes": len(data[1])},
    ]  # fmt: skip
    assert [f.data for f in read_frames(pcap_out)] == data
    text = log.read_text()
    assert "pipeline committed" in text and "write: 4 updates, 0 failed" in text


def test_replay_waits_for_a_pipeline(tmp_path: Path, switch_process: list[SwitchProcess]) -> None:
    pcap_in, counters = tmp_path / "in.pcap", tmp_path / "c.json"
    write_pcap(pcap_in, frames())
    process = SwitchProcess(
        "--pcap-in", f"2@{pcap_in}", "--counters-out", str(counters),
        "--replay-start", "pipeline", "--exit-when-done",
    )  # fmt: skip
    switch_process.append(process)
    time.sleep(0.5)
    assert process.process.poll() is None and not counters.exists()
    with primary(process.address) as stub:
        push_pipeline(stub)
        assert process.process.wait(30) == 0
    cells = json.loads(counters.read_text())["cells"]
    assert cells == [
        {"index": 0, "device_id": 0, "service_id": 0, "packets": 3,
         "bytes": sum(len(f) for f in frames())},
    ]  # fmt: skip


def test_truncated_replay_counts_the_frames_before_and_fails(
    tmp_path: Path, switch_process: list[SwitchProcess]
) -> None:
    pcap_in, counters = tmp_path / "cut.pcap", tmp_path / "c.json"
    write_pcap(pcap_in, frames())
    pcap_in.write_bytes(pcap_in.read_bytes()[:-5])
    process = SwitchProcess(
        "--p4info", str(P4INFO), "--pcap-in", f"3@{pcap_in}", "--counters-out", str(counters),
        "--exit-when-done",
    )  # fmt: skip
    switch_process.append(process)
    assert process.process.wait(30) == 2
    assert process.process.stderr is not None
    assert f"{pcap_in}: frame 3 is truncated" in process.process.stderr.read()
    document = json.loads(counters.read_text())
    # No tables: everything is device 0, service 0.
    assert document["cells"] == [
        {"index": 0, "device_id": 0, "service_id": 0, "packets": 2,
         "bytes": len(frames()[0]) + len(frames()[1])},
    ]  # fmt: skip


def test_sigterm_stops_a_serving_switch(switch_process: list[SwitchProcess]) -> None:
    process = SwitchProcess("--device-id", "3")
    switch_process.append(process)
    with grpc.insecure_channel(process.address) as channel:
        reply = p4r_grpc.P4RuntimeStub(channel).Capabilities(p4r.CapabilitiesRequest())
        assert reply.p4runtime_api_version == P4RUNTIME_API_VERSION
    process.process.send_signal(signal.SIGTERM)
    assert process.process.wait(30) == 0


def test_a_switch_stopped_and_continued_still_stops_on_sigterm(
    switch_process: list[SwitchProcess],
) -> None:
    process = SwitchProcess("--device-id", "3")
    switch_process.append(process)
    # Continued, the switch may take the next signal on any of its threads.
    process.process.send_signal(signal.SIGSTOP)
    time.sleep(1.0)
    process.process.send_signal(signal.SIGCONT)
    process.process.send_signal(signal.SIGTERM)
    assert process.process.wait(10) == 0


def test_bad_flags_exit_with_an_error(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "refswitch", "--pcap-in", "0@" + str(tmp_path / "missing.pcap")],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2
    assert "missing.pcap: no such file" in result.stderr


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--pcap-in", "0@{t}/in.pcap", "--pcap-out", "1@{t}/in.pcap"],
         "--pcap-out (port 1) {t}/in.pcap: also an input of this command"),
        (["--pcap-in", "0@{t}/in.pcap", "--log-file", "{t}/in.pcap"],
         "--log-file {t}/in.pcap: also an input of this command"),
        (["--pcap-in", "0@{t}/in.pcap", "--pcap-out", "1@{t}/o.pcap", "--pcap-out", "2@{t}/o.pcap"],
         "--pcap-out (port 2) {t}/o.pcap: the same file as --pcap-out (port 1)"),
        (["--pcap-in", "0@{t}/in.pcap", "--counters-out", "{t}/in.pcap"],
         "--counters-out {t}/in.pcap: also an input of this command"),
        (["--pcap-in", "0@{t}/in.pcap", "--counters-out", "{t}/in.pcap/counters.json"],
         "--counters-out {t}/in.pcap/counters.json: folder {t}/in.pcap does not exist"),
        (["--pcap-in", "0@{t}/in.pcap", "--pcap-out", "1@{t}"],
         "--pcap-out (port 1) {t}: cannot write a file there: it is a directory"),
    ],
)  # fmt: skip
def test_an_output_over_an_input_or_another_output_is_refused(
    tmp_path: Path, flags: list[str], message: str
) -> None:
    capture = tmp_path / "in.pcap"
    write_pcap(capture, frames())
    before = capture.read_bytes()
    command = [sys.executable, "-m", "refswitch", "--exit-when-done"]
    command += [f.format(t=tmp_path) for f in flags]
    result = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert result.returncode == 2
    assert message.format(t=tmp_path) in result.stderr
    assert capture.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.pcap"]


@contextmanager
def primary(address: str) -> Iterator[p4r_grpc.P4RuntimeStub]:
    """A stub whose StreamChannel holds the primary role (election id 1) while in use."""
    with grpc.insecure_channel(address) as channel:
        stub = p4r_grpc.P4RuntimeStub(channel)
        done = threading.Event()
        stream = stub.StreamChannel(_arbitration(done))
        next(stream)
        try:
            yield stub
        finally:
            done.set()
            stream.cancel()


def _arbitration(done: threading.Event) -> Iterator[p4r.StreamMessageRequest]:
    """Arbitrate, then keep the stream open (a half-closed stream ends the session)."""
    request = p4r.StreamMessageRequest()
    request.arbitration.device_id = 0
    request.arbitration.election_id.low = 1
    yield request
    done.wait(60)


# Raw sockets on veth pairs ---------------------------------------------------------------------


def _ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True)


@pytest.fixture
def veths() -> Iterator[list[tuple[str, str]]]:
    """Two veth pairs (switch end, host end) named after this process; removed afterwards."""
    tag = f"{os.getpid() % 100000}"
    pairs = [(f"rsw{tag}s{i}", f"rsw{tag}h{i}") for i in range(2)]
    created: list[str] = []
    try:
        for switch_end, host_end in pairs:
            _ip("link", "add", switch_end, "type", "veth", "peer", "name", host_end)
            created.append(switch_end)
            for name in (switch_end, host_end):
                subprocess.run(
                    ["sysctl", "-q", "-w", f"net.ipv6.conf.{name}.disable_ipv6=1"],
                    check=True,
                    capture_output=True,
                )
                _ip("link", "set", name, "up")
        yield pairs
    finally:
        for name in created:
            subprocess.run(["ip", "link", "del", name], capture_output=True)


def _raw(ifname: str) -> socket.socket:
    sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(0x0003))
    sock.bind((ifname, 0))
    sock.settimeout(0.2)
    return sock


def _receive(sock: socket.socket, want: bytes, seconds: float = 3.0) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            data, address = sock.recvfrom(65536)
        except TimeoutError:
            continue
        if address[2] != 4 and data == want:
            return True
    return False


@pytest.mark.root
def test_raw_socket_ports_count_and_forward(veths: list[tuple[str, str]]) -> None:
    from finsy.proto import p4r as proto

    switch = Switch(0)
    ports = Ports(switch)
    host0 = host1 = None
    try:
        for number, (switch_end, _) in enumerate(veths):
            ports.add_interface(number, switch_end)
        config = proto.ForwardingPipelineConfig()
        config.p4info.CopyFrom(SCHEMA.p4info)
        switch.set_pipeline(proto.SetForwardingPipelineConfigRequest.VERIFY_AND_COMMIT, config)

        group = proto.PacketReplicationEngineEntry()
        group.multicast_group_entry.multicast_group_id = 1
        group.multicast_group_entry.replicas.add(egress_port=0)
        group.multicast_group_entry.replicas.add(egress_port=1)
        results = switch.write(
            [
                proto.Update(
                    type=proto.Update.INSERT,
                    entity=proto.Entity(table_entry=device_entry(DEV_MAC, 2)),
                ),
                proto.Update(
                    type=proto.Update.INSERT,
                    entity=proto.Entity(packet_replication_engine_entry=group),
                ),
            ]
        )
        assert results == [None, None]
        ports.start()
        host0, host1 = _raw(veths[0][1]), _raw(veths[1][1])
        frame = bytes(Ether(src=DEV_MAC, dst=SERVER_MAC) / IP() / TCP(dport=443)) + b"p" * 20
        host0.send(frame)
        # Flooded: arrives on port 1, never comes back to port 0.
        assert _receive(host1, frame)
        assert not _receive(host0, frame, seconds=0.5)
        packets, byte_counts = switch.read_counters()
        assert (packets[2 * 256], byte_counts[2 * 256]) == (1, len(frame))
        assert packets.sum() == 1
        # The kernel strips VLAN tags on receive; the switch must count the frame as sent.
        tagged = bytes(Ether(src=DEV_MAC, dst=SERVER_MAC) / Dot1Q(vlan=10, prio=3) / IP() / TCP())
        host0.send(tagged)
        deadline = time.monotonic() + 3
        while switch.read_counters()[0].sum() < 2 and time.monotonic() < deadline:
            time.sleep(0.05)
        packets, byte_counts = switch.read_counters()
        assert (packets[2 * 256], byte_counts[2 * 256]) == (2, len(frame) + len(tagged))
    finally:
        for sock in (host0, host1):
            if sock is not None:
                sock.close()
        ports.close()
        switch.close()
