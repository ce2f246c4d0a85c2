"""Digest delivery: DigestEntry configs, DigestList batching, acknowledgements.

Semantics follow PI (BMv2's P4Runtime server): without a DigestEntry config the data plane's
digests are discarded; with one, samples are batched into DigestLists of at most `max_list_size`
(0: unbounded) sent after at most `max_timeout_ns` (0: at once). A sample already sent is not sent
again until its list is acknowledged or `ack_timeout_ns` has passed (0: no de-duplication).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from finsy.proto import p4r

from controller.base.p4info import DigestInfo, encode_int
from refswitch.status import (
    already_exists,
    invalid_argument,
    not_found,
)

log = logging.getLogger(__name__)

Sample = tuple[int, ...]
DigestSender = Callable[[p4r.StreamMessageResponse], None]


@dataclass(frozen=True)
class DigestConfig:
    """The `DigestEntry.Config` of one digest."""

    max_timeout_ns: int
    max_list_size: int
    ack_timeout_ns: int


@dataclass
class _Outstanding:
    samples: list[Sample]
    expires_ns: int


@dataclass
class _DigestState:
    info: DigestInfo
    config: DigestConfig | None = None
    buffer: list[Sample] = field(default_factory=list)
    buffer_since_ns: int = 0
    cache: set[Sample] = field(default_factory=set)
    outstanding: dict[int, _Outstanding] = field(default_factory=dict)
    next_list_id: int = 1


class DigestEngine:
    """Turns digest samples from the pipeline into DigestLists on the primary's stream."""

    def __init__(
        self,
        digests: list[DigestInfo],
        send: DigestSender,
        clock_ns: Callable[[], int] = time.monotonic_ns,
    ) -> None:
        self._states = {info.id: _DigestState(info) for info in digests}
        self._send = send
        self._clock_ns = clock_ns
        self._cond = threading.Condition()
        self._stopped = False
        self._thread = threading.Thread(target=self._run, name="digests", daemon=True)
        self._thread.start()

    def close(self) -> None:
        """Stop the timer thread."""
        with self._cond:
            self._stopped = True
            self._cond.notify_all()
        self._thread.join()

    # Control plane ------------------------------------------------------------------------------

    def write(self, update_type: int, entry: p4r.DigestEntry) -> None:
        """INSERT/MODIFY/DELETE one DigestEntry config."""
        with self._cond:
            state = self._state(entry.digest_id)
            name = state.info.name
            if update_type in (p4r.Update.INSERT, p4r.Update.MODIFY):
                if update_type == p4r.Update.INSERT and state.config is not None:
                    raise already_exists(f"digest {name} is already configured")
                if update_type == p4r.Update.MODIFY and state.config is None:
                    raise not_found(f"digest {name} is not configured")
                config = entry.config
                if config.max_timeout_ns < 0 or config.max_list_size < 0:
                    raise invalid_argument(f"digest {name}: negative timeout or list size")
                if config.ack_timeout_ns < 0:
                    raise invalid_argument(f"digest {name}: negative ack timeout")
                state.config = DigestConfig(
                    config.max_timeout_ns, config.max_list_size, config.ack_timeout_ns
                )
            elif update_type == p4r.Update.DELETE:
                if state.config is None:
                    raise not_found(f"digest {name} is not configured")
                state.config = None
                state.buffer.clear()
                state.cache.clear()
                state.outstanding.clear()
            else:
                raise invalid_argument(f"digest {name}: invalid update type")
            self._cond.notify_all()

    def read(self, request: p4r.DigestEntry) -> list[p4r.DigestEntry]:
        """Configured DigestEntries: one (NOT_FOUND if unconfigured) or all (digest_id 0)."""
        with self._cond:
            if request.digest_id:
                state = self._state(request.digest_id)
                if state.config is None:
                    raise not_found(f"digest {state.info.name} is not configured")
                states = [state]
            else:
                states = [s for s in self._states.values() if s.config is not None]
            return [_entry(s.info.id, s.config) for s in states if s.config is not None]

    def ack(self, digest_id: int, list_id: int) -> None:
        """The client acknowledged a DigestList: its samples may be sent again."""
        with self._cond:
            state = self._states.get(digest_id)
            if state is None:
                log.warning("digest ack for unknown digest id %d", digest_id)
                return
            done = state.outstanding.pop(list_id, None)
            if done is not None:
                state.cache.difference_update(done.samples)

    # Data plane ---------------------------------------------------------------------------------

    def offer(self, digest_id: int, sample: Sample) -> None:
        """A `digest()` call in the pipeline produced `sample`."""
        with self._cond:
            state = self._states[digest_id]
            config = state.config
            if config is None:
                return
            if config.ack_timeout_ns > 0:
                self._expire(state, self._clock_ns())
                if sample in state.cache:
                    return
                state.cache.add(sample)
            if not state.buffer:
                state.buffer_since_ns = self._clock_ns()
            state.buffer.append(sample)
            if config.max_timeout_ns == 0 or (
                config.max_list_size and len(state.buffer) >= config.max_list_size
            ):
                self._flush(state, config)
            else:
                self._cond.notify_all()

    # Internals ----------------------------------------------------------------------------------

    def _state(self, digest_id: int) -> _DigestState:
        state = self._states.get(digest_id)
        if state is None:
            raise invalid_argument(f"digest id {digest_id} does not exist in the P4Info")
        return state

    def _flush(self, state: _DigestState, config: DigestConfig) -> None:
        samples, state.buffer = state.buffer, []
        list_id = state.next_list_id
        state.next_list_id += 1
        if config.ack_timeout_ns > 0:
            state.outstanding[list_id] = _Outstanding(
                samples, self._clock_ns() + config.ack_timeout_ns
            )
        message = p4r.StreamMessageResponse()
        digest = message.digest
        digest.digest_id = state.info.id
        digest.list_id = list_id
        digest.timestamp = time.time_ns()
        widths = [width for _, width in state.info.members]
        for sample in samples:
            members = digest.data.add().struct.members
            for value, width in zip(sample, widths, strict=True):
                members.add().bitstring = encode_int(value, width)
        self._send(message)

    def _run(self) -> None:
        with self._cond:
            while not self._stopped:
                now = self._clock_ns()
                wake = now + 1_000_000_000
                for state in self._states.values():
                    config = state.config
                    if config is None:
                        continue
                    if state.buffer:
                        due = state.buffer_since_ns + config.max_timeout_ns
                        if now >= due:
                            self._flush(state, config)
                        else:
                            wake = min(wake, due)
                    next_expiry = self._expire(state, now)
                    if next_expiry is not None:
                        wake = min(wake, next_expiry)
                self._cond.wait(timeout=max(wake - now, 0) / 1e9)

    @staticmethod
    def _expire(state: _DigestState, now: int) -> int | None:
        """Forget lists whose ack timeout passed; when the next one expires (None: no list)."""
        next_expiry = None
        for list_id, outstanding in list(state.outstanding.items()):
            if now >= outstanding.expires_ns:
                del state.outstanding[list_id]
                state.cache.difference_update(outstanding.samples)
            elif next_expiry is None or outstanding.expires_ns < next_expiry:
                next_expiry = outstanding.expires_ns
        return next_expiry


def _entry(digest_id: int, config: DigestConfig) -> p4r.DigestEntry:
    entry = p4r.DigestEntry(digest_id=digest_id)
    entry.config.max_timeout_ns = config.max_timeout_ns
    entry.config.max_list_size = config.max_list_size
    entry.config.ack_timeout_ns = config.ack_timeout_ns
    return entry
