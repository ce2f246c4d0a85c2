"""Enrolment, θ selection, closed/open-set decisions and explanations on hand-made references."""

from __future__ import annotations

import json
from fractions import Fraction
from pathlib import Path

import numpy as np
import pytest

from controller.base.errors import InputError
from controller.engine.fingerprints import Fingerprint, FingerprintSet
from controller.engine.identify import (
    UNKNOWN,
    LeftOut,
    References,
    calibrated,
    choose_theta,
    enroll,
    explain,
    identify,
    left_out_accuracy,
    own_type_similarity,
    score,
)
from tests.support.engine import contributions
from tests.support.fingerprints import HAND_LABELS, HAND_REFERENCES, listed


def references(mode: str = "nearest", theta: float | None = None) -> References:
    return enroll(
        FingerprintSet.from_fingerprints(HAND_REFERENCES),
        HAND_LABELS,
        mode=mode,  # type: ignore[arg-type]
        theta=theta,
        percentile=0.0,
    )


class TestTheta:
    def test_nearest_leave_one_out_similarities(self) -> None:
        # x1: max(J(x1,x2)=2/3, J(x1,x3)=1/2); x2: max(2/3, 1/3); x3: max(1/2, 1/3);
        # y1, y2: 1/2; z1 has no other reference of its type.
        values = own_type_similarity(references())
        assert values[:5] == pytest.approx([2 / 3, 2 / 3, 1 / 2, 1 / 2, 1 / 2])
        assert np.isnan(values[5])

    def test_centroid_leave_one_out_similarities(self) -> None:
        # Without x1: mean {a:1, b:.5, c:.5} rounds to {a,b,c} → J = 2/3. Without x2: {a,b} → 2/3.
        # Without x3: {a,b,c} → 1/3. Without y1: {d,e} → 1/2; without y2: {d} → 1/2.
        values = own_type_similarity(references("centroid"))
        assert values[:5] == pytest.approx([2 / 3, 2 / 3, 1 / 3, 1 / 2, 1 / 2])

    @pytest.mark.parametrize(
        ("mode", "percentile", "expected"),
        [
            ("nearest", 0.0, 0.5),
            ("nearest", 50.0, 0.5),
            ("nearest", 80.0, 2 / 3),
            ("centroid", 0.0, 1 / 3),
            ("centroid", 30.0, 0.5),
        ],
    )
    def test_theta_is_a_low_percentile_of_observed_values(
        self, mode: str, percentile: float, expected: float
    ) -> None:
        assert choose_theta(references(mode), percentile) == pytest.approx(expected)

    def test_enroll_sets_theta_unless_given(self) -> None:
        assert references().theta == 0.5
        assert references(theta=0.9).theta == 0.9

    def test_theta_needs_a_type_with_two_references(self) -> None:
        only = FingerprintSet.from_fingerprints([listed("x1", "a"), listed("y1", "d")])
        with pytest.raises(InputError, match="give θ explicitly"):
            enroll(only, {"x1": "X", "y1": "Y"})


def queries(granularity: int | None = 1) -> FingerprintSet:
    return FingerprintSet.from_fingerprints(
        [
            listed("q1", "a b", granularity),
            listed("q2", "d e g", granularity),
            listed("q3", "z", granularity),
            listed("q4", "f", granularity),
            listed("q5", "a b c d e f g h", granularity),
        ]
    )


class TestLeftOutAccuracy:
    def test_share_of_references_whose_best_other_type_is_their_own(self) -> None:
        # x1: X (x2) 2/3 ties Y (y1) 2/3, the first type wins: right. x2: Y's y1 (1) beats X's
        # x1 (2/3): wrong. y1: X's x2 (1) beats Y's y2 (0): wrong. y2: 0 for both, X: wrong.
        fps = FingerprintSet.from_fingerprints(
            [listed("x1", "a b"), listed("x2", "a b c"), listed("y1", "a b c"), listed("y2", "d")]
        )
        refs = enroll(fps, {"x1": "X", "x2": "X", "y1": "Y", "y2": "Y"}, theta=0.0)
        assert left_out_accuracy(refs) == 0.25
        assert left_out_accuracy(refs, np.array([0, 1])) == 0.5
        assert left_out_accuracy(refs, np.array([2])) == 0.0
        # Calibration's sample (every reference here) stands for the rows it scored.
        fitted, sample = calibrated(refs)
        assert sample.rows.tolist() == [0, 1, 2, 3]
        assert left_out_accuracy(refs, sample=sample) == 0.25
        last_two = LeftOut(sample.rows[2:], sample.scores[2:], sample.winners[2:])
        assert left_out_accuracy(refs, sample=last_two) == 0.0
        # The same fit enrolment made.
        assert fitted.temperature is not None
        assert (fitted.temperature, fitted.families) == (refs.temperature, refs.families)

    def test_votes_decide_with_several_neighbours(self) -> None:
        # Left out, x1 = {a,b,c,d} is nearest to y1 = {a,b,c,d,e} (4/5), then x2 (3/4) and x3
        # (1/2): wrong alone, right by two votes of three. y1's nearest three are X's: wrong
        # either way. The rest are right either way (y2 and y3 = {e,f} are each other's nearest,
        # and y1 is their second).
        fps = FingerprintSet.from_fingerprints(
            [
                listed("x1", "a b c d"),
                listed("x2", "a b c"),
                listed("x3", "a b"),
                listed("y1", "a b c d e"),
                listed("y2", "e f"),
                listed("y3", "e f"),
            ]
        )
        labels = dict(zip(["x1", "x2", "x3", "y1", "y2", "y3"], "XXXYYY", strict=True))
        alone = enroll(fps, labels, theta=0.0)
        voting = enroll(fps, labels, theta=0.0, neighbours=3)
        assert left_out_accuracy(alone) == pytest.approx(4 / 6)
        assert left_out_accuracy(voting) == pytest.approx(5 / 6)
        assert left_out_accuracy(alone, np.array([0])) == 0.0
        assert left_out_accuracy(voting, np.array([0])) == 1.0
        # The same decision `score` makes for x1 against the other five.
        others = enroll(fps.select(np.arange(1, 6)), labels, theta=0.0, neighbours=3)
        x1 = fps.select(np.array([0]))
        assert (score(x1, others).winner.tolist(), others.types) == ([0], ("X", "Y"))

    def test_nothing_to_leave_out_is_nan(self) -> None:
        fps = FingerprintSet.from_fingerprints([listed("x1", "a"), listed("y1", "b")])
        refs = enroll(fps, {"x1": "X", "y1": "Y"}, theta=0.0)
        assert np.isnan(left_out_accuracy(refs))


class TestDecisions:
    def test_closed_and_open_set_labels(self) -> None:
        decisions = identify(queries(), references())
        got = [(d.device, d.label, d.best_type, round(d.similarity, 6)) for d in decisions]
        assert got == [
            ("q1", "X", "X", 1.0),
            ("q2", "Y", "Y", round(2 / 3, 6)),
            ("q3", UNKNOWN, "X", 0.0),
            ("q4", "Z", "Z", 1.0),
            # Best is x2 = {a,b,c}: 3 of 8 services in common, below θ = 0.5.
            ("q5", UNKNOWN, "X", 0.375),
        ]
        assert decisions[1].reference == "y2@0-10"
        assert decisions[1].runner_up == "X"
        assert decisions[1].runner_up_similarity == 0.0

    def test_centroid_mode_labels(self) -> None:
        # Prototypes: X = {a,b} (c in 1 of 3), Y = {d,e} (e in 1 of 2 rounds up), Z = {f}.
        decisions = identify(queries(), references("centroid", theta=0.5))
        assert [d.label for d in decisions] == ["X", "Y", UNKNOWN, "Z", UNKNOWN]
        assert decisions[0].reference == "prototype of X"
        assert decisions[4].similarity == pytest.approx(2 / 8)

    def test_scores_matrix(self) -> None:
        scores = score(queries(), references())
        assert scores.types == ("X", "Y", "Z")
        assert scores.type_scores[1].tolist() == pytest.approx([0.0, 2 / 3, 0.0])
        assert scores.best.tolist() == pytest.approx([1.0, 2 / 3, 0.0, 1.0, 0.375])

    def test_neighbour_vote(self) -> None:
        # q = {a,b,c}: Y's only reference is identical (1.0), X's two score 3/4 each. The single
        # nearest neighbour says Y; three neighbours vote X two to one.
        refs = enroll(
            FingerprintSet.from_fingerprints(
                [listed("x1", "a b c d"), listed("x2", "a b c e"), listed("y1", "a b c")]
            ),
            {"x1": "X", "x2": "X", "y1": "Y"},
            theta=0.0,
        )
        query = FingerprintSet.from_fingerprints([listed("q", "a b c")])
        assert identify(query, refs)[0].label == "Y"
        voted = identify(query, refs.with_settings(neighbours=3))[0]
        assert (voted.label, voted.similarity, voted.reference) == ("X", 0.75, "x1@0-10")

    def test_representation_mismatch_is_an_input_error(self) -> None:
        with pytest.raises(InputError, match="prevalence representation"):
            score(queries(None), references())


class TestExplanation:
    def test_set_explanation(self) -> None:
        decision = identify(queries(), references())[1]
        why = decision.explanation
        assert [c.service for c in why.matched] == ["d", "e"]
        assert [c.service for c in why.unexpected] == ["g"]
        assert why.missing == ()
        assert [c.share for c in contributions(why)] == pytest.approx([1 / 3, 1 / 3, 0.0])
        assert (why.numerator, why.denominator) == (2.0, 3.0)

    def test_weighted_contributions_sum_exactly_to_the_similarity(self) -> None:
        services = ["a", "b", "c", "d"]
        why = explain([0.5, 1.0, 0.25, 0.0], [1.0, 0.75, 0.0, 0.5], services)
        # Σmin = .5 + .75 = 1.25, Σmax = 1 + 1 + .25 + .5 = 2.75
        assert (why.numerator, why.denominator) == (1.25, 2.75)
        assert why.similarity == 1.25 / 2.75
        assert [c.service for c in why.matched] == ["b", "a"]
        assert [(c.service, c.denominator) for c in why.unexpected] == [("c", 0.25)]
        assert [(c.service, c.denominator) for c in why.missing] == [("d", 0.5)]
        numerator = sum(Fraction(c.numerator) for c in contributions(why))
        denominator = sum(Fraction(c.denominator) for c in contributions(why))
        assert numerator / denominator == Fraction(5, 11)
        assert sum(c.share for c in contributions(why)) == pytest.approx(why.similarity, abs=1e-15)

    def test_every_decision_explains_its_similarity(self) -> None:
        rng = np.random.default_rng(3)
        names = tuple(f"s{i}" for i in range(8))
        fps = [
            Fingerprint(f"d{i}", 0, 9, None, names, rng.integers(0, 10, 8) / 9.0, True, 1.0)
            for i in range(12)
        ]
        labels = {f"d{i}": "T" + str(i % 3) for i in range(12)}
        refs = enroll(FingerprintSet.from_fingerprints(fps[:9]), labels)
        for decision in identify(FingerprintSet.from_fingerprints(fps[9:]), refs):
            why = decision.explanation
            assert decision.similarity == why.numerator / why.denominator
            assert sum(c.share for c in contributions(why)) == pytest.approx(
                decision.similarity, abs=1e-12
            )
            assert json.loads(json.dumps(decision.to_json()))["label"] == decision.label


class TestPersistence:
    def test_save_and_load_round_trip(self, tmp_path: Path) -> None:
        refs = references("centroid")
        path = tmp_path / "refs.json"
        refs.save(path)
        again = References.load(path)
        assert again.labels == refs.labels
        assert again.origins == refs.origins
        assert (again.mode, again.theta, again.granularity) == ("centroid", refs.theta, 1)
        assert np.array_equal(again.weights, refs.weights)
        assert [d.label for d in identify(queries(), again)] == [
            d.label for d in identify(queries(), refs)
        ]

    def test_bad_file_names_the_input(self, tmp_path: Path) -> None:
        path = tmp_path / "refs.json"
        path.write_text("{not json")
        with pytest.raises(InputError, match=r"refs\.json: line 1: not JSON"):
            References.load(path)
        path.write_text(json.dumps({"format": "other"}))
        with pytest.raises(InputError, match="not an svcfp references file"):
            References.load(path)

    @pytest.mark.parametrize(
        ("change", "message"),
        [
            ({"neighbours": float("inf")}, r"cannot convert float infinity to integer"),
            ({"theta": float("nan")}, r"thresholds must be finite numbers"),
            ({"temperature": -1.0}, r"temperature -1.0 must be a positive number"),
            ({"weight": 1e308}, r"weights must lie in \[0, 1\]"),
            ({"usage": 10**30}, r"usage of \S+ out of range \(0..2\^56\)"),
            ({"theta": 5.0}, r"thresholds must be finite numbers in \[0, 1\], as similarities"),
            ({"theta": -1.0}, r"thresholds must be finite numbers in \[0, 1\], as similarities"),
            ({"usage": []}, r"usage of \S+: expected 3 counts \(units, packets, bytes\), got \[\]"),
            ({"unit_seconds": 1e308}, r"unit_seconds 1e\+308 must be a number of seconds in "),
        ],
    )
    def test_values_no_enrolment_writes_are_refused(
        self, tmp_path: Path, change: dict[str, float | list[int]], message: str
    ) -> None:
        path = tmp_path / "refs.json"
        references().save(path)
        data = json.loads(path.read_text())
        entry = data["references"][0]
        service = next(iter(entry["weights"]))
        for key, value in change.items():
            if key == "weight":
                entry["weights"][service] = value
            elif key == "usage":
                # Active units, packets and bytes of every service a reference uses.
                for each in data["references"]:
                    each["usage"] = {name: [1, 2, 120] for name in each["weights"]}
                if isinstance(value, list):
                    entry["usage"][service] = value
                else:
                    entry["usage"][service][1] = value
            else:
                data[key] = value
        path.write_text(json.dumps(data))
        with pytest.raises(InputError, match=rf"refs\.json: malformed references: {message}"):
            References.load(path)
