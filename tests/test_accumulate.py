"""Per-type thresholds, calibrated confidence, decisions accumulated over a device's windows with
change detection, and the instance split, on cases computed by hand."""

from __future__ import annotations

import math

import numpy as np
import pytest

from controller.engine.accumulate import (
    CHANGE_ODDS,
    Accumulator,
    WindowDecision,
    accumulate,
)
from controller.engine.evaluate import accumulation, split_rows
from controller.engine.fingerprints import FingerprintSet
from controller.engine.identify import (
    TEMPERATURES,
    UNKNOWN,
    choose_thetas,
    enroll,
    identify,
    own_type_similarity,
    softmax,
    with_thresholds,
)
from tests.support.fingerprints import HAND_LABELS, HAND_REFERENCES, listed


class TestPerTypeTheta:
    def test_types_with_enough_references_get_their_own(self) -> None:
        # Leave-one-out: X 2/3, 2/3, 1/2; Y 1/2, 1/2; Z none. The 50th percentile (lower) of
        # all is 1/2; X has three values, so its own median, 2/3; Y (two) and Z fall back.
        refs = enroll(
            FingerprintSet.from_fingerprints(HAND_REFERENCES),
            HAND_LABELS,
            percentile=50.0,
            per_type=True,
        )
        assert refs.theta == 0.5
        assert refs.thetas == pytest.approx((2 / 3, 0.5, 0.5))
        assert choose_thetas(refs, 50.0, 0.25) == pytest.approx((2 / 3, 0.25, 0.25))

    def test_thresholds_chosen_after_enrolment_with_the_similarities_behind_them(self) -> None:
        fps = FingerprintSet.from_fingerprints(HAND_REFERENCES)
        refs, own = with_thresholds(enroll(fps, HAND_LABELS, theta=0.0), 50.0, per_type=True)
        assert refs.theta == 0.5
        assert refs.thetas == pytest.approx((2 / 3, 0.5, 0.5))
        # X's three, Y's two; Z has one reference and no leave-one-out similarity.
        np.testing.assert_array_equal(own, own_type_similarity(refs))
        assert sorted(own[~np.isnan(own)].tolist()) == pytest.approx([0.5, 0.5, 0.5, 2 / 3, 2 / 3])
        shared, _ = with_thresholds(enroll(fps, HAND_LABELS, theta=0.0), 50.0)
        assert (shared.theta, shared.thetas) == (0.5, None)

    def test_a_tight_type_rejects_what_the_global_theta_lets_in(self) -> None:
        fps = FingerprintSet.from_fingerprints(HAND_REFERENCES)
        typed = enroll(fps, HAND_LABELS, percentile=50.0, per_type=True)
        shared = enroll(fps, HAND_LABELS, percentile=50.0)
        # {a, g}: best X at 1/2 (x3), below X's own 2/3 but at the global 1/2.
        query = FingerprintSet.from_fingerprints([listed("q", "a g"), listed("r", "a c")])
        assert [d.label for d in identify(query, shared)] == ["X", "X"]
        by_type = identify(query, typed)
        assert [d.label for d in by_type] == [UNKNOWN, "X"]
        assert [d.theta for d in by_type] == pytest.approx([2 / 3, 2 / 3])

    def test_an_explicit_theta_applies_to_every_type(self) -> None:
        refs = enroll(
            FingerprintSet.from_fingerprints(HAND_REFERENCES),
            HAND_LABELS,
            percentile=50.0,
            per_type=True,
        )
        assert refs.with_settings(theta=0.1).thetas is None


class TestConfidence:
    def test_confidence_is_the_softmax_at_the_fitted_temperature(self) -> None:
        refs = enroll(
            FingerprintSet.from_fingerprints(HAND_REFERENCES), HAND_LABELS, percentile=0.0
        )
        assert refs.temperature in TEMPERATURES.tolist()
        assert refs.temperature is not None
        (decision,) = identify(FingerprintSet.from_fingerprints([listed("q", "a b")]), refs)
        # Type scores: X 1 (x1), Y 0, Z 0.
        t = refs.temperature
        assert decision.confidence == pytest.approx(1 / (1 + 2 * math.exp(-1 / t)))
        probs = softmax(np.array([[1.0, 0.0, 0.0]]), t)
        assert probs.sum() == pytest.approx(1.0) and probs[0, 0] == pytest.approx(
            decision.confidence
        )

    def test_no_calibration_without_two_references_of_a_type(self) -> None:
        fps = FingerprintSet.from_fingerprints([listed("x1", "a"), listed("y1", "b")])
        refs = enroll(fps, {"x1": "X", "y1": "Y"}, theta=0.5)
        assert refs.temperature is None
        (decision,) = identify(FingerprintSet.from_fingerprints([listed("q", "a")]), refs)
        assert math.isnan(decision.confidence)
        assert decision.to_json()["confidence"] is None


class TestAccumulation:
    TYPES = ("A", "B", "C")

    def test_evidence_adds_up_over_windows(self) -> None:
        acc = Accumulator(self.TYPES)
        first = acc.update("d", 1, "A", 0.9, True)
        assert (first.label, first.windows) == ("A", 1)
        assert first.confidence == pytest.approx(0.9)
        second = acc.update("d", 2, "A", 0.9, True)
        assert second.confidence == pytest.approx(0.81 / (0.81 + 2 * 0.05**2))

    def test_evidence_alone_follows_a_short_history(self) -> None:
        acc = Accumulator(self.TYPES)
        beliefs = [acc.update("d", u, "A", 0.9, True) for u in (1, 2)]
        beliefs += [acc.update("d", u, "B", 0.8, True) for u in (3, 4, 5, 6)]
        # After the third B window B has more evidence (2 log .05 + 3 log .8 against
        # 2 log .9 + 3 log .1): the label moves without a declared change.
        assert [b.label for b in beliefs] == ["A", "A", "A", "A", "B", "B"]
        assert not any(b.changed for b in beliefs)

    def test_a_change_of_behaviour_restarts_a_long_history(self) -> None:
        acc = Accumulator(self.TYPES)
        beliefs = [acc.update("d", u, "A", 0.9, True) for u in range(10)]
        # Ten A windows hold log(.9/.05) = 2.89 each against B. Each B window at 0.8 (others
        # 0.1) adds log 8 = 2.08 to the CUSUM: the fourth passes log(1000) = 6.9, long before
        # the evidence would turn.
        beliefs += [acc.update("d", u, "B", 0.8, True) for u in range(10, 14)]
        assert [b.changed for b in beliefs[10:]] == [False, False, False, True]
        assert [b.label for b in beliefs[10:]] == ["A", "A", "A", "B"]
        assert beliefs[-1].windows == 1 and beliefs[-1].confidence == pytest.approx(0.8)
        assert 3 * math.log(8) < math.log(CHANGE_ODDS) < 4 * math.log(8)

    def test_unknown_windows_make_an_unknown_device_and_count_as_change(self) -> None:
        acc = Accumulator(self.TYPES)
        assert acc.update("d", 1, "A", 0.9, False).label == UNKNOWN
        assert acc.update("d", 2, "A", 0.9, True).label == "A"
        assert acc.update("d", 3, "A", 0.9, False).label == UNKNOWN

    def test_uncalibrated_confidence_counts_as_nearly_sure(self) -> None:
        belief = Accumulator(self.TYPES).update("d", 1, "B", math.nan, True)
        assert belief.confidence == pytest.approx(0.98)

    def test_accumulation_summary_and_spliced_change_detection(self) -> None:
        windows = [WindowDecision("a", u, u + 1, "A", 0.9, True) for u in range(6)]
        windows.append(WindowDecision("a", 6, 7, "B", 0.6, True))
        windows += [WindowDecision("b", u, u + 1, "B", 0.9, True) for u in range(5)]
        summary = accumulation(self.TYPES, windows, {"a": "A", "b": "B"})
        assert (summary.windows, summary.window_accuracy) == (12, 11 / 12)
        # One wrong window does not move a's accumulated answer: every window ends right.
        assert summary.accuracy == 1.0
        device_a = summary.devices[0]
        assert (device_a.device, device_a.settled_units, device_a.changes) == ("a", 1, 0)
        # a then b under a's name, and b then a: both changes are found at the third window
        # (each adds log(.9/.05) = 2.89; a's own last window had added log 3 already).
        assert (summary.spliced, summary.detected, summary.detection_delay_median) == (2, 2, 3.0)
        assert accumulate(self.TYPES, windows)[-1].device == "a"


class TestSiblings:
    TYPES = ("A", "B", "C")
    FAMILIES = (("A", "B"),)

    def _beliefs(self, families: tuple[tuple[str, ...], ...], then: str) -> list[tuple[str, bool]]:
        acc = Accumulator(self.TYPES, families)
        beliefs = [acc.update("d", u, "A", 0.9, True) for u in range(4)]
        beliefs += [acc.update("d", u, then, 0.9, True) for u in range(4, 9)]
        return [(b.label, b.changed) for b in beliefs[4:]]

    def test_windows_of_a_sibling_declare_no_change(self) -> None:
        # Each B window adds log(.9/.05) = 2.89: without families the third declares a change.
        assert self._beliefs((), "B") == [
            ("A", False), ("A", False), ("B", True), ("B", False), ("B", False)
        ]  # fmt: skip
        # With A and B siblings, B's windows count against a change as A's would; the label
        # moves to B once B's evidence passes A's (the fifth, a tie at the fourth stays A).
        assert self._beliefs(self.FAMILIES, "B") == [
            ("A", False), ("A", False), ("A", False), ("A", False), ("B", False)
        ]  # fmt: skip

    def test_a_type_of_another_family_is_still_a_change(self) -> None:
        assert self._beliefs(self.FAMILIES, "C") == self._beliefs((), "C")
        assert [changed for _, changed in self._beliefs(self.FAMILIES, "C")].count(True) == 1

    def test_spliced_siblings_are_no_change_to_detect(self) -> None:
        windows = [
            WindowDecision(device, u, u + 1, kind, 0.9, True)
            for device, kind in (("a", "A"), ("b", "B"), ("c", "C"))
            for u in range(3)
        ]
        truth = {"a": "A", "b": "B", "c": "C"}
        summary = accumulation(self.TYPES, windows, truth)
        assert (summary.spliced, summary.detected, summary.detection_delay_median) == (6, 6, 3.0)
        summary = accumulation(self.TYPES, windows, truth, families=self.FAMILIES)
        # a then b and b then a are left out: 4 pairs, each found at the third window.
        assert (summary.spliced, summary.detected, summary.detection_delay_median) == (4, 4, 3.0)


class TestInstanceSplit:
    def test_types_with_several_devices_split_by_device(self) -> None:
        fps = FingerprintSet.from_fingerprints(
            [listed(d, "a", start=start) for d in ("a1", "a2", "a3") for start in (0, 10)]
            + [listed("b1", "b", start=start) for start in (0, 10, 20, 30)]
        )
        labels = {"a1": "A", "a2": "A", "a3": "A", "b1": "B"}
        split = split_rows(fps, labels, None, "instance", 0.5)
        names = fps.device_names
        assert sorted((names[i], int(fps.start[i])) for i in split.train) == [
            ("a1", 0),
            ("a1", 10),
            ("b1", 0),
            ("b1", 10),
        ]
        assert sorted({names[i] for i in split.test}) == ["a2", "a3", "b1"]
