"""The reference switch's P4Runtime surface over real gRPC (in-process server, loopback)."""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Iterator

import grpc
import numpy as np
import pytest
from finsy.proto import p4r, p4r_grpc, rpc_code, rpc_status
from scapy.layers.inet import IP, TCP
from scapy.layers.l2 import Ether

from controller.base.p4info import P4Schema, encode_int
from controller.base.wire import CounterArrayEncoder
from refswitch.server import P4RuntimeServer
from refswitch.switch import Switch
from tests.support.entries import device_entry, service_entry
from tests.support.paths import P4INFO

SCHEMA = P4Schema.load(P4INFO)
DEVICE = 0
CONFIG = p4r.SetForwardingPipelineConfigRequest


class Stream:
    """One StreamChannel, its responses collected by a thread."""

    def __init__(self, stub: p4r_grpc.P4RuntimeStub) -> None:
        self._requests: queue.Queue[p4r.StreamMessageRequest | None] = queue.Queue()
        self.responses: queue.Queue[p4r.StreamMessageResponse | grpc.RpcError] = queue.Queue()
        self._call = stub.StreamChannel(self._iterate())
        self._thread = threading.Thread(target=self._collect, daemon=True)
        self._thread.start()

    def _iterate(self) -> Iterator[p4r.StreamMessageRequest]:
        while (request := self._requests.get()) is not None:
            yield request

    def _collect(self) -> None:
        try:
            for response in self._call:
                self.responses.put(response)
        except grpc.RpcError as exc:
            self.responses.put(exc)

    def send(self, request: p4r.StreamMessageRequest) -> None:
        self._requests.put(request)

    def arbitrate(self, election_id: int, device_id: int = DEVICE) -> None:
        request = p4r.StreamMessageRequest()
        request.arbitration.device_id = device_id
        request.arbitration.election_id.high = election_id >> 64
        request.arbitration.election_id.low = election_id & ((1 << 64) - 1)
        self.send(request)

    def next(self, timeout: float = 5.0) -> p4r.StreamMessageResponse:
        item = self.responses.get(timeout=timeout)
        if isinstance(item, grpc.RpcError):
            raise item
        return item

    def next_of(self, kind: str, timeout: float = 5.0) -> p4r.StreamMessageResponse:
        deadline = time.monotonic() + timeout
        while True:
            message = self.next(max(0.01, deadline - time.monotonic()))
            if message.WhichOneof("update") == kind:
                return message

    def close(self) -> None:
        self._requests.put(None)
        self._call.cancel()
        self._thread.join(5)


class Client:
    """A bare P4Runtime client on the generated stub."""

    def __init__(self, address: str, election_id: int = 1) -> None:
        self.channel = grpc.insecure_channel(
            address, options=[("grpc.max_receive_message_length", 64 << 20)]
        )
        self.stub = p4r_grpc.P4RuntimeStub(self.channel)
        self.election_id = election_id
        self.streams: list[Stream] = []

    def stream(self, election_id: int | None = None) -> Stream:
        stream = Stream(self.stub)
        self.streams.append(stream)
        stream.arbitrate(self.election_id if election_id is None else election_id)
        return stream

    def _election(self, message: p4r.Uint128) -> None:
        message.high = self.election_id >> 64
        message.low = self.election_id & ((1 << 64) - 1)

    def push(
        self,
        action: p4r.SetForwardingPipelineConfigRequest.Action.ValueType = CONFIG.VERIFY_AND_COMMIT,
        p4info: object = None,
    ) -> None:
        request = CONFIG(device_id=DEVICE, action=action)
        self._election(request.election_id)
        request.config.p4info.CopyFrom(p4info or SCHEMA.p4info)  # type: ignore[arg-type]
        request.config.p4_device_config = b'{"placeholder": true}'
        request.config.cookie.cookie = 42
        self.stub.SetForwardingPipelineConfig(request)

    def write(self, *updates: p4r.Update, device_id: int = DEVICE) -> None:
        request = p4r.WriteRequest(device_id=device_id)
        self._election(request.election_id)
        request.updates.extend(updates)
        self.stub.Write(request)

    def read(self, *entities: p4r.Entity) -> list[p4r.Entity]:
        request = p4r.ReadRequest(device_id=DEVICE)
        request.entities.extend(entities)
        return [e for response in self.stub.Read(request) for e in response.entities]

    def close(self) -> None:
        for stream in self.streams:
            stream.close()
        self.channel.close()


def update(kind: int, **entity: object) -> p4r.Update:
    return p4r.Update(type=kind, entity=p4r.Entity(**entity))  # type: ignore[arg-type]


def write_errors(exc: grpc.RpcError) -> list[p4r.Error]:
    """The per-update p4.v1.Error list of a failed Write."""
    assert exc.code() == grpc.StatusCode.UNKNOWN
    details = [
        item.value
        for item in exc.trailing_metadata() or ()
        if item.key == "grpc-status-details-bin"
    ]
    assert len(details) == 1 and isinstance(details[0], bytes)
    status = rpc_status.Status.FromString(details[0])
    errors = []
    for detail in status.details:
        error = p4r.Error()
        assert detail.Unpack(error)
        errors.append(error)
    return errors


@pytest.fixture
def switch() -> Iterator[Switch]:
    sw = Switch(DEVICE)
    yield sw
    sw.close()


@pytest.fixture
def server(switch: Switch) -> Iterator[P4RuntimeServer]:
    srv = P4RuntimeServer(switch, "127.0.0.1:0").start()
    yield srv
    srv.stop(0)


@pytest.fixture
def client(server: P4RuntimeServer) -> Iterator[Client]:
    c = Client(server.address)
    yield c
    c.close()


@pytest.fixture
def primary(client: Client) -> Client:
    """A client that is primary and has pushed the committed P4Info."""
    stream = client.stream()
    assert stream.next().arbitration.status.code == rpc_code.OK
    client.push()
    return client


# Arbitration ------------------------------------------------------------------------------------


def test_capabilities(client: Client) -> None:
    reply = client.stub.Capabilities(p4r.CapabilitiesRequest())
    assert reply.p4runtime_api_version == "1.4.1"


def test_primary_and_backup_statuses_and_primary_change(server: P4RuntimeServer) -> None:
    low, high = Client(server.address, 5), Client(server.address, 9)
    try:
        first = low.stream()
        reply = first.next().arbitration
        assert (reply.status.code, reply.election_id.low) == (rpc_code.OK, 5)
        second = high.stream()
        # The new primary is announced to everyone; the old primary becomes a backup.
        assert second.next().arbitration.status.code == rpc_code.OK
        demoted = first.next().arbitration
        assert (demoted.status.code, demoted.election_id.low) == (rpc_code.ALREADY_EXISTS, 9)
        with pytest.raises(grpc.RpcError) as denied:
            low.election_id = 5
            low.write(update(p4r.Update.INSERT, table_entry=device_entry("aa:00:00:00:00:01", 1)))
        assert denied.value.code() == grpc.StatusCode.PERMISSION_DENIED
        second.close()
        promoted = first.next().arbitration
        assert (promoted.status.code, promoted.election_id.low) == (rpc_code.OK, 5)
    finally:
        low.close()
        high.close()


def test_duplicate_election_id_is_refused(server: P4RuntimeServer) -> None:
    a, b = Client(server.address, 3), Client(server.address, 3)
    try:
        assert a.stream().next().arbitration.status.code == rpc_code.OK
        with pytest.raises(grpc.RpcError) as refused:
            b.stream().next()
        assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    finally:
        a.close()
        b.close()


def test_wrong_device_id_in_arbitration(client: Client) -> None:
    stream = Stream(client.stub)
    client.streams.append(stream)
    stream.arbitrate(1, device_id=7)
    with pytest.raises(grpc.RpcError) as refused:
        stream.next()
    assert refused.value.code() == grpc.StatusCode.NOT_FOUND


def test_pipeline_push_requires_primary(client: Client) -> None:
    with pytest.raises(grpc.RpcError) as denied:
        client.push()
    assert denied.value.code() == grpc.StatusCode.PERMISSION_DENIED


# Pipeline config -------------------------------------------------------------------------------


def test_get_pipeline_response_types(primary: Client) -> None:
    def get(
        kind: p4r.GetForwardingPipelineConfigRequest.ResponseType.ValueType,
    ) -> p4r.ForwardingPipelineConfig:
        request = p4r.GetForwardingPipelineConfigRequest(device_id=DEVICE, response_type=kind)
        return primary.stub.GetForwardingPipelineConfig(request).config

    types = p4r.GetForwardingPipelineConfigRequest
    every = get(types.ALL)
    assert every.p4info == SCHEMA.p4info
    assert every.p4_device_config == b'{"placeholder": true}'
    assert every.cookie.cookie == 42
    cookie = get(types.COOKIE_ONLY)
    assert (cookie.HasField("p4info"), cookie.p4_device_config, cookie.cookie.cookie) == (
        False,
        b"",
        42,
    )
    assert get(types.P4INFO_AND_COOKIE).p4_device_config == b""
    assert not get(types.DEVICE_CONFIG_AND_COOKIE).HasField("p4info")


def test_a_different_program_is_refused_naming_the_object(client: Client) -> None:
    client.stream().next()
    other = type(SCHEMA.p4info)()
    other.CopyFrom(SCHEMA.p4info)
    for table in other.tables:
        if table.preamble.alias == "service_by_src":
            table.match_fields[1].bitwidth = 32
    with pytest.raises(grpc.RpcError) as refused:
        client.push(p4info=other)
    assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "service_by_src" in str(refused.value.details())
    other.CopyFrom(SCHEMA.p4info)
    del other.counters[:]
    with pytest.raises(grpc.RpcError) as missing:
        client.push(CONFIG.VERIFY, p4info=other)
    assert "service_hits" in str(missing.value.details())


def test_verify_save_commit(client: Client, switch: Switch) -> None:
    client.stream().next()
    client.push(CONFIG.VERIFY)
    assert switch.program is None
    client.push(CONFIG.VERIFY_AND_SAVE)
    assert switch.program is None
    client.push(CONFIG.COMMIT)
    assert switch.program is not None
    with pytest.raises(grpc.RpcError) as again:
        client.push(CONFIG.COMMIT)
    assert again.value.code() == grpc.StatusCode.FAILED_PRECONDITION


def test_reconcile_keeps_state_and_commit_resets_it(primary: Client, switch: Switch) -> None:
    primary.write(update(p4r.Update.INSERT, table_entry=device_entry("aa:00:00:00:00:01", 1)))
    primary.push(CONFIG.RECONCILE_AND_COMMIT)
    assert len(primary.read(p4r.Entity(table_entry=p4r.TableEntry()))) == 1
    primary.push(CONFIG.VERIFY_AND_COMMIT)
    assert primary.read(p4r.Entity(table_entry=p4r.TableEntry())) == []


def test_writes_before_a_pipeline_fail_cleanly(client: Client) -> None:
    client.stream().next()
    with pytest.raises(grpc.RpcError) as refused:
        client.write(update(p4r.Update.INSERT, table_entry=device_entry("aa:00:00:00:00:01", 1)))
    assert refused.value.code() == grpc.StatusCode.FAILED_PRECONDITION


# Write and Read ---------------------------------------------------------------------------------


def test_table_entries_round_trip(primary: Client) -> None:
    device = device_entry("aa:bb:cc:dd:ee:01", 7)
    service = service_entry("service_by_dst", 6, 440, 450, 3, priority=20)
    primary.write(
        update(p4r.Update.INSERT, table_entry=device),
        update(p4r.Update.INSERT, table_entry=service),
    )
    everything = primary.read(p4r.Entity(table_entry=p4r.TableEntry()))
    assert [e.table_entry for e in everything] == [device, service]
    one_table = primary.read(
        p4r.Entity(table_entry=p4r.TableEntry(table_id=SCHEMA.table("service_by_dst").id))
    )
    assert [e.table_entry for e in one_table] == [service]
    one_entry = p4r.TableEntry()
    one_entry.CopyFrom(device)
    one_entry.ClearField("action")
    assert [e.table_entry for e in primary.read(p4r.Entity(table_entry=one_entry))] == [device]


def test_non_canonical_values_are_read_back_canonical(primary: Client) -> None:
    entry = device_entry("00:00:00:00:00:05", 1)
    entry.match[0].exact.value = b"\x00\x00\x00\x00\x00\x05"
    entry.action.action.params[0].value = b"\x00\x01"
    primary.write(update(p4r.Update.INSERT, table_entry=entry))
    (read,) = primary.read(p4r.Entity(table_entry=p4r.TableEntry()))
    assert read.table_entry.match[0].exact.value == b"\x05"
    assert read.table_entry.action.action.params[0].value == b"\x01"


def test_modify_and_delete(primary: Client) -> None:
    entry = device_entry("aa:bb:cc:dd:ee:01", 7)
    primary.write(update(p4r.Update.INSERT, table_entry=entry))
    changed = device_entry("aa:bb:cc:dd:ee:01", 8)
    primary.write(update(p4r.Update.MODIFY, table_entry=changed))
    (read,) = primary.read(p4r.Entity(table_entry=p4r.TableEntry()))
    assert read.table_entry == changed
    primary.write(update(p4r.Update.DELETE, table_entry=changed))
    assert primary.read(p4r.Entity(table_entry=p4r.TableEntry())) == []


def test_per_update_errors(primary: Client) -> None:
    good = device_entry("aa:bb:cc:dd:ee:01", 7)
    too_wide = device_entry("aa:bb:cc:dd:ee:02", 7)
    too_wide.match[0].exact.value = b"\x01" * 7
    no_priority = service_entry("service_by_dst", 6, 1, 2, 3, priority=0)
    unknown_table = p4r.TableEntry()
    unknown_table.CopyFrom(good)
    unknown_table.table_id = 0x02000099
    unknown_action = device_entry("aa:bb:cc:dd:ee:03", 1)
    unknown_action.action.action.action_id = 0x01000099
    unknown_field = device_entry("aa:bb:cc:dd:ee:04", 1)
    unknown_field.match[0].field_id = 9
    defaultonly = device_entry("aa:bb:cc:dd:ee:05", 1)
    defaultonly.action.action.action_id = SCHEMA.action("unregistered").id
    del defaultonly.action.action.params[:]
    missing_param = device_entry("aa:bb:cc:dd:ee:06", 1)
    del missing_param.action.action.params[:]
    updates = [
        update(p4r.Update.INSERT, table_entry=good),
        update(p4r.Update.INSERT, table_entry=good),
        update(p4r.Update.MODIFY, table_entry=device_entry("aa:bb:cc:dd:ee:09", 1)),
        update(p4r.Update.DELETE, table_entry=device_entry("aa:bb:cc:dd:ee:09", 1)),
        update(p4r.Update.INSERT, table_entry=too_wide),
        update(p4r.Update.INSERT, table_entry=no_priority),
        update(p4r.Update.INSERT, table_entry=unknown_table),
        update(p4r.Update.INSERT, table_entry=unknown_action),
        update(p4r.Update.INSERT, table_entry=unknown_field),
        update(p4r.Update.INSERT, table_entry=defaultonly),
        update(p4r.Update.INSERT, table_entry=missing_param),
    ]
    with pytest.raises(grpc.RpcError) as failed:
        primary.write(*updates)
    errors = write_errors(failed.value)
    codes = [e.canonical_code for e in errors]
    assert codes == [
        rpc_code.OK,
        rpc_code.ALREADY_EXISTS,
        rpc_code.NOT_FOUND,
        rpc_code.NOT_FOUND,
        rpc_code.INVALID_ARGUMENT,
        rpc_code.INVALID_ARGUMENT,
        rpc_code.INVALID_ARGUMENT,
        rpc_code.INVALID_ARGUMENT,
        rpc_code.INVALID_ARGUMENT,
        rpc_code.INVALID_ARGUMENT,
        rpc_code.INVALID_ARGUMENT,
    ]
    assert "does not fit in 48 bits" in errors[4].message
    assert "priority" in errors[5].message
    assert str(0x02000099) in errors[6].message
    assert str(0x01000099) in errors[7].message
    assert "match field id 9" in errors[8].message
    assert "unregistered" in errors[9].message
    assert "device_id" in errors[10].message
    # The update that succeeded is installed.
    assert [e.table_entry for e in primary.read(p4r.Entity(table_entry=p4r.TableEntry()))] == [good]


def test_dont_care_matches_must_be_omitted(primary: Client) -> None:
    zero_mask = service_entry("service_by_dst", 6, 1, 2, 3)
    zero_mask.match[0].ternary.value, zero_mask.match[0].ternary.mask = b"\x00", b"\x00"
    full_range = service_entry("service_by_dst", 6, 0, 0xFFFF, 3)
    omitted = service_entry("service_by_dst", 6, 0, 0xFFFF, 3)
    del omitted.match[1]
    with pytest.raises(grpc.RpcError) as failed:
        primary.write(
            update(p4r.Update.INSERT, table_entry=zero_mask),
            update(p4r.Update.INSERT, table_entry=full_range),
            update(p4r.Update.INSERT, table_entry=omitted),
        )
    codes = [e.canonical_code for e in write_errors(failed.value)]
    assert codes == [rpc_code.INVALID_ARGUMENT, rpc_code.INVALID_ARGUMENT, rpc_code.OK]


def test_table_full_is_resource_exhausted(client: Client) -> None:
    small = type(SCHEMA.p4info)()
    small.CopyFrom(SCHEMA.p4info)
    for table in small.tables:
        if table.preamble.alias == "l2_forward":
            table.size = 2
    client.stream().next()
    client.push(p4info=small)

    def l2(mac: int) -> p4r.Update:
        entry = p4r.TableEntry(table_id=SCHEMA.table("l2_forward").id)
        entry.match.add(field_id=1).exact.value = encode_int(mac, 48)
        entry.action.action.action_id = SCHEMA.action("flood").id
        return update(p4r.Update.INSERT, table_entry=entry)

    with pytest.raises(grpc.RpcError) as failed:
        client.write(l2(1), l2(2), l2(3))
    codes = [e.canonical_code for e in write_errors(failed.value)]
    assert codes == [rpc_code.OK, rpc_code.OK, rpc_code.RESOURCE_EXHAUSTED]


def test_default_entries_modify_read_and_reset(primary: Client) -> None:
    table_id = SCHEMA.table("l2_forward").id
    request = p4r.Entity(table_entry=p4r.TableEntry(table_id=table_id, is_default_action=True))
    (initial,) = primary.read(request)
    assert initial.table_entry.action.action.action_id == SCHEMA.action("flood").id
    tap = p4r.TableEntry(table_id=table_id, is_default_action=True)
    tap.action.action.action_id = SCHEMA.action("drop").id
    primary.write(update(p4r.Update.MODIFY, table_entry=tap))
    assert primary.read(request)[0].table_entry == tap
    with pytest.raises(grpc.RpcError) as failed:
        primary.write(update(p4r.Update.INSERT, table_entry=tap))
    assert write_errors(failed.value)[0].canonical_code == rpc_code.INVALID_ARGUMENT
    primary.write(
        update(
            p4r.Update.MODIFY,
            table_entry=p4r.TableEntry(table_id=table_id, is_default_action=True),
        )
    )
    assert primary.read(request)[0].table_entry == initial.table_entry
    # The default entry is not part of a wildcard read.
    assert primary.read(p4r.Entity(table_entry=p4r.TableEntry(table_id=table_id))) == []


def test_counter_and_register_writes_are_unimplemented(primary: Client) -> None:
    counter = p4r.CounterEntry(counter_id=SCHEMA.counter("service_hits").id)
    counter.index.index = 1
    register = p4r.RegisterEntry(register_id=SCHEMA.register("digest_mac").id)
    with pytest.raises(grpc.RpcError) as failed:
        primary.write(
            update(p4r.Update.MODIFY, counter_entry=counter),
            update(p4r.Update.MODIFY, register_entry=register),
        )
    codes = [e.canonical_code for e in write_errors(failed.value)]
    assert codes == [rpc_code.UNIMPLEMENTED, rpc_code.UNIMPLEMENTED]


def test_register_reads_are_unimplemented(primary: Client) -> None:
    register = p4r.RegisterEntry(register_id=SCHEMA.register("digest_mac").id)
    with pytest.raises(grpc.RpcError) as failed:
        primary.read(p4r.Entity(register_entry=register))
    assert failed.value.code() == grpc.StatusCode.UNIMPLEMENTED
    assert failed.value.details() == "Register reads are not supported yet"


def test_multicast_groups_round_trip_and_flood(primary: Client, switch: Switch) -> None:
    sent: list[tuple[int, bytes]] = []
    switch.set_transmit(lambda port, frame: sent.append((port, frame)))
    group = p4r.PacketReplicationEngineEntry()
    group.multicast_group_entry.multicast_group_id = 1
    group.multicast_group_entry.replicas.add(egress_port=1, instance=0)
    group.multicast_group_entry.replicas.add(port=b"\x02", instance=0)
    group.multicast_group_entry.replicas.add(egress_port=3, instance=0)
    primary.write(update(p4r.Update.INSERT, packet_replication_engine_entry=group))
    wildcard = p4r.PacketReplicationEngineEntry()
    wildcard.multicast_group_entry.SetInParent()
    (read,) = primary.read(p4r.Entity(packet_replication_engine_entry=wildcard))
    assert read.packet_replication_engine_entry == group
    frame = bytes(Ether(src="aa:00:00:00:00:01", dst="ff:ff:ff:ff:ff:ff") / IP() / TCP())
    switch.receive(frame, 2)
    assert sent == [(1, frame), (3, frame)]
    with pytest.raises(grpc.RpcError) as failed:
        primary.write(update(p4r.Update.INSERT, packet_replication_engine_entry=group))
    assert write_errors(failed.value)[0].canonical_code == rpc_code.ALREADY_EXISTS
    primary.write(update(p4r.Update.DELETE, packet_replication_engine_entry=group))
    sent.clear()
    switch.receive(frame, 2)
    assert sent == []


def test_counters_after_known_packets(primary: Client, switch: Switch) -> None:
    primary.write(
        update(p4r.Update.INSERT, table_entry=device_entry("aa:bb:cc:dd:ee:01", 7)),
        update(p4r.Update.INSERT, table_entry=service_entry("service_by_dst", 6, 443, 443, 3)),
        update(p4r.Update.INSERT, table_entry=service_entry("service_by_src", 6, 80, 80, 4)),
    )
    https = bytes(Ether(src="aa:bb:cc:dd:ee:01") / IP() / TCP(sport=5000, dport=443))
    served = bytes(Ether(src="aa:bb:cc:dd:ee:01") / IP() / TCP(sport=80, dport=5000)) + b"x" * 50
    stranger = bytes(Ether(src="aa:bb:cc:dd:ee:99") / IP() / TCP(sport=5000, dport=443))
    for frame, times in ((https, 3), (served, 2), (stranger, 1)):
        for _ in range(times):
            switch.receive(frame, 1)
    counter_id = SCHEMA.counter("service_hits").id
    cells = primary.read(p4r.Entity(counter_entry=p4r.CounterEntry(counter_id=counter_id)))
    assert len(cells) == 1024 * 256
    assert [c.counter_entry.index.index for c in cells[:3]] == [0, 1, 2]
    counts = {
        c.counter_entry.index.index: (
            c.counter_entry.data.packet_count,
            c.counter_entry.data.byte_count,
        )
        for c in cells
        if c.counter_entry.data.packet_count
    }
    assert counts == {
        7 * 256 + 3: (3, 3 * len(https)),
        7 * 256 + 4: (2, 2 * len(served)),
        0 * 256 + 3: (1, len(stranger)),
    }
    single = p4r.CounterEntry(counter_id=counter_id)
    single.index.index = 7 * 256 + 4
    (one,) = primary.read(p4r.Entity(counter_entry=single))
    assert (one.counter_entry.index.index, one.counter_entry.data.packet_count) == (7 * 256 + 4, 2)
    # counter_id 0 means every counter.
    assert len(primary.read(p4r.Entity(counter_entry=p4r.CounterEntry()))) == 1024 * 256
    single.index.index = 1024 * 256
    with pytest.raises(grpc.RpcError) as failed:
        primary.read(p4r.Entity(counter_entry=single))
    assert failed.value.code() == grpc.StatusCode.OUT_OF_RANGE


def _protobuf_build(size: int, packets: np.ndarray, byte_counts: np.ndarray) -> p4r.ReadResponse:
    expected = p4r.ReadResponse()
    for index in range(size):
        entry = expected.entities.add().counter_entry
        entry.counter_id = 0x12000001
        entry.index.index = index
        entry.data.byte_count = int(byte_counts[index])
        entry.data.packet_count = int(packets[index])
    return expected


@pytest.mark.parametrize("nonzero", [0.0, 0.02, 0.4, 1.0])
def test_encoded_counter_read_decodes_like_the_protobuf_build(nonzero: float) -> None:
    rng = np.random.default_rng(7)
    size = 5000
    packets = rng.integers(1, 1 << 40, size)
    packets[rng.random(size) >= nonzero] = 0
    byte_counts = packets * rng.integers(1, 1500, size)
    if nonzero:
        packets[17], byte_counts[17] = (1 << 63) - 1, (1 << 63) - 1
        byte_counts[18] = 5  # bytes without packets still make a non-zero cell
    encoder = CounterArrayEncoder(0x12000001, size, limit=20_000)
    chunks = encoder.encode(packets, byte_counts)
    assert len(chunks) > 1 and all(len(c) <= 20_000 for c in chunks)
    expected = _protobuf_build(size, packets, byte_counts)
    decoded = p4r.ReadResponse()
    for chunk in chunks:
        decoded.MergeFromString(chunk)
    assert decoded == expected
    assert decoded.SerializeToString() == expected.SerializeToString()
    if nonzero <= 0.1:
        # Sparse arrays are encoded byte for byte as protobuf serialises them.
        assert b"".join(chunks) == expected.SerializeToString()


# Digests ----------------------------------------------------------------------------------------


def digest_config(
    kind: int, max_timeout_ns: int = 0, max_list_size: int = 1, ack_ns: int = 10**9
) -> p4r.Update:
    entry = p4r.DigestEntry(digest_id=SCHEMA.digest("new_device_t").id)
    entry.config.max_timeout_ns = max_timeout_ns
    entry.config.max_list_size = max_list_size
    entry.config.ack_timeout_ns = ack_ns
    return update(kind, digest_entry=entry)


def unknown_frame(last: int) -> bytes:
    return bytes(Ether(src=f"02:00:00:00:00:{last:02x}") / IP() / TCP())


def digest_macs(message: p4r.StreamMessageResponse) -> list[tuple[bytes, bytes]]:
    return [
        (d.struct.members[0].bitstring, d.struct.members[1].bitstring) for d in message.digest.data
    ]


@pytest.fixture
def stream_primary(client: Client) -> tuple[Client, Stream]:
    stream = client.stream()
    assert stream.next().arbitration.status.code == rpc_code.OK
    client.push()
    return client, stream


def test_no_digest_without_a_config(stream_primary: tuple[Client, Stream], switch: Switch) -> None:
    client, stream = stream_primary
    switch.receive(unknown_frame(1), 3)
    with pytest.raises(queue.Empty):
        stream.next(timeout=0.3)
    entry = p4r.DigestEntry(digest_id=SCHEMA.digest("new_device_t").id)
    with pytest.raises(grpc.RpcError) as failed:
        client.read(p4r.Entity(digest_entry=entry))
    assert failed.value.code() == grpc.StatusCode.NOT_FOUND


def test_digest_config_round_trip_and_errors(stream_primary: tuple[Client, Stream]) -> None:
    client, _ = stream_primary
    client.write(digest_config(p4r.Update.INSERT, 1000, 5, 2000))
    (read,) = client.read(p4r.Entity(digest_entry=p4r.DigestEntry()))
    assert (read.digest_entry.config.max_timeout_ns, read.digest_entry.config.max_list_size) == (
        1000,
        5,
    )
    assert read.digest_entry.config.ack_timeout_ns == 2000
    with pytest.raises(grpc.RpcError) as failed:
        client.write(digest_config(p4r.Update.INSERT))
    assert write_errors(failed.value)[0].canonical_code == rpc_code.ALREADY_EXISTS
    client.write(digest_config(p4r.Update.DELETE))
    with pytest.raises(grpc.RpcError) as missing:
        client.write(digest_config(p4r.Update.MODIFY))
    assert write_errors(missing.value)[0].canonical_code == rpc_code.NOT_FOUND


def test_digest_sent_once_until_acked(
    stream_primary: tuple[Client, Stream], switch: Switch
) -> None:
    client, stream = stream_primary
    client.write(digest_config(p4r.Update.INSERT, ack_ns=60 * 10**9))
    switch.receive(unknown_frame(1), 3)
    first = stream.next_of("digest")
    assert first.digest.digest_id == SCHEMA.digest("new_device_t").id
    assert digest_macs(first) == [(bytes.fromhex("020000000001"), b"\x03")]
    # The switch's repeat interval is 5 s, so force a second digest by clearing its cache.
    pipeline = switch.pipeline
    assert pipeline is not None
    pipeline.digest_mac[:] = [0] * len(pipeline.digest_mac)
    switch.receive(unknown_frame(1), 3)
    with pytest.raises(queue.Empty):
        stream.next(timeout=0.3)  # same data, list not yet acknowledged
    ack = p4r.StreamMessageRequest()
    ack.digest_ack.digest_id = first.digest.digest_id
    ack.digest_ack.list_id = first.digest.list_id
    stream.send(ack)
    time.sleep(0.2)
    pipeline.digest_mac[:] = [0] * len(pipeline.digest_mac)
    switch.receive(unknown_frame(1), 3)
    again = stream.next_of("digest")
    assert again.digest.list_id == first.digest.list_id + 1
    assert digest_macs(again) == digest_macs(first)


def test_unacknowledged_digest_data_is_sent_again_after_the_ack_timeout(
    stream_primary: tuple[Client, Stream], switch: Switch
) -> None:
    client, stream = stream_primary
    client.write(digest_config(p4r.Update.INSERT, ack_ns=1_000_000_000))
    pipeline = switch.pipeline
    assert pipeline is not None
    switch.receive(unknown_frame(5), 2)
    first = stream.next_of("digest")
    pipeline.digest_mac[:] = [0] * len(pipeline.digest_mac)
    switch.receive(unknown_frame(5), 2)
    with pytest.raises(queue.Empty):
        stream.next(timeout=0.1)  # within the ack timeout: suppressed
    time.sleep(1.0)
    pipeline.digest_mac[:] = [0] * len(pipeline.digest_mac)
    switch.receive(unknown_frame(5), 2)
    again = stream.next_of("digest")
    assert digest_macs(again) == digest_macs(first)
    assert again.digest.list_id == first.digest.list_id + 1


def test_digest_batches_up_to_max_list_size(
    stream_primary: tuple[Client, Stream], switch: Switch
) -> None:
    client, stream = stream_primary
    client.write(digest_config(p4r.Update.INSERT, max_timeout_ns=10 * 10**9, max_list_size=3))
    for last in (1, 2, 3, 4):
        switch.receive(unknown_frame(last), 1)
    batch = stream.next_of("digest")
    assert [mac for mac, _ in digest_macs(batch)] == [
        bytes.fromhex(f"0200000000{n:02x}") for n in (1, 2, 3)
    ]
    with pytest.raises(queue.Empty):
        stream.next(timeout=0.3)  # the fourth waits for more data or max_timeout_ns


def test_digest_timeout_flushes_a_partial_list(
    stream_primary: tuple[Client, Stream], switch: Switch
) -> None:
    client, stream = stream_primary
    client.write(digest_config(p4r.Update.INSERT, max_timeout_ns=200_000_000, max_list_size=100))
    switch.receive(unknown_frame(9), 1)
    started = time.monotonic()
    message = stream.next_of("digest", timeout=5)
    assert time.monotonic() - started >= 0.15
    assert digest_macs(message) == [(bytes.fromhex("020000000009"), b"\x01")]


def test_packet_out_is_rejected_on_the_stream(stream_primary: tuple[Client, Stream]) -> None:
    _, stream = stream_primary
    request = p4r.StreamMessageRequest()
    request.packet.payload = b"\x00" * 60
    stream.send(request)
    error = stream.next_of("error").error
    assert error.canonical_code == rpc_code.UNIMPLEMENTED
    assert error.packet_out.packet_out.payload == b"\x00" * 60


def test_wrong_device_id_is_not_found(primary: Client) -> None:
    with pytest.raises(grpc.RpcError) as refused:
        primary.write(
            update(p4r.Update.INSERT, table_entry=device_entry("aa:00:00:00:00:01", 1)),
            device_id=9,
        )
    assert refused.value.code() == grpc.StatusCode.NOT_FOUND


def test_frames_to_the_cpu_port_become_packet_ins(server: P4RuntimeServer, switch: Switch) -> None:
    switch.cpu_port = 64
    client = Client(server.address)
    try:
        stream = client.stream()
        stream.next()
        client.push()
        entry = p4r.TableEntry(table_id=SCHEMA.table("l2_forward").id)
        entry.match.add(field_id=1).exact.value = bytes.fromhex("0200000000fe")
        entry.action.action.action_id = SCHEMA.action("forward").id
        entry.action.action.params.add(param_id=1, value=bytes([64]))
        client.write(update(p4r.Update.INSERT, table_entry=entry))
        frame = bytes(Ether(src="aa:00:00:00:00:01", dst="02:00:00:00:00:fe") / IP() / TCP())
        switch.receive(frame, 1)
        assert stream.next_of("packet").packet.payload == frame
    finally:
        client.close()
