"""Intensity fingerprints: weights by hand, independence of the observation rate, identical
batch and streaming decisions, explanations in intensity terms, and the references file."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest

from controller.base.errors import InputError
from controller.engine.activity import ActivityTable
from controller.engine.exporter import (
    ExporterConfig,
    StreamingExporter,
    export_fingerprints,
    whole_windows,
)
from controller.engine.fingerprints import FingerprintSet
from controller.engine.identify import References, enroll, identify
from controller.engine.representation import (
    intensity_weights,
    parse_representation,
    representation_name,
)
from controller.engine.sampling import sample_packets
from tests.support.engine import contributions

DEV = "aa:bb:cc:dd:ee:01"


def captures(rows: list[tuple[str, int, str, int, int]]) -> ActivityTable:
    return ActivityTable.from_records(rows, unit_seconds=1.0)


class TestWeights:
    def test_relative_and_absolute_weights_by_hand(self) -> None:
        # Service 0: 90 packets of 100 B in 2 active units; service 1: 10 packets of 160 B in 1.
        active, packets, sent = [[2, 1, 0]], [[90, 10, 0]], [[9000, 1600, 0]]
        share, size = intensity_weights(active, packets, sent, "relative")
        assert share[0].tolist() == pytest.approx([1 + math.log10(0.9) / 4, 0.75, 0.0])
        assert size[0].tolist() == pytest.approx(
            [math.log2(100) / math.log2(1600), math.log2(160) / math.log2(1600), 0.0]
        )
        rate, size_again = intensity_weights(active, packets, sent, "absolute")
        assert rate[0].tolist() == pytest.approx(
            [math.log1p(45) / math.log1p(1e4), math.log1p(10) / math.log1p(1e4), 0.0]
        )
        assert np.array_equal(size, size_again)

    def test_shares_below_four_decades_weigh_nothing(self) -> None:
        share, _ = intensity_weights([[1, 1]], [[100_000, 1]], [[100_000, 60]], "relative")
        assert share[0, 1] == 0.0 and share[0, 0] == pytest.approx(1.0, abs=1e-4)

    def test_relative_weights_do_not_move_when_every_count_is_scaled(self) -> None:
        active = np.array([[5, 2, 1]])
        packets = np.array([[400, 37, 3]])
        sent = np.array([[52_000, 4_100, 180]])
        for scale in (3, 10, 1000):
            for one, other in zip(
                intensity_weights(active, packets, sent, "relative"),
                intensity_weights(active, packets * scale, sent * scale, "relative"),
                strict=True,
            ):
                assert np.allclose(one, other, rtol=0, atol=1e-12)
        rate, _ = intensity_weights(active, packets, sent, "absolute")
        scaled, _ = intensity_weights(active, packets * 10, sent * 10, "absolute")
        assert np.all(scaled[0] > rate[0])

    def test_names_and_parsing(self) -> None:
        assert representation_name(None, "relative") == "prevalence+intensity"
        assert representation_name(4, "absolute") == "G=4+rate"
        assert representation_name(1) == "list"
        assert parse_representation("G=4+intensity") == (4, "relative")
        assert parse_representation("intensity") == (None, "relative")
        assert parse_representation("list") == (1, None)
        with pytest.raises(InputError, match="after"):
            parse_representation("list+volume")


def random_activity(seed: int) -> ActivityTable:
    rng = np.random.default_rng(seed)
    rows = []
    for d in range(4):
        for u in range(int(rng.integers(0, 5)), 120):
            for s in range(6):
                if rng.random() < (0.9 if s < 2 else 0.15 * d):
                    packets = int(rng.integers(1, 40))
                    size = int(rng.integers(40, 1500))
                    rows.append((f"aa:00:00:00:00:0{d}", u, f"tcp/{s}", packets, packets * size))
    return ActivityTable.from_records(rows, unit_seconds=1.0)


class TestBatchAndStreaming:
    @pytest.mark.parametrize("granularity", [1, 4, None])
    @pytest.mark.parametrize("intensity", ["relative", "absolute", "sized"])
    def test_identical_fingerprints_features_and_decisions(
        self, granularity: int | None, intensity: str
    ) -> None:
        activity = random_activity(11)
        config = ExporterConfig(
            threshold=2,
            granularity=granularity,
            tau=0.85,
            k=3,
            n_min=5,
            n_max=20,
            intensity=intensity,  # type: ignore[arg-type]
        )
        batch = export_fingerprints(activity, config, end_unit=125)
        live = StreamingExporter(config, unit_seconds=1.0).feed_table(activity, end_unit=125)
        key = lambda fp: (fp.device, fp.start_unit)  # noqa: E731
        assert len(batch) > 20
        assert sorted(live, key=key) == sorted(batch, key=key)
        streamed = FingerprintSet.from_fingerprints(sorted(live, key=key), batch.services)
        ordered = batch.select(np.lexsort((batch.start, batch.device)))
        assert np.array_equal(streamed.features(), ordered.features())
        labels = {d: "even" if d[-1] in "02" else "odd" for d in activity.devices}
        refs = enroll(ordered, labels, percentile=5.0)
        assert identify(streamed, refs) == identify(ordered, refs)

    def test_usage_counts_only_units_where_the_service_counted(self) -> None:
        rows = [(DEV, 0, "tcp/443", 5, 500), (DEV, 1, "tcp/443", 1, 40), (DEV, 2, "tcp/443", 7, 70)]
        config = ExporterConfig(threshold=2, intensity="relative")
        fps = whole_windows(captures(rows), None, threshold=2, intensity="relative")
        assert fps[0].usage_of("tcp/443") == (2, 12, 570)
        exported = export_fingerprints(captures(rows), config, own_end=True, flush=True)
        assert exported[0].usage_of("tcp/443") == (2, 12, 570)


def typed_captures() -> tuple[FingerprintSet, dict[str, str]]:
    """Two plug types with the same services: A sends few small packets on udp/9999, B many
    large ones. Three captures each."""
    rows = []
    labels = {}
    for kind, (count, size) in {"A": (4, 60), "B": (40, 400)}.items():
        for i in range(3):
            track = f"{kind}{i}"
            labels[track] = kind
            for u in range(10):
                rows.append((track, u, "udp/9999", count + i, (count + i) * size))
                rows.append((track, u, "udp/53", 2, 160))
    return whole_windows(captures(rows), None, intensity="relative"), labels


class TestIdentification:
    def test_intensity_separates_types_presence_cannot(self) -> None:
        fps, labels = typed_captures()
        presence = enroll(fps.with_intensity(None), labels, theta=0.0)
        flat = identify(fps.with_intensity(None), presence)
        assert {d.similarity for d in flat} == {1.0}
        refs = enroll(fps, labels, percentile=0.0)
        decisions = identify(fps, refs)
        # Each capture's own reference is itself: every one is identified as its type.
        assert [d.best_type for d in decisions] == [labels[d.device] for d in decisions]

    def test_explanation_in_intensity_terms_with_exact_shares(self) -> None:
        fps, labels = typed_captures()
        train = fps.select(np.array([0, 1, 3, 4]))
        refs = enroll(train, labels, percentile=0.0)
        query = fps.select(np.array([2]))
        (decision,) = identify(query, refs)
        why = decision.explanation
        assert decision.best_type == "A"
        assert math.fsum(c.share for c in contributions(why)) == pytest.approx(
            why.similarity, abs=1e-12
        )
        plug = next(c for c in why.matched if c.service == "udp/9999")
        # A2 sends 6 packets of 60 B per unit; A0 and A1 sent 4 and 5.
        assert plug.packets_per_unit == 6.0 and plug.bytes_per_packet == 60.0
        assert plug.reference_packets_per_unit == (4.0, 5.0)
        assert plug.reference_bytes_per_packet == (60.0, 60.0)
        assert plug.describe(1.0).startswith(
            "udp/9999: 6 packets/s (references 4-5), 60 B/packet (references 60-60),"
        )
        assert 0.0 < decision.confidence <= 1.0

    def test_mixed_representations_are_refused(self) -> None:
        fps, labels = typed_captures()
        refs = enroll(fps, labels, percentile=0.0)
        with pytest.raises(InputError, match="prevalence representation, references the"):
            identify(fps.with_intensity(None), refs)


class TestReferencesFile:
    def test_round_trip_keeps_usage_thresholds_and_temperature(self, tmp_path: Path) -> None:
        fps, labels = typed_captures()
        refs = enroll(fps, labels, percentile=0.0, per_type=True)
        path = tmp_path / "refs.json"
        refs.save(path)
        back = References.load(path)
        assert back.intensity == "relative" and back.representation == "prevalence+intensity"
        assert back.usage is not None and refs.usage is not None
        assert np.array_equal(back.usage, refs.usage)
        assert back.thetas == refs.thetas and back.temperature == refs.temperature
        assert identify(fps, back) == identify(fps, refs)
        assert json.loads(path.read_text())["version"] == 2

    def test_version_one_files_are_still_read(self, tmp_path: Path) -> None:
        old = {
            "format": "svcfp-references",
            "version": 1,
            "representation": "list",
            "granularity": 1,
            "unit_seconds": 3600.0,
            "mode": "nearest",
            "theta": 0.5,
            "neighbours": 1,
            "exporter": None,
            "references": [
                {"type": "cam", "origin": "x@0-6", "weights": {"tcp/443": 1.0}},
                {"type": "plug", "origin": "y@0-6", "weights": {"udp/9999": 1.0}},
            ],
        }
        path = tmp_path / "old.json"
        path.write_text(json.dumps(old))
        refs = References.load(path)
        assert (refs.intensity, refs.usage, refs.thetas, refs.temperature) == (
            None,
            None,
            None,
            None,
        )
        assert refs.types == ("cam", "plug") and refs.theta == 0.5

    def test_newer_versions_are_refused_with_a_clear_message(self, tmp_path: Path) -> None:
        path = tmp_path / "new.json"
        path.write_text(json.dumps({"format": "svcfp-references", "version": 3, "references": []}))
        with pytest.raises(InputError, match=r"new\.json: references version 3 unsupported.*1, 2"):
            References.load(path)

    def test_intensity_without_usage_is_refused(self, tmp_path: Path) -> None:
        path = tmp_path / "broken.json"
        path.write_text(
            json.dumps(
                {
                    "format": "svcfp-references",
                    "version": 2,
                    "granularity": None,
                    "intensity": "relative",
                    "unit_seconds": 1.0,
                    "references": [{"type": "cam", "weights": {"tcp/443": 1.0}}],
                }
            )
        )
        with pytest.raises(InputError, match="needs every reference's packet and byte counts"):
            References.load(path)


class TestSampling:
    def test_one_in_one_is_the_table_itself(self) -> None:
        table = random_activity(3)
        assert sample_packets(table, 1) is table

    def test_thinning_keeps_each_rows_packet_size_and_is_seeded(self) -> None:
        table = random_activity(3)
        thinned = sample_packets(table, 10, seed=5)
        assert len(thinned) < len(table)
        assert thinned.packets.sum() < table.packets.sum() / 5
        original = {(r.device, r.unit, r.service): r.bytes / r.packets for r in table.records()}
        for r in thinned.records():
            assert r.bytes / r.packets == pytest.approx(
                original[(r.device, r.unit, r.service)], abs=1.0
            )
        again = sample_packets(table, 10, seed=5)
        assert np.array_equal(again.packets, thinned.packets)
        with pytest.raises(InputError, match="at least 1"):
            sample_packets(table, 0)
