"""One collector poll of a 1024 × 256 counter against the reference switch over real gRPC.

Measured: the wildcard read over gRPC (raw bytes), decoding into numpy, deltas, attribution to
(device, service) rows, and — reported apart — the SQLite transaction storing them. Baselines in
the same run: decoding the same bytes with the protobuf (upb) message API and a Python loop, and
with the p4runtime-shell stack (pure-Python protobuf 3.20 in .venv-ptf, run as a subprocess on the
same serialized response). Goal: the poll (read + decode + delta + aggregate) ≤ 250 ms.

    .venv/bin/python -m benchmarks.bench_poll [--repeat 10] [--devices 1023] [--services 16]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import struct
import subprocess
import tempfile
import time
from pathlib import Path

import numpy as np
from finsy.proto import p4r

from benchmarks.common import write_results
from controller.base.p4info import P4Schema
from controller.base.wire import CounterValues, decode_counter_read
from controller.control.collector import attribute, counter_deltas
from controller.engine.catalogue import Catalogue
from controller.p4rt import entries
from controller.p4rt.session import Session, SwitchTarget
from controller.store.storage import Baseline, Storage
from refswitch.server import P4RuntimeServer
from refswitch.switch import Switch

ROOT = Path(__file__).resolve().parent.parent
P4INFO = ROOT / "p4src" / "fingerprint.p4info.txtpb"
PTF_PYTHON = ROOT / ".venv-ptf" / "bin" / "python"

# Decodes the response the way p4runtime-shell's CounterEntry.read does: parse, then visit every
# entity. Runs under the PTF environment's protobuf 3.20 (pure Python on Python 3.11).
_PTF_SCRIPT = """
import json, sys, time
from p4.v1 import p4runtime_pb2
from google.protobuf.internal import api_implementation
data = open(sys.argv[1], "rb").read()
times = []
for _ in range(int(sys.argv[2])):
    start = time.perf_counter()
    response = p4runtime_pb2.ReadResponse()
    response.ParseFromString(data)
    cells = [(e.counter_entry.index.index, e.counter_entry.data.packet_count,
              e.counter_entry.data.byte_count) for e in response.entities]
    times.append(time.perf_counter() - start)
print(json.dumps({"seconds": times, "cells": len(cells), "impl": api_implementation.Type()}))
"""


def mac(n: int) -> str:
    return ":".join(f"{b:02x}" for b in (2, 0, 0, n >> 16 & 0xFF, n >> 8 & 0xFF, n & 0xFF))


def frame(src: int, proto: int, dport: int, size: int) -> bytes:
    l4 = struct.pack("!HHHH", 40000, dport, size - 34, 0)
    if proto == 6:
        l4 = struct.pack("!HHIIBBHHH", 40000, dport, 0, 0, 0x50, 0x02, 1024, 0, 0)
    ip = struct.pack(
        "!BBHHHBBH4s4s", 0x45, 0, size - 14, 1, 0, 64, proto, 0, b"\n\0\0\2", b"\n\0\0\1"
    )
    head = bytes.fromhex("02ffffffffff") + bytes.fromhex(mac(src).replace(":", "")) + b"\x08\x00"
    body = head + ip + l4
    return body + bytes(size - len(body))


async def measure(args: argparse.Namespace) -> dict[str, object]:
    schema = P4Schema.load(P4INFO)
    counter = schema.counter(entries.COUNTER)
    max_services = entries.max_services(schema)
    catalogue = Catalogue.default()
    switch = Switch(0)
    server = P4RuntimeServer(switch, "127.0.0.1:0").start()
    try:
        target = SwitchTarget("bench", server.address, 0, election_id=(0, 2))
        async with Session(target, connect_timeout=5.0) as session:
            await session.ensure_pipeline(schema, b"", skip_config=False)
            devices = [entries.device_entry(schema, mac(d), d) for d in range(1, args.devices + 1)]
            await session.write(
                entries.updates(
                    p4r.Update.INSERT, devices + entries.catalogue_entries(schema, catalogue)
                )
            )
            ported = [
                s for s in catalogue.services if s.proto in (6, 17) and s.port_lo == s.port_hi
            ]
            chosen = ported[: args.services]
            rng = np.random.default_rng(1)
            started = time.perf_counter()
            for d in range(1, args.devices + 1):
                for service in chosen:
                    switch.receive(
                        frame(d, service.proto or 6, service.port_lo, int(rng.integers(64, 1500))),
                        0,
                    )
            traffic_seconds = time.perf_counter() - started

            macs = np.full(counter.size // max_services, "", dtype=object)
            for d in range(1, args.devices + 1):
                macs[d] = mac(d)
            names = catalogue.names
            baseline = Baseline.zeros(counter.size)

            reads, decodes, deltas_t, attrib, polls, stores = [], [], [], [], [], []
            chunks: list[bytes] = []
            rows = 0
            with tempfile.TemporaryDirectory() as tmp:
                store = Storage(Path(tmp) / "bench.db")
                for _ in range(args.repeat):
                    t0 = time.perf_counter()
                    chunks = await session.read_counter_raw(counter)
                    t1 = time.perf_counter()
                    values = decode_counter_read(chunks, counter.id, counter.size)
                    t2 = time.perf_counter()
                    deltas = counter_deltas(baseline, values)
                    t3 = time.perf_counter()
                    records, _ = attribute(deltas, 0, max_services, macs, names)
                    t4 = time.perf_counter()
                    store.record_poll("bench", Baseline(values.packets, values.bytes), records, 0.0)
                    t5 = time.perf_counter()
                    reads.append(t1 - t0)
                    decodes.append(t2 - t1)
                    deltas_t.append(t3 - t2)
                    attrib.append(t4 - t3)
                    polls.append(t4 - t0)
                    stores.append(t5 - t4)
                    rows = len(records)
                store.close()
    finally:
        server.stop(0)
        switch.close()

    data = b"".join(chunks)
    # Baseline 1: the protobuf message API (upb) with a Python loop over the entities.
    upb = []
    for _ in range(max(1, args.repeat // 2)):
        t0 = time.perf_counter()
        response = p4r.ReadResponse.FromString(data)
        packets = np.fromiter(
            (e.counter_entry.data.packet_count for e in response.entities), np.int64
        )
        index = np.fromiter((e.counter_entry.index.index for e in response.entities), np.int64)
        counted = np.fromiter(
            (e.counter_entry.data.byte_count for e in response.entities), np.int64
        )
        CounterValues(packets[np.argsort(index)], counted[np.argsort(index)])
        upb.append(time.perf_counter() - t0)

    ptf: dict[str, object] = {"available": False}
    if PTF_PYTHON.exists():
        with tempfile.NamedTemporaryFile(suffix=".bin") as saved:
            saved.write(data)
            saved.flush()
            env = {**os.environ, "PROTOCOL_BUFFERS_PYTHON_IMPLEMENTATION": "python"}
            done = subprocess.run(
                [str(PTF_PYTHON), "-c", _PTF_SCRIPT, saved.name, str(args.ptf_repeat)],
                capture_output=True, text=True, env=env, timeout=600, check=False,
            )  # fmt: skip
        if done.returncode == 0:
            found = json.loads(done.stdout)
            ptf = {"available": True, "impl": found["impl"], "cells": found["cells"],
                   "decode_median_s": statistics.median(found["seconds"])}  # fmt: skip
        else:
            ptf = {"available": False, "error": done.stderr.strip().splitlines()[-1:]}

    med = statistics.median
    result: dict[str, object] = {
        "cells": counter.size,
        "nonzero_cells": int(np.count_nonzero(values.packets)),
        "response_bytes": len(data),
        "response_messages": len(chunks),
        "rows_per_poll": rows,
        "repeat": args.repeat,
        "traffic_frames": args.devices * len(chosen),
        "traffic_seconds": traffic_seconds,
        "read_grpc_median_s": med(reads),
        "decode_median_s": med(decodes),
        "delta_median_s": med(deltas_t),
        "attribute_median_s": med(attrib),
        "poll_median_s": med(polls),
        "poll_min_s": min(polls),
        "poll_goal_s": 0.25,
        "poll_meets_goal": med(polls) <= 0.25,
        "store_sqlite_median_s": med(stores),
        "baseline_upb_message_api_decode_median_s": med(upb),
        "decode_speedup_vs_upb_message_api": med(upb) / med(decodes),
        "p4runtime_shell_stack": ptf,
    }
    if ptf.get("available"):
        result["decode_speedup_vs_p4runtime_shell_stack"] = (
            float(ptf["decode_median_s"]) / med(decodes)  # type: ignore[arg-type]
        )
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=10)
    parser.add_argument("--ptf-repeat", type=int, default=2)
    parser.add_argument("--devices", type=int, default=1023)
    parser.add_argument("--services", type=int, default=16)
    args = parser.parse_args()
    result = asyncio.run(measure(args))
    for key, value in result.items():
        shown = (
            f"{value * 1000:.1f} ms" if key.endswith("_s") and isinstance(value, float) else value
        )
        print(f"{key:45} {shown}")
    print(f"written {write_results('bench_poll', result)}")


if __name__ == "__main__":
    main()
