"""One P4Runtime device: the pipeline it runs and everything the control plane wrote to it.

The gRPC server translates requests into calls on a `Switch`; the port layer hands it frames.
Nothing here knows about gRPC or sockets.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
from finsy.proto import p4r, rpc_code

from controller.base.wire import CounterArrayEncoder
from refswitch.digests import DigestEngine, DigestSender
from refswitch.pipeline import DROP, FLOOD, Pipeline, ServiceRule, TableState
from refswitch.program import Program
from refswitch.replication import ReplicationEngine
from refswitch.status import P4RuntimeError, invalid_argument, unimplemented
from refswitch.tables import ActionCall, Entry, TableStore

log = logging.getLogger(__name__)

Transmit = Callable[[int, bytes], None]

_NO_PIPELINE = "No forwarding pipeline config set for this device"


@dataclass
class _Loaded:
    """A committed pipeline and the state that lives and dies with it."""

    config: p4r.ForwardingPipelineConfig
    program: Program
    pipeline: Pipeline
    tables: TableStore
    counter_encoder: CounterArrayEncoder


class Switch:
    """The reference switch's device state, shared by the P4Runtime server and the ports."""

    def __init__(
        self,
        device_id: int = 0,
        *,
        cpu_port: int | None = None,
        clock_us: Callable[[], int] | None = None,
        digest_repeat_us: int | None = None,
    ) -> None:
        self.device_id = device_id
        self.cpu_port = cpu_port
        self._clock_us = clock_us
        self._digest_repeat_us = digest_repeat_us
        self._loaded: _Loaded | None = None
        self._saved: p4r.ForwardingPipelineConfig | None = None
        self.replication = ReplicationEngine()
        self._digest_send: DigestSender = _discard
        self._digests: DigestEngine | None = None
        self._transmit: Transmit = _drop_frame
        self._packet_in: Callable[[bytes, int], None] | None = None
        # Writes and pipeline changes are serialised; packets never wait for them.
        self._lock = threading.RLock()

    # Wiring -------------------------------------------------------------------------------------

    def set_transmit(self, transmit: Transmit) -> None:
        """Where egressing frames go: `transmit(port, frame)`."""
        self._transmit = transmit

    def set_digest_sender(self, send: DigestSender) -> None:
        """Where DigestList stream messages go (the primary controller's stream)."""
        self._digest_send = send

    def set_packet_in(self, packet_in: Callable[[bytes, int], None] | None) -> None:
        """Where frames sent to the CPU port go: `packet_in(frame, ingress_port)`."""
        self._packet_in = packet_in

    def close(self) -> None:
        """Stop background work (digest timers)."""
        with self._lock:
            if self._digests is not None:
                self._digests.close()
                self._digests = None

    # State --------------------------------------------------------------------------------------

    @property
    def program(self) -> Program | None:
        """The running program, if a pipeline was committed."""
        loaded = self._loaded
        return loaded.program if loaded else None

    @property
    def pipeline(self) -> Pipeline | None:
        """The running pipeline, if any."""
        loaded = self._loaded
        return loaded.pipeline if loaded else None

    def _require(self) -> _Loaded:
        loaded = self._loaded
        if loaded is None:
            raise P4RuntimeError(rpc_code.FAILED_PRECONDITION, _NO_PIPELINE)
        return loaded

    # Data plane ---------------------------------------------------------------------------------

    def receive(self, frame: bytes, ingress_port: int) -> None:
        """A frame arrived on `ingress_port`: run the pipeline and transmit its copies."""
        loaded = self._loaded
        if loaded is None:
            return
        for port in loaded.pipeline.process(frame, ingress_port):
            if port == self.cpu_port:
                if self._packet_in is not None:
                    self._packet_in(frame, ingress_port)
            else:
                self._transmit(port, frame)

    # SetForwardingPipelineConfig / GetForwardingPipelineConfig ---------------------------------

    def set_pipeline(self, action: int, config: p4r.ForwardingPipelineConfig) -> None:
        """Apply a SetForwardingPipelineConfig action (VERIFY … RECONCILE_AND_COMMIT)."""
        actions = p4r.SetForwardingPipelineConfigRequest
        with self._lock:
            if action == actions.COMMIT:
                if self._saved is None:
                    raise P4RuntimeError(
                        rpc_code.FAILED_PRECONDITION, "COMMIT without a saved pipeline config"
                    )
                saved, self._saved = self._saved, None
                self._commit(saved, Program.from_p4info(saved.p4info))
                return
            if action not in (
                actions.VERIFY,
                actions.VERIFY_AND_SAVE,
                actions.VERIFY_AND_COMMIT,
                actions.RECONCILE_AND_COMMIT,
            ):
                raise invalid_argument("Invalid SetForwardingPipeline action")
            if not config.HasField("p4info"):
                raise invalid_argument("the pipeline config has no P4Info")
            program = Program.from_p4info(config.p4info)
            if action == actions.VERIFY:
                return
            if action == actions.VERIFY_AND_SAVE:
                self._saved = _copy(config)
                return
            loaded = self._loaded
            if (
                action == actions.RECONCILE_AND_COMMIT
                and loaded
                and loaded.config.p4info == config.p4info
            ):
                # Same program: keep entries, counters and registers; take the new config bytes.
                loaded.config = _copy(config)
                log.info("pipeline reconciled: same P4Info, state kept")
                return
            self._commit(_copy(config), program)

    def _commit(self, config: p4r.ForwardingPipelineConfig, program: Program) -> None:
        if self._digests is not None:
            self._digests.close()
        self._digests = DigestEngine([program.new_device], self._send_digest)
        digests = self._digests
        digest_id = program.new_device.id
        pipeline = Pipeline(
            program,
            clock=self._clock_us,
            digest_sink=lambda mac, port: digests.offer(digest_id, (mac, port)),
            digest_repeat_us=self._digest_repeat_us,
        )
        tables = TableStore(
            program.schema,
            {
                program.device_table.id: ActionCall(program.unregistered.id),
                program.l2_forward.id: ActionCall(program.flood.id),
            },
            program.param_limits,
        )
        self.replication.clear()
        self._saved = None
        self._loaded = _Loaded(
            config,
            program,
            pipeline,
            tables,
            CounterArrayEncoder(program.service_hits.id, program.service_hits.size),
        )
        pipeline.install(self._table_state(self._loaded))
        log.info(
            "pipeline committed: MAX_DEVICES=%d MAX_SERVICES=%d DIGEST_CACHE_SIZE=%d "
            "DIGEST_REPEAT_US=%d FLOOD_GROUP=%d, device config %d bytes",
            program.max_devices,
            program.max_services,
            program.digest_cache_size,
            pipeline.digest_repeat_us,
            program.contract.flood_group,
            len(config.p4_device_config),
        )

    def digest_ack(self, digest_id: int, list_id: int) -> None:
        """The primary acknowledged a DigestList."""
        digests = self._digests
        if digests is not None:
            digests.ack(digest_id, list_id)

    def _send_digest(self, message: p4r.StreamMessageResponse) -> None:
        self._digest_send(message)

    def get_pipeline(self, response_type: int) -> p4r.ForwardingPipelineConfig:
        """The committed config, filtered by the GetForwardingPipelineConfig response type."""
        types = p4r.GetForwardingPipelineConfigRequest
        loaded = self._loaded
        result = p4r.ForwardingPipelineConfig()
        if loaded is None:
            return result
        config = loaded.config
        if config.HasField("cookie"):
            result.cookie.CopyFrom(config.cookie)
        if response_type in (types.ALL, types.P4INFO_AND_COOKIE):
            result.p4info.CopyFrom(config.p4info)
        if response_type in (types.ALL, types.DEVICE_CONFIG_AND_COOKIE):
            result.p4_device_config = config.p4_device_config
        return result

    # Write --------------------------------------------------------------------------------------

    def write(self, updates: list[p4r.Update]) -> list[P4RuntimeError | None]:
        """Apply every update in order; one result per update (None = OK)."""
        with self._lock:
            loaded = self._require()
            results: list[P4RuntimeError | None] = []
            changed = False
            for update in updates:
                try:
                    changed |= self._write_one(loaded, update)
                    results.append(None)
                except P4RuntimeError as exc:
                    results.append(exc)
            if changed:
                loaded.pipeline.install(self._table_state(loaded))
            return results

    def _write_one(self, loaded: _Loaded, update: p4r.Update) -> bool:
        entity = update.entity
        kind = entity.WhichOneof("entity")
        if kind == "table_entry":
            loaded.tables.write(update.type, entity.table_entry)
            return True
        if kind == "packet_replication_engine_entry":
            self.replication.write(update.type, entity.packet_replication_engine_entry)
            return True
        if kind == "digest_entry":
            assert self._digests is not None
            self._digests.write(update.type, entity.digest_entry)
            return False
        if kind == "counter_entry":
            raise unimplemented("Writing to counters is not supported yet")
        if kind == "register_entry":
            raise unimplemented("Register writes are not supported yet")
        if kind is None:
            raise invalid_argument("update has no entity")
        raise unimplemented(f"writing {kind} is not supported by this target")

    def _table_state(self, loaded: _Loaded) -> TableState:
        program, tables = loaded.program, loaded.tables

        def single(call: ActionCall | None, action_id: int) -> int | None:
            return call.params[0] if call is not None and call.action_id == action_id else None

        def rules(table_id: int) -> tuple[ServiceRule, ...]:
            ordered = sorted(tables.entries(table_id), key=lambda e: -e.priority)
            return tuple(_service_rule(entry) for entry in ordered)

        l2: dict[bytes, int] = {}
        for entry in tables.entries(program.l2_forward.id):
            l2[_mac(entry)] = _l2_action(program, entry.action)
        l2_default = tables.default(program.l2_forward.id)
        return TableState(
            devices={_mac(e): e.action.params[0] for e in tables.entries(program.device_table.id)},
            device_default=single(tables.default(program.device_table.id), program.set_device.id),
            by_dst=rules(program.service_by_dst.id),
            by_dst_default=single(
                tables.default(program.service_by_dst.id), program.set_service.id
            ),
            by_src=rules(program.service_by_src.id),
            by_src_default=single(
                tables.default(program.service_by_src.id), program.set_service.id
            ),
            l2=l2,
            l2_default=_l2_action(program, l2_default) if l2_default else FLOOD,
            groups=self.replication.ports(),
        )

    # Read ---------------------------------------------------------------------------------------

    def read(self, entities: list[p4r.Entity]) -> Iterator[bytes]:
        """Serialised ReadResponses answering every entity of a ReadRequest.

        Entities are checked before any response is produced, so an error leaves nothing
        half-answered.
        """
        loaded = self._require()
        plain = p4r.ReadResponse()
        counters: list[tuple[int, int | None]] = []
        with self._lock:
            for entity in entities:
                self._read_one(loaded, entity, plain, counters)
        if plain.entities:
            yield plain.SerializeToString()
        for counter_id, index in counters:
            if index is None:
                yield from loaded.counter_encoder.encode(*loaded.pipeline.read_counters())
            else:
                packets, byte_count = loaded.pipeline.read_counter(index)
                cell = p4r.CounterEntry(
                    counter_id=counter_id,
                    index=p4r.Index(index=index),
                    data=p4r.CounterData(byte_count=byte_count, packet_count=packets),
                )
                yield p4r.ReadResponse(
                    entities=[p4r.Entity(counter_entry=cell)]
                ).SerializeToString()

    def _read_one(
        self,
        loaded: _Loaded,
        entity: p4r.Entity,
        plain: p4r.ReadResponse,
        counters: list[tuple[int, int | None]],
    ) -> None:
        kind = entity.WhichOneof("entity")
        if kind == "table_entry":
            for entry in loaded.tables.read(entity.table_entry):
                plain.entities.add().table_entry.CopyFrom(entry)
        elif kind == "counter_entry":
            counters.append(self._counter_request(loaded, entity.counter_entry))
        elif kind == "packet_replication_engine_entry":
            for pre in self.replication.read(entity.packet_replication_engine_entry):
                plain.entities.add().packet_replication_engine_entry.CopyFrom(pre)
        elif kind == "digest_entry":
            assert self._digests is not None
            for digest in self._digests.read(entity.digest_entry):
                plain.entities.add().digest_entry.CopyFrom(digest)
        elif kind == "register_entry":
            raise unimplemented("Register reads are not supported yet")
        elif kind is None:
            raise invalid_argument("read request entity is empty")
        else:
            raise unimplemented(f"reading {kind} is not supported by this target")

    def _counter_request(
        self, loaded: _Loaded, request: p4r.CounterEntry
    ) -> tuple[int, int | None]:
        """(counter id, cell) a counter read asks for; cell None reads every cell."""
        counter = loaded.program.service_hits
        if request.counter_id not in (0, counter.id):
            raise invalid_argument(f"counter id {request.counter_id} does not exist in the P4Info")
        if not request.HasField("index"):
            return counter.id, None
        index = request.index.index
        if index < 0 or index >= counter.size:
            raise P4RuntimeError(
                rpc_code.OUT_OF_RANGE,
                f"counter {counter.name}: index {index} is outside 0..{counter.size - 1}",
            )
        return counter.id, index

    def read_counters(self) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.int64]]:
        """The whole service_hits counter (packets, bytes), for local consumers such as the CLI."""
        return self._require().pipeline.read_counters()


def _service_rule(entry: Entry) -> ServiceRule:
    proto, port = entry.match
    value, mask = proto if proto is not None else (0, 0)
    low, high = port if port is not None else (0, 0xFFFF)
    return ServiceRule(entry.priority, value, mask, low, high, entry.action.params[0])


def _mac(entry: Entry) -> bytes:
    match = entry.match[0]
    assert match is not None
    return match[0].to_bytes(6, "big")


def _l2_action(program: Program, call: ActionCall) -> int:
    if call.action_id == program.forward.id:
        return call.params[0]
    if call.action_id == program.flood.id:
        return FLOOD
    return DROP


def _copy(config: p4r.ForwardingPipelineConfig) -> p4r.ForwardingPipelineConfig:
    copy = p4r.ForwardingPipelineConfig()
    copy.CopyFrom(config)
    return copy


def _discard(message: p4r.StreamMessageResponse) -> None:
    del message


def _drop_frame(port: int, frame: bytes) -> None:
    del port, frame
