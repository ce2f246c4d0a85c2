"""The reference switch under hostile requests: what one bad Write costs it and what the client
gets back.

Each case runs the switch's P4Runtime server in a process of its own (logging at INFO to a file)
and sends it one Write from this process over loopback gRPC:

- `valid` (the baseline): one valid device_table entry;
- `value_<N>mib`: one device_table entry whose 48-bit source MAC is N MiB of 0xff;
- `batch_<N>`: N inserts whose set_device id is beyond MAX_DEVICES, every one refused;
- `idle_streams_<N>`: the valid Write and a Capabilities call (5 s deadline each) while N more
  StreamChannels are open and idle.

Reported per case: the server's peak resident memory and its ratio to the baseline's, the
longest line and the size of its log, the status code the client got, the length of its
message and of the trailing metadata, the seconds the Write took, and with idle streams how
many of them the switch refused and how long Capabilities took.

    .venv/bin/python -m benchmarks.bench_refswitch_hostile [--value-mib 100 48] [--batch 50000]
"""

from __future__ import annotations

import argparse
import json
import logging
import multiprocessing
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
from finsy.proto import p4r, p4r_grpc

from benchmarks.common import peak_rss_mb, write_results
from controller.base.p4info import P4Schema, encode_int

ROOT = Path(__file__).resolve().parent.parent
P4INFO = ROOT / "p4src" / "fingerprint.p4info.txtpb"
_CLIENT_LIMIT = 1 << 30


def _serve(conn: Any, log_path: str) -> None:
    """The child: a switch with the pipeline committed, serving until told to report."""
    from refswitch.server import P4RuntimeServer
    from refswitch.switch import Switch

    logging.basicConfig(filename=log_path, level=logging.INFO)
    switch = Switch(0)
    config = p4r.ForwardingPipelineConfig()
    config.p4info.CopyFrom(P4Schema.load(P4INFO).p4info)
    switch.set_pipeline(p4r.SetForwardingPipelineConfigRequest.VERIFY_AND_COMMIT, config)
    server = P4RuntimeServer(switch, "127.0.0.1:0").start()
    conn.send(server.address)
    conn.recv()
    conn.send(peak_rss_mb())
    server.stop(0)
    switch.close()


def _entry(schema: P4Schema, mac: bytes, device_id: int) -> p4r.Update:
    entry = p4r.TableEntry(table_id=schema.table("device_table").id)
    entry.match.add(field_id=1).exact.value = mac
    action = entry.action.action
    action.action_id = schema.action("set_device").id
    action.params.add(param_id=1, value=encode_int(device_id, 16))
    return p4r.Update(type=p4r.Update.INSERT, entity=p4r.Entity(table_entry=entry))


def _arbitrate(done: threading.Event) -> Iterator[p4r.StreamMessageRequest]:
    """Become primary, then hold the stream open until `done`."""
    request = p4r.StreamMessageRequest()
    request.arbitration.device_id = 0
    request.arbitration.election_id.low = 1
    yield request
    done.wait()


def _idle(done: threading.Event) -> Iterator[p4r.StreamMessageRequest]:
    done.wait()
    yield from ()


def case(updates: list[p4r.Update], idle_streams: int = 0) -> dict[str, Any]:
    """Send one Write of `updates` to a fresh server process, `idle_streams` StreamChannels open
    beside it; what it cost and what came back."""
    timeout = 5.0 if idle_streams else 600.0
    context = multiprocessing.get_context("spawn")
    with tempfile.TemporaryDirectory() as folder:
        log_path = Path(folder) / "switch.log"
        parent, child = context.Pipe()
        process = context.Process(target=_serve, args=(child, str(log_path)))
        process.start()
        try:
            address = parent.recv()
            channel = grpc.insecure_channel(
                address,
                options=[
                    ("grpc.max_send_message_length", _CLIENT_LIMIT),
                    ("grpc.max_receive_message_length", _CLIENT_LIMIT),
                ],
            )
            stub = p4r_grpc.P4RuntimeStub(channel)
            done = threading.Event()
            stream = stub.StreamChannel(_arbitrate(done))
            next(stream)
            idle = [stub.StreamChannel(_idle(done)) for _ in range(idle_streams)]
            time.sleep(1.0 if idle_streams else 0.0)
            refused = sum(call.done() for call in idle)  # type: ignore[attr-defined]
            start = time.perf_counter()
            try:
                stub.Capabilities(p4r.CapabilitiesRequest(), timeout=timeout)
                capabilities = "OK"
            except grpc.RpcError as exc:
                capabilities = exc.code().name
            capabilities_seconds = time.perf_counter() - start
            request = p4r.WriteRequest(device_id=0)
            request.election_id.low = 1
            request.updates.extend(updates)
            request_mb = request.ByteSize() / 2**20
            start = time.perf_counter()
            try:
                stub.Write(request, timeout=timeout)
                code, message, trailer = "OK", "", 0
            except grpc.RpcError as exc:
                code, message = exc.code().name, exc.details() or ""
                trailer = sum(len(m.key) + len(m.value) for m in exc.trailing_metadata() or ())
            seconds = time.perf_counter() - start
            done.set()
            for call in (stream, *idle):
                call.cancel()
            channel.close()
            parent.send("report")
            server_peak = parent.recv()
        finally:
            process.join(60)
        lines = log_path.read_bytes().splitlines()
    return {
        "request_mb": request_mb,
        "server_peak_rss_mb": server_peak,
        "log_bytes": sum(len(line) + 1 for line in lines),
        "log_longest_line": max((len(line) for line in lines), default=0),
        "status": code,
        "message_chars": len(message),
        "message_start": message[:160],
        "trailer_bytes": trailer,
        "seconds": seconds,
        "idle_streams_refused": refused,
        "capabilities": capabilities,
        "capabilities_seconds": capabilities_seconds,
    }


def main() -> None:
    """Run the cases and write `benchmarks/results/bench_refswitch_hostile.json`."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--value-mib", type=int, nargs="*", default=[100, 48])
    parser.add_argument("--batch", type=int, default=50_000)
    parser.add_argument("--idle-streams", type=int, default=40)
    args = parser.parse_args()
    schema = P4Schema.load(P4INFO)
    max_devices = schema.contract.max_devices
    results: dict[str, Any] = {"valid": case([_entry(schema, b"\x02" + bytes(5), 1)])}
    baseline = results["valid"]["server_peak_rss_mb"]
    for mib in args.value_mib:
        results[f"value_{mib}mib"] = case([_entry(schema, b"\xff" * (mib << 20), 1)])
    results[f"idle_streams_{args.idle_streams}"] = case(
        [_entry(schema, b"\x02" + bytes(5), 1)], args.idle_streams
    )
    results[f"batch_{args.batch}"] = case(
        [_entry(schema, (i + 1).to_bytes(6, "big"), max_devices) for i in range(args.batch)]
    )
    for result in results.values():
        result["server_peak_vs_valid"] = result["server_peak_rss_mb"] / baseline
    print(json.dumps(results, indent=2, sort_keys=True))
    print(f"wrote {write_results('bench_refswitch_hostile', results)}")


if __name__ == "__main__":
    main()
