"""The packet replication engine: multicast groups written as P4Runtime PRE entries."""

from __future__ import annotations

from dataclasses import dataclass

from finsy.proto import p4r

from refswitch.status import (
    already_exists,
    invalid_argument,
    not_found,
    unimplemented,
)

# v1model ports are bit<9>.
PORT_BITS = 9


@dataclass(frozen=True)
class Replica:
    """One copy of a multicast packet; `as_bytes` remembers which Replica field the client used."""

    port: int
    instance: int
    as_bytes: bool = False


class ReplicationEngine:
    """Multicast groups by id."""

    def __init__(self) -> None:
        self._groups: dict[int, tuple[Replica, ...]] = {}

    def ports(self) -> dict[int, tuple[int, ...]]:
        """Every group's egress ports, one per replica."""
        return {gid: tuple(r.port for r in replicas) for gid, replicas in self._groups.items()}

    def clear(self) -> None:
        """Remove every group."""
        self._groups.clear()

    def write(self, update_type: int, entry: p4r.PacketReplicationEngineEntry) -> None:
        """Apply one PRE update."""
        kind = entry.WhichOneof("type")
        if kind != "multicast_group_entry":
            raise unimplemented(f"{kind} is not supported by this target")
        group = entry.multicast_group_entry
        gid = group.multicast_group_id
        if gid == 0:
            raise invalid_argument("multicast group id 0 is reserved")
        if update_type == p4r.Update.DELETE:
            if gid not in self._groups:
                raise not_found(f"multicast group {gid} does not exist")
            del self._groups[gid]
            return
        replicas = _replicas(gid, group)
        if update_type == p4r.Update.INSERT:
            if gid in self._groups:
                raise already_exists(f"multicast group {gid} already exists")
        elif update_type == p4r.Update.MODIFY:
            if gid not in self._groups:
                raise not_found(f"multicast group {gid} does not exist")
        else:
            raise invalid_argument(f"multicast group {gid}: invalid update type")
        self._groups[gid] = replicas

    def read(
        self, request: p4r.PacketReplicationEngineEntry
    ) -> list[p4r.PacketReplicationEngineEntry]:
        """Groups matching a read: one id, or all when the id is 0."""
        kind = request.WhichOneof("type")
        if kind != "multicast_group_entry":
            raise unimplemented(f"reading {kind} is not supported by this target")
        gid = request.multicast_group_entry.multicast_group_id
        if gid:
            if gid not in self._groups:
                raise not_found(f"multicast group {gid} does not exist")
            selected = [gid]
        else:
            selected = sorted(self._groups)
        return [_to_proto(g, self._groups[g]) for g in selected]


def _replicas(gid: int, group: p4r.MulticastGroupEntry) -> tuple[Replica, ...]:
    replicas: list[Replica] = []
    seen: set[tuple[int, int]] = set()
    for replica in group.replicas:
        if replica.port:
            port = int.from_bytes(replica.port, "big")
            as_bytes = True
        else:
            port = replica.egress_port
            as_bytes = False
        if port >> PORT_BITS:
            raise invalid_argument(f"multicast group {gid}: port {port} exceeds {PORT_BITS} bits")
        if (port, replica.instance) in seen:
            raise invalid_argument(
                f"multicast group {gid}: replica (port {port}, instance {replica.instance}) "
                "given twice"
            )
        seen.add((port, replica.instance))
        replicas.append(Replica(port, replica.instance, as_bytes))
    return tuple(replicas)


def _to_proto(gid: int, replicas: tuple[Replica, ...]) -> p4r.PacketReplicationEngineEntry:
    entry = p4r.PacketReplicationEngineEntry()
    group = entry.multicast_group_entry
    group.multicast_group_id = gid
    for replica in replicas:
        message = group.replicas.add(instance=replica.instance)
        if replica.as_bytes:
            message.port = replica.port.to_bytes(
                max(1, (replica.port.bit_length() + 7) // 8), "big"
            )
        else:
            message.egress_port = replica.port
    return entry
