"""Known-vs-unknown scores of the open-set study, exact values."""

from __future__ import annotations

import math

import numpy as np
import pytest

from controller.engine.evaluate import OPEN_SET_SCORES, open_set_scores


def test_every_score_of_two_windows() -> None:
    # Types A, B, C; C is left out of this fold (−∞).
    type_scores = np.array([[0.9, 0.5, -np.inf], [0.4, 0.6, -np.inf]])
    labels = ["A", "A", "A", "B", "B"]
    own = np.array([0.8, 0.9, 0.7, 0.5, math.nan])
    thetas = {"A": 0.75, "B": 0.45, "C": 0.0}
    found = open_set_scores(type_scores, ("A", "B", "C"), labels, own, thetas)
    assert list(found) == list(OPEN_SET_SCORES)
    assert found["similarity"].tolist() == pytest.approx([0.9, 0.6])
    assert found["margin to type θ"].tolist() == pytest.approx([0.15, 0.15])
    assert found["margin to second type"].tolist() == pytest.approx([0.4, 0.2])
    assert found["distance ratio"].tolist() == pytest.approx([1 - 0.1 / 0.5, 1 - 0.4 / 0.6])
    # A's own similarities 0.8, 0.9, 0.7: mean 0.8, spread sqrt(2/3)/10. B has one value, so
    # it is standardised by all four (mean 0.725).
    spread_a = float(np.std([0.8, 0.9, 0.7]))
    all_four = [0.8, 0.9, 0.7, 0.5]
    z_b = (0.6 - float(np.mean(all_four))) / float(np.std(all_four))
    assert found["type z-score"].tolist() == pytest.approx([0.1 / spread_a, z_b])


def test_a_single_remaining_type_has_no_second() -> None:
    found = open_set_scores(
        np.array([[0.3, -np.inf]]), ("A", "B"), ["A", "A"], np.array([0.5, 0.5]), {"A": 0.2}
    )
    # Without a second type the margin is the similarity itself; an own-type spread of 0 is
    # floored at 0.001.
    assert found["margin to second type"].tolist() == pytest.approx([0.3])
    assert found["distance ratio"].tolist() == pytest.approx([0.3])
    assert found["type z-score"].tolist() == pytest.approx([(0.3 - 0.5) / 1e-3])
