"""The demo end to end: how long it takes against the emulated time it plays, and how fast devices
are identified.

Measured in one process: building the scenario (synthetic references enrolled), synthesising the
devices' frames, and the whole `svcfp demo` run in the no-network mode (pcap replay through the
reference switch process, counters read over gRPC); with `--network` (root) also the Mininet mode.
Baseline: the emulated time itself (units × unit length) — the ratio is the demo's overhead. Per
device: units until its first exported fingerprint and until its first correct answer. Goal: the
whole demo under 5 minutes.

    .venv/bin/python -m benchmarks.bench_demo [--units 60] [--network]
"""

from __future__ import annotations

import argparse
import io
import json
import os
import socket
import tempfile
import time
from pathlib import Path
from typing import Any

from benchmarks.common import write_results
from controller.engine.identify import UNKNOWN
from topology import graph as topo
from topology.demo import run_demo
from topology.emulation import next_unit_start
from topology.frames import synthesize
from topology.scenario import DemoConfig, build_scenario

ROOT = Path(__file__).resolve().parent.parent
P4INFO = ROOT / "p4src" / "fingerprint.p4info.txtpb"


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _identification(summary: dict[str, Any]) -> dict[str, Any]:
    """Per device: units (from its first activity) to its first export and first right answer."""
    found: dict[str, Any] = {}
    expected = {row["device"]: row["expected"] for row in summary["devices"]}
    for host in sorted(expected):
        mine = [d for d in summary["decisions"] if d["device"] == host]
        start = min((d["start_unit"] for d in mine), default=None)
        right = [d for d in mine if d["label"] == expected[host]]
        found[host] = {
            "expected": expected[host] if expected[host] != UNKNOWN else "unknown (held out)",
            "units_to_first_export": mine[0]["end_unit"] - start if mine else None,
            "units_to_first_right_answer": right[0]["end_unit"] - start if right else None,
        }
    return found


def _demo(config: DemoConfig) -> dict[str, Any]:
    started = time.perf_counter()
    summary = run_demo(config, io.StringIO())
    seconds = time.perf_counter() - started
    emulated = config.units * config.unit_seconds
    return {
        "mode": summary["mode"],
        "seconds": round(seconds, 2),
        "emulated_seconds": emulated,
        "overhead_ratio": round(seconds / emulated, 3),
        "correct": summary["correct"],
        "devices": len(summary["devices"]),
        "identification": _identification(summary),
    }


def main() -> int:
    """Run the measurements, print them, write the JSON."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--units", type=int, default=60)
    parser.add_argument("--network", action="store_true", help="also the Mininet mode (root)")
    args = parser.parse_args()
    result: dict[str, Any] = {"units": args.units}
    with tempfile.TemporaryDirectory(prefix="bench_demo.") as folder:
        base = Path(folder)

        def config(name: str, no_network: bool) -> DemoConfig:
            return DemoConfig(
                out=base / name / "out",
                logs=base / name,
                units=args.units,
                grpc_port=_free_port(),
                no_network=no_network,
                p4info=P4INFO,
            )

        started = time.perf_counter()
        scenario = build_scenario(config("scenario", True))
        result["scenario_seconds"] = round(time.perf_counter() - started, 3)
        graph = topo.default_topology(sorted(scenario.truth.items()))
        started = time.perf_counter()
        frames = synthesize(graph, scenario.schedules, 1.0, next_unit_start(time.time(), 1.0))
        elapsed = time.perf_counter() - started
        result["frames"] = {
            "count": len(frames),
            "seconds": round(elapsed, 4),
            "per_second": round(len(frames) / elapsed),
        }
        result["no_network"] = _demo(config("replay", True))
        if args.network:
            if os.geteuid() != 0:
                raise SystemExit("--network needs root (Mininet)")
            result["network"] = _demo(config("network", False))
    for key, value in result.items():
        print(f"{key}: {json.dumps(value)}")
    write_results("bench_demo", result)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
