"""What the benchmarks share: measuring a function in a fresh process, its peak memory, the
synthetic flow file they read, and writing results."""

from __future__ import annotations

import json
import math
import multiprocessing
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from controller.base.fileio import write_text_atomically

ROOT = Path(__file__).resolve().parent.parent
RESULTS_DIR = ROOT / "benchmarks" / "results"


def data_dir() -> Path:
    """The shared real-data folder: $SVCFP_DATA_DIR, else ../shared/data beside the checkout."""
    configured = os.environ.get("SVCFP_DATA_DIR")
    return Path(configured) if configured else ROOT.parent / "shared" / "data"


def peak_rss_mb() -> float:
    """This process's peak resident memory (VmHWM) in MiB; NaN where /proc does not tell."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024.0
    return float("nan")


def in_child(func: Callable[..., dict[str, Any]], *args: Any) -> dict[str, Any]:
    """`func(*args)` in a freshly spawned process, so its peak memory is its own."""
    context = multiprocessing.get_context("spawn")
    with context.Pool(1) as pool:
        return pool.apply(func, args)


def in_parent_of_workers(func: Callable[..., dict[str, Any]], *args: Any) -> dict[str, Any]:
    """`func(*args)` in a freshly spawned, non-daemonic process (one that may start worker
    processes of its own, as a local Dask cluster does); its result comes back through a pipe."""
    context = multiprocessing.get_context("spawn")
    receive, send = context.Pipe(duplex=False)
    child = context.Process(target=_send_result, args=(send, func, *args))
    child.start()
    send.close()
    try:
        outcome = receive.recv()
    finally:
        child.join()
    if isinstance(outcome, BaseException):
        raise outcome
    assert isinstance(outcome, dict)
    return outcome


def _send_result(send: Any, func: Callable[..., dict[str, Any]], *args: Any) -> None:
    try:
        send.send(func(*args))
    except BaseException as exc:
        send.send(exc)
        raise


def synthetic_flows_csv(
    path: Path, records: int, seed: int, devices: int, unit_seconds: float
) -> tuple[list[int], dict[str, Any]]:
    """Write exactly `records` synthetic flow records of a fleet of `devices` as IPFIX CSV.

    Returns the fleet's MACs as integers and how the file was made (times, size, units)."""
    from controller.base.macs import mac_to_int
    from controller.ingest.synth import flows, load_profiles, make_fleet, write_flows_csv

    fleet = make_fleet(load_profiles(), devices)
    start = time.perf_counter()
    probe = flows(fleet, 48, seed)
    units = math.ceil(records / (len(probe) / 48) * 1.1)
    batch = flows(fleet, units, seed, unit_seconds, start_unit=1_483_228_800 // 3600)
    if len(batch) < records:
        raise RuntimeError(f"generated only {len(batch)} of {records} records")
    cut = batch.take(slice(0, records))
    generated = time.perf_counter() - start
    start = time.perf_counter()
    write_flows_csv(path, cut)
    macs = [mac_to_int(d.mac) for d in fleet]
    return macs, {
        "generate_seconds": generated,
        "write_seconds": time.perf_counter() - start,
        "file_mb": path.stat().st_size / 2**20,
        "units": units,
        "devices": len(fleet),
    }


def write_results(name: str, results: dict[str, Any]) -> Path:
    """Write `benchmarks/results/<name>.json` whole (never half of it); returns the path."""
    path = RESULTS_DIR / f"{name}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    write_text_atomically(path, json.dumps(results, indent=2, sort_keys=True) + "\n")
    return path
