"""BMv2 (`simple_switch_grpc`), each measurement with its baseline in the same run.

- Poll: one whole poll of the 1024 × 256 counter through the controller's code (wildcard read
  over gRPC, decode, deltas, attribution to (device, service) rows) on BMv2 with 1,023 registered
  devices, against the same poll of the same counts on the reference switch. Goal: BMv2's median
  ≤ 200 ms.
- Forwarding rate of fingerprint.p4 on BMv2 against a one-table L2 program
  (`benchmarks/p4/l2_forward.p4`) on the same veth pair. Goal: at least 0.6 of the L2 rate.
- Forwarding rate of the reference switch (as a process, on its raw-socket ports) on the same
  veth pair against fingerprint.p4 on BMv2. Goal: at least 4× BMv2's rate.

A rate is the frames that leave the egress port per second while one sender offers frames on
the ingress port as fast as it can for `--seconds` (bounded in count and time too); beside it, the
switch process's CPU time per forwarded frame. The switches take turns `--rate-repeat` times, so
a load change on the machine meets every one of them; each rate is the median of its runs (with
the lowest and highest), each ratio the median of the ratios within one turn. Every switch runs in
a network namespace of its own (tests/support/bmv2.py), without a log file. BMv2 without a log
file still formats every per-packet message at its default level (trace), a cost that grows with
the tables, conditions and primitives a packet meets: both BMv2 programs are measured that way
(the goal's ratio) and again with `--log-level off`. Needs root, simple_switch_grpc and p4c on
PATH; run it under the suite lock (it creates veths).

    .venv/bin/python -m benchmarks.bench_bmv2 [--repeat 10] [--seconds 3] [--rate-repeat 5]
        [--services 4]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
from finsy.proto import p4r

import p4src
from benchmarks.common import ROOT, write_results
from controller.base.p4info import P4Schema
from controller.control.collector import attribute, counter_deltas
from controller.engine.catalogue import Catalogue
from controller.p4rt import entries
from controller.p4rt.build import compile_p4
from controller.p4rt.session import Session, SwitchTarget
from controller.store.storage import Baseline
from tests.support.bmv2 import GRPC_PORT, Bmv2Target
from tests.support.switch import CAMERA, SERVER, Wire, frame
from tests.support.targets import Target
from topology.launch import refswitch_command

L2_PROGRAM = ROOT / "benchmarks" / "p4" / "l2_forward.p4"
DEVICE_ID = 0
# At most this many frames per rate measurement, whatever --seconds says.
MAX_OFFERED = 2_000_000
DRAIN_S = 0.5


def mac(n: int) -> str:
    return ":".join(f"{b:02x}" for b in (2, 0, 0, n >> 16 & 0xFF, n >> 8 & 0xFF, n & 0xFF))


class RefswitchInNamespace(Bmv2Target):
    """The reference switch as its own process (`svcfp switch`) in the same kind of namespace,
    on the same veths."""

    kind = "refswitch-process"
    bmv2_json = None

    def command(self) -> list[str]:
        flags = [arg for port in range(self.ports) for arg in ("-i", f"{port}@veth{2 * port}")]
        return refswitch_command(
            f"127.0.0.1:{GRPC_PORT}", self.device_id, self.logs / "refswitch.log", flags
        )


class Bmv2LogOff(Bmv2Target):
    """BMv2 as in Bmv2Target, its log level off: no per-packet message is formatted."""

    kind = "bmv2-log-off"

    def command(self) -> list[str]:
        command = super().command()
        at = command.index("--")
        return [*command[:at], "--log-level", "off", *command[at:]]


async def program(
    target: Target, schema: P4Schema, device_config: bytes, items: list[p4r.Entity]
) -> None:
    """Push `schema` and write `items`, as a primary controller."""
    address = SwitchTarget("bench", target.address, DEVICE_ID, election_id=(0, 7))
    async with Session(address, connect_timeout=10.0) as session:
        await session.ensure_pipeline(schema, device_config, skip_config=False)
        for start in range(0, len(items), 2000):
            batch = items[start : start + 2000]
            await session.write([p4r.Update(type=p4r.Update.INSERT, entity=e) for e in batch])


async def poll_times(target: Target, schema: P4Schema, devices: int, repeat: int) -> list[float]:
    """Seconds of each of `repeat` whole polls (read, decode, deltas, attribution)."""
    counter = schema.counter(entries.COUNTER)
    max_services = schema.contract.max_services
    catalogue = Catalogue.default()
    macs = np.full(schema.contract.max_devices, "", dtype=object)
    for d in range(1, devices + 1):
        macs[d] = mac(d)
    baseline = Baseline.zeros(counter.size)
    address = SwitchTarget("bench", target.address, DEVICE_ID, election_id=(0, 3))
    times = []
    async with Session(address, connect_timeout=10.0) as session:
        for _ in range(repeat):
            start = time.perf_counter()
            values = await session.read_counter(counter)
            deltas = counter_deltas(baseline, values)
            attribute(deltas, 0, max_services, macs, catalogue.names)
            times.append(time.perf_counter() - start)
    return times


def poll_traffic(services: int, devices: int) -> list[bytes]:
    """One frame per (device, service) for `services` services of the built-in catalogue."""
    ported = [
        s for s in Catalogue.default().services if s.proto in (6, 17) and s.port_lo == s.port_hi
    ][:services]
    return [
        frame(mac(d), SERVER, s.proto or 6, 40000, s.port_lo, 64 + (d * 7 + s.id) % 1400)
        for d in range(1, devices + 1)
        for s in ported
    ]


def bench_poll(logs: Path, repeat: int, services: int, devices: int = 1023) -> dict[str, Any]:
    schema = P4Schema.load(p4src.P4INFO)
    items = [
        p4r.Entity(table_entry=e)
        for e in [
            *(entries.device_entry(schema, mac(d), d) for d in range(1, devices + 1)),
            *entries.catalogue_entries(schema, Catalogue.default()),
        ]
    ]
    traffic = poll_traffic(services, devices)
    medians = {}
    for kind in ("bmv2", "refswitch"):
        target: Target = (
            Bmv2Target(logs / "poll", DEVICE_ID, log=False) if kind == "bmv2" else Wire(DEVICE_ID)
        )
        try:
            asyncio.run(program(target, schema, target.device_config, items))
            target.send_frames(traffic, 0)
            times = asyncio.run(poll_times(target, schema, devices, repeat))
        finally:
            target.stop()
        medians[kind] = statistics.median(times)
    return {
        "cells": schema.contract.counter_size,
        "nonzero_cells": len(traffic),
        "repeat": repeat,
        "bmv2_poll_median_ms": round(medians["bmv2"] * 1000, 1),
        "baseline_refswitch_poll_median_ms": round(medians["refswitch"] * 1000, 1),
        "goal_ms": 200,
        "meets_goal": medians["bmv2"] <= 0.2,
    }


def cpu_seconds(pid: int) -> float:
    """User and system CPU time the process `pid` has used so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def forwarding_rate(target: Bmv2Target, data: bytes, seconds: float) -> dict[str, float]:
    """Frames per second leaving port 1 while port 0 is offered `data` for `seconds`, and the
    switch's CPU microseconds per frame forwarded."""
    assert target.process is not None
    sock = target._sockets[0]
    before = len([1 for port, _ in target.sent if port == 1])
    cpu_before = cpu_seconds(target.process.pid)
    offered = 0
    stop = time.monotonic() + seconds
    while time.monotonic() < stop and offered < MAX_OFFERED:
        for _ in range(100):
            sock.send(data)
        offered += 100
    time.sleep(DRAIN_S)
    delivered = len([1 for port, _ in target.sent if port == 1]) - before
    cpu = cpu_seconds(target.process.pid) - cpu_before
    return {
        "offered_pps": round(offered / seconds),
        "forwarded_pps": round(delivered / seconds),
        "cpu_us_per_frame": round(cpu / max(1, delivered) * 1e6, 1),
    }


def spread(values: list[float], digits: int = 0) -> dict[str, Any]:
    """Median, lowest and highest of `values`, and all of them in order."""
    return {
        "median": round(statistics.median(values), digits),
        "min": round(min(values), digits),
        "max": round(max(values), digits),
        "runs": [round(v, digits) for v in values],
    }


def bench_forwarding(logs: Path, seconds: float, repeat: int) -> dict[str, Any]:
    p4c = shutil.which("p4c")
    if p4c is None:
        raise SystemExit("p4c is not on PATH")
    schema = P4Schema.load(p4src.P4INFO)
    data = frame(CAMERA, SERVER, 17, 40000, 53, 64)
    fingerprint_items = [
        p4r.Entity(table_entry=e)
        for e in [
            entries.device_entry(schema, CAMERA, 1),
            *entries.catalogue_entries(schema, Catalogue.default()),
            entries.l2_entry(schema, SERVER, 1),
        ]
    ]
    with tempfile.TemporaryDirectory() as folder:
        l2_build = compile_p4(Path(p4c), L2_PROGRAM, Path(folder))
        l2_schema = P4Schema.load(l2_build.p4info)
        l2_config = l2_build.bmv2_json.read_bytes()
    l2_items = [p4r.Entity(table_entry=entries.l2_entry(l2_schema, SERVER, 1))]
    fingerprint_config = p4src.BMV2_JSON.read_bytes()
    cases = {
        "bmv2_l2_forward": (Bmv2Target, l2_schema, l2_config, l2_items),
        "bmv2_fingerprint": (Bmv2Target, schema, fingerprint_config, fingerprint_items),
        "bmv2_l2_forward_log_off": (Bmv2LogOff, l2_schema, l2_config, l2_items),
        "bmv2_fingerprint_log_off": (Bmv2LogOff, schema, fingerprint_config, fingerprint_items),
        "refswitch_fingerprint": (RefswitchInNamespace, schema, b"", fingerprint_items),
    }
    runs: dict[str, list[dict[str, float]]] = {name: [] for name in cases}
    for _ in range(repeat):
        for name, (kind, case_schema, config, items) in cases.items():
            target = kind(logs / name, DEVICE_ID, ports=2, log=False)
            try:
                asyncio.run(program(target, case_schema, config, items))
                runs[name].append(forwarding_rate(target, data, seconds))
            finally:
                target.stop()
    rates = {
        name: {
            "forwarded_pps": spread([r["forwarded_pps"] for r in measured]),
            "offered_pps": spread([r["offered_pps"] for r in measured]),
            "cpu_us_per_frame": spread([r["cpu_us_per_frame"] for r in measured], 1),
        }
        for name, measured in runs.items()
    }

    def ratios(top: str, bottom: str) -> list[float]:
        pairs = zip(runs[top], runs[bottom], strict=True)
        return [a["forwarded_pps"] / max(1, b["forwarded_pps"]) for a, b in pairs]

    fingerprint_ratio = spread(ratios("bmv2_fingerprint", "bmv2_l2_forward"), 2)
    log_off_ratio = spread(ratios("bmv2_fingerprint_log_off", "bmv2_l2_forward_log_off"), 2)
    reference_ratio = spread(ratios("refswitch_fingerprint", "bmv2_fingerprint"), 2)
    return {
        "frame_bytes": len(data),
        "seconds": seconds,
        "repeat": repeat,
        **rates,
        "fingerprint_vs_l2": fingerprint_ratio,
        "fingerprint_vs_l2_goal": 0.6,
        "fingerprint_vs_l2_meets_goal": fingerprint_ratio["median"] >= 0.6,
        "fingerprint_vs_l2_log_off": log_off_ratio,
        "refswitch_vs_bmv2": reference_ratio,
        "refswitch_vs_bmv2_goal": 4.0,
        "refswitch_vs_bmv2_meets_goal": reference_ratio["median"] >= 4.0,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=10)
    parser.add_argument("--seconds", type=float, default=3.0)
    parser.add_argument("--rate-repeat", type=int, default=5)
    parser.add_argument("--services", type=int, default=4)
    args = parser.parse_args()
    if os.geteuid() != 0 or shutil.which("simple_switch_grpc") is None:
        print("bench_bmv2: needs root and simple_switch_grpc on PATH; skipped", file=sys.stderr)
        return
    with tempfile.TemporaryDirectory(prefix="svcfp-bench-bmv2-") as logs:
        results = {
            "poll": bench_poll(Path(logs), args.repeat, args.services),
            "forwarding": bench_forwarding(Path(logs), args.seconds, args.rate_repeat),
            "load_average_1min": round(os.getloadavg()[0], 2),
            "cpus": os.cpu_count(),
        }
    for section, values in results.items():
        print(section, values)
    print(f"written {write_results('bench_bmv2', results)}")


if __name__ == "__main__":
    main()
