"""Offline ingestion throughput and memory, each against a straightforward baseline.

(a) IPFIX CSV: 10,000,000 synthetic flow records (written once to a temporary file, deleted
    after) → per-unit activity with `read_ipfix_csv`, against pandas `read_csv` + `groupby` doing
    the same attribution (the same vectorised catalogue lookup, so only the data path differs).
(b) pcap: a synthetic capture of ≥ 1,000,000 packets (and the IoT Sentinel captures when the
    shared data is present) with `read_pcap`, against a dpkt loop that parses each packet and
    looks its service up one by one.

Each measurement runs in its own process so its peak RSS (VmHWM) is its own; both sides must
produce the same activity, or the benchmark fails.

    .venv/bin/python -m benchmarks.bench_ingest [--records 10000000] [--packets 1000000]
"""

from __future__ import annotations

import argparse
import hashlib
import os
import struct
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.common import data_dir, in_child, peak_rss_mb, synthetic_flows_csv, write_results

UNIT = 3600.0


def _digest(rows: list[tuple[str, int, str, int, int]]) -> str:
    rows.sort()
    return hashlib.sha256(repr(rows).encode()).hexdigest()[:16]


def _measure_ours(read: Callable[[], tuple[Any, Any]]) -> tuple[dict[str, Any], int, int]:
    """Time one of our readers: (timings, peak RSS and activity digest; records read; rows)."""
    start = time.perf_counter()
    cpu = time.process_time()
    table, stats = read()
    seconds = time.perf_counter() - start
    cpu_seconds = time.process_time() - cpu
    rows = [(r.device, r.unit, r.service, r.packets, r.bytes) for r in table.records()]
    timings = {
        "seconds": seconds,
        "cpu_seconds": cpu_seconds,
        "peak_rss_mb": peak_rss_mb(),
        "digest": _digest(rows),
    }
    return timings, int(stats.records), len(rows)


# --- (a) IPFIX CSV --------------------------------------------------------------------------------


def _ours_csv(path: str, macs: list[int]) -> dict[str, Any]:
    import pyarrow.csv  # noqa: F401  (imported before the clock starts, as pandas is)

    from controller.engine.catalogue import Catalogue
    from controller.ingest.ipfix_csv import read_ipfix_csv

    catalogue = Catalogue.default()
    # Build the lookup maps outside the measurement, for both sides.
    catalogue.tables.lookup(6, 1, 1)
    devices = np.array(sorted(macs), dtype=np.uint64)
    result, records, rows = _measure_ours(
        lambda: read_ipfix_csv(Path(path), catalogue, UNIT, devices)
    )
    return result | {"records": records, "activity_rows": rows}


def _pandas_csv(path: str, macs: list[int]) -> dict[str, Any]:
    import pandas as pd

    from controller.base.macs import int_to_mac
    from controller.engine.catalogue import Catalogue

    catalogue = Catalogue.default()
    catalogue.tables.lookup(6, 1, 1)
    start = time.perf_counter()
    cpu = time.process_time()
    df = pd.read_csv(path)
    df["protocolIdentifier"] = df["protocolIdentifier"].fillna(-1).astype("int64")
    for column in ("sourceTransportPort", "destinationTransportPort"):
        df[column] = df[column].fillna(0).astype("int64")
    df["unit"] = (df["flowStartMilliseconds"] // int(UNIT * 1000)).astype("int64")

    def direction(rows: Any, mac: str, sport: str, dport: str, packets: str, octets: str) -> Any:
        """One direction's activity records, as `batch_to_activity` attributes them."""
        service = catalogue.tables.lookup_many(rows["protocolIdentifier"], rows[sport], rows[dport])
        return pd.DataFrame(
            {
                "device": rows[mac].str.lower(),
                "unit": rows["unit"],
                "service": service,
                "packets": rows[packets],
                "bytes": rows[octets],
            }
        )

    src, dst = "sourceTransportPort", "destinationTransportPort"
    forward = direction(df, "sourceMacAddress", src, dst, "packetDeltaCount", "octetDeltaCount")
    back = df[df["reversePacketDeltaCount"] > 0]
    reverse = direction(
        back,
        "destinationMacAddress",
        dst,
        src,
        "reversePacketDeltaCount",
        "reverseOctetDeltaCount",
    )
    both = pd.concat([forward, reverse], ignore_index=True)
    wanted = {int_to_mac(m) for m in macs}
    both = both[both["device"].isin(wanted)]
    grouped = both.groupby(["device", "unit", "service"], sort=True).sum().reset_index()
    seconds = time.perf_counter() - start
    cpu_seconds = time.process_time() - cpu
    names = catalogue.names
    rows = [
        (d, int(u), names[int(s)], int(p), int(b))
        for d, u, s, p, b in grouped.itertuples(index=False)
    ]
    return {
        "seconds": seconds,
        "cpu_seconds": cpu_seconds,
        "peak_rss_mb": peak_rss_mb(),
        "records": len(df),
        "activity_rows": len(rows),
        "digest": _digest(rows),
    }


# --- (b) pcap -------------------------------------------------------------------------------------


def _ours_pcap(path: str) -> dict[str, Any]:
    from controller.engine.catalogue import Catalogue
    from controller.ingest.pcap import read_pcap

    catalogue = Catalogue.default()
    catalogue.tables.lookup(6, 1, 1)
    result, packets, _ = _measure_ours(lambda: read_pcap(Path(path), catalogue, UNIT))
    return result | {
        "packets": packets,
        "packets_per_second": packets / result["seconds"],
        "packets_per_cpu_second": packets / result["cpu_seconds"],
    }


def _dpkt_pcap(path: str) -> dict[str, Any]:
    import dpkt

    from controller.engine.catalogue import Catalogue

    catalogue = Catalogue.default()
    catalogue.tables.lookup(6, 1, 1)
    counts: dict[tuple[str, int, int], list[int]] = {}
    packets = 0
    start = time.perf_counter()
    cpu = time.process_time()
    with open(path, "rb") as handle:
        for ts, buf in dpkt.pcap.Reader(handle):
            packets += 1
            if len(buf) < 14:
                continue
            eth = dpkt.ethernet.Ethernet(buf)
            ip = eth.data
            service = 0
            if isinstance(ip, dpkt.ip.IP | dpkt.ip6.IP6):
                proto = ip.p if isinstance(ip, dpkt.ip.IP) else ip.nxt
                l4 = ip.data
                if isinstance(l4, dpkt.tcp.TCP | dpkt.udp.UDP):
                    service = catalogue.tables.lookup(proto, l4.sport, l4.dport)
                elif proto not in (6, 17):
                    service = catalogue.tables.lookup(proto, 0, 0)
            key = (":".join(f"{b:02x}" for b in eth.src), int(ts // UNIT), service)
            cell = counts.setdefault(key, [0, 0])
            cell[0] += 1
            cell[1] += len(buf)
    seconds = time.perf_counter() - start
    cpu_seconds = time.process_time() - cpu
    names = catalogue.names
    rows = [(d, u, names[s], p, b) for (d, u, s), (p, b) in counts.items()]
    return {
        "seconds": seconds,
        "cpu_seconds": cpu_seconds,
        "peak_rss_mb": peak_rss_mb(),
        "packets": packets,
        "packets_per_second": packets / seconds,
        "packets_per_cpu_second": packets / cpu_seconds,
        "digest": _digest(rows),
    }


def _dpkt_captures(paths: list[str]) -> dict[str, Any]:
    results = [_dpkt_pcap(p) for p in paths]
    return _merge(results)


def _ours_captures(paths: list[str]) -> dict[str, Any]:
    results = [_ours_pcap(p) for p in paths]
    return _merge(results)


def _merge(results: list[dict[str, Any]]) -> dict[str, Any]:
    seconds = sum(r["seconds"] for r in results)
    cpu_seconds = sum(r["cpu_seconds"] for r in results)
    packets = sum(r["packets"] for r in results)
    return {
        "seconds": seconds,
        "cpu_seconds": cpu_seconds,
        "packets_per_cpu_second": packets / cpu_seconds,
        "peak_rss_mb": max(r["peak_rss_mb"] for r in results),
        "packets": packets,
        "packets_per_second": packets / seconds,
        "digest": hashlib.sha256("".join(r["digest"] for r in results).encode()).hexdigest()[:16],
    }


def _synthetic_pcap(path: Path, packets: int, seed: int) -> None:
    """A capture of `packets` frames: TCP, UDP, ICMP, IPv6 and ARP from 50 devices, one hour
    per 100,000 frames."""
    from scapy.layers.inet import ICMP, IP, TCP, UDP
    from scapy.layers.inet6 import IPv6
    from scapy.layers.l2 import ARP, Dot1Q, Ether
    from scapy.packet import Raw

    templates = [
        bytes(Ether() / IP() / TCP(sport=50000, dport=443) / Raw(b"x" * 60)),
        bytes(Ether() / IP() / TCP(sport=80, dport=40000) / Raw(b"x" * 400)),
        bytes(Ether() / IP() / UDP(sport=40000, dport=53) / Raw(b"x" * 30)),
        bytes(Ether() / IP() / UDP(sport=5353, dport=5353) / Raw(b"x" * 100)),
        bytes(Ether() / IP() / UDP(sport=123, dport=123) / Raw(b"x" * 48)),
        bytes(Ether() / IP() / ICMP() / Raw(b"x" * 56)),
        bytes(Ether() / IPv6() / UDP(sport=40000, dport=1900) / Raw(b"x" * 120)),
        bytes(Ether() / Dot1Q(vlan=3) / IP() / TCP(sport=51000, dport=8883)),
        bytes(Ether() / ARP()),
    ]
    rng = np.random.default_rng(seed)
    which = rng.integers(0, len(templates), packets)
    device = rng.integers(0, 50, packets)
    with path.open("wb") as handle:
        handle.write(struct.pack("<IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, 65535, 1))
        chunk: list[bytes] = []
        for i, (t, d) in enumerate(zip(which.tolist(), device.tolist(), strict=True)):
            frame = templates[t]
            mac = bytes((0x02, 0, 0, 0, 0, d + 1))
            frame = b"\xff" * 6 + mac + frame[12:]
            seconds = 1_490_000_000 + i * UNIT / 100_000
            sec = int(seconds)
            chunk.append(
                struct.pack("<IIII", sec, int((seconds - sec) * 1e6), len(frame), len(frame))
                + frame
            )
            if len(chunk) == 100_000:
                handle.write(b"".join(chunk))
                chunk = []
        handle.write(b"".join(chunk))


# --- driver ---------------------------------------------------------------------------------------


def _baseline(
    entry: dict[str, Any], name: str, func: Callable[..., dict[str, Any]], *args: Any
) -> dict[str, Any]:
    """Run a baseline in its own process, check that it found the same activity as ours, and
    add it and the time ratios to `entry`."""
    ours = entry["ours"]
    base = in_child(func, *args)
    if base["digest"] != ours["digest"]:
        raise RuntimeError(f"the {name} baseline and ours disagree on the activity")
    entry[name] = base
    entry["speedup"] = base["seconds"] / ours["seconds"]
    entry["cpu_ratio"] = base["cpu_seconds"] / ours["cpu_seconds"]
    return base


def main() -> int:
    """Run both benchmarks, print the numbers and write the JSON results."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--records", type=int, default=10_000_000)
    parser.add_argument("--packets", type=int, default=1_000_000)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--skip-baselines", action="store_true")
    args = parser.parse_args()
    results: dict[str, Any] = {"cpu_count": os.cpu_count()}

    with tempfile.TemporaryDirectory(prefix="svcfp-bench-ingest-") as tmp:
        csv_path = Path(tmp) / "flows.csv"
        macs, made = synthetic_flows_csv(csv_path, args.records, args.seed, 200, UNIT)
        print(
            f"IPFIX CSV: {args.records:,} records, {made['file_mb']:.0f} MB "
            f"(generated in {made['generate_seconds']:.1f} s, "
            f"written in {made['write_seconds']:.1f} s)",
            flush=True,
        )
        ours = in_child(_ours_csv, str(csv_path), macs)
        print(
            f"  read_ipfix_csv: {ours['seconds']:.1f} s ({ours['cpu_seconds']:.1f} s CPU), "
            f"peak RSS {ours['peak_rss_mb']:.0f} MB, "
            f"{ours['records'] / ours['seconds']:,.0f} records/s",
            flush=True,
        )
        entry: dict[str, Any] = {"input": made, "records": args.records, "ours": ours}
        if not args.skip_baselines:
            base = _baseline(entry, "pandas", _pandas_csv, str(csv_path), macs)
            entry["memory_ratio"] = base["peak_rss_mb"] / ours["peak_rss_mb"]
            print(
                f"  pandas group-by: {base['seconds']:.1f} s ({base['cpu_seconds']:.1f} s CPU), "
                f"peak RSS {base['peak_rss_mb']:.0f} MB -> {entry['speedup']:.1f}x faster "
                f"({entry['cpu_ratio']:.1f}x less CPU), {entry['memory_ratio']:.1f}x less memory",
                flush=True,
            )
        results["ipfix_csv"] = entry
        csv_path.unlink()

        pcap_path = Path(tmp) / "synthetic.pcap"
        _synthetic_pcap(pcap_path, args.packets, args.seed)
        ours = in_child(_ours_pcap, str(pcap_path))
        print(
            f"pcap: {args.packets:,} packets: read_pcap {ours['packets_per_second']:,.0f} "
            f"packets/s ({ours['packets_per_cpu_second']:,.0f} per CPU second; "
            f"{ours['seconds']:.2f} s, peak RSS {ours['peak_rss_mb']:.0f} MB)",
            flush=True,
        )
        entry = {"packets": args.packets, "file_mb": pcap_path.stat().st_size / 2**20, "ours": ours}
        if not args.skip_baselines:
            base = _baseline(entry, "dpkt", _dpkt_pcap, str(pcap_path))
            print(
                f"  dpkt loop: {base['packets_per_second']:,.0f} packets/s "
                f"({base['packets_per_cpu_second']:,.0f} per CPU second) -> "
                f"{entry['speedup']:.1f}x faster",
                flush=True,
            )
        results["pcap_synthetic"] = entry

    captures = sorted(str(p) for p in (data_dir() / "iot-sentinel").rglob("*.pcap"))
    if captures:
        ours = in_child(_ours_captures, captures)
        entry = {"files": len(captures), "ours": ours}
        line = (
            f"IoT Sentinel: {len(captures)} captures, {ours['packets']:,} packets: read_pcap "
            f"{ours['packets_per_second']:,.0f} packets/s"
        )
        if not args.skip_baselines:
            base = _baseline(entry, "dpkt", _dpkt_captures, captures)
            line += f", dpkt {base['packets_per_second']:,.0f} packets/s -> {entry['speedup']:.1f}x"
        print(line, flush=True)
        results["pcap_iot_sentinel"] = entry

    print(f"results: {write_results('bench_ingest', results)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
