"""Evaluation metrics, splits and the whole evaluation on hand-made data, and the report files."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from controller.base.errors import InputError
from controller.engine.activity import ActivityTable
from controller.engine.evaluate import Dataset, EvalSettings, evaluate, split_rows
from controller.engine.exporter import ExporterConfig
from controller.engine.fingerprints import Fingerprint, FingerprintSet
from controller.engine.metrics import accuracy, auroc, cdf, confusion_matrix, macro_f1
from controller.engine.report import write_report


class TestMetrics:
    TRUTH = ("a", "a", "b", "c")
    PREDICTED = ("a", "b", "b", "c")

    def test_accuracy(self) -> None:
        assert accuracy(self.TRUTH, self.PREDICTED) == 0.75

    def test_confusion_matrix(self) -> None:
        classes, matrix = confusion_matrix(self.TRUTH, self.PREDICTED)
        assert classes == ("a", "b", "c")
        assert matrix.tolist() == [[1, 1, 0], [0, 1, 0], [0, 0, 1]]

    def test_macro_f1(self) -> None:
        # a: P 1, R 1/2 → 2/3; b: P 1/2, R 1 → 2/3; c: 1. Mean 7/9.
        assert macro_f1(self.TRUTH, self.PREDICTED) == pytest.approx(7 / 9)
        assert macro_f1(["a", "b"], ["b", "a"]) == 0.0

    def test_auroc_with_ties(self) -> None:
        # Positives .9 .7 .8 against negatives .8 .6: 1 + 1 + 0 + 1 + ½ + 1 = 4.5 of 6 pairs.
        scores = [0.9, 0.8, 0.7, 0.6, 0.8]
        assert auroc(scores, [True, False, True, False, True]) == 0.75
        assert auroc([0.1, 0.9], [False, True]) == 1.0
        assert np.isnan(auroc([0.5], [True]))

    def test_cdf(self) -> None:
        assert cdf([3, 1, 3, 2]) == ([1.0, 2.0, 3.0], [0.25, 0.5, 1.0])


def fps_for_split() -> FingerprintSet:
    def fp(device: str, start: int) -> Fingerprint:
        return Fingerprint(device, start, start + 5, 1, ("tcp/443",), np.ones(1), True, 1.0)

    return FingerprintSet.from_fingerprints(
        [
            *(fp("d1", start) for start in (15, 0, 5, 10)),
            fp("d2", 0),
            fp("d3", 0),
            *(fp(name, start) for name, start in (("e1", 0), ("e2", 30), ("e3", 10))),
        ]
    )


class TestSplits:
    def test_time_split_per_device(self) -> None:
        fps = fps_for_split()
        labels = {"d1": "D", "d2": "D", "d3": "unknown", "e1": "E", "e2": "E", "e3": "E"}
        split = split_rows(fps, labels, None, "time", 0.5)
        # d1's windows start at 15, 0, 5, 10 (rows 0..3): the two earliest train.
        assert split.train.tolist() == [1, 2, 4, 6, 7, 8]
        assert split.test.tolist() == [0, 3]

    def test_group_split_per_type_in_time_order(self) -> None:
        fps = fps_for_split()
        labels = {name: name[0].upper() for name in fps.devices}
        groups = {name: f"setup-{name}" for name in fps.devices}
        split = split_rows(fps, labels, groups, "group", 0.5)
        # E's groups by first window: e1 (0), e3 (10), e2 (30) → ⌈1.5⌉ = 2 train, e2 tests.
        # D's: d1 (0), d2 (0), d3 (0) ordered by name → d1 and d2 train, d3 tests.
        assert split.test.tolist() == [5, 7]

    def test_group_split_needs_groups(self) -> None:
        with pytest.raises(InputError, match="group"):
            split_rows(fps_for_split(), {"d1": "D"}, None, "group", 0.5)


def synthetic_dataset() -> Dataset:
    """Three types on disjoint services, two devices each, every service used in every unit."""
    services = {"cam": ["tcp/443", "tcp/554"], "plug": ["udp/9999"], "hub": ["tcp/80", "udp/1900"]}
    rows = []
    labels = {}
    for kind, used in services.items():
        for i in (1, 2):
            mac = f"02:00:00:00:{list(services).index(kind):02x}:0{i}"
            labels[mac] = kind
            for unit in range(40):
                rows += [(mac, unit, s, 2, 200) for s in used]
    return Dataset(ActivityTable.from_records(rows, unit_seconds=10.0), labels, name="synthetic")


class TestEvaluate:
    SETTINGS = EvalSettings(
        granularities=(1, None),
        intensities=(None,),
        exporter=ExporterConfig(tau=0.9, k=2, n_min=5, n_max=10),
    )

    def test_exact_results_on_separable_types(self) -> None:
        metrics = evaluate(synthetic_dataset(), self.SETTINGS)
        assert [(r.representation, r.mode) for r in metrics.results] == [
            ("list", "nearest"),
            ("list", "centroid"),
            ("prevalence", "nearest"),
            ("prevalence", "centroid"),
        ]
        for result in metrics.results:
            closed = result.closed_set
            # 40 units in windows of 5 = 8 windows per device, 4 train and 4 test.
            assert (result.windows, result.n_train, closed.n_test) == (48, 24, 24)
            assert closed.accuracy == 1.0
            assert closed.macro_f1 == 1.0
            assert closed.confusion.matrix == ((8, 0, 0), (0, 8, 0), (0, 0, 8))
            opened = result.open_set
            # Left-out types share no service with the rest: similarity 0, always unknown.
            assert opened.unknown_detection == 1.0
            assert opened.auroc == 1.0
            tti = result.time_to_identification
            assert (tti.tracks, tti.identified, tti.median_units) == (6, 6, 5.0)
            assert result.convergence.median_units == 5.0
            assert result.convergence.converged_fraction == 1.0

    def test_unit_grid_regroups_activity(self) -> None:
        settings = EvalSettings(
            granularities=(1,),
            intensities=(None,),
            unit_seconds=(10.0, 20.0),
            exporter=ExporterConfig(tau=0.9, k=2, n_min=5, n_max=10),
            modes=("nearest",),
        )
        metrics = evaluate(synthetic_dataset(), settings)
        # 20 s units: 20 units per device, windows of 5 → 4 per device.
        assert [(r.unit_seconds, r.windows) for r in metrics.results] == [
            (10.0, 48),
            (20.0, 24),
        ]

    def test_report_files(self, tmp_path: Path) -> None:
        metrics = evaluate(synthetic_dataset(), self.SETTINGS)
        paths = write_report(metrics, tmp_path / "report")
        assert sorted(p.name for p in paths) == [
            "confusion.png",
            "convergence_cdf.png",
            "metrics.json",
            "report.md",
            "similarity.png",
        ]
        for path in paths:
            assert path.stat().st_size > 0
        saved = json.loads((tmp_path / "report" / "metrics.json").read_text())
        assert saved["results"][0]["closed_set"]["accuracy"] == 1.0
        # The raw decisions stay in memory for the plots and are left out of the JSON.
        assert len(metrics.results[0].closed_set.open_labels) == 24
        assert "open_labels" not in saved["results"][0]["closed_set"]
        assert "scores" not in saved["results"][0]["open_set"]
        text = (tmp_path / "report" / "report.md").read_text()
        assert "| 10 | list | built-in | nearest | 48 | 24 | 1.000 | 1.000 | 1.000 |" in text
        # The training windows alone choose the setting too, and say so.
        chosen = metrics.chosen()
        assert chosen is not None and chosen.train_accuracy == 1.0
        assert saved["chosen_setting"] == chosen.label == saved["best_setting"]
        assert saved["results"][0]["train_accuracy"] == 1.0
        assert f"## Setting chosen on the training windows: {chosen.label}" in text
        assert "It is also the best setting on the test windows." in text
        # Anchors on the same windows: 1-NN on log packets separates the disjoint services too;
        # the majority type (three equal types: the first name) gets a third.
        anchors = {a.name: a for a in metrics.results[0].anchors}
        assert anchors["1-NN log packets"].accuracy == 1.0
        assert anchors["majority type"].accuracy == pytest.approx(1 / 3)
        assert "## Anchor baselines" in text
        # The open-set study's "similarity" score is the one behind the headline AUROC.
        by_score = saved["results"][0]["open_set"]["auroc_by_score"]
        assert by_score["similarity"] == metrics.results[0].open_set.auroc
        assert "## Open-set scores" in text
        assert "| 10 | list | built-in | 24 | 1.000 |" in text
        assert metrics.best().representation == "list"
        assert (tmp_path / "report" / "confusion.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    def test_report_names_a_chosen_setting_that_is_not_the_best(self, tmp_path: Path) -> None:
        settings = replace(
            self.SETTINGS, granularities=(1,), unit_seconds=(10.0, 20.0), modes=("nearest",)
        )
        metrics = evaluate(synthetic_dataset(), settings)
        ten, twenty = metrics.results
        assert ten.closed_set.accuracy == twenty.closed_set.accuracy == 1.0
        # The training windows prefer the second; the test windows tie, the first wins.
        metrics = replace(
            metrics,
            results=(replace(ten, train_accuracy=0.5), replace(twenty, train_accuracy=0.75)),
        )
        assert metrics.best().label == ten.label
        chosen = metrics.chosen()
        assert chosen is not None and chosen.label == twenty.label != ten.label
        write_report(metrics, tmp_path / "report")
        saved = json.loads((tmp_path / "report" / "metrics.json").read_text())
        assert (saved["best_setting"], saved["chosen_setting"]) == (ten.label, twenty.label)
        text = (tmp_path / "report" / "report.md").read_text()
        assert f"## Setting chosen on the training windows: {twenty.label}" in text
        assert "training windows alone" in text and ": 0.750. On the test windows" in text
        assert "It is also the best setting on the test windows." not in text
        assert "the best on the test windows themselves: with many settings" in text

    def test_early_identification_of_captures(self) -> None:
        # Both types only resolve DNS in their first 3 units; then A adds tcp/443, B udp/123.
        rows = []
        labels, groups = {}, {}
        for kind, own in (("A", "tcp/443"), ("B", "udp/123")):
            for capture in range(4):
                track = f"02:00:00:00:00:01#{kind}-setup-{capture}"
                labels[track], groups[track] = kind, f"{kind}-setup-{capture}"
                start = 100 * capture
                rows += [(track, start + u, "udp/53", 1, 60) for u in range(10)]
                rows += [(track, start + u, own, 1, 60) for u in range(3, 10)]
        dataset = Dataset(ActivityTable.from_records(rows, 1.0), labels, groups, "captures")
        settings = EvalSettings(
            granularities=(None,),
            windows="whole",
            captures=True,
            split="group",
            modes=("nearest",),
            prefixes=(1, 4, 10),
        )
        result = evaluate(dataset, settings).results[0]
        assert result.closed_set.accuracy == 1.0
        # The training captures, each left out with its prefixes, are right; their 1-unit
        # prefixes (DNS alone, alike in both types: B's would be taken for A) stay references
        # but are not scored.
        prefixed = replace(settings, reference_prefixes=(1,))
        assert evaluate(dataset, prefixed).results[0].train_accuracy == 1.0
        early = result.early_identification
        assert early is not None
        # After 1 unit every capture is {udp/53: 1}, equally similar to both types: the tie goes
        # to the first type, A, so half the captures are right. After 4 units all are.
        assert early.accuracy == (0.5, 1.0, 1.0)
        assert (early.tracks, early.tracks_with_activity) == (4, (4, 4, 4))

    def test_too_little_data_is_an_input_error(self) -> None:
        dataset = synthetic_dataset()
        short = Dataset(dataset.activity.select(units=(0, 6)), dataset.labels, name="short")
        with pytest.raises(InputError, match="training and 0 test windows"):
            evaluate(short, self.SETTINGS)
