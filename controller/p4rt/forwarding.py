"""L2 forwarding state: static MAC → port maps, ports learned from digests, flooding, tap mode.

Only unicast source addresses are learned, and never more than the table holds: a host sending
from random or group source MACs must not fill the table or turn each new MAC into a failing
Write.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence

from finsy.proto import p4r

from controller.base.macs import is_unicast
from controller.base.p4info import P4Schema, normalize_mac
from controller.p4rt.entries import flood_group, l2_default, l2_entry


class Forwarding:
    """What one switch's l2_forward table and flood group should hold.

    Static entries (from the topology) win over learned ones. In tap mode the switch only counts:
    the default action drops and no forwarding entries or flood group are installed.
    """

    def __init__(
        self,
        ports: Sequence[int],
        static: Mapping[str, int] | None = None,
        tap: bool = False,
        cpu_port: int | None = None,
        capacity: int | None = None,
    ) -> None:
        self.ports = tuple(sorted({p for p in ports if p != cpu_port}))
        self.static = {normalize_mac(mac): port for mac, port in (static or {}).items()}
        self.tap = tap
        self.cpu_port = cpu_port
        self.capacity = capacity
        self.learned: dict[str, int] = {}

    @property
    def full(self) -> bool:
        """Whether the table holds as many entries as it can (static and learned)."""
        return self.capacity is not None and len(self.table()) >= self.capacity

    def learn(self, mac: str, port: int) -> bool:
        """Remember that `mac` is behind `port`; True when that changes the table."""
        mac = normalize_mac(mac)
        if self.tap or port == self.cpu_port or mac in self.static or not is_unicast(mac):
            return False
        if self.learned.get(mac) == port:
            return False
        if mac not in self.learned and self.full:
            return False
        self.learned[mac] = port
        return True

    def learn_all(self, pairs: Iterable[tuple[str, int]]) -> None:
        """Learn many (MAC, port) pairs, e.g. from the registry after a restart."""
        for mac, port in pairs:
            self.learn(mac, port)

    def table(self) -> dict[str, int]:
        """MAC → egress port, static entries over learned ones."""
        return {} if self.tap else {**self.learned, **self.static}

    def entries(self, schema: P4Schema) -> list[p4r.TableEntry]:
        """The l2_forward entries, by MAC."""
        return [l2_entry(schema, mac, port) for mac, port in sorted(self.table().items())]

    def default(self, schema: P4Schema) -> p4r.TableEntry:
        """The l2_forward default entry (flood, or drop in tap mode)."""
        return l2_default(schema, self.tap)

    def flood(self, schema: P4Schema) -> p4r.Entity | None:
        """The flood multicast group, or None in tap mode or without ports."""
        if self.tap or not self.ports:
            return None
        return flood_group(schema, self.ports)
