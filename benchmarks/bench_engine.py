"""The fingerprint engine end to end, against a straightforward pandas implementation.

10,000,000 synthetic IPFIX CSV flow records (the synthetic fleet generator, 200 devices of 10
kinds, hourly units; written once to a temporary file, deleted after) go through

1. ingest: IPFIX CSV → per-unit activity (`read_ipfix_csv`);
2. fingerprints: the exporter over every device's timeline (`export_fingerprints`);
3. evaluation: time-ordered split, enrolment, closed-set scoring of every test window against
   every reference, leave-one-type-out open set and recurrence statistics;
4. the same evaluation with the default intensity, sized (the same windows: the exporter's
   decisions do not depend on intensity), with the report's anchor baselines (1-NN over log
   packets per service, the majority type), whose pipeline (1 + 2 + 4) has to meet the same
   limits; and once more with relative intensity, whose time is the sized evaluation's
   baseline in the same process.

The baseline does the same with pandas: `read_csv` + `groupby` for the activity, a per-device
pivot and a unit-by-unit exporter loop, and a nearest-reference search comparing each test
window with the references' DataFrame.
Its exporter and search are too slow for the whole fleet, so they run on a subsample (one device
of every kind; 60 of their test windows are identified) and their times are scaled: the exporter
by devices, the search by the ratio of (test windows × references). The baseline's fingerprints
must equal ours on the subsample, or the benchmark fails. Each side runs in its own process, so
the peak RSS (VmHWM) is its own.

    .venv/bin/python -m benchmarks.bench_engine [--records 10000000] [--sample-devices 10]
"""

from __future__ import annotations

import argparse
import math
import os
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.common import in_child, peak_rss_mb, synthetic_flows_csv, write_results

UNIT = 3600.0
DEVICES = 200
TIME_LIMIT_S = 60.0
RSS_LIMIT_MB = 4096.0


def _config() -> Any:
    from controller.engine.exporter import ExporterConfig

    # Hourly units: converge within a day at the earliest, export at the latest after a week.
    return ExporterConfig(granularity=None, tau=0.9, k=3, n_min=24, n_max=168)


def _fleet_labels() -> dict[str, str]:
    from controller.ingest.synth import load_profiles, make_fleet

    return {d.mac: d.profile.name for d in make_fleet(load_profiles(), DEVICES)}


# --- ours -----------------------------------------------------------------------------------------


def _ours(path: str, sample: list[str]) -> dict[str, Any]:
    import pyarrow.csv  # noqa: F401  (imported before the clock starts, as pandas is)

    from controller.base.macs import mac_to_int
    from controller.engine.anchors import anchor_results
    from controller.engine.catalogue import Catalogue
    from controller.engine.evaluate import closed_set, open_set, split_rows
    from controller.engine.exporter import export_fingerprints
    from controller.engine.identify import enroll, with_thresholds
    from controller.engine.recurrence import recurrence
    from controller.engine.representation import DEFAULT_INTENSITY
    from controller.ingest.ipfix_csv import read_ipfix_csv

    labels = _fleet_labels()
    catalogue = Catalogue.default()
    catalogue.tables.lookup(6, 1, 1)
    devices = np.array(sorted(mac_to_int(m) for m in labels), dtype=np.uint64)
    stages: dict[str, float] = {}

    start = time.perf_counter()
    activity, stats = read_ipfix_csv(Path(path), catalogue, UNIT, devices)
    stages["ingest"] = time.perf_counter() - start

    start = time.perf_counter()
    fps = export_fingerprints(activity, _config())
    stages["fingerprints"] = time.perf_counter() - start

    start = time.perf_counter()
    split = split_rows(fps, labels, None, "time", 0.5)
    train, test = fps.select(split.train), fps.select(split.test)
    truth = [labels[d] for d in test.device_names]
    # As in `evaluate`: one leave-one-out pass chooses θ and serves the open set, and one
    # scoring serves the closed set and every open-set fold.
    refs, own = with_thresholds(enroll(train, labels, mode="nearest", theta=0.0), 5.0)
    closed = closed_set(refs, test, truth)
    opened = open_set(refs, test, truth, 5.0, None, closed.scores, own=own)
    rec = recurrence(fps).summary()
    stages["evaluation"] = time.perf_counter() - start

    start = time.perf_counter()
    weighed = fps.with_intensity(DEFAULT_INTENSITY)
    train_i, test_i = weighed.select(split.train), weighed.select(split.test)
    refs_i, own_i = with_thresholds(enroll(train_i, labels, mode="nearest", theta=0.0), 5.0)
    closed_i = closed_set(refs_i, test_i, truth)
    opened_i = open_set(refs_i, test_i, truth, 5.0, None, closed_i.scores, own=own_i)
    anchors = anchor_results(train_i, [labels[d] for d in train_i.device_names], test_i, truth)
    stages["evaluation_intensity"] = time.perf_counter() - start

    start = time.perf_counter()
    relative = fps.with_intensity("relative")
    train_r, test_r = relative.select(split.train), relative.select(split.test)
    refs_r, own_r = with_thresholds(enroll(train_r, labels, mode="nearest", theta=0.0), 5.0)
    closed_r = closed_set(refs_r, test_r, truth)
    open_set(refs_r, test_r, truth, 5.0, None, closed_r.scores, own=own_r)
    stages["evaluation_relative"] = time.perf_counter() - start

    chosen = set(sample)
    rows = [i for i, d in enumerate(fps.device_names) if d in chosen]
    return {
        "stages": stages,
        "total_seconds": stages["ingest"] + stages["fingerprints"] + stages["evaluation"],
        "total_seconds_intensity": stages["ingest"]
        + stages["fingerprints"]
        + stages["evaluation_intensity"],
        "peak_rss_mb": peak_rss_mb(),
        "records": stats.records,
        "activity_rows": len(activity),
        "fingerprints": len(fps),
        "train": len(train),
        "test": len(test),
        "accuracy": closed.accuracy,
        "macro_f1": closed.macro_f1,
        "open_set_auroc": opened.auroc,
        "unknown_detection": opened.unknown_detection,
        "intensity": {
            "representation": weighed.representation,
            "accuracy": closed_i.accuracy,
            "relative_accuracy": closed_r.accuracy,
            "seconds_over_relative": stages["evaluation_intensity"] / stages["evaluation_relative"],
            "macro_f1": closed_i.macro_f1,
            "open_set_auroc": opened_i.auroc,
            "open_set_auroc_by_score": dict(opened_i.auroc_by_score),
            "unknown_detection": opened_i.unknown_detection,
            "anchors": {a.name: a.accuracy for a in anchors},
        },
        "recurrence": rec,
        "sample": _canonical(fps.select(np.array(rows, dtype=np.int64))),
    }


def _canonical(fps: Any) -> list[tuple[str, int, int, tuple[tuple[str, float], ...]]]:
    return sorted(
        (fp.device, fp.start_unit, fp.end_unit, tuple(sorted(fp.as_dict().items()))) for fp in fps
    )


# --- the pandas baseline --------------------------------------------------------------------------


def _pandas(path: str, sample: list[str], test_windows: int) -> dict[str, Any]:
    import pandas as pd

    from controller.base.macs import int_to_mac
    from controller.engine.catalogue import Catalogue

    labels = _fleet_labels()
    config = _config()
    catalogue = Catalogue.default()
    catalogue.tables.lookup(6, 1, 1)
    stages: dict[str, float] = {}

    # 1. activity: read in chunks, attribute both directions with the same catalogue lookup,
    #    group by per chunk and once more over the chunks.
    start = time.perf_counter()
    known = {int(m.replace(":", ""), 16) for m in labels}
    parts = []
    ingested_records = 0
    for df in pd.read_csv(path, chunksize=1_000_000):
        src = df["sourceMacAddress"].str.replace(":", "").apply(int, base=16)
        dst = df["destinationMacAddress"].str.replace(":", "").apply(int, base=16)
        unit = np.floor(df["flowStartMilliseconds"] / 1000.0 / UNIT).astype(np.int64)
        proto = df["protocolIdentifier"].to_numpy(np.int64)
        sport = df["sourceTransportPort"].to_numpy(np.int64)
        dport = df["destinationTransportPort"].to_numpy(np.int64)
        forward = pd.DataFrame(
            {
                "mac": src,
                "unit": unit,
                "service": catalogue.tables.lookup_many(proto, sport, dport),
                "packets": df["packetDeltaCount"],
            }
        )
        back = (df["reversePacketDeltaCount"] > 0).to_numpy()
        reverse = pd.DataFrame(
            {
                "mac": dst[back],
                "unit": unit[back],
                "service": catalogue.tables.lookup_many(proto[back], dport[back], sport[back]),
                "packets": df["reversePacketDeltaCount"][back],
            }
        )
        both = pd.concat([forward, reverse])
        both = both[both["mac"].isin(known)]
        parts.append(both.groupby(["mac", "unit", "service"], as_index=False)["packets"].sum())
        ingested_records += len(df)
    activity = pd.concat(parts).groupby(["mac", "unit", "service"], as_index=False)["packets"].sum()
    stages["ingest"] = time.perf_counter() - start
    del parts

    # 2. fingerprints on the sample: per-device pivot, then the exporter unit by unit.
    start = time.perf_counter()
    names = catalogue.names
    active = activity[activity["packets"] >= config.threshold]
    exported: list[tuple[str, int, int, dict[str, float]]] = []
    end = int(activity["unit"].max()) + 1
    for mac_int, rows in active.groupby("mac"):
        mac = int_to_mac(int(mac_int))
        if mac not in sample:
            continue
        usage = rows.pivot_table(index="unit", columns="service", values="packets", aggfunc="size")
        first = int(usage.index.min())
        usage = usage.reindex(range(first, end)).notna()
        exported.extend(_pandas_exporter(mac, usage, first, config, names))
    stages["fingerprints"] = time.perf_counter() - start

    # 3. evaluation on the sample: time split per device, nearest reference by Series ops.
    start = time.perf_counter()
    by_device: dict[str, list[tuple[str, int, int, dict[str, float]]]] = {}
    for fp in exported:
        by_device.setdefault(fp[0], []).append(fp)
    train, test = [], []
    for fps in by_device.values():
        fps.sort(key=lambda f: f[1])
        n_train = min(len(fps) - 1, max(1, math.ceil(0.5 * len(fps)))) if len(fps) > 1 else 1
        train.extend(fps[:n_train])
        test.extend(fps[n_train:])
    searched = test[:: max(1, math.ceil(len(test) / test_windows))]
    references = pd.DataFrame([f[3] for f in train] + [f[3] for f in searched]).fillna(0.0)
    references = references.iloc[: len(train)]
    kinds = pd.Series([labels[f[0]] for f in train])
    correct = 0
    for fp in searched:
        # One test window against every reference at once: clip gives min and max per cell.
        observed = pd.Series(fp[3], dtype=float).reindex(references.columns, fill_value=0.0)
        mins = references.clip(upper=observed, axis=1).sum(axis=1)
        maxs = references.clip(lower=observed, axis=1).sum(axis=1)
        similarity = (mins / maxs).fillna(1.0)
        correct += kinds[similarity.idxmax()] == labels[fp[0]]
    stages["evaluation"] = time.perf_counter() - start

    return {
        "stages": stages,
        "peak_rss_mb": peak_rss_mb(),
        "ingested_records": ingested_records,
        "activity_rows": len(activity),
        "fingerprints": len(exported),
        "train": len(train),
        "test": len(test),
        "searched": len(searched),
        "accuracy": correct / len(searched) if searched else math.nan,
        "sample": sorted((mac, s, e, tuple(sorted(w.items()))) for mac, s, e, w in exported),
    }


def _pandas_exporter(
    mac: str, usage: Any, first: int, config: Any, names: Sequence[str]
) -> list[tuple[str, int, int, dict[str, float]]]:
    """The exporter written plainly: one unit at a time, counts as a pandas Series."""
    g = config.granularity

    def levels(counts: Any, n: int, scale: int) -> Any:
        # Integer numerators over a common denominator, as the engine compares them.
        return counts * scale if g is None else -((-counts * g) // n)

    out = []
    zero = usage.iloc[0].astype(np.int64) * 0
    counts, previous = zero.copy(), None
    n = streak = 0
    start = first
    for offset, (_, row) in enumerate(usage.iterrows()):
        counts = counts + row.astype(np.int64)
        n += 1
        if previous is not None:
            a, b = levels(counts, n, n - 1), levels(previous, n - 1, n)
            mins, maxs = np.minimum(a, b).sum(), np.maximum(a, b).sum()
            streak = streak + 1 if (mins / maxs if maxs else 1.0) >= config.tau else 0
        previous = counts.copy()
        if (n >= config.n_min and streak >= config.k) or n >= config.n_max:
            if counts.sum() > 0:
                weights = counts / n if g is None else -((-counts * g) // n) / g
                out.append(
                    (
                        mac,
                        start,
                        first + offset + 1,
                        {names[int(s)]: float(v) for s, v in weights.items() if v > 0},
                    )
                )
            counts, previous = zero.copy(), None
            n = streak = 0
            start = first + offset + 1
    return out


# --- driver ---------------------------------------------------------------------------------------


def _sample(devices: int) -> list[str]:
    """`devices` devices spread over every kind (the fleet assigns kinds round-robin)."""
    macs = sorted(_fleet_labels())
    return macs[:devices]


def main() -> int:
    """Run both sides, print the numbers and write the JSON results."""
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--records", type=int, default=10_000_000)
    parser.add_argument("--sample-devices", type=int, default=10)
    parser.add_argument(
        "--pandas-test-windows",
        type=int,
        default=60,
        help="sample test windows the pandas search identifies (its time is scaled)",
    )
    parser.add_argument("--seed", type=int, default=7)
    args = parser.parse_args()

    sample = _sample(args.sample_devices)
    with tempfile.TemporaryDirectory(prefix="bench-engine-") as tmp:
        path = Path(tmp) / "flows.csv"
        print(f"writing {args.records:,} synthetic flow records ...", flush=True)
        _, made = synthetic_flows_csv(path, args.records, args.seed, DEVICES, UNIT)
        print(f"  {made['file_mb']:.0f} MB in {made['write_seconds']:.1f} s", flush=True)
        ours = in_child(_ours, str(path), sample)
        print(f"ours: {ours['total_seconds']:.1f} s, peak {ours['peak_rss_mb']:.0f} MB", flush=True)
        baseline = in_child(_pandas, str(path), sample, args.pandas_test_windows)

    if baseline.pop("sample") != ours.pop("sample"):
        raise SystemExit("the pandas baseline and the engine disagree on the sample's fingerprints")
    scale = {
        "ingest": args.records / baseline["ingested_records"],
        "fingerprints": DEVICES / args.sample_devices,
        "evaluation": (ours["test"] * ours["train"])
        / max(1, baseline["searched"] * baseline["train"]),
    }
    scaled = {k: baseline["stages"][k] * scale[k] for k in scale}
    ratios = {k: scaled[k] / ours["stages"][k] for k in scale}
    result = {
        "cpu_count": os.cpu_count(),
        "records": args.records,
        "input": made,
        "exporter": _config().to_json(),
        "ours": ours,
        "pandas": {**baseline, "scale": scale, "scaled_stages": scaled},
        "speedup": ratios,
        "speedup_total": sum(scaled.values()) / ours["total_seconds"],
        "within_limits": max(ours["total_seconds"], ours["total_seconds_intensity"]) <= TIME_LIMIT_S
        and ours["peak_rss_mb"] <= RSS_LIMIT_MB,
        "limits": {"seconds": TIME_LIMIT_S, "peak_rss_mb": RSS_LIMIT_MB},
        "notes": (
            f"pandas ingest read all {baseline['ingested_records']:,} records; its exporter ran "
            f"on {args.sample_devices} of {DEVICES} devices (scaled by "
            f"devices) and its search identified {baseline['searched']} test windows against "
            f"{baseline['train']} references (scaled by window pairs)"
        ),
    }
    results = write_results("bench_engine", result)

    print(f"{'stage':14s} {'ours s':>9s} {'pandas s (scaled)':>18s} {'speedup':>8s}")
    for stage in scale:
        print(
            f"{stage:14s} {ours['stages'][stage]:9.2f} {scaled[stage]:18.1f} {ratios[stage]:7.1f}x"
        )
    print(
        f"{'total':14s} {ours['total_seconds']:9.2f} {sum(scaled.values()):18.1f} "
        f"{result['speedup_total']:7.1f}x"
    )
    print(
        f"with {ours['intensity']['representation']}: evaluation "
        f"{ours['stages']['evaluation_intensity']:.2f} s "
        f"({ours['intensity']['seconds_over_relative']:.2f}x relative intensity's "
        f"{ours['stages']['evaluation_relative']:.2f} s), pipeline "
        f"{ours['total_seconds_intensity']:.2f} s, accuracy {ours['intensity']['accuracy']:.3f} "
        f"(relative {ours['intensity']['relative_accuracy']:.3f})"
    )
    print(
        f"peak RSS: ours {ours['peak_rss_mb']:.0f} MB, pandas {baseline['peak_rss_mb']:.0f} MB; "
        f"{ours['fingerprints']:,} fingerprints, closed-set accuracy {ours['accuracy']:.3f}"
    )
    print(f"within {TIME_LIMIT_S:.0f} s and {RSS_LIMIT_MB:.0f} MB: {result['within_limits']}")
    print(f"results in {results}")
    return 0 if result["within_limits"] else 1


if __name__ == "__main__":
    raise SystemExit(main())
