"""The switch's service lookup, reproduced exactly (DESIGN §3), for the offline ingesters.

1. TCP (6) and UDP (17) packets whose L4 header is missing or truncated are not looked up:
   service 0 ("other"). Non-TCP/UDP IP protocols are looked up with ports 0. Non-IP frames are not
   looked up either (pass a negative protocol).
2. `service_by_dst`: the matching entry with the highest priority on (protocol, destination port).
3. On a miss, `service_by_src`: the same on (protocol, source port).
4. Both miss: service 0.

Each table becomes a dense (protocol row × port) → service id map, so a lookup is two array
indexings, and millions of flows are attributed in one vectorised call.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import numpy.typing as npt

from controller.base.errors import InputError
from controller.engine.services import PORT_MAX, TCP, UDP, Service


class ServiceLookup:
    """The two service tables of one catalogue as dense lookup maps."""

    def __init__(self, dst: Sequence[Service], src: Sequence[Service]) -> None:
        named = sorted({s.proto for s in (*dst, *src) if s.proto is not None})
        # Row 0 is for protocols no service names explicitly; each named protocol has its own.
        self._rows = np.zeros(256, dtype=np.intp)
        for i, proto in enumerate(named, start=1):
            self._rows[proto] = i
        self._protocols = [-1, *named]
        self._dst_map = self._paint(dst)
        self._src_map = self._paint(src)

    def lookup(self, proto: int, sport: int, dport: int, l4_valid: bool = True) -> int:
        """Service id the switch assigns to one packet (see the module docstring)."""
        if proto < 0 or proto > 255:
            return 0
        if proto in (TCP, UDP):
            if not l4_valid:
                return 0
        else:
            sport = dport = 0
        row = int(self._rows[proto])
        found = int(self._dst_map[row, dport])
        return found if found else int(self._src_map[row, sport])

    def lookup_many(
        self,
        proto: npt.ArrayLike,
        sport: npt.ArrayLike,
        dport: npt.ArrayLike,
        l4_valid: npt.ArrayLike | None = None,
    ) -> npt.NDArray[np.int32]:
        """`lookup` over arrays (vectorised); returns int32 service ids."""
        p = np.asarray(proto, dtype=np.int64)
        s = np.asarray(sport, dtype=np.int64)
        d = np.asarray(dport, dtype=np.int64)
        is_ip = (p >= 0) & (p <= 255)
        p_safe = np.where(is_ip, p, 0)
        is_l4 = (p_safe == TCP) | (p_safe == UDP)
        s = np.where(is_l4, s, 0)
        d = np.where(is_l4, d, 0)
        if np.any((s < 0) | (s > PORT_MAX) | (d < 0) | (d > PORT_MAX)):
            raise InputError("port numbers must lie in 0..65535")
        rows = self._rows[p_safe]
        found = self._dst_map[rows, d]
        result = np.where(found != 0, found, self._src_map[rows, s]).astype(np.int32)
        ok = is_ip
        if l4_valid is not None:
            ok = ok & (np.asarray(l4_valid, dtype=bool) | ~is_l4)
        result[~ok] = 0
        return result

    def _paint(self, services: Sequence[Service]) -> npt.NDArray[np.uint8]:
        """Dense (protocol row × port) → service id map: painting in ascending priority leaves
        the highest-priority match in every cell, as the switch's table lookup picks it."""
        table = np.zeros((len(self._protocols), PORT_MAX + 1), dtype=np.uint8)
        for s in sorted(services, key=lambda s: s.priority):
            for row, proto in enumerate(self._protocols):
                if s.proto is None or s.proto == proto:
                    table[row, s.port_lo : s.port_hi + 1] = s.id
        return table
