"""The fingerprint maths on small cases computed by hand."""

from __future__ import annotations

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
from controller.engine.fingerprints import Fingerprint, FingerprintSet
from controller.engine.recurrence import recurrence
from controller.engine.representation import parse_granularity, quantise, representation_name
from controller.engine.similarity import similarity_matrix, similarity_pairs, weighted_jaccard
from tests.support.fingerprints import fingerprint_of, fingerprint_similarity, usage_matrix

DEV = "aa:bb:cc:dd:ee:01"
OTHER = "aa:bb:cc:dd:ee:02"


def table(rows: list[tuple[str, int, str, int]], unit_seconds: float = 1.0) -> ActivityTable:
    return ActivityTable.from_records(
        [(d, u, s, p, 100 * p) for d, u, s, p in rows], unit_seconds=unit_seconds
    )


def four_units() -> ActivityTable:
    """tcp/443 in all 4 units, udp/53 in 2 of them, udp/123 in 1."""
    rows = [(DEV, u, "tcp/443", 3) for u in range(4)]
    rows += [(DEV, 0, "udp/53", 1), (DEV, 2, "udp/53", 2), (DEV, 1, "udp/123", 1)]
    return table(rows)


def weights(fp: Fingerprint) -> dict[str, float]:
    return fp.as_dict()


class TestRepresentations:
    def test_usage_matrix_marks_units_with_at_least_h_packets(self) -> None:
        usage, services = usage_matrix(four_units(), DEV, 0, 4, threshold=2)
        assert services == ("tcp/443", "udp/123", "udp/53")
        assert usage.tolist() == [
            [True, False, False],
            [True, False, False],
            [True, False, True],
            [True, False, False],
        ]

    @pytest.mark.parametrize(
        ("granularity", "expected"),
        [
            (None, {"tcp/443": 1.0, "udp/53": 0.5, "udp/123": 0.25}),
            (1, {"tcp/443": 1.0, "udp/53": 1.0, "udp/123": 1.0}),
            (2, {"tcp/443": 1.0, "udp/53": 0.5, "udp/123": 0.5}),
            (3, {"tcp/443": 1.0, "udp/53": 2 / 3, "udp/123": 1 / 3}),
            (4, {"tcp/443": 1.0, "udp/53": 0.5, "udp/123": 0.25}),
        ],
    )
    def test_prevalence_list_and_generalised(
        self, granularity: int | None, expected: dict[str, float]
    ) -> None:
        usage, services = usage_matrix(four_units(), DEV, 0, 4)
        fp = fingerprint_of(usage, services, DEV, 0, granularity)
        assert weights(fp) == expected
        assert (fp.start_unit, fp.end_unit, fp.n_units) == (0, 4, 4)

    def test_threshold_drops_units_below_h(self) -> None:
        usage, services = usage_matrix(four_units(), DEV, 0, 4, threshold=2)
        fp = fingerprint_of(usage, services, DEV, 0, None)
        assert weights(fp) == {"tcp/443": 1.0, "udp/53": 0.25}

    def test_quantise_uses_exact_integer_ceiling(self) -> None:
        # 3/10 · 10 is 3.0000000000000004 in floating point; the level must still be 3.
        assert quantise([3, 7, 10, 0], 10, 10).tolist() == [0.3, 0.7, 1.0, 0.0]
        assert quantise([1, 2, 3], 3, 2).tolist() == [0.5, 1.0, 1.0]
        assert quantise([1, 2], 3, None).tolist() == [1 / 3, 2 / 3]

    def test_names_and_parsing(self) -> None:
        assert [representation_name(g) for g in (1, 4, None)] == ["list", "G=4", "prevalence"]
        assert [parse_granularity(t) for t in ("list", "inf", "prevalence", "8", "G=2")] == [
            1,
            None,
            None,
            8,
            2,
        ]
        with pytest.raises(InputError, match="granularity 'zero'"):
            parse_granularity("zero")
        with pytest.raises(InputError, match="at least 1"):
            parse_granularity("0")


class TestSimilarity:
    def test_weighted_jaccard_by_hand(self) -> None:
        # Σmin = .25 + .5 + 0 = .75, Σmax = 1 + 1 + .5 = 2.5
        assert weighted_jaccard([0.25, 1.0, 0.0], [1.0, 0.5, 0.5]) == 0.3
        assert weighted_jaccard([1, 1, 0], [1, 0, 1]) == pytest.approx(1 / 3)
        assert weighted_jaccard([1, 0], [0, 1]) == 0.0

    def test_two_empty_fingerprints_are_identical(self) -> None:
        assert weighted_jaccard([0, 0], [0, 0]) == 1.0
        assert similarity_matrix(np.zeros((1, 2)), np.zeros((2, 2))).tolist() == [[1.0, 1.0]]

    def test_matrix_forms_agree_with_the_scalar(self) -> None:
        rng = np.random.default_rng(7)
        a = np.round(rng.random((5, 6)) * 4) / 4
        b = np.round(rng.random((3, 6)) * 4) / 4
        expected = [[weighted_jaccard(x, y) for y in b] for x in a]
        assert similarity_matrix(a, b) == pytest.approx(np.array(expected), abs=1e-12)
        assert similarity_pairs(a[:3], b) == pytest.approx(
            np.array([expected[i][i] for i in range(3)])
        )

    def test_binary_matrices_use_the_set_formula(self) -> None:
        a = np.array([[1, 1, 0, 0], [0, 0, 0, 0]], dtype=float)
        b = np.array([[1, 0, 1, 0], [1, 1, 0, 0], [0, 0, 0, 0]], dtype=float)
        assert similarity_matrix(a, b).tolist() == [[1 / 3, 1.0, 0.0], [0.0, 0.0, 1.0]]

    def test_fingerprint_similarity_aligns_service_axes(self) -> None:
        one = Fingerprint(DEV, 0, 4, None, ("tcp/443", "udp/53"), np.array([1.0, 0.5]))
        two = Fingerprint(OTHER, 0, 4, None, ("tcp/443", "udp/123"), np.array([0.5, 1.0]))
        # Σmin = .5, Σmax = 1 + .5 + 1 = 2.5
        assert fingerprint_similarity(one, two) == pytest.approx(0.2)


def sequence_table() -> ActivityTable:
    """Hand-made sequence for the exporter (see the tests for the expected decisions)."""
    rows = [(DEV, u, "tcp/443", 1) for u in range(9)]
    rows.append((DEV, 2, "udp/53", 1))
    # OTHER uses a new service in every unit: its list never settles.
    rows += [(OTHER, u, f"udp/{1000 + u}", 1) for u in range(8)]
    return table(rows)


class TestExporter:
    CONFIG = ExporterConfig(granularity=1, tau=1.0, k=2, n_min=3, n_max=6)

    def test_exports_converged_windows_and_cuts_at_n_max(self) -> None:
        fps = list(export_fingerprints(sequence_table(), self.CONFIG))
        got = [(fp.device, fp.start_unit, fp.end_unit, fp.converged, weights(fp)) for fp in fps]
        # DEV: units 0..4 list {443}, {443}, {443,53} (change), {..} same, same → export at 5.
        # Then 5, 6, 7: two unchanged comparisons and 3 units → export at 8. Unit 8 stays open.
        # OTHER: a new service every unit, never two unchanged in a row → cut at n_max = 6.
        assert got == [
            (DEV, 0, 5, True, {"tcp/443": 1.0, "udp/53": 1.0}),
            (DEV, 5, 8, True, {"tcp/443": 1.0}),
            (OTHER, 0, 6, False, {f"udp/{1000 + u}": 1.0 for u in range(6)}),
        ]
        assert [fp.n_units for fp in fps] == [5, 3, 6]

    def test_prevalence_convergence_against_tau(self) -> None:
        # P(443) after 1..4 units: 1, 1/2, 2/3, 3/4; similarities to the unit before:
        # 1/2, 3/4, 8/9. Only 8/9 ≥ 0.8, so with k=1 and n_min=2 the export is at 4 units.
        rows = [(DEV, u, "tcp/443", 1) for u in (0, 2, 3)] + [(DEV, 5, "tcp/443", 1)]
        config = ExporterConfig(granularity=None, tau=0.8, k=1, n_min=2, n_max=10)
        fps = list(export_fingerprints(table(rows), config))
        assert [(fp.start_unit, fp.end_unit, weights(fp)) for fp in fps] == [
            (0, 4, {"tcp/443": 0.75})
        ]

    def test_silent_windows_close_without_export(self) -> None:
        rows = [(DEV, 0, "tcp/443", 1), (DEV, 1, "tcp/443", 1), (DEV, 2, "tcp/443", 1)]
        config = ExporterConfig(granularity=1, tau=1.0, k=1, n_min=2, n_max=3)
        fps = list(export_fingerprints(table(rows), config, end_unit=12))
        # Units 2..3 still hold tcp/443 (unit 2); the silent windows 4..5, ..., 10..11 converge
        # on the empty fingerprint and export nothing.
        assert [(fp.start_unit, fp.end_unit) for fp in fps] == [(0, 2), (2, 4)]

    def test_end_unit_leaves_open_windows_unexported(self) -> None:
        fps = export_fingerprints(sequence_table(), self.CONFIG, end_unit=4)
        assert len(fps) == 0

    @pytest.mark.parametrize("granularity", [1, 2, 3, None])
    def test_streaming_makes_the_same_decisions_as_batch(self, granularity: int | None) -> None:
        rng = np.random.default_rng(11)
        rows = []
        for d in range(4):
            for u in range(int(rng.integers(0, 5)), 120):
                for s in range(6):
                    if rng.random() < (0.9 if s < 2 else 0.15 * d):
                        rows.append(
                            (f"aa:00:00:00:00:0{d}", u, f"tcp/{s}", int(rng.integers(1, 4)))
                        )
        activity = table(rows)
        config = ExporterConfig(
            threshold=2, granularity=granularity, tau=0.85, k=3, n_min=5, n_max=20
        )
        batch = list(export_fingerprints(activity, config, end_unit=125))
        streaming = StreamingExporter(config, unit_seconds=1.0)
        live = streaming.feed_table(activity, end_unit=125)
        key = lambda fp: (fp.device, fp.start_unit)  # noqa: E731
        assert len(batch) > 20
        assert sorted(live, key=key) == sorted(batch, key=key)
        assert all(fp.n_units <= 20 for fp in batch)

    def test_streaming_fills_skipped_units_and_rejects_going_back(self) -> None:
        config = ExporterConfig(granularity=1, tau=1.0, k=1, n_min=2, n_max=5)
        exporter = StreamingExporter(config, unit_seconds=1.0)
        assert exporter.feed_unit(10, {DEV: {"tcp/443": 1}}) == []
        exported = exporter.feed_unit(13, {DEV: {"tcp/443": 1}})
        # Units 11 and 12 were silent: after unit 11 the list {443} is unchanged and n = 2.
        assert [(fp.start_unit, fp.end_unit) for fp in exported] == [(10, 12)]
        assert [(fp.start_unit, fp.end_unit) for fp in exporter.pending()] == [(12, 14)]
        with pytest.raises(InputError, match="units must increase"):
            exporter.feed_unit(12, {})

    def test_long_silences_match_the_streaming_exporter(self) -> None:
        # Silent stretches are skipped window by window in the batch exporter; the result must
        # equal closing every silent unit one at a time.
        rows = [(DEV, u, "tcp/443", 1) for u in (*range(0, 7), *range(1000, 1009), 1500)]
        rows += [(DEV, u, "udp/53", 1) for u in (3, 1004, 1500)]
        config = ExporterConfig(granularity=2, tau=0.9, k=2, n_min=4, n_max=9)
        batch = list(export_fingerprints(table(rows), config, end_unit=1510))
        live = StreamingExporter(config, unit_seconds=1.0).feed_table(table(rows), end_unit=1510)
        assert live == batch
        # After unit 10 the device is silent: 247 empty windows of max(n_min, k+1) = 4 units
        # close without export, so the next window starts at 10 + 988 = 998.
        assert [(fp.start_unit, fp.end_unit) for fp in batch] == [
            (0, 6),
            (6, 10),
            (998, 1007),
            (1007, 1013),
            (1497, 1503),
        ]

    def test_own_end_and_flush_for_captures(self) -> None:
        # Two captures as separate tracks: each ends with its own last activity, and the window
        # still open there is exported (unconverged) when flushing.
        rows = [("cap-a", u, "tcp/443", 1) for u in range(3)]
        rows += [("cap-b", u, "udp/53", 1) for u in range(100, 108)]
        config = ExporterConfig(granularity=1, tau=1.0, k=2, n_min=5, n_max=50)
        plain = export_fingerprints(table(rows), config, own_end=True)
        assert [(fp.device, fp.start_unit, fp.end_unit) for fp in plain] == [("cap-b", 100, 105)]
        flushed = list(export_fingerprints(table(rows), config, own_end=True, flush=True))
        assert [(fp.device, fp.start_unit, fp.end_unit, fp.converged) for fp in flushed] == [
            ("cap-a", 0, 3, False),
            ("cap-b", 100, 105, True),
            ("cap-b", 105, 108, False),
        ]

    def test_whole_windows_span_each_track(self) -> None:
        rows = [(DEV, 10, "tcp/443", 1), (DEV, 13, "tcp/443", 1), (DEV, 12, "udp/53", 1)]
        rows.append((OTHER, 5, "udp/53", 4))
        fps = list(whole_windows(table(rows), granularity=None))
        assert [(fp.device, fp.start_unit, fp.end_unit, weights(fp)) for fp in fps] == [
            (DEV, 10, 14, {"tcp/443": 0.5, "udp/53": 0.25}),
            (OTHER, 5, 6, {"udp/53": 1.0}),
        ]

    def test_config_rejects_bad_settings(self) -> None:
        with pytest.raises(InputError, match="n_min"):
            ExporterConfig(n_min=10, n_max=5)
        with pytest.raises(InputError, match="tau"):
            ExporterConfig(tau=1.5)


class TestSetsAndRecurrence:
    def test_set_round_trips_fingerprints(self) -> None:
        fps = export_fingerprints(sequence_table(), TestExporter.CONFIG)
        again = FingerprintSet.from_fingerprints(list(fps))
        assert list(again) == list(fps)
        assert Fingerprint.from_json(fps[0].to_json()) == fps[0]

    def test_recurrence_intra_and_inter(self) -> None:
        a1 = Fingerprint(DEV, 0, 4, 1, ("tcp/443", "udp/53"), np.ones(2))
        a2 = Fingerprint(DEV, 4, 8, 1, ("tcp/443",), np.ones(1))
        b1 = Fingerprint(OTHER, 0, 4, 1, ("udp/53", "udp/123"), np.ones(2))
        stats = recurrence(FingerprintSet.from_fingerprints([a2, b1, a1]))
        assert stats.intra.tolist() == [0.5]
        # a1–b1 = 1/3, a2–b1 = 0
        assert sorted(stats.inter.tolist()) == [0.0, pytest.approx(1 / 3)]
        summary = stats.summary()
        assert summary["intra_mean"] == 0.5
        assert summary["inter_pairs"] == 2
