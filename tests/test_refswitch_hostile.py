"""The reference switch against clients that would exhaust it, over real gRPC on loopback: idle
StreamChannels beyond its bounds are refused while Read, Write, Capabilities and the pipeline
RPCs still answer; huge values and huge failing batches come back as errors that fit a trailer
and a log line; bad flags are refused before anything listens; TLS with the controller's
options."""

from __future__ import annotations

import base64
import logging
import select
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Protocol, cast

import grpc
import pytest
from finsy.proto import p4r, p4r_grpc, rpc_code, rpc_status

import controller.control.config
from controller.base import checks
from controller.base.p4info import P4Schema
from controller.store.storage import Storage
from refswitch.limits import ServerLimits, client_of
from refswitch.server import DETAILS_BUDGET, P4RuntimeServer
from refswitch.switch import Switch
from refswitch.tls import ServerTls
from svcfp.cli import main
from tests.support.entries import device_entry
from tests.support.paths import P4INFO, ROOT
from tests.support.pki import make_pki, needs_openssl

SCHEMA = P4Schema.load(P4INFO)
MAX_DEVICES = SCHEMA.contract.max_devices
CELLS = MAX_DEVICES * SCHEMA.contract.max_services
# What a gRPC client accepts in trailing metadata without a doubt (its soft limit).
TRAILER_LIMIT = 8192


CONFIG = p4r.SetForwardingPipelineConfigRequest


def committed_switch() -> Switch:
    """Device 0 running fingerprint.p4, as a controller would have pushed it."""
    switch = Switch(0)
    config = p4r.ForwardingPipelineConfig()
    config.p4info.CopyFrom(SCHEMA.p4info)
    switch.set_pipeline(CONFIG.VERIFY_AND_COMMIT, config)
    return switch


class StreamCall(Protocol):
    """A StreamChannel call as gRPC returns it: a response iterator and a future at once."""

    def __next__(self) -> p4r.StreamMessageResponse: ...
    def done(self) -> bool: ...
    def code(self) -> grpc.StatusCode: ...
    def details(self) -> str | None: ...
    def cancel(self) -> bool: ...


class Peer:
    """One client channel: StreamChannels it holds open until closed, and unary calls."""

    def __init__(self, address: str) -> None:
        self.channel = grpc.insecure_channel(
            address, options=[("grpc.max_send_message_length", 256 << 20)]
        )
        self.stub = p4r_grpc.P4RuntimeStub(self.channel)
        self._hold = threading.Event()
        self.calls: list[StreamCall] = []

    def stream(self, *first: p4r.StreamMessageRequest) -> StreamCall:
        """A StreamChannel that sends `first` (nothing: an idle one) and then stays open."""

        def requests() -> Iterator[p4r.StreamMessageRequest]:
            yield from first
            self._hold.wait()

        call = cast(StreamCall, self.stub.StreamChannel(requests()))
        self.calls.append(call)
        return call

    def become_primary(self) -> None:
        arbitration = p4r.StreamMessageRequest()
        arbitration.arbitration.device_id = 0
        arbitration.arbitration.election_id.low = 1
        call = self.stream(arbitration)
        assert next(call).arbitration.status.code == rpc_code.OK

    def write(self, *updates: p4r.Update, timeout: float = 60.0) -> None:
        request = p4r.WriteRequest(device_id=0, updates=updates)
        request.election_id.low = 1
        self.stub.Write(request, timeout=timeout)

    def devices(self) -> int:
        """How many device_table entries the switch holds."""
        read = p4r.ReadRequest(device_id=0)
        read.entities.add().table_entry.table_id = SCHEMA.table("device_table").id
        return sum(len(r.entities) for r in self.stub.Read(read, timeout=10))

    def close(self) -> None:
        self._hold.set()
        for call in self.calls:
            call.cancel()
        self.channel.close()


@pytest.fixture
def peers() -> Iterator[list[Peer]]:
    opened: list[Peer] = []
    yield opened
    for peer in opened:
        peer.close()


@pytest.fixture
def servers() -> Iterator[list[P4RuntimeServer]]:
    started: list[P4RuntimeServer] = []
    yield started
    for server in started:
        server.stop(0)
        server.service.switch.close()


def serve(
    servers: list[P4RuntimeServer],
    limits: ServerLimits | None = None,
    tls: ServerTls | None = None,
) -> P4RuntimeServer:
    server = P4RuntimeServer(committed_switch(), "127.0.0.1:0", limits, tls).start()
    servers.append(server)
    return server


@pytest.fixture
def primary(servers: list[P4RuntimeServer], peers: list[Peer]) -> Peer:
    """The primary client of a switch with the default limits."""
    peer = Peer(serve(servers).address)
    peers.append(peer)
    peer.become_primary()
    return peer


def insert(entry: p4r.TableEntry) -> p4r.Update:
    return p4r.Update(type=p4r.Update.INSERT, entity=p4r.Entity(table_entry=entry))


def settled_refusals(calls: list[StreamCall], expected: int) -> list[StreamCall]:
    """The calls that ended, once `expected` have (bounded wait) and no more end after."""
    deadline = time.monotonic() + 10
    while sum(c.done() for c in calls) < expected and time.monotonic() < deadline:
        time.sleep(0.02)
    time.sleep(0.3)
    return [c for c in calls if c.done()]


def unary_rpcs_answer_within_a_second(peer: Peer, mac: str) -> None:
    """Capabilities, GetForwardingPipelineConfig, Write and Read, each within 1 s."""
    start = time.monotonic()
    reply = peer.stub.Capabilities(p4r.CapabilitiesRequest(), timeout=1.0)
    assert reply.p4runtime_api_version == "1.4.1"
    config = peer.stub.GetForwardingPipelineConfig(
        p4r.GetForwardingPipelineConfigRequest(device_id=0), timeout=1.0
    )
    assert config.config.p4info.tables == SCHEMA.p4info.tables
    peer.write(insert(device_entry(mac, 7)), timeout=1.0)
    read = p4r.ReadRequest(device_id=0)
    read.entities.add().table_entry.table_id = SCHEMA.table("device_table").id
    cell = read.entities.add().counter_entry
    cell.counter_id, cell.index.index = SCHEMA.counter("service_hits").id, 7
    entities = [e for r in peer.stub.Read(read, timeout=1.0) for e in r.entities]
    assert [e.WhichOneof("entity") for e in entities] == ["table_entry", "counter_entry"]
    assert entities[0].table_entry.match[0].exact.value == bytes.fromhex(mac.replace(":", ""))
    assert entities[1].counter_entry.data.packet_count == 0
    assert time.monotonic() - start < 1.0


# Streams ----------------------------------------------------------------------------------------


def test_idle_streams_beyond_a_client_bound_are_refused_and_unary_rpcs_still_answer(
    servers: list[P4RuntimeServer], peers: list[Peer], caplog: pytest.LogCaptureFixture
) -> None:
    server = serve(servers)
    per_client = server.limits.max_streams_per_client
    peers.extend(Peer(server.address) for _ in range(5))
    peers[0].become_primary()
    idle = [peer.stream() for peer in peers for _ in range(8)]
    refused = settled_refusals(idle, len(idle) - (per_client - 1))
    assert len(refused) == len(idle) - (per_client - 1) == 33
    for call in refused:
        assert call.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert call.details() == (
            f"too many StreamChannels from 127.0.0.1: {per_client} open, at most {per_client} "
            "per client (--max-streams-per-client)"
        )
    assert server.service.streams.open_streams == per_client
    unary_rpcs_answer_within_a_second(peers[1], "02:00:00:00:00:01")
    warnings = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert warnings[0].startswith("StreamChannel refused with RESOURCE_EXHAUSTED: too many")


def test_streams_beyond_the_total_are_refused_and_a_closed_one_frees_its_place(
    servers: list[P4RuntimeServer], peers: list[Peer]
) -> None:
    limits = ServerLimits(max_streams=4, max_streams_per_client=10, unary_workers=2)
    server = serve(servers, limits)
    first, second = Peer(server.address), Peer(server.address)
    peers.extend((first, second))
    calls = [first.stream() for _ in range(6)]
    refused = settled_refusals(calls, 2)
    assert len(refused) == 2
    assert {c.details() for c in refused} == {
        "too many StreamChannels: 4 open, at most 4 (--max-streams)"
    }
    with pytest.raises(grpc.RpcError) as full:
        second.become_primary()
    assert full.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    first.close()
    deadline = time.monotonic() + 5
    while server.service.streams.open_streams and time.monotonic() < deadline:
        time.sleep(0.02)
    assert server.service.streams.open_streams == 0
    second.become_primary()
    more = [second.stream() for _ in range(4)]
    assert len(settled_refusals(more, 1)) == 1
    unary_rpcs_answer_within_a_second(second, "02:00:00:00:00:02")


@pytest.mark.parametrize(
    ("peer", "client"),
    [
        ("ipv4:127.0.0.1:51234", "127.0.0.1"),
        ("ipv6:[::1]:51234", "[::1]"),
        ("ipv6:%5B::1%5D:51234", "[::1]"),
        ("unix:/run/p4rt.sock", "unix:/run/p4rt.sock"),
    ],
)
def test_a_client_is_the_peer_host(peer: str, client: str) -> None:
    assert client_of(peer) == client


# Error sizes ------------------------------------------------------------------------------------


def test_a_huge_invalid_value_is_refused_naming_the_field_and_showing_its_start(
    primary: Peer, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    huge = device_entry("02:00:00:00:00:01", 1)
    huge.match[0].exact.value = b"\xff" * (16 << 20)
    expected = (
        "table IngressImpl.device_table match field src_mac: value 0x"
        + "ff" * 64
        + "… (16777216 bytes) does not fit in 48 bits"
    )
    with pytest.raises(grpc.RpcError) as written:
        primary.write(insert(huge))
    assert written.value.code() == grpc.StatusCode.UNKNOWN
    status = details_status(written.value)
    error = p4r.Error()
    assert len(status.details) == 1 and status.details[0].Unpack(error)
    assert (error.canonical_code, error.message) == (rpc_code.INVALID_ARGUMENT, expected)
    assert written.value.details() == (
        f"Write failure: 1 of 1 updates failed; first: update 0: INVALID_ARGUMENT: {expected}"
    )
    read = p4r.ReadRequest(device_id=0)
    read.entities.add().table_entry.CopyFrom(huge)
    with pytest.raises(grpc.RpcError) as filtered:
        list(primary.stub.Read(read, timeout=30))
    assert filtered.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert filtered.value.details() == expected
    assert max(len(r.getMessage()) for r in caplog.records) < 1000


def test_a_request_beyond_the_size_limit_is_refused_and_the_switch_serves_on(
    servers: list[P4RuntimeServer], peers: list[Peer]
) -> None:
    server = serve(servers, ServerLimits(max_request_mib=1))
    peer = Peer(server.address)
    peers.append(peer)
    peer.become_primary()
    large = device_entry("02:00:00:00:00:01", 1)
    large.match[0].exact.value = bytes(2 << 20)
    with pytest.raises(grpc.RpcError) as refused:
        peer.write(insert(large))
    assert refused.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "larger than max" in (refused.value.details() or "")
    unary_rpcs_answer_within_a_second(peer, "02:00:00:00:00:03")


def details_status(exc: grpc.RpcError) -> rpc_status.Status:
    """The google.rpc.Status of a failed call, checking its trailer fits a client's limit."""
    (raw,) = [m.value for m in exc.trailing_metadata() or () if m.key == "grpc-status-details-bin"]
    assert isinstance(raw, bytes)
    message = exc.details() or ""
    assert len(base64.b64encode(raw)) + len(message.encode()) < TRAILER_LIMIT
    status = rpc_status.Status.FromString(raw)
    assert status.message == message
    return status


def errors_of(status: rpc_status.Status) -> list[p4r.Error]:
    errors = [p4r.Error() for _ in status.details]
    assert all(d.Unpack(e) for d, e in zip(status.details, errors, strict=True))
    return errors


def test_a_failing_batch_of_50000_inserts_fits_the_trailer_and_counts_the_rest(
    primary: Peer,
) -> None:
    updates = [
        insert(device_entry(f"02:00:00:{i >> 16 & 255:02x}:{i >> 8 & 255:02x}:{i & 255:02x}",
                            MAX_DEVICES))
        for i in range(50_000)
    ]  # fmt: skip
    with pytest.raises(grpc.RpcError) as written:
        primary.write(*updates)
    assert written.value.code() == grpc.StatusCode.UNKNOWN
    status = details_status(written.value)
    errors = errors_of(status)
    shown = len(errors)
    assert 0 < shown < 50_000
    assert len(status.SerializeToString()) <= DETAILS_BUDGET + 600
    reason = (
        f"action IngressImpl.set_device parameter device_id: {MAX_DEVICES} is out of range, "
        f"MAX_DEVICES is {MAX_DEVICES} (the id indexes the service_hits counter)"
    )
    assert {(e.canonical_code, e.message) for e in errors} == {(rpc_code.INVALID_ARGUMENT, reason)}
    assert status.message == (
        f"Write failure: 50000 of 50000 updates failed; the details hold the errors of updates "
        f"0-{shown - 1} only, {50_000 - shown} failed update(s) after them are not listed; "
        f"first: update 0: INVALID_ARGUMENT: {reason}"
    )
    assert primary.devices() == 0


def test_failures_beyond_the_details_are_named_in_the_message(primary: Peer) -> None:
    updates = [
        insert(device_entry(f"02:00:00:00:{i >> 8:02x}:{i & 255:02x}", i % 100 + 1))
        for i in range(1000)
    ]
    for bad in (700, 999):
        updates[bad].entity.table_entry.action.action.params[0].value = b"\xff\xff"
    with pytest.raises(grpc.RpcError) as written:
        primary.write(*updates)
    status = details_status(written.value)
    errors = errors_of(status)
    assert {e.canonical_code for e in errors} == {rpc_code.OK} and len(errors) < 700
    assert status.message.startswith(
        f"Write failure: 2 of 1000 updates failed; the details hold the errors of updates "
        f"0-{len(errors) - 1} only, 2 failed update(s) after them are not listed; first: update "
        "700: INVALID_ARGUMENT: action IngressImpl.set_device parameter device_id: 65535 is out"
    )
    assert primary.devices() == 998


# Flags ------------------------------------------------------------------------------------------


def switch_command(*args: str, module: str = "refswitch") -> subprocess.CompletedProcess[str]:
    """The switch as a process with `args`; a bad flag must end it before it listens."""
    command = [sys.executable, "-m", module, *(["switch"] if module == "svcfp" else []), *args]
    return subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=60)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("--grpc-addr", "127.0.0.1:99999"),
         "--grpc-addr '127.0.0.1:99999': expected HOST:PORT with a port in 0..65535"),
        (("--grpc-addr", "127.0.0.1"),
         "--grpc-addr '127.0.0.1': expected HOST:PORT with a port in 0..65535"),
        (("--grpc-addr", "::1:9559"),
         "--grpc-addr '::1:9559': write an IPv6 host in brackets, e.g. [::1]:9559"),
        (("--device-id", "-1"), "--device-id -1: P4Runtime device ids lie in 0..2^64-1"),
        (("--device-id", str(2**64)),
         f"--device-id {2**64}: P4Runtime device ids lie in 0..2^64-1"),
        (("--cpu-port", "99999"), "--cpu-port 99999: switch ports lie in 0..511"),
        (("--max-streams", "0"), "--max-streams 0: must be at least 1"),
        (("--max-request-mib", "4096"), "--max-request-mib 4096: gRPC takes messages below 2 GiB"),
        (("--tls-cert", "server.crt"), "--tls-cert and --tls-key must be given together"),
        (("--tls-ca", "ca.crt"), "--tls-ca needs --tls-cert and --tls-key"),
    ],
)  # fmt: skip
def test_bad_flags_are_refused_before_anything_listens(args: tuple[str, ...], message: str) -> None:
    if args[0] != "--grpc-addr":
        args = ("--grpc-addr", "127.0.0.1:0", *args)
    done = switch_command(*args)
    assert done.returncode == 2, done.stderr
    assert message in done.stderr
    assert "serving P4Runtime" not in done.stdout


def test_svcfp_switch_and_svcfp_run_refuse_an_address_by_one_check(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert vars(controller.control.config)["check_grpc_addr"] is checks.check_grpc_addr
    done = switch_command("--grpc-addr", "127.0.0.1:99999", module="svcfp")
    assert done.returncode == 2
    assert "--grpc-addr '127.0.0.1:99999': expected HOST:PORT with a port in 0..65535" in (
        done.stderr
    )
    db = str(tmp_path / "svcfp.db")
    status = main(
        ["run", "--p4info", str(P4INFO), "--grpc-addr", "127.0.0.1:99999", "--device-id", "0",
         "--db", db]
    )  # fmt: skip
    assert status == 2
    assert "--grpc-addr '127.0.0.1:99999': expected HOST:PORT with a port in 1..65535" in (
        capsys.readouterr().err
    )


@needs_openssl
def test_unusable_tls_files_are_refused_naming_the_flag(tmp_path: Path) -> None:
    pki = make_pki(tmp_path)
    missing = tmp_path / "missing.key"
    done = switch_command(
        "--grpc-addr", "127.0.0.1:0", "--tls-cert", str(pki["server.crt"]), "--tls-key",
        str(missing),
    )  # fmt: skip
    assert done.returncode == 2
    assert f"--tls-key {missing}: cannot read: No such file or directory" in done.stderr
    done = switch_command(
        "--grpc-addr", "127.0.0.1:0", "--tls-cert", str(pki["server.crt"]), "--tls-key",
        str(pki["client.key"]),
    )  # fmt: skip
    assert done.returncode == 2
    assert f"--tls-cert {pki['server.crt']} / --tls-key {pki['client.key']}: not a PEM" in (
        done.stderr
    )
    done = switch_command(
        "--grpc-addr", "127.0.0.1:0", "--tls-cert", str(pki["server.crt"]), "--tls-key",
        str(pki["server.key"]), "--tls-ca", str(tmp_path / "san.ext"),
    )  # fmt: skip
    assert done.returncode == 2
    assert f"--tls-ca {tmp_path / 'san.ext'}: not a PEM CA certificate" in done.stderr
    empty = tmp_path / "empty.crt"
    empty.write_text("")
    done = switch_command(
        "--grpc-addr", "127.0.0.1:0", "--tls-cert", str(pki["server.crt"]), "--tls-key",
        str(pki["server.key"]), "--tls-ca", str(empty),
    )  # fmt: skip
    assert done.returncode == 2
    assert f"--tls-ca {empty}: empty file, expected a PEM CA certificate" in done.stderr


# TLS --------------------------------------------------------------------------------------------


def run_controller(address: str, db: Path, *tls: str) -> int:
    return main(
        [
            *("run", "--p4info", str(P4INFO), "--grpc-addr", address, "--device-id", "0"),
            *("--db", str(db), "--interval", "0.1", "--duration", "0.5"),
            *("--connect-timeout", "1", *tls),
        ]
    )


def polled(db: Path) -> bool:
    """Whether the controller stored a poll of the switch's whole counter."""
    with Storage(db) as store:
        return store.baseline("s1", CELLS) is not None


@needs_openssl
def test_the_controller_polls_a_tls_switch_only_with_its_ca(
    tmp_path: Path, servers: list[P4RuntimeServer], capsys: pytest.CaptureFixture[str]
) -> None:
    pki = make_pki(tmp_path)
    server = serve(servers, tls=ServerTls(pki["server.crt"], pki["server.key"]))
    assert run_controller(server.address, tmp_path / "a.db", "--tls-ca", str(pki["ca.crt"])) == 0
    assert polled(tmp_path / "a.db")
    capsys.readouterr()
    assert run_controller(server.address, tmp_path / "b.db") == 3
    err = capsys.readouterr().err
    assert f"switch s1 at {server.address} (device id 0) is unreachable" in err
    assert "a switch that serves TLS closes plaintext connections: give --tls-ca" in err
    client = ("--tls-cert", str(pki["client.crt"]), "--tls-key", str(pki["client.key"]))
    assert run_controller(server.address, tmp_path / "c.db", *client) == 3
    err = capsys.readouterr().err
    assert "CERTIFICATE_VERIFY_FAILED" in err
    assert "--tls-ca must name the CA that signed the switch's certificate" in err


@needs_openssl
def test_svcfp_switch_with_tls_ca_requires_a_client_certificate(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    pki = make_pki(tmp_path)
    process = subprocess.Popen(
        [
            *(sys.executable, "-m", "svcfp", "switch", "--grpc-addr", "127.0.0.1:0"),
            *("--tls-cert", str(pki["server.crt"]), "--tls-key", str(pki["server.key"])),
            *("--tls-ca", str(pki["ca.crt"])),
        ],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert process.stdout is not None
        ready, _, _ = select.select([process.stdout], [], [], 30)
        assert ready, "the switch did not start"
        line = process.stdout.readline()
        assert "serving P4Runtime on" in line
        address = line.rsplit(" ", 1)[1].strip()
        ca = ("--tls-ca", str(pki["ca.crt"]))
        assert run_controller(address, tmp_path / "a.db", *ca) == 3
        assert "check --tls-cert and --tls-key" in capsys.readouterr().err
        client = ("--tls-cert", str(pki["client.crt"]), "--tls-key", str(pki["client.key"]))
        assert run_controller(address, tmp_path / "b.db", *ca, *client) == 0
        assert polled(tmp_path / "b.db")
    finally:
        process.terminate()
        _, err = process.communicate(timeout=30)
    assert "TLS, client certificates required" in err
