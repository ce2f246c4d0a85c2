"""Base test and helpers of the svcfp PTF suite.

Every test opens its own P4Runtime session with p4runtime-shell against the target at the
`grpcaddr` test parameter, pushes the pipeline (`p4info` + `config`), installs what it needs and
removes it again. Nothing here knows which target it talks to: BMv2 and the reference switch must
behave the same. Counters are never reset, so tests assert on deltas between two wildcard reads.

Test parameters: grpcaddr, p4info, config (the device config file: BMv2 JSON, or any file the
reference switch accepts), device_id.

The names, sizes and constants come from the project's contract module and the counter reads are
decoded by the project's wire codec (the checkout is on the PTF process's path; both need numpy
and the standard library only), so this suite checks the same contract the controller and the
reference switch use, for whatever build the P4Info describes.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import p4runtime_sh.shell as sh
import ptf
from google.protobuf import text_format
from p4.config.v1 import p4info_pb2
from p4.v1 import p4runtime_pb2
from p4runtime_sh.p4runtime import P4RuntimeWriteException
from ptf import testutils
from ptf.base_tests import BaseTest

from controller.base import contract as names
from controller.base.contract import Contract
from controller.base.wire import CounterValues, decode_counter_read

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
        self.contract = Contract.from_p4info(self.p4info, p4info_path)
        counter = self._p4info_object(self.p4info.counters, names.COUNTER)
        self.counter_id = counter.preamble.id
        self.counter_size = int(counter.size)
        self.max_devices = self.contract.max_devices
        self.max_services = self.contract.max_services
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
    def _p4info_object(objects: Iterable[Any], name: str) -> Any:
        for obj in objects:
            if obj.preamble.name == name:
                return obj
        raise AssertionError(f"P4Info has no object named {name}")

    # --- control plane -------------------------------------------------------------------------

    def _insert(self, entry: Any) -> None:
        entry.insert()
        self._undo.append(entry.delete)

    def _install(self, entry: Any, may_refuse: bool) -> bool:
        """Insert `entry` (undone after the test). With `may_refuse`, a target's refusal is an
        answer, not a failure: False."""
        if not may_refuse:
            self._insert(entry)
            return True
        try:
            self._insert(entry)
        except P4RuntimeWriteException:
            return False
        return True

    def add_device(self, mac: str, device_id: int, *, may_refuse: bool = False) -> bool:
        """device_table: source MAC -> device id; False if refused (with `may_refuse`)."""
        entry = sh.TableEntry(names.DEVICE_TABLE)(action=names.SET_DEVICE)
        entry.match[names.SRC_MAC] = mac
        entry.action[names.DEVICE_ID] = str(device_id)
        return self._install(entry, may_refuse)

    def add_service(
        self,
        service_id: int,
        proto: int | None,
        ports: tuple[int, int] | None,
        priority: int,
        tables: tuple[str, ...] = names.SERVICE_TABLES,
        *,
        may_refuse: bool = False,
    ) -> bool:
        """A service as the controller installs it, in both service tables (or `tables`):
        ternary protocol, port range, priority. `proto` None matches every protocol and `ports`
        None every port (the field is left out, as P4Runtime requires for a wildcard). False if
        a table refused it (with `may_refuse`)."""
        installed = True
        for table in tables:
            entry = sh.TableEntry(table)(action=names.SET_SERVICE)
            if proto is not None:
                entry.match[names.PROTO] = f"{proto}&&&0xff"
            if ports is not None:
                entry.match[names.PORT] = f"{ports[0]}..{ports[1]}"
            entry.action[names.SERVICE_ID] = str(service_id)
            entry.priority = priority
            installed &= self._install(entry, may_refuse)
        return installed

    def add_l2(self, mac: str, port: int) -> None:
        """l2_forward: destination MAC -> egress port."""
        entry = sh.TableEntry(names.L2_TABLE)(action=names.FORWARD)
        entry.match[names.DST_MAC] = mac
        entry.action[names.PORT] = str(port)
        self._insert(entry)

    def add_l2_drop(self, mac: str) -> None:
        """l2_forward: frames to `mac` are dropped (after being counted)."""
        entry = sh.TableEntry(names.L2_TABLE)(action=names.DROP)
        entry.match[names.DST_MAC] = mac
        self._insert(entry)

    def add_flood_group(self, ports: Iterable[int] = PORTS) -> None:
        """The multicast group flood() uses (the build's FLOOD_GROUP): every port (hairpins are
        pruned in egress)."""
        group = sh.MulticastGroupEntry(self.contract.flood_group)
        for port in ports:
            group.add(port, 1)
        self._insert(group)

    def set_tap_mode(self) -> None:
        """l2_forward's default becomes drop(): count, then drop. Restored to flood() after."""
        tap = sh.TableEntry(names.L2_TABLE)(action=names.DROP)
        tap.is_default = True
        tap.modify()
        restore = sh.TableEntry(names.L2_TABLE)(action=names.FLOOD)
        restore.is_default = True
        self._undo.append(restore.modify)

    def enable_digests(self) -> None:
        """Ask for every new-device digest at once (one per list), acknowledged by the reader."""
        entry = sh.DigestEntry(names.NEW_DEVICE_DIGEST)
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
        return self.contract.cell(device_id, service_id)

    def read_counters(self) -> CounterValues:
        """One wildcard CounterEntry read of service_hits, every cell of which the target must
        return (exactly once), decoded from the wire bytes."""
        request = p4runtime_pb2.ReadRequest(device_id=self.device_id)
        request.entities.add().counter_entry.counter_id = self.counter_id
        read = self._reader.unary_stream(
            "/p4.v1.P4Runtime/Read",
            request_serializer=p4runtime_pb2.ReadRequest.SerializeToString,
            response_deserializer=None,
        )
        responses = list(read(request, timeout=60))
        return decode_counter_read(
            responses, self.counter_id, self.counter_size, self.grpc_addr, complete=True
        )

    @staticmethod
    def changes(before: CounterValues, after: CounterValues) -> dict[int, tuple[int, int]]:
        """{index: (packets, bytes)} of every cell that moved from `before` to `after`."""
        packets = after.packets - before.packets
        octets = after.bytes - before.bytes
        moved = np.flatnonzero((packets != 0) | (octets != 0))
        return {int(i): (int(packets[i]), int(octets[i])) for i in moved}

    def assert_counted(
        self, before: CounterValues, expected: dict[tuple[int, int], tuple[int, int]]
    ) -> None:
        """The counters moved by exactly `expected` {(device, service): (packets, bytes)} since
        `before`, and no other cell moved. Waits briefly for dropped packets to be counted."""
        want = {self.cell(d, s): counts for (d, s), counts in expected.items()}
        deadline = time.monotonic() + COUNTER_SETTLE_S
        while True:
            delta = self.changes(before, self.read_counters())
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
