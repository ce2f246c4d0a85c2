"""How much of the switch one client can hold: StreamChannels, worker threads, request size.

gRPC's synchronous server runs every RPC on a thread of one pool, and a StreamChannel holds its
thread for as long as it is open, idle or not. Without a bound, a few dozen idle streams take
every thread and the Reads and Writes of the controller wait behind them, silently. So streams
are admitted up to a total and a per-client bound (a client is the peer's host: a reconnecting
controller gets a new port, not a new allowance), the pool has `unary_workers` threads more than
streams can take, and a stream beyond a bound is refused with RESOURCE_EXHAUSTED and a warning.
"""

from __future__ import annotations

import logging
import threading
import time
import urllib.parse
from collections import Counter
from dataclasses import dataclass

from controller.base.errors import InputError

log = logging.getLogger(__name__)

# One refusal warning per this many seconds at most; the ones in between are counted in it.
_WARNING_SECONDS = 5.0


@dataclass(frozen=True)
class ServerLimits:
    """The bounds of one P4Runtime server."""

    max_streams: int = 32
    max_streams_per_client: int = 8
    unary_workers: int = 8
    max_request_mib: int = 64
    # Unary RPCs that may wait for a worker; beyond them gRPC answers RESOURCE_EXHAUSTED.
    unary_backlog: int = 64

    def __post_init__(self) -> None:
        for flag, value in (
            ("--max-streams", self.max_streams),
            ("--max-streams-per-client", self.max_streams_per_client),
            ("--unary-workers", self.unary_workers),
            ("--max-request-mib", self.max_request_mib),
            ("unary backlog", self.unary_backlog),
        ):
            if value < 1:
                raise InputError(f"{flag} {value}: must be at least 1")
        if self.max_request_mib >= 2048:
            raise InputError(
                f"--max-request-mib {self.max_request_mib}: gRPC takes messages below 2 GiB"
            )

    @property
    def max_request_bytes(self) -> int:
        """The largest request gRPC accepts."""
        return self.max_request_mib << 20

    @property
    def workers(self) -> int:
        """Threads of the server's pool: every admitted stream, and the unary reserve."""
        return self.max_streams + self.unary_workers

    @property
    def concurrent_rpcs(self) -> int:
        """What gRPC itself admits at once (running or waiting for a thread)."""
        return self.workers + self.unary_backlog


def client_of(peer: str) -> str:
    """The client a gRPC peer string names: its host without the port.

    'ipv4:127.0.0.1:51234' → '127.0.0.1'; 'ipv6:[::1]:51234' (or its %-encoded form) → '[::1]';
    anything else (a Unix socket) is its own client.
    """
    scheme, _, rest = peer.partition(":")
    if scheme not in ("ipv4", "ipv6"):
        return peer
    host, sep, _port = urllib.parse.unquote(rest).rpartition(":")
    return host if sep else rest


class StreamAdmission:
    """Counts the open StreamChannels, in all and per client, and refuses those beyond."""

    def __init__(self, limits: ServerLimits) -> None:
        self.limits = limits
        self._open: Counter[str] = Counter()
        self._lock = threading.Lock()
        self._refused_quietly = 0
        self._warned_at = -_WARNING_SECONDS

    @property
    def open_streams(self) -> int:
        """Streams admitted and not yet released."""
        with self._lock:
            return self._open.total()

    def admit(self, client: str) -> str | None:
        """Count a new stream of `client`; None when admitted, else why it is refused."""
        limits = self.limits
        with self._lock:
            total = self._open.total()
            if total >= limits.max_streams:
                reason = (
                    f"too many StreamChannels: {total} open, at most {limits.max_streams} "
                    f"(--max-streams)"
                )
            elif self._open[client] >= limits.max_streams_per_client:
                reason = (
                    f"too many StreamChannels from {client}: {self._open[client]} open, at most "
                    f"{limits.max_streams_per_client} per client (--max-streams-per-client)"
                )
            else:
                self._open[client] += 1
                return None
            self._warn(reason)
            return reason

    def release(self, client: str) -> None:
        """A stream of `client` that `admit` counted has closed."""
        with self._lock:
            self._open[client] -= 1
            if self._open[client] <= 0:
                del self._open[client]

    def _warn(self, reason: str) -> None:
        now = time.monotonic()
        if now - self._warned_at < _WARNING_SECONDS:
            self._refused_quietly += 1
            return
        quiet, self._refused_quietly, self._warned_at = self._refused_quietly, 0, now
        log.warning(
            "StreamChannel refused with RESOURCE_EXHAUSTED: %s%s",
            reason,
            f" ({quiet} more refused since the previous warning)" if quiet else "",
        )
