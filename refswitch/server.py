"""The P4Runtime gRPC service of the reference switch.

Behaviour follows the P4Runtime specification and, where the specification leaves room, PI
(BMv2's server): per-update write errors travel as status UNKNOWN whose details hold one
`p4.v1.Error` per update; register reads are UNIMPLEMENTED; arbitration answers OK to the primary
and ALREADY_EXISTS to backups. Read responses are passed to gRPC as pre-encoded bytes, so a wildcard
counter read is encoded once, vectorised (see `controller.base.wire`).

Where a client could make the switch unusable, it is bounded instead (`refswitch.limits`): open
StreamChannels, the size of a request, and the write errors a trailer carries. gRPC clients
refuse trailers beyond 8-16 KiB, so the details of a failed Write hold the errors of its first
updates up to a budget (as a prefix, so detail i is still update i) and the message counts the
failures beyond them.
"""

from __future__ import annotations

import logging
import queue
import threading
from collections import Counter
from collections.abc import Iterator, Sequence
from concurrent import futures
from dataclasses import dataclass, field
from typing import Any, NoReturn

import grpc
from finsy.proto import p4r, rpc_code, rpc_status
from google.protobuf import any_pb2

from refswitch.limits import ServerLimits, StreamAdmission, client_of
from refswitch.status import (
    P4RuntimeError,
    bounded,
    invalid_argument,
    not_found,
    unimplemented,
)
from refswitch.switch import Switch
from refswitch.tls import ServerTls

log = logging.getLogger(__name__)

P4RUNTIME_API_VERSION = "1.4.1"
_SERVICE = "p4.v1.P4Runtime"
# What a response may be: a wildcard read of a whole counter array fits.
_MAX_RESPONSE = 256 << 20
_NOT_PRIMARY = "Not primary"
# Serialized bytes of the google.rpc.Status a failed Write's trailer carries (base64 on the
# wire); with the message, the trailer stays below gRPC's default 8 KiB metadata limit.
DETAILS_BUDGET = 3072
# Characters of one update's error inside the details, and of the first one in the message.
_DETAIL_MESSAGE = 320
# The shortest interval between a client's keepalive pings that is not abuse.
MIN_PING_INTERVAL_MS = 5_000


def _grpc_code(code: int) -> grpc.StatusCode:
    for status in grpc.StatusCode:
        if status.value[0] == code:
            return status
    return grpc.StatusCode.UNKNOWN


def _election_id(message: p4r.Uint128) -> int:
    return (message.high << 64) | message.low


def _check_default_role(role: str) -> None:
    if role:
        raise unimplemented("only the default role is supported by this target")


@dataclass(eq=False)
class _Stream:
    """One StreamChannel: its outgoing queue and its arbitration state."""

    outbox: queue.Queue[p4r.StreamMessageResponse | P4RuntimeError | None] = field(
        default_factory=queue.Queue
    )
    election_id: int | None = None

    def send(self, message: p4r.StreamMessageResponse | P4RuntimeError | None) -> None:
        """Queue a message for the client; an error aborts the stream, None ends it."""
        self.outbox.put(message)


class Arbitration:
    """Which controller is primary: the live stream with the highest election id."""

    def __init__(self, device_id: int) -> None:
        self.device_id = device_id
        self._streams: list[_Stream] = []
        self._lock = threading.Lock()
        self._primary: _Stream | None = None

    def primary_election_id(self) -> int | None:
        """The primary's election id, or None when there is no primary."""
        primary = self._primary
        return primary.election_id if primary else None

    def send_to_primary(self, message: p4r.StreamMessageResponse) -> None:
        """Queue a stream message (digest, packet-in) for the primary; dropped without one."""
        primary = self._primary
        if primary is not None:
            primary.send(message)

    def update(self, stream: _Stream, request: p4r.MasterArbitrationUpdate) -> None:
        """A MasterArbitrationUpdate arrived on `stream`."""
        if request.device_id != self.device_id:
            raise not_found(
                f"Invalid device id {request.device_id}, this is device {self.device_id}"
            )
        _check_default_role(request.role.name)
        election_id = _election_id(request.election_id)
        with self._lock:
            for other in self._streams:
                if other is not stream and other.election_id == election_id:
                    raise invalid_argument(
                        f"election id {election_id} is already used by another controller"
                    )
            if stream not in self._streams:
                self._streams.append(stream)
            stream.election_id = election_id
            changed = self._elect()
            targets = list(self._streams) if changed else [stream]
            for target in targets:
                target.send(self._status_for(target))

    def remove(self, stream: _Stream) -> None:
        """`stream` closed; tell the others if the primary changed."""
        with self._lock:
            if stream not in self._streams:
                return
            self._streams.remove(stream)
            if self._elect():
                for target in self._streams:
                    target.send(self._status_for(target))

    def _elect(self) -> bool:
        candidates = [s for s in self._streams if s.election_id is not None]
        primary = max(candidates, key=lambda s: s.election_id or 0, default=None)
        changed = primary is not self._primary
        self._primary = primary
        if changed:
            log.info(
                "primary controller is now %s",
                f"election id {primary.election_id}" if primary else "none",
            )
        return changed

    def _status_for(self, stream: _Stream) -> p4r.StreamMessageResponse:
        message = p4r.StreamMessageResponse()
        update = message.arbitration
        update.device_id = self.device_id
        primary = self._primary
        if primary is not None and primary.election_id is not None:
            update.election_id.high = primary.election_id >> 64
            update.election_id.low = primary.election_id & ((1 << 64) - 1)
        if stream is primary:
            update.status.code = rpc_code.OK
            update.status.message = "Is primary"
        elif primary is not None:
            update.status.code = rpc_code.ALREADY_EXISTS
            update.status.message = "Is backup"
        else:
            update.status.code = rpc_code.NOT_FOUND
            update.status.message = "No primary"
        return message


class P4RuntimeService:
    """The P4Runtime RPCs over one `Switch`."""

    def __init__(self, switch: Switch, limits: ServerLimits | None = None) -> None:
        self.switch = switch
        self.limits = limits or ServerLimits()
        self.streams = StreamAdmission(self.limits)
        self.arbitration = Arbitration(switch.device_id)
        switch.set_digest_sender(self.arbitration.send_to_primary)
        switch.set_packet_in(self._packet_in)

    # Helpers ------------------------------------------------------------------------------------

    def _abort(self, context: grpc.ServicerContext, error: P4RuntimeError) -> NoReturn:
        context.abort(_grpc_code(error.code), error.message)

    def _check_device(self, device_id: int) -> None:
        if device_id != self.switch.device_id:
            raise not_found(f"Invalid device id {device_id}")

    def _check_primary(self, election_id: p4r.Uint128, role: str) -> None:
        _check_default_role(role)
        if self.arbitration.primary_election_id() != _election_id(election_id):
            raise P4RuntimeError(rpc_code.PERMISSION_DENIED, _NOT_PRIMARY)

    def _packet_in(self, frame: bytes, ingress_port: int) -> None:
        del ingress_port
        message = p4r.StreamMessageResponse()
        message.packet.payload = frame
        self.arbitration.send_to_primary(message)

    # RPCs ---------------------------------------------------------------------------------------

    def capabilities(
        self, request: p4r.CapabilitiesRequest, context: grpc.ServicerContext
    ) -> p4r.CapabilitiesResponse:
        """The P4Runtime API version this server implements."""
        del request, context
        return p4r.CapabilitiesResponse(p4runtime_api_version=P4RUNTIME_API_VERSION)

    def set_forwarding_pipeline_config(
        self, request: p4r.SetForwardingPipelineConfigRequest, context: grpc.ServicerContext
    ) -> p4r.SetForwardingPipelineConfigResponse:
        """Verify, save and/or commit a pipeline (primary only)."""
        try:
            self._check_device(request.device_id)
            self._check_primary(request.election_id, request.role)
            self.switch.set_pipeline(request.action, request.config)
        except P4RuntimeError as exc:
            log.warning("SetForwardingPipelineConfig refused: %s", exc)
            self._abort(context, exc)
        return p4r.SetForwardingPipelineConfigResponse()

    def get_forwarding_pipeline_config(
        self, request: p4r.GetForwardingPipelineConfigRequest, context: grpc.ServicerContext
    ) -> p4r.GetForwardingPipelineConfigResponse:
        """The committed pipeline config, filtered by response type."""
        try:
            self._check_device(request.device_id)
        except P4RuntimeError as exc:
            self._abort(context, exc)
        response = p4r.GetForwardingPipelineConfigResponse()
        response.config.CopyFrom(self.switch.get_pipeline(request.response_type))
        return response

    def write(self, request: p4r.WriteRequest, context: grpc.ServicerContext) -> p4r.WriteResponse:
        """Apply updates; per-update errors come back as UNKNOWN with one p4.v1.Error each."""
        try:
            self._check_device(request.device_id)
            self._check_primary(request.election_id, request.role)
            if request.atomicity != p4r.WriteRequest.CONTINUE_ON_ERROR:
                raise unimplemented("only CONTINUE_ON_ERROR atomicity is supported by this target")
            results = self.switch.write(list(request.updates))
        except P4RuntimeError as exc:
            self._abort(context, exc)
        failures = [i for i, r in enumerate(results) if r is not None]
        kinds = Counter(
            f"{p4r.Update.Type.Name(u.type)} {u.entity.WhichOneof('entity')}"
            for u in request.updates
        )
        log.info(
            "write: %d updates, %d failed (%s)",
            len(results),
            len(failures),
            ", ".join(f"{count} {kind}" for kind, count in sorted(kinds.items())),
        )
        if failures:
            for index in failures[:10]:
                log.info("write error: update %d: %s", index, results[index])
            status = write_failure(results, failures)
            context.set_trailing_metadata(
                (("grpc-status-details-bin", status.SerializeToString()),)
            )
            context.abort(grpc.StatusCode.UNKNOWN, status.message)
        return p4r.WriteResponse()

    def read(self, request: p4r.ReadRequest, context: grpc.ServicerContext) -> Iterator[bytes]:
        """Serialised ReadResponses (passed through gRPC untouched)."""
        try:
            self._check_device(request.device_id)
            responses = list(self.switch.read(list(request.entities)))
        except P4RuntimeError as exc:
            self._abort(context, exc)
        yield from responses

    def stream_channel(
        self, requests: Iterator[p4r.StreamMessageRequest], context: grpc.ServicerContext
    ) -> Iterator[p4r.StreamMessageResponse]:
        """Arbitration, digest lists and acks for one controller connection."""
        client = client_of(context.peer())
        refused = self.streams.admit(client)
        if refused is not None:
            context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED, refused)
        try:
            yield from self._stream_channel(requests, context)
        finally:
            self.streams.release(client)

    def _stream_channel(
        self, requests: Iterator[p4r.StreamMessageRequest], context: grpc.ServicerContext
    ) -> Iterator[p4r.StreamMessageResponse]:
        stream = _Stream()
        reader = threading.Thread(
            target=self._read_stream, args=(stream, requests), name="stream-reader", daemon=True
        )
        context.add_callback(lambda: stream.send(None))
        reader.start()
        try:
            while True:
                message = stream.outbox.get()
                if message is None:
                    return
                if isinstance(message, P4RuntimeError):
                    self._abort(context, message)
                yield message
        finally:
            self.arbitration.remove(stream)

    def _read_stream(self, stream: _Stream, requests: Iterator[p4r.StreamMessageRequest]) -> None:
        try:
            for request in requests:
                kind = request.WhichOneof("update")
                if kind == "arbitration":
                    self.arbitration.update(stream, request.arbitration)
                elif stream.election_id is None:
                    log.warning("stream message %s before arbitration ignored", kind)
                elif kind == "digest_ack":
                    ack = request.digest_ack
                    self.switch.digest_ack(ack.digest_id, ack.list_id)
                elif kind == "packet":
                    stream.send(_packet_out_error(request.packet))
                else:
                    log.warning("unsupported stream message %s ignored", kind)
        except P4RuntimeError as exc:
            log.warning("stream closed: %s", exc)
            stream.send(exc)
            return
        except grpc.RpcError:
            pass
        stream.send(None)

    def handler(self) -> grpc.GenericRpcHandler:
        """The P4Runtime service as a generic handler (Read passes bytes through)."""
        # The unary RPCs follow P4Runtime's naming: <Rpc>Request in, <Rpc>Response out.
        handlers: dict[str, grpc.RpcMethodHandler[Any, Any]] = {
            name: grpc.unary_unary_rpc_method_handler(
                method,
                request_deserializer=getattr(p4r, f"{name}Request").FromString,
                response_serializer=getattr(p4r, f"{name}Response").SerializeToString,
            )
            for name, method in (
                ("Capabilities", self.capabilities),
                ("SetForwardingPipelineConfig", self.set_forwarding_pipeline_config),
                ("GetForwardingPipelineConfig", self.get_forwarding_pipeline_config),
                ("Write", self.write),
            )
        }
        handlers["Read"] = grpc.unary_stream_rpc_method_handler(
            self.read,
            request_deserializer=p4r.ReadRequest.FromString,
            response_serializer=_pass_bytes,
        )
        handlers["StreamChannel"] = grpc.stream_stream_rpc_method_handler(
            self.stream_channel,
            request_deserializer=p4r.StreamMessageRequest.FromString,
            response_serializer=p4r.StreamMessageResponse.SerializeToString,
        )
        return grpc.method_handlers_generic_handler(_SERVICE, handlers)


def _pass_bytes(message: bytes) -> bytes:
    return message


def _packet_out_error(packet: p4r.PacketOut) -> p4r.StreamMessageResponse:
    message = p4r.StreamMessageResponse()
    message.error.canonical_code = rpc_code.UNIMPLEMENTED
    message.error.message = "PacketOut is not supported by this target"
    message.error.packet_out.packet_out.CopyFrom(packet)
    return message


def write_failure(
    results: Sequence[P4RuntimeError | None], failures: Sequence[int]
) -> rpc_status.Status:
    """The status of a Write whose updates at `failures` (indices into `results`) were refused.

    One p4.v1.Error per update, in order, as far as DETAILS_BUDGET allows; the message counts
    the failures and those the details leave out, and shows the first.
    """
    status = rpc_status.Status(code=rpc_code.UNKNOWN)
    size = 0
    shown_failures = 0
    for result in results:
        error = p4r.Error(canonical_code=rpc_code.OK)
        if result is not None:
            error.canonical_code = result.code
            error.message = bounded(result.message, _DETAIL_MESSAGE)
        detail = any_pb2.Any()
        detail.Pack(error)
        # The field's tag and length take 3 bytes at most for a detail this small.
        cost = detail.ByteSize() + 3
        if size + cost > DETAILS_BUDGET:
            break
        status.details.append(detail)
        size += cost
        shown_failures += result is not None
    message = f"Write failure: {len(failures)} of {len(results)} updates failed"
    shown = len(status.details)
    if shown < len(results):
        message += (
            f"; the details hold the errors of updates 0-{shown - 1} only, "
            f"{len(failures) - shown_failures} failed update(s) after them are not listed"
        )
    first = failures[0]
    status.message = f"{message}; first: update {first}: " + bounded(
        str(results[first]), _DETAIL_MESSAGE
    )
    return status


class P4RuntimeServer:
    """A running gRPC server for one switch; use as a context manager or call stop().

    `limits` bounds streams, threads and request size (`refswitch.limits`); `tls` serves TLS
    instead of plaintext.
    """

    def __init__(
        self,
        switch: Switch,
        address: str = "127.0.0.1:9559",
        limits: ServerLimits | None = None,
        tls: ServerTls | None = None,
    ) -> None:
        self.limits = limits or ServerLimits()
        self.service = P4RuntimeService(switch, self.limits)
        self.tls = tls
        self._server = grpc.server(
            futures.ThreadPoolExecutor(max_workers=self.limits.workers, thread_name_prefix="p4rt"),
            options=[
                ("grpc.max_send_message_length", _MAX_RESPONSE),
                ("grpc.max_receive_message_length", self.limits.max_request_bytes),
                ("grpc.so_reuseport", 0),
                # Keepalive pings of controllers (controller/p4rt/session.py pings every 10 s)
                # are welcome down to one per 5 s, with or without calls or data; gRPC's
                # default answers a third more frequent one with GOAWAY "too_many_pings".
                ("grpc.keepalive_permit_without_calls", 1),
                ("grpc.http2.min_ping_interval_without_data_ms", MIN_PING_INTERVAL_MS),
            ],
            maximum_concurrent_rpcs=self.limits.concurrent_rpcs,
        )
        self._server.add_generic_rpc_handlers((self.service.handler(),))
        if tls is None:
            self.port = self._server.add_insecure_port(address)
        else:
            self.port = self._server.add_secure_port(address, tls.credentials())
        if self.port == 0:
            raise OSError(f"cannot listen on {address}")
        host = address.rsplit(":", 1)[0]
        self.address = f"{host}:{self.port}"

    def start(self) -> P4RuntimeServer:
        """Start serving."""
        self._server.start()
        limits = self.limits
        log.info(
            "P4Runtime server for device %d on %s (%s): requests up to %d MiB, at most %d "
            "StreamChannels (%d per client), %d threads for the other RPCs",
            self.service.switch.device_id,
            self.address,
            "plaintext"
            if self.tls is None
            else "TLS, client certificates required"
            if self.tls.mutual
            else "TLS",
            limits.max_request_mib,
            limits.max_streams,
            limits.max_streams_per_client,
            limits.unary_workers,
        )
        return self

    def stop(self, grace: float = 1.0) -> None:
        """Stop serving; open streams are cancelled."""
        self._server.stop(grace).wait()

    def __enter__(self) -> P4RuntimeServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
