"""What every switch under test offers the controller tests, read over P4Runtime the same way
whichever switch it is (see tests/support/switch.py for the reference switch and
tests/support/bmv2.py for BMv2)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import grpc
from finsy.proto import p4r, p4r_grpc

from controller.base import contract
from controller.base.p4info import P4Schema, decode_int
from tests.support.paths import P4INFO

SCHEMA = P4Schema.load(P4INFO)


class Target:
    """A switch with a P4Runtime server at `address`; subclasses move the frames."""

    kind = "target"
    device_id: int
    # The P4Info the controller pushes to this target.
    p4info: Path = P4INFO
    # The device config the controller pushes with the P4Info (None: the switch needs none).
    bmv2_json: Path | None = None

    def __init__(self, address: str) -> None:
        self.address = address
        # A whole counter array (262,144 cells by default) is larger than gRPC's 4 MB default.
        self._channel = grpc.insecure_channel(
            address, options=[("grpc.max_receive_message_length", 256 << 20)]
        )
        self._stub = p4r_grpc.P4RuntimeStub(self._channel)

    @property
    def device_config(self) -> bytes:
        """The bytes pushed as `p4_device_config`."""
        return self.bmv2_json.read_bytes() if self.bmv2_json is not None else b""

    @property
    def sent(self) -> list[tuple[int, bytes]]:
        """(port, frame) of every frame the switch sent out, in order."""
        raise NotImplementedError

    def send(self, data: bytes, port: int, count: int = 1) -> None:
        """`count` copies of `data` arrive on `port`; returns once the switch has counted them."""
        raise NotImplementedError

    def send_frames(self, frames: Sequence[bytes], port: int) -> None:
        """Every frame of `frames`, in order, arrives on `port`; returns once all are counted."""
        for data in frames:
            self.send(data, port)

    def crash(self) -> None:
        """The switch process dies; its address stays reserved for `restart`."""
        raise NotImplementedError

    def restart(self) -> None:
        """A new, empty switch on the same address."""
        raise NotImplementedError

    def stop(self) -> None:
        """Stop everything the target started."""
        self._channel.close()

    def _read(self, entity: p4r.Entity) -> list[p4r.Entity]:
        request = p4r.ReadRequest(device_id=self.device_id, entities=[entity])
        try:
            return [
                e for response in self._stub.Read(request, timeout=5) for e in response.entities
            ]
        except grpc.RpcError as exc:
            # Before a pipeline is pushed there is nothing to read.
            if exc.code() == grpc.StatusCode.FAILED_PRECONDITION:
                return []
            raise

    @property
    def devices(self) -> dict[bytes, int]:
        """The device_table entries the switch holds now (empty before a pipeline is pushed)."""
        table = P4Schema.load(self.p4info).table(contract.DEVICE_TABLE)
        found = self._read(p4r.Entity(table_entry=p4r.TableEntry(table_id=table.id)))
        return {
            e.table_entry.match[0].exact.value.rjust(6, b"\0"): decode_int(
                e.table_entry.action.action.params[0].value
            )
            for e in found
        }

    def multicast_groups(self) -> dict[int, tuple[int, ...]]:
        """Every multicast group the switch holds: group id → egress ports, sorted."""
        wildcard = p4r.Entity(
            packet_replication_engine_entry=p4r.PacketReplicationEngineEntry(
                multicast_group_entry=p4r.MulticastGroupEntry()
            )
        )
        groups = {}
        for entity in self._read(wildcard):
            group = entity.packet_replication_engine_entry.multicast_group_entry
            groups[group.multicast_group_id] = tuple(sorted(r.egress_port for r in group.replicas))
        return groups
