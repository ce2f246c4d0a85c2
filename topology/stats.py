"""Counts of what emulated hosts sent and received, per service, as they report them."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass
class ServiceCounts:
    """Successful exchanges, failures and bytes for one service, and the peers involved."""

    ok: int = 0
    failed: int = 0
    bytes: int = 0
    peers: set[str] = field(default_factory=set)

    def add(self, peer: str, size: int) -> None:
        """Record one successful exchange of `size` bytes with `peer`."""
        self.ok += 1
        self.bytes += size
        self.peers.add(peer)

    def fail(self, peer: str) -> None:
        """Record one exchange with `peer` that got no answer."""
        self.failed += 1
        self.peers.add(peer)

    def to_json(self) -> dict[str, Any]:
        """JSON-ready counts with the peers sorted."""
        return {
            "ok": self.ok,
            "failed": self.failed,
            "bytes": self.bytes,
            "peers": sorted(self.peers),
        }
