"""Base test and helpers of the svcfp PTF suite.

Every test opens its own P4Runtime session with p4runtime-shell against the target at the
`grpcaddr` test parameter, pushes the pipeline (`p4info` + `config`), installs what it needs and
removes it again. Nothing here knows which target it talks to: BMv2 and the reference switch must
behave the same. Counters are never reset, so tests assert on deltas between two wildcard reads.

Test parameters: grpcaddr, p4info, config (the device config file: BMv2 JSON, or any file the
reference switch accepts), device_id.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import grpc
import p4runtime_sh.shell as sh
import ptf
from counter_wire import CounterSnapshot, read_response_entities
from google.protobuf import text_format
from p4.config.v1 import p4info_pb2
from p4.v1 import p4runtime_pb2
from ptf import testutils
from ptf.base_tests import BaseTest

# PTF port N faces switch port N; the runner wires up this many.
PORTS = (0, 1, 2, 3)
BROADCAST = "ff:ff:ff:ff:ff:ff"
PROTO_ICMP, PROTO_TCP, PROTO_UDP, PROTO_ICMPV6 = 1, 6, 17, 58

# A whole counter array (262,144 cells by default) is larger than gRPC's 4 MB default.
MAX_MESSAGE = 256 * 1024 * 1024
COUNTER_SETTLE_S = 3.0


class FingerprintTest(BaseTest):
    """A P4Runtime session on the target under test, with helpers that undo what they install."""

    def setUp(self) -> None:
        super().setUp()
        self.dataplane = ptf.dataplane_instance
        self.dataplane.flush()
        self.grpc_addr = str(testutils.test_param_get("grpcaddr"))
        self.device_id = int(testutils.test_param_get("device_id", 0))
        p4info_path = str(testutils.test_param_get("p4info"))
        config_path = str(testutils.test_param_get("config"))
        self.p4info = text_format.Parse(Path(p4info_path).read_text(), p4info_pb2.P4Info())
        counter = self._p4info_object(self.p4info.counters, "service_hits")
        self.counter_id = counter.preamble.id
        self.counter_size = int(counter.size)
        self.max_devices = int(self._p4info_object(self.p4info.tables, "device_table").size)
        self.max_services = self.counter_size // self.max_devices
        sh.setup(
            device_id=self.device_id,
            grpc_addr=self.grpc_addr,
            election_id=(0, 1),
            config=sh.FwdPipeConfig(p4info_path, config_path),
            verbose=False,
        )
        self._undo: list[Callable[[], object]] = []
        self._reader = grpc.insecure_channel(
            self.grpc_addr, options=[("grpc.max_receive_message_length", MAX_MESSAGE)]
        )

    def tearDown(self) -> None:
        """Undo every installation, newest first, even when one of them fails."""
        failures: list[Exception] = []
        for undo in reversed(self._undo):
            try:
                undo()
            except Exception as exc:
                failures.append(exc)
        self._reader.close()
        sh.teardown()
        super().tearDown()
        if failures:
            raise failures[0]

    @staticmethod
    def _p4info_object(objects: Iterable[Any], alias: str) -> Any:
        for obj in objects:
            if obj.preamble.alias == alias:
                return obj
        raise AssertionError(f"P4Info has no object named {alias}")

    # --- control plane -------------------------------------------------------------------------

    def _insert(self, entry: Any) -> None:
        entry.insert()
        self._undo.append(entry.delete)

    def add_device(self, mac: str, device_id: int) -> None:
        """device_table: source MAC -> device id."""
        entry = sh.TableEntry("device_table")(action="set_device")
        entry.match["src_mac"] = mac
        entry.action["device_id"] = str(device_id)
        self._insert(entry)

    def add_service(
        self,
        service_id: int,
        proto: int | None,
        ports: tuple[int, int] | None,
        priority: int,
        tables: tuple[str, ...] = ("service_by_dst", "service_by_src"),
    ) -> None:
        """A service as the controller installs it: ternary protocol, port range, priority.

        `proto` None matches every protocol and `ports` None every port (the field is left out,
        as P4Runtime requires for a wildcard).
        """
        for table in tables:
            entry = sh.TableEntry(table)(action="set_service")
            if proto is not None:
                entry.match["proto"] = f"{proto}&&&0xff"
            if ports is not None:
                entry.match["port"] = f"{ports[0]}..{ports[1]}"
            entry.action["service_id"] = str(service_id)
            entry.priority = priority
            self._insert(entry)

    def add_l2(self, mac: str, port: int) -> None:
        """l2_forward: destination MAC -> egress port."""
        entry = sh.TableEntry("l2_forward")(action="forward")
        entry.match["dst_mac"] = mac
        entry.action["port"] = str(port)
        self._insert(entry)

    def add_l2_drop(self, mac: str) -> None:
        """l2_forward: frames to `mac` are dropped (after being counted)."""
        entry = sh.TableEntry("l2_forward")(action="drop")
        entry.match["dst_mac"] = mac
        self._insert(entry)

    def add_flood_group(self, ports: Iterable[int] = PORTS, group_id: int = 1) -> None:
        """The multicast group flood() uses: every port (hairpins are pruned in egress)."""
        group = sh.MulticastGroupEntry(group_id)
        for port in ports:
            group.add(port, 1)
        self._insert(group)

    def set_tap_mode(self) -> None:
        """l2_forward's default becomes drop(): count, then drop. Restored to flood() after."""
        tap = sh.TableEntry("l2_forward")(action="drop")
        tap.is_default = True
        tap.modify()
        restore = sh.TableEntry("l2_forward")(action="flood")
        restore.is_default = True
        self._undo.append(restore.modify)

    def enable_digests(self) -> None:
        """Ask for every new-device digest at once (one per list), acknowledged by the reader."""
        entry = sh.DigestEntry("new_device_t")
        entry.max_timeout_ns = 0
        entry.max_list_size = 1
        entry.ack_timeout_ns = 1_000_000_000
        self._insert(entry)

    def collect_digests(self, seconds: float) -> list[tuple[int, int]]:
        """(mac, port) of every new_device_t digest received within `seconds`, acknowledged."""
        received: list[tuple[int, int]] = []
        deadline = time.monotonic() + seconds
        while (remaining := deadline - time.monotonic()) > 0:
            message = sh.client.get_stream_packet("digest", timeout=remaining)
            if message is None:
                break
            digest = message.digest
            for data in digest.data:
                mac, port = (int.from_bytes(m.bitstring, "big") for m in data.struct.members)
                received.append((mac, port))
            ack = p4runtime_pb2.StreamMessageRequest()
            ack.digest_ack.digest_id = digest.digest_id
            ack.digest_ack.list_id = digest.list_id
            sh.client.stream_out_q.put(ack)
        return received

    def install_hosts(self, ports: Iterable[int] = PORTS) -> None:
        """One registered device behind each port (device id = port + 1), reachable by unicast,
        and the flood group."""
        for port in ports:
            self.add_device(host_mac(port), host_device(port))
            self.add_l2(host_mac(port), port)
        self.add_flood_group()

    # --- counters --------------------------------------------------------------------------------

    def cell(self, device_id: int, service_id: int) -> int:
        """The service_hits index of (device, service)."""
        return device_id * self.max_services + service_id

    def read_counters(self) -> CounterSnapshot:
        """One wildcard CounterEntry read of service_hits, every cell of which the target must
        return."""
        request = p4runtime_pb2.ReadRequest(device_id=self.device_id)
        request.entities.add().counter_entry.counter_id = self.counter_id
        read = self._reader.unary_stream(
            "/p4.v1.P4Runtime/Read",
            request_serializer=p4runtime_pb2.ReadRequest.SerializeToString,
            response_deserializer=None,
        )
        entities: list[bytes] = []
        for response in read(request, timeout=60):
            entities.extend(read_response_entities(response))
        self.assertEqual(len(entities), self.counter_size, "wildcard read must return every cell")
        return CounterSnapshot(tuple(entities))

    def assert_counted(
        self, before: CounterSnapshot, expected: dict[tuple[int, int], tuple[int, int]]
    ) -> None:
        """The counters moved by exactly `expected` {(device, service): (packets, bytes)} since
        `before`, and no other cell moved. Waits briefly for dropped packets to be counted."""
        want = {self.cell(d, s): counts for (d, s), counts in expected.items()}
        deadline = time.monotonic() + COUNTER_SETTLE_S
        while True:
            delta = self.read_counters().since(before)
            if delta == want or time.monotonic() > deadline:
                break
            time.sleep(0.2)
        self.assertEqual(
            {self._name(i): v for i, v in delta.items()},
            {self._name(i): v for i, v in want.items()},
        )

    def _name(self, index: int) -> str:
        return f"device {index // self.max_services} service {index % self.max_services}"

    # --- data plane ------------------------------------------------------------------------------

    def send_and_expect(
        self, port: int, packet: Any, out_ports: Iterable[int], count: int = 1
    ) -> int:
        """Send `packet` `count` times on `port`; each copy must leave unchanged on exactly
        `out_ports` and nowhere else. Returns the frame length, what the counters must add."""
        out_ports = tuple(out_ports)
        for _ in range(count):
            testutils.send_packet(self, port, packet)
            for out_port in out_ports:
                testutils.verify_packet(self, packet, out_port)
        testutils.verify_no_other_packets(self)
        return len(bytes(packet))


def host_mac(port: int) -> str:
    """The MAC of the emulated device behind `port`."""
    return f"00:00:00:00:01:{port + 1:02x}"


def host_device(port: int) -> int:
    """The device id the tests register for the device behind `port`."""
    return port + 1


def host_ip(port: int) -> str:
    """The IPv4 address of the host behind `port`."""
    return f"10.0.0.{port + 1}"


def host_ip6(port: int) -> str:
    """The IPv6 address of the host behind `port`."""
    return f"fd00::{port + 1:x}"
