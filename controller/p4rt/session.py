"""One P4Runtime session with one switch, on grpc.aio.

`Session` is an async context manager: entering connects (with bounded exponential backoff), opens
the StreamChannel and arbitrates; leaving closes everything. While open, a reader task routes
stream messages (arbitration, digests) and sets `disconnected` when the stream ends, so whoever
depends on the session can stop and reconnect. Several sessions (switches) may share one event loop.

Nothing waits on a switch without a deadline: every RPC has `rpc_timeout`, and so has every
message written to the StreamChannel (a switch that stopped reading it would hold a write
forever); the stream itself lives as long as the session. A session may also be given `until`, a
moment no RPC's deadline goes past (the end of a bounded run while the switch is set up): each
RPC then waits for the smaller of `rpc_timeout` and the time left. A switch that does not answer
in time is named with the step it did not answer (`SwitchError`).

The channel sends HTTP/2 keepalive pings (`channel_options`): a switch that stops answering, or a
peer gone without closing its TCP connection, ends the session within about
`KEEPALIVE_TIME_MS + KEEPALIVE_TIMEOUT_MS` instead of at the next RPC's deadline.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import time
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import grpc
from finsy.proto import p4i, p4r, p4r_grpc, rpc_code, rpc_status
from google.protobuf import text_format
from google.protobuf.message import Message

from controller.base import pem
from controller.base.errors import InputError, SwitchError
from controller.base.p4info import CounterInfo, P4Schema
from controller.base.wire import CounterValues, decode_counter_read

log = logging.getLogger(__name__)

Role = Literal["primary", "monitor"]
MAX_MESSAGE = 256 * 1024 * 1024
_READ_METHOD = "/p4.v1.P4Runtime/Read"
_DETAILS_KEY = "grpc-status-details-bin"
# One connection attempt waits this long before the channel is dropped and rebuilt.
_ATTEMPT_TIMEOUT = 2.0
# How long the RPC that asks why a connection failed may take.
_PROBE_TIMEOUT = 0.5
# A keepalive ping every 10 s, the connection dropped when one is not acknowledged within 5 s.
# Servers count pings more frequent than their `grpc.http2.min_ping_interval_without_data_ms`
# (gRPC's default 5 min) while they send nothing as "strikes" and answer a third with GOAWAY
# "too_many_pings"; at most MAX_PINGS_WITHOUT_DATA pings go out between two requests of ours,
# so a server with gRPC's default policy (BMv2) never gets that far, however long a poll
# interval is. The reference switch accepts one every 5 s (refswitch/server.py).
KEEPALIVE_TIME_MS = 10_000
KEEPALIVE_TIMEOUT_MS = 5_000
MAX_PINGS_WITHOUT_DATA = 2


def channel_options() -> list[tuple[str, int]]:
    """The gRPC options of a P4Runtime channel: message sizes and keepalive."""
    return [
        ("grpc.max_receive_message_length", MAX_MESSAGE),
        ("grpc.max_send_message_length", MAX_MESSAGE),
        ("grpc.keepalive_time_ms", KEEPALIVE_TIME_MS),
        ("grpc.keepalive_timeout_ms", KEEPALIVE_TIMEOUT_MS),
        # gRPC since 1.5x waits this long for any ping's acknowledgement (its default 1 min),
        # keepalive pings included.
        ("grpc.http2.ping_timeout_ms", KEEPALIVE_TIMEOUT_MS),
        # The StreamChannel is always open, so pings go out anyway; this also covers the
        # moments between two sessions' calls.
        ("grpc.keepalive_permit_without_calls", 1),
        ("grpc.http2.max_pings_without_data", MAX_PINGS_WITHOUT_DATA),
    ]


@dataclass(frozen=True)
class Deadline:
    """A moment on the monotonic clock no RPC's deadline goes past, and how errors name it
    ('the end of the run (--duration 6 s)')."""

    at: float
    name: str

    def left(self) -> float:
        """Seconds until it, 0 once passed."""
        return max(0.0, self.at - time.monotonic())


@dataclass(frozen=True)
class TlsOptions:
    """Client TLS: a CA to verify the switch, and optionally a client certificate and key.

    `names` are how errors name the three files: the `svcfp run` flags, or the keys of a switch's
    `tls` table.
    """

    ca: Path | None = None
    cert: Path | None = None
    key: Path | None = None
    names: tuple[str, str, str] = ("--tls-ca", "--tls-cert", "--tls-key")

    def check(self) -> None:
        """Refuse a file that cannot be read, is empty or is not PEM (InputError naming it):
        what a command does before it connects, where gRPC would only fail the handshake."""
        self._files()

    def credentials(self) -> grpc.ChannelCredentials:
        """gRPC channel credentials built from the files."""
        ca, chain = self._files()
        cert, key = chain if chain is not None else (None, None)
        return grpc.ssl_channel_credentials(ca, key, cert)

    def _files(self) -> tuple[bytes | None, tuple[bytes, bytes] | None]:
        ca_name, cert_name, key_name = self.names
        if self.cert is None or self.key is None:
            if self.cert is not None or self.key is not None:
                raise InputError(f"{cert_name} and {key_name} must be given together")
            chain = None
        else:
            chain = pem.read_chain(cert_name, self.cert, key_name, self.key)
        return (None if self.ca is None else pem.read_ca(ca_name, self.ca)), chain


@dataclass(frozen=True)
class SwitchTarget:
    """Where a switch is and how to talk to it."""

    name: str
    grpc_addr: str
    device_id: int
    election_id: tuple[int, int] = (0, 1)
    role: Role = "primary"
    tls: TlsOptions | None = None

    def describe(self) -> str:
        """'s1 at 127.0.0.1:9559 (device id 0)': how errors name the switch."""
        return f"switch {self.name} at {self.grpc_addr} (device id {self.device_id})"


@dataclass(frozen=True)
class UpdateFailure:
    """One update of a batch the switch refused."""

    index: int
    code: str
    message: str
    update: str


class WriteError(SwitchError):
    """A Write where some updates failed; `failures` lists each, the others were applied."""

    def __init__(self, where: str, failures: Sequence[UpdateFailure]) -> None:
        self.failures = tuple(failures)
        lines = [f"{where}: {len(self.failures)} update(s) refused:"]
        lines += [f"  #{f.index} {f.code}: {f.message} [{f.update}]" for f in self.failures]
        super().__init__("\n".join(lines))

    def only(self, *codes: str) -> bool:
        """True when every failure has one of these code names (e.g. 'ALREADY_EXISTS')."""
        return all(f.code in codes for f in self.failures)


@dataclass(frozen=True)
class Digest:
    """One digest list: the members of each digest as raw bytestrings, in struct order."""

    digest_id: int
    list_id: int
    items: tuple[tuple[bytes, ...], ...]
    timestamp: int


def pipeline_cookie(p4info: p4i.P4Info, device_config: bytes) -> int:
    """A 64-bit fingerprint of a pipeline, stored on the switch to recognise it later."""
    digest = hashlib.sha256(p4info.SerializeToString(deterministic=True) + device_config).digest()
    return int.from_bytes(digest[:8], "big") >> 1


class Session:
    """An open P4Runtime session; use `async with Session(target) as session`."""

    def __init__(
        self,
        target: SwitchTarget,
        connect_timeout: float = 10.0,
        log_dir: Path | None = None,
        rpc_timeout: float = 30.0,
        until: Deadline | None = None,
    ) -> None:
        self.target = target
        self.connect_timeout = connect_timeout
        self.rpc_timeout = rpc_timeout
        # Bounds connecting and every RPC while set; whoever set it clears it (set-up done).
        self.until = until
        # The step under way, as errors name it ("pushing the pipeline").
        self.step = "connecting"
        self.is_primary = False
        self.disconnected = asyncio.Event()
        self._dump = None if log_dir is None else log_dir / f"p4runtime-requests-{target.name}.txt"
        self._channel: grpc.aio.Channel | None = None
        self._stub: p4r_grpc.P4RuntimeAsyncStub | None = None
        # Counter reads skip protobuf decoding of the responses: see `read_counter_raw`.
        self._read_raw: grpc.aio.UnaryStreamMultiCallable[p4r.ReadRequest, bytes] | None = None
        self._stream: (
            grpc.aio.StreamStreamCall[p4r.StreamMessageRequest, p4r.StreamMessageResponse] | None
        ) = None
        self._reader: asyncio.Task[None] | None = None
        self._arbitration: asyncio.Queue[p4r.MasterArbitrationUpdate] = asyncio.Queue()
        self._digests: asyncio.Queue[Digest | None] = asyncio.Queue()
        self._stream_error: str | None = None
        self._silent = False
        self._arbitrated = False
        high, low = target.election_id
        self._election_id = p4r.Uint128(high=high, low=low)
        if self._dump is not None:
            self._dump.parent.mkdir(parents=True, exist_ok=True)

    # -- lifecycle ------------------------------------------------------------------------------

    async def __aenter__(self) -> Session:
        await self.open()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def open(self) -> None:
        """Connect and arbitrate, retrying with exponential backoff until `connect_timeout` (or
        `until`, when sooner)."""
        seconds = self.connect_timeout
        bounded = self.until is not None and self.until.left() < seconds
        if bounded:
            assert self.until is not None
            seconds = self.until.left()
        deadline = time.monotonic() + seconds
        last = "no attempt made"
        attempts = 0
        while True:
            attempts += 1
            remaining = deadline - time.monotonic()
            try:
                await self._connect_once(max(0.1, min(remaining, _ATTEMPT_TIMEOUT)))
                return
            except _Retry as exc:
                last = str(exc)
                await self._teardown()
            except BaseException:
                await self._teardown()
                raise
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                until = (
                    f"; that was all the time left until {self.until.name}"
                    if bounded and self.until is not None
                    else ""
                )
                raise SwitchError(
                    f"{self.target.describe()} is unreachable after {attempts} "
                    f"attempt(s) in {seconds:.3g} s: {last}{until}"
                )
            # Exponential backoff: 0.1 s, 0.2 s, … up to 2 s between attempts.
            await asyncio.sleep(min(2.0, 0.1 * 2 ** (attempts - 1), remaining))

    async def _connect_once(self, timeout: float) -> None:
        options = channel_options()
        self.step = "connecting"
        if self.target.tls is None:
            channel = grpc.aio.insecure_channel(self.target.grpc_addr, options=options)
        else:
            channel = grpc.aio.secure_channel(
                self.target.grpc_addr, self.target.tls.credentials(), options=options
            )
        self._channel = channel
        try:
            await asyncio.wait_for(channel.channel_ready(), timeout)
        except TimeoutError:
            reason = await _connection_failure(channel, self.target.tls is not None)
            raise _Retry(f"connecting: no connection within {timeout:.1f} s{reason}") from None
        self._stub = p4r_grpc.P4RuntimeStub(channel)
        self._read_raw = channel.unary_stream(
            _READ_METHOD,
            request_serializer=p4r.ReadRequest.SerializeToString,
            response_deserializer=None,
        )
        self._stream = self._stub.StreamChannel()
        self.disconnected.clear()
        self._stream_error = None
        self._silent = False
        self._arbitrated = False
        # Fresh queues: a failed earlier attempt leaves its end-of-stream marker behind.
        self._arbitration = asyncio.Queue()
        self._digests = asyncio.Queue()
        self._reader = asyncio.create_task(self._read_stream(), name=f"stream-{self.target.name}")
        request = p4r.StreamMessageRequest(
            arbitration=p4r.MasterArbitrationUpdate(
                device_id=self.target.device_id, election_id=self._election_id
            )
        )
        self._record("StreamChannel.arbitration", request)
        self.step = "arbitration"
        try:
            await asyncio.wait_for(self._stream.write(request), timeout)
        except TimeoutError:
            raise _Retry(f"arbitration: request not taken within {timeout:.1f} s") from None
        except grpc.aio.AioRpcError as exc:
            raise self._refused("arbitration", exc) from None
        get = asyncio.ensure_future(self._arbitration.get())
        lost = asyncio.ensure_future(self.disconnected.wait())
        try:
            done, _ = await asyncio.wait(
                {get, lost}, timeout=timeout, return_when=asyncio.FIRST_COMPLETED
            )
        finally:
            get.cancel()
            lost.cancel()
        if get in done:
            self._on_arbitration(get.result())
            return
        if lost in done:
            raise SwitchError(f"{self.target.describe()} refused the session: {self._stream_error}")
        raise _Retry(f"arbitration: no answer within {timeout:.1f} s")

    def _on_arbitration(self, update: p4r.MasterArbitrationUpdate) -> None:
        code = update.status.code
        self.is_primary = code == rpc_code.OK
        if self.target.role == "primary" and not self.is_primary:
            raise SwitchError(
                f"{self.target.describe()}: election id {self.target.election_id} did not make "
                f"this controller primary (another primary has election id "
                f"{update.election_id.high},{update.election_id.low}); use a higher one"
            )
        log.info(
            "%s: arbitration done, %s",
            self.target.describe(),
            "primary" if self.is_primary else "backup (read-only)",
        )

    async def _read_stream(self) -> None:
        stream = self._stream
        assert stream is not None
        try:
            while True:
                received = await stream.read()
                if not isinstance(received, p4r.StreamMessageResponse):
                    self._stream_error = "stream closed by the switch"
                    break
                message = received
                kind = message.WhichOneof("update")
                if kind == "arbitration":
                    if not self._arbitrated:
                        self._arbitrated = True
                        await self._arbitration.put(message.arbitration)
                    else:
                        was = self.is_primary
                        self.is_primary = message.arbitration.status.code == rpc_code.OK
                        if was != self.is_primary:
                            log.warning(
                                "%s: primary role %s",
                                self.target.describe(),
                                "gained" if self.is_primary else "lost",
                            )
                            if was and self.target.role == "primary":
                                self._stream_error = "another controller became primary"
                                break
                elif kind == "digest":
                    digest = message.digest
                    await self._digests.put(
                        Digest(
                            digest_id=digest.digest_id,
                            list_id=digest.list_id,
                            items=tuple(
                                tuple(member.bitstring for member in data.struct.members)
                                for data in digest.data
                            ),
                            timestamp=digest.timestamp,
                        )
                    )
                elif kind == "error":
                    log.warning(
                        "%s: stream error %s",
                        self.target.describe(),
                        text_format.MessageToString(message.error, as_one_line=True),
                    )
        except grpc.aio.AioRpcError as exc:
            self._stream_error = f"{exc.code().name}: {exc.details()}"
            # gRPC's words for a keepalive ping left unacknowledged (older releases: watchdog).
            details = exc.details() or ""
            self._silent = "ping timeout" in details or "keepalive watchdog" in details
        except asyncio.CancelledError:
            self._stream_error = "session closed"
            raise
        finally:
            self.disconnected.set()
            self._digests.put_nowait(None)

    async def close(self) -> None:
        """Close the stream and the channel."""
        await self._teardown()

    async def _teardown(self) -> None:
        if self._reader is not None:
            self._reader.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._reader
            self._reader = None
        if self._stream is not None:
            self._stream.cancel()
            self._stream = None
        if self._channel is not None:
            await self._channel.close()
            self._channel = None
        self._stub = None
        self._read_raw = None
        self.disconnected.set()

    # -- helpers --------------------------------------------------------------------------------

    @contextlib.asynccontextmanager
    async def _call(self, step: str) -> AsyncIterator[float]:
        """Around an RPC: its deadline in seconds, and its failures as `SwitchError`s naming
        the switch and `step` ("pushing the pipeline").

        The deadline is `rpc_timeout`, or the time left until `until` when that is sooner. A
        failure the caller does not handle itself becomes a `SwitchError`: no answer by the
        deadline, a lost connection, a refusal. grpc.aio raises `asyncio.CancelledError` in a
        call whose channel is closed; unless the caller's own task is being cancelled, that is a
        lost session, which callers handle as any other switch failure rather than as the end
        of their task.
        """
        self.step = step
        timeout = self.rpc_timeout
        bound = f"within {timeout:g} s"
        if self.until is not None and self.until.left() < timeout:
            # gRPC fails a call whose deadline has passed at once, which is what is wanted.
            timeout = self.until.left()
            bound = f"before {self.until.name}"
        try:
            yield timeout
        except grpc.aio.AioRpcError as exc:
            raise self._failed(step, exc, bound) from None
        except asyncio.CancelledError:
            task = asyncio.current_task()
            if task is not None and task.cancelling():
                raise
            raise SwitchError(
                f"{self.target.describe()}: {step} was cut short: the session closed"
            ) from None

    def _failed(self, step: str, exc: grpc.aio.AioRpcError, bound: str) -> SwitchError:
        code = exc.code()
        if code == grpc.StatusCode.DEADLINE_EXCEEDED:
            return SwitchError(f"{self.target.describe()} did not answer {step} {bound}")
        if code == grpc.StatusCode.UNAVAILABLE:
            return SwitchError(
                f"{self.target.describe()}: connection lost while {step}: {exc.details()}"
            )
        return SwitchError(f"{self.target.describe()} refused {step}: {code.name}: {exc.details()}")

    @property
    def disconnect_reason(self) -> str | None:
        """Why the stream ended, once `disconnected` is set."""
        return self._stream_error

    @property
    def stopped_answering(self) -> bool:
        """Whether the session ended because the switch stopped answering (a keepalive ping
        unacknowledged) rather than closing or resetting the connection."""
        return self._silent

    @property
    def stub(self) -> p4r_grpc.P4RuntimeAsyncStub:
        """The stub of the open channel."""
        if self._stub is None or self.disconnected.is_set():
            raise SwitchError(f"{self.target.describe()}: session is not connected")
        return self._stub

    def _record(self, what: str, message: Message) -> None:
        if self._dump is None:
            return
        if isinstance(message, p4r.SetForwardingPipelineConfigRequest):
            shown = p4r.SetForwardingPipelineConfigRequest()
            shown.CopyFrom(message)
            size = len(shown.config.p4_device_config)
            shown.config.p4_device_config = f"<{size} bytes>".encode()
            message = shown
        stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime())
        with self._dump.open("a") as out:
            out.write(
                f"# {stamp} {self.target.name} {what}\n{text_format.MessageToString(message)}\n"
            )

    def _refused(self, what: str, exc: grpc.aio.AioRpcError) -> SwitchError:
        """A StreamChannel write the switch failed while connecting: worth another attempt when
        the switch was only unavailable."""
        code = exc.code()
        if code == grpc.StatusCode.UNAVAILABLE:
            return _Retry(f"{what}: {exc.details()}")
        return SwitchError(f"{self.target.describe()} refused {what}: {code.name}: {exc.details()}")

    # -- pipeline -------------------------------------------------------------------------------

    async def get_pipeline(self) -> p4r.ForwardingPipelineConfig:
        """The switch's P4Info and cookie (empty P4Info when no pipeline was pushed)."""
        request = p4r.GetForwardingPipelineConfigRequest(
            device_id=self.target.device_id,
            response_type=p4r.GetForwardingPipelineConfigRequest.P4INFO_AND_COOKIE,
        )
        self._record("GetForwardingPipelineConfig", request)
        async with self._call("reading its pipeline (GetForwardingPipelineConfig)") as timeout:
            try:
                response = await self.stub.GetForwardingPipelineConfig(request, timeout=timeout)
            except grpc.aio.AioRpcError as exc:
                if exc.code() not in (
                    grpc.StatusCode.FAILED_PRECONDITION,
                    grpc.StatusCode.NOT_FOUND,
                ):
                    raise
                return p4r.ForwardingPipelineConfig()
        config: p4r.ForwardingPipelineConfig = response.config
        return config

    async def ensure_pipeline(
        self, schema: P4Schema, device_config: bytes | None, skip_config: bool
    ) -> bool:
        """Make the switch run our pipeline; True when it was (re)pushed, which resets its state.

        With `skip_config` (or as a read-only monitor) the running pipeline is only compared with
        ours and a mismatch is refused naming each differing object. So it is without a device
        config (empty) when the switch already runs a pipeline: pushing the P4Info alone would
        leave BMv2 without its program (its tables then fail every read). A primary re-pushes
        only when the switch's pipeline cookie is not the one of our P4Info and device config.
        """
        current = await self.get_pipeline()
        has_pipeline = bool(current.p4info.tables)
        keep = has_pipeline and device_config == b"" and not skip_config
        if skip_config or not self.is_primary or device_config is None or keep:
            if not has_pipeline:
                raise SwitchError(
                    f"{self.target.describe()} runs no pipeline to attach to; push one "
                    f"(--bmv2-json, without --skip-config)"
                )
            theirs = P4Schema(current.p4info, source=self.target.describe())
            differences = schema.diff(theirs)
            if differences:
                hint = (
                    "\n  (no device config was given, so the running pipeline is kept: give "
                    "--bmv2-json to replace it)"
                    if keep
                    else ""
                )
                raise InputError(
                    f"the P4Info {schema.source} does not match the pipeline of "
                    f"{self.target.describe()}:\n  " + "\n  ".join(differences) + hint
                )
            if keep:
                log.info(
                    "%s runs this P4Info; attaching (no device config given)",
                    self.target.describe(),
                )
            return False
        cookie = pipeline_cookie(schema.p4info, device_config)
        if has_pipeline and current.cookie.cookie == cookie:
            log.info("%s already runs this pipeline; attaching", self.target.describe())
            return False
        request = p4r.SetForwardingPipelineConfigRequest(
            device_id=self.target.device_id,
            election_id=self._election_id,
            action=p4r.SetForwardingPipelineConfigRequest.VERIFY_AND_COMMIT,
            config=p4r.ForwardingPipelineConfig(
                p4info=schema.p4info,
                p4_device_config=device_config,
                cookie=p4r.ForwardingPipelineConfig.Cookie(cookie=cookie),
            ),
        )
        self._record("SetForwardingPipelineConfig", request)
        async with self._call("pushing the pipeline (SetForwardingPipelineConfig)") as timeout:
            await self.stub.SetForwardingPipelineConfig(request, timeout=timeout)
        log.info("%s: pipeline pushed", self.target.describe())
        return True

    # -- write and read -------------------------------------------------------------------------

    async def write(
        self, updates: Sequence[p4r.Update], what: str = "Write", step: str | None = None
    ) -> None:
        """Send all `updates` in one WriteRequest; raise `WriteError` listing refused updates.

        `what` labels the request (in the request dump and a `WriteError`), `step` how other
        errors name it (default: `what`)."""
        if not updates:
            return
        request = p4r.WriteRequest(
            device_id=self.target.device_id,
            election_id=self._election_id,
            updates=updates,
        )
        self._record(what, request)
        async with self._call(step or what) as timeout:
            try:
                await self.stub.Write(request, timeout=timeout)
            except grpc.aio.AioRpcError as exc:
                failures = _update_failures(exc, updates)
                if not failures:
                    raise
                raise WriteError(f"{self.target.describe()}: {what}", failures) from None

    async def read(
        self, entities: Sequence[p4r.Entity], what: str = "Read", step: str | None = None
    ) -> list[p4r.Entity]:
        """Every entity matching `entities` (wildcards allowed); `what` labels the request in
        the dump, `step` names it in errors (default: `what`)."""
        request = p4r.ReadRequest(device_id=self.target.device_id, entities=entities)
        self._record(what, request)
        found: list[p4r.Entity] = []
        async with self._call(step or what) as timeout:
            async for response in self.stub.Read(request, timeout=timeout):
                found.extend(response.entities)
        return found

    async def read_counter_raw(self, counter: CounterInfo) -> list[bytes]:
        """The serialized ReadResponses of one wildcard read of every cell of `counter`."""
        call = self._read_raw
        if call is None or self.disconnected.is_set():
            raise SwitchError(f"{self.target.describe()}: session is not connected")
        request = p4r.ReadRequest(
            device_id=self.target.device_id,
            entities=[p4r.Entity(counter_entry=p4r.CounterEntry(counter_id=counter.id))],
        )
        self._record(f"Read counter {counter.name}", request)
        chunks: list[bytes] = []
        async with self._call(f"reading counter {counter.name}") as timeout:
            async for chunk in call(request, timeout=timeout):
                chunks.append(chunk)
        return chunks

    async def read_counter(self, counter: CounterInfo) -> CounterValues:
        """Every cell of `counter`, from one wildcard read, as numpy arrays."""
        chunks = await self.read_counter_raw(counter)
        return decode_counter_read(chunks, counter.id, counter.size, self.target.describe())

    # -- digests --------------------------------------------------------------------------------

    async def digests(self) -> AsyncIterator[Digest]:
        """Digest lists as they arrive, each acknowledged; ends when the session disconnects."""
        while True:
            digest = await self._digests.get()
            if digest is None:
                return
            ack = p4r.StreamMessageRequest(
                digest_ack=p4r.DigestListAck(digest_id=digest.digest_id, list_id=digest.list_id)
            )
            if self._stream is not None and not self.disconnected.is_set():
                try:
                    # A write given up cancels the stream: the session ends and is reopened.
                    await asyncio.wait_for(self._stream.write(ack), self.rpc_timeout)
                except TimeoutError:
                    log.warning(
                        "%s: digest ack not taken within %g s",
                        self.target.describe(),
                        self.rpc_timeout,
                    )
                except grpc.aio.AioRpcError as exc:
                    log.warning("%s: digest ack failed: %s", self.target.describe(), exc.details())
            yield digest


async def _connection_failure(channel: grpc.aio.Channel, tls: bool) -> str:
    """Why `channel` does not connect, as gRPC last saw it (a refused port, a TLS handshake).

    channel_ready() only waits; an RPC that does not wait for the channel carries the reason.
    """
    try:
        await p4r_grpc.P4RuntimeStub(channel).Capabilities(
            p4r.CapabilitiesRequest(), timeout=_PROBE_TIMEOUT, wait_for_ready=False
        )
    except grpc.aio.AioRpcError as exc:
        reason = exc.details() or exc.code().name
    else:
        return ""
    if "CERTIFICATE_VERIFY_FAILED" in reason:
        reason += "; --tls-ca must name the CA that signed the switch's certificate"
    elif "Socket closed" in reason:
        reason += (
            "; a switch that requires client certificates closes connections without an "
            "accepted one: check --tls-cert and --tls-key"
            if tls
            else "; a switch that serves TLS closes plaintext connections: give --tls-ca"
        )
    return f" ({reason})"


class _Retry(SwitchError):
    """A failure worth another connection attempt (switch not up yet)."""


def _code_name(code: int) -> str:
    try:
        return rpc_code.Code.Name(code)  # type: ignore[arg-type]
    except ValueError:
        return f"code {code}"


def _update_failures(
    exc: grpc.aio.AioRpcError, updates: Sequence[p4r.Update]
) -> list[UpdateFailure]:
    """Per-update errors from the google.rpc.Status in the trailing metadata, if any."""
    raw: bytes | None = None
    for key, value in exc.trailing_metadata() or ():
        if key == _DETAILS_KEY and isinstance(value, bytes):
            raw = value
    if raw is None:
        return []
    status = rpc_status.Status.FromString(raw)
    failures: list[UpdateFailure] = []
    for i, detail in enumerate(status.details):
        error = p4r.Error()
        if not detail.Unpack(error) or error.canonical_code == rpc_code.OK:
            continue
        shown = (
            text_format.MessageToString(updates[i], as_one_line=True) if i < len(updates) else ""
        )
        failures.append(
            UpdateFailure(
                index=i,
                code=_code_name(error.canonical_code),
                message=error.message,
                update=shown,
            )
        )
    return failures
