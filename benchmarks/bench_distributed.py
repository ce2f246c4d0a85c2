"""The Dask engine (a local cluster of 2 worker processes) against the single process, on a flow
archive of synthetic IPFIX CSV files (one file per stretch of hours, as a collector rotates
them): wall time of ingestion (files → per-(device, unit, service) activity) and of the
exporter's fingerprints, the peak memory of every process, and the per-record costs the
extrapolation to a day's records rests on. Both engines must produce the same activity and
fingerprints, or the benchmark fails.

    .venv/bin/python -m benchmarks.bench_distributed [--records 10000000] [--files 8]
"""

from __future__ import annotations

import argparse
import hashlib
import tempfile
import time
from pathlib import Path
from typing import Any

from benchmarks.common import in_child, in_parent_of_workers, peak_rss_mb, write_results

UNIT = 3600.0
START_UNIT = 1_483_228_800 // 3600


def write_archive(
    folder: Path, records: int, files: int, devices: int, seed: int
) -> dict[str, Any]:
    """`records` flow records of one fleet in `files` files of consecutive hours."""
    from controller.ingest.synth import flows, load_profiles, make_fleet, write_flows_csv

    fleet = make_fleet(load_profiles(), devices)
    per_unit = len(flows(fleet, 24, seed)) / 24
    share = records // files
    units = int(share / per_unit * 1.1) + 1
    start = time.perf_counter()
    for i in range(files):
        wanted = share if i < files - 1 else records - share * (files - 1)
        batch = flows(fleet, units, seed + i, UNIT, START_UNIT + i * units)
        if len(batch) < wanted:
            raise RuntimeError(f"file {i}: generated only {len(batch)} of {wanted} records")
        write_flows_csv(folder / f"flows-{i:03d}.csv", batch.take(slice(0, wanted)))
    size = sum(p.stat().st_size for p in folder.glob("*.csv"))
    return {
        "files": files,
        "devices": devices,
        "hours_per_file": units,
        "write_seconds": time.perf_counter() - start,
        "archive_mb": size / 2**20,
    }


def _digest(table: Any, fps: Any) -> str:
    from controller.engine.activity import ActivityTable

    assert isinstance(table, ActivityTable)
    rows = sorted(table.records())
    text = repr(rows) + repr(
        (fps.devices, fps.services, fps.weights.tobytes(), fps.start.tobytes())
    )
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def run_engine(folder: str, workers: int) -> dict[str, Any]:
    """Ingest and fingerprint the archive with one process (`workers` 0) or a local cluster."""
    from controller.distributed.engine import DaskEngine, DaskSettings
    from controller.engine.evaluate import make_windows
    from controller.engine.exporter import ExporterConfig
    from controller.engine.partition import SERIAL
    from controller.ingest.sources import Sources, load

    sources = Sources(files=(Path(folder),))
    config = ExporterConfig()
    task_cpu = None
    if workers == 0:
        start = time.perf_counter()
        cpu = time.process_time()
        loaded = load(sources)
        ingest = time.perf_counter() - start
        ingest_cpu = time.process_time() - cpu
        start = time.perf_counter()
        fps = make_windows(loaded.activity, config, "exporter", False, SERIAL)
        fingerprints = time.perf_counter() - start
        workers_peak: dict[str, float] = {}
    else:
        with DaskEngine(DaskSettings(workers=workers)) as engine:
            start = time.perf_counter()
            cpu = time.process_time()
            loaded = load(sources, reader=engine.read_files)
            ingest = time.perf_counter() - start
            ingest_cpu = time.process_time() - cpu
            task_cpu = engine.task_seconds
            start = time.perf_counter()
            fps = make_windows(loaded.activity, config, "exporter", False, engine.parallel())
            fingerprints = time.perf_counter() - start
            workers_peak = {k: v / 2**20 for k, v in engine.peak_memory().items()}
    return {
        "records": loaded.records,
        "activity_rows": len(loaded.activity),
        "fingerprints": len(fps),
        "ingest_seconds": ingest,
        "ingest_client_cpu_seconds": ingest_cpu,
        "ingest_worker_cpu_seconds": task_cpu,
        "fingerprint_seconds": fingerprints,
        "records_per_second": loaded.records / ingest,
        "client_peak_rss_mb": peak_rss_mb(),
        "worker_peak_rss_mb": sorted(workers_peak.values()),
        "digest": _digest(loaded.activity, fps),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--records", type=int, default=10_000_000)
    parser.add_argument("--files", type=int, default=8)
    parser.add_argument("--devices", type=int, default=1000)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="svcfp-bench-") as tmp:
        folder = Path(tmp)
        made = write_archive(folder, args.records, args.files, args.devices, args.seed)
        print(
            f"archive: {args.records:,} records in {made['files']} files, "
            f"{made['archive_mb']:.0f} MiB, written in {made['write_seconds']:.0f} s"
        )
        single = in_child(run_engine, str(folder), 0)
        print(
            f"single process: ingest {single['ingest_seconds']:.1f} s, fingerprints "
            f"{single['fingerprint_seconds']:.2f} s, peak {single['client_peak_rss_mb']:.0f} MiB"
        )
        dask = in_parent_of_workers(run_engine, str(folder), args.workers)
        peaks = ", ".join(f"{m:.0f}" for m in dask["worker_peak_rss_mb"])
        print(
            f"dask, {args.workers} workers: ingest {dask['ingest_seconds']:.1f} s, fingerprints "
            f"{dask['fingerprint_seconds']:.2f} s, client peak {dask['client_peak_rss_mb']:.0f} "
            f"MiB, worker peaks {peaks} MiB"
        )
    if single["digest"] != dask["digest"]:
        raise SystemExit("the engines disagree: different activity or fingerprints")
    results = {
        "records": args.records,
        "archive": made,
        "single_process": single,
        "dask": {**dask, "workers": args.workers},
        "speedup": single["ingest_seconds"] / dask["ingest_seconds"],
        "us_per_record_single_wall": 1e6 * single["ingest_seconds"] / args.records,
        "us_per_record_single_cpu": 1e6 * single["ingest_client_cpu_seconds"] / args.records,
        "us_per_record_dask_wall": 1e6 * dask["ingest_seconds"] / args.records,
        "us_per_record_worker_cpu": 1e6 * dask["ingest_worker_cpu_seconds"] / args.records,
        "us_per_record_client_cpu": 1e6 * dask["ingest_client_cpu_seconds"] / args.records,
        "load_average_after": Path("/proc/loadavg").read_text().split()[:3],
    }
    path = write_results(f"bench_distributed_{args.records // 1_000_000}M", results)
    print(f"speedup {results['speedup']:.2f}x; results in {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
