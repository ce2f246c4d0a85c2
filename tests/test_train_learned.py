"""The train-learned catalogue: learned per split from the training traffic alone.

A port only the test data uses must not earn a service of its own (that is what learning the
catalogue from all the data does), and no window that mixes training and test units may enrol
or be tested.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest

from controller.engine.activity import ActivityTable
from controller.engine.catalogue import Catalogue
from controller.engine.evaluate import (
    Dataset,
    EvalSettings,
    SplitRows,
    evaluate,
    make_windows,
    split_rows,
    train_learned,
)
from controller.engine.exporter import ExporterConfig
from controller.engine.fingerprints import Fingerprint, FingerprintSet
from controller.engine.learned import FlowCells, for_granularity
from controller.engine.services import TCP, UDP
from svcfp.cli import main

Record = tuple[int, int, int, int, int, int, int, int]


def client_flows(track: int, units: range, proto: int, port: int) -> list[Record]:
    """One flow per unit from a fresh ephemeral port to `port` (4 packets, 400 bytes)."""
    return [(track, u, proto, 50000 + u, port, 1, 4, 400) for u in units]


def cells(tracks: tuple[str, ...], records: list[Record]) -> FlowCells:
    return FlowCells.from_records(tracks, 1.0, list(zip(*records, strict=True)))


# Type A uses tcp/8001, type B udp/9001; their later captures (g2) also use tcp/7777, a port the
# earlier, training captures (g1) never use.
CAPTURE_TRACKS = ("a#g1", "a#g2", "b#g1", "b#g2")
CAPTURE_RECORDS = [
    *client_flows(0, range(0, 10), TCP, 8001),
    *client_flows(1, range(100, 110), TCP, 8001),
    *client_flows(1, range(100, 110), TCP, 7777),
    *client_flows(2, range(0, 10), UDP, 9001),
    *client_flows(3, range(100, 110), UDP, 9001),
    *client_flows(3, range(100, 110), TCP, 7777),
]
CATCH_ALLS = [
    "tcp/1-1023",
    "tcp/1024-49151",
    "tcp/49152-65535",
    "udp/1-1023",
    "udp/1024-49151",
    "udp/49152-65535",
    "icmp",
    "icmpv6",
    "ip/other",
]
LABELS = {"a#g1": "A", "a#g2": "A", "b#g1": "B", "b#g2": "B"}
GROUPS = {track: track.split("#")[1] for track in CAPTURE_TRACKS}
CAPTURE_SETTINGS = EvalSettings(
    granularities=(None,),
    intensities=(None,),
    windows="whole",
    captures=True,
    split="group",
    modes=("nearest",),
    prefixes=(),
    reference_prefixes=(),
    catalogues=("built-in", "train-learned"),
)


def capture_dataset() -> Dataset:
    flows = cells(CAPTURE_TRACKS, CAPTURE_RECORDS)
    return Dataset(flows.activity(Catalogue.default()), LABELS, GROUPS, "constructed", flows)


def test_test_only_port_stays_out_of_the_catalogue() -> None:
    dataset = capture_dataset()
    assert dataset.flows is not None
    config = ExporterConfig(granularity=None)
    fps = make_windows(dataset.activity, config, "whole", True)
    split = split_rows(fps, LABELS, GROUPS, "group", 0.5)
    assert [fps.device_names[i] for i in split.train] == ["a#g1", "b#g1"]
    learned = train_learned(dataset.flows, 1.0, fps, split)
    assert learned.cut == {"a#g1": math.inf, "b#g1": math.inf, "a#g2": -math.inf, "b#g2": -math.inf}
    assert learned.catalogue.names == [
        "other",
        "tcp/8001",
        "udp/9001",
        *CATCH_ALLS,
    ]
    # Learned from all the data, the test-only port earns its own service.
    everything = for_granularity("learned", observed=dataset.flows.usage())
    assert everything.names == ["other", "tcp/7777", "tcp/8001", "udp/9001", *CATCH_ALLS]
    # The test captures' tcp/7777 traffic is unlisted: the catch-all of its client's dynamic
    # source port counts it.
    test_activity = learned.activity.select(devices=["a#g2"])
    assert test_activity.used_services() == ("tcp/8001", "tcp/49152-65535")
    assert int(test_activity.packets.sum()) == 80


def test_evaluation_reports_both_catalogues_with_exact_outcomes() -> None:
    metrics = evaluate(capture_dataset(), CAPTURE_SETTINGS)
    assert [(r.representation, r.catalogue) for r in metrics.results] == [
        ("prevalence", "built-in"),
        ("prevalence", "train-learned"),
    ]
    learned = metrics.results[1]
    assert learned.label == "prevalence, nearest, unit 1 s, train-learned catalogue"
    assert learned.n_train == 2
    assert learned.closed_set.n_test == 2
    assert learned.closed_set.accuracy == 1.0
    expected = train_learned(
        capture_dataset().flows,  # type: ignore[arg-type]
        1.0,
        make_windows(capture_dataset().activity, ExporterConfig(granularity=None), "whole", True),
        SplitRows(np.array([0, 2]), np.array([1, 3])),
    )
    assert learned.services == expected.catalogue.max_id
    assert metrics.to_json()["settings"]["catalogues"] == ["built-in", "train-learned"]


def window(device: str, start: int, end: int) -> Fingerprint:
    return Fingerprint(device, start, end, 1, ("tcp/8001",), np.ones(1), True, 1.0)


def test_time_split_learns_before_the_cut_and_drops_windows_across_it() -> None:
    # One device: tcp/8001 throughout, tcp/6666 in two training units, tcp/7777 only after
    # unit 20, where its test windows begin.
    flows = cells(
        ("d",),
        [
            *client_flows(0, range(0, 40), TCP, 8001),
            *client_flows(0, range(5, 16, 10), TCP, 6666),
            *client_flows(0, range(25, 40), TCP, 7777),
        ],
    )
    fps = FingerprintSet.from_fingerprints([window("d", s, s + 10) for s in (0, 10, 20, 30)])
    learned = train_learned(flows, 1.0, fps, split_rows(fps, {"d": "D"}, None, "time", 0.5))
    assert learned.cut == {"d": 20.0}
    assert "tcp/6666" in learned.catalogue.names
    assert "tcp/7777" not in learned.catalogue.names
    redrawn = FingerprintSet.from_fingerprints(
        [window("d", 0, 10), window("d", 15, 25), window("d", 25, 35), window("d", 10, 20)]
    )
    split = learned.split(redrawn, {"d": "D"})
    assert split.train.tolist() == [0, 3]
    assert split.test.tolist() == [2]


def test_flow_cells_merge_tracks_of_one_name() -> None:
    flows = cells(("x", "y"), [(0, 1, TCP, 50001, 80, 1, 2, 100), (1, 1, TCP, 50001, 80, 1, 3, 60)])
    merged = flows.renamed(["z", "z"])
    assert merged.tracks == ("z",)
    assert merged.packets.tolist() == [5]
    assert merged.bytes.tolist() == [160]


def test_evaluate_command_compares_both_catalogues_on_flow_records(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    flows, labels = tmp_path / "flows.csv", tmp_path / "labels.csv"
    synth = ["synth", "--devices", "6", "--units", "48", "--seed", "3", "--out", str(flows)]
    assert main([*synth, "--labels-out", str(labels)]) == 0
    out = tmp_path / "report"
    args = ["evaluate", str(flows), "--labels", str(labels), "--granularities", "prevalence"]
    args += ["--intensities", "relative", "--modes", "nearest", "--no-progress"]
    assert main([*args, "--catalogues", "built-in,train-learned", "--out", str(out)]) == 0
    saved = json.loads((out / "metrics.json").read_text())
    assert [(r["representation"], r["catalogue"]) for r in saved["results"]] == [
        ("prevalence+intensity", "built-in"),
        ("prevalence+intensity", "train-learned"),
    ]
    built_in, learned = saved["results"]
    assert learned["closed_set"]["n_test"] == built_in["closed_set"]["n_test"] > 0
    assert "| prevalence+intensity | train-learned |" in (out / "report.md").read_text()


def test_train_learned_needs_ports(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    activity = tmp_path / "activity.csv"
    mac = "02:00:00:00:00:01"
    ActivityTable.from_records([(mac, u, "tcp/443", 2, 200) for u in range(4)]).to_csv(activity)
    labels = tmp_path / "labels.csv"
    labels.write_text(f"mac,label\n{mac},camera\n")
    args = ["evaluate", "--activity", str(activity), "--labels", str(labels), "--no-progress"]
    assert main([*args, "--catalogues", "train-learned", "--out", str(tmp_path / "r")]) == 2
    assert "train-learned catalogue needs flow records or captures" in capsys.readouterr().err
