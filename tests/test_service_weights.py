"""Service weights learned from the references (idf): exact weights, decisions, explanations,
persistence, open-set folds and the evaluation grid, on hand-made references."""

from __future__ import annotations

import json
import math
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from controller.base.errors import InputError
from controller.engine.evaluate import EvalSettings, evaluate
from controller.engine.exporter import ExporterConfig
from controller.engine.fingerprints import FingerprintSet
from controller.engine.identify import References, enroll, identify, score
from controller.engine.report import write_report
from svcfp.cli import main
from tests.support.fingerprints import listed
from tests.test_evaluate import synthetic_dataset
from tests.test_evaluate_cli import EXPORTER, mac, write_inputs

# Type A uses only the rare service a; B, C and D share u and v and add one service each.
REFERENCES = (
    listed("a1", "a"),
    listed("b1", "u v b"),
    listed("c1", "u v c"),
    listed("d1", "u v d"),
)
LABELS = {"a1": "A", "b1": "B", "c1": "C", "d1": "D"}


def idf(types: int, users: int) -> float:
    """The smoothed inverse type frequency of a service `users` of `types` known types use."""
    return (1.0 + math.log((1.0 + types) / (1.0 + users))) / (1.0 + math.log(1.0 + types))


def references(weighting: str = "idf") -> References:
    return enroll(
        FingerprintSet.from_fingerprints(REFERENCES),
        LABELS,
        theta=0.0,
        weighting=weighting,  # type: ignore[arg-type]
    )


def query() -> FingerprintSet:
    return FingerprintSet.from_fingerprints([listed("q", "u v a")])


def test_idf_weights_are_exact() -> None:
    refs = references()
    axis = ("a", "b", "c", "d", "u", "v", "z")
    rare, common = idf(4, 1), idf(4, 3)
    assert refs.service_weights(axis).tolist() == pytest.approx(
        [rare, rare, rare, rare, common, common, 1.0], abs=1e-15
    )
    # A service no known type uses weighs 1; one every type would use weighs 1/(1 + ln(1 + T)).
    assert idf(4, 0) == 1.0
    assert idf(4, 4) == pytest.approx(1.0 / (1.0 + math.log(5.0)))
    assert references("none").service_weights(axis).tolist() == [1.0] * 7


def test_weights_scale_every_block_of_a_service() -> None:
    refs = references()
    axis = ("a", "u")
    scaled = refs.weigh(np.ones((2, 6)), axis)
    row = [idf(4, 1), idf(4, 3)] * 3
    np.testing.assert_allclose(scaled, [row, row], rtol=0, atol=1e-15)
    unchanged = np.ones((2, 6))
    assert references("none").weigh(unchanged, axis) is unchanged


def test_a_rare_shared_service_outweighs_two_common_ones() -> None:
    # Unweighted, q = {u, v, a} is closest to B (|{u,v}| / |{u,v,a,b}| = 1/2, A gets 1/3; C and
    # D tie with B, which comes first). With idf, a (one type) outweighs u and v (three types).
    plain = identify(query(), references("none"))[0]
    assert (plain.best_type, plain.similarity) == ("B", 0.5)
    weighted = identify(query(), references())[0]
    rare, common = idf(4, 1), idf(4, 3)
    assert weighted.best_type == "A"
    assert weighted.similarity == pytest.approx(rare / (rare + 2 * common), abs=1e-15)
    assert weighted.runner_up_similarity == pytest.approx(
        2 * common / (2 * common + 2 * rare), abs=1e-15
    )
    why = weighted.explanation
    # Shares stay exact: they sum to the similarity, Σnumerator / Σdenominator.
    shares = [c.share for c in (*why.matched, *why.unexpected, *why.missing)]
    assert math.fsum(shares) == pytest.approx(why.similarity, abs=1e-15)
    assert [c.service for c in why.matched] == ["a"]
    assert [c.service for c in why.unexpected] == ["u", "v"]
    assert why.denominator == pytest.approx(rare + 2 * common, abs=1e-15)
    scores = score(query(), references())
    assert scores.types == ("A", "B", "C", "D")
    assert float(scores.type_scores.max()) <= 1.0 and float(scores.type_scores.min()) >= 0.0


def test_a_fold_without_a_type_learns_its_weights_again() -> None:
    rest = references().without_types(["A"])
    # Three known types left, all using u and v.
    assert rest.service_weights(("u", "b")).tolist() == pytest.approx(
        [idf(3, 3), idf(3, 1)], abs=1e-15
    )
    assert idf(3, 3) == pytest.approx(1.0 / (1.0 + math.log(4.0)))


def test_prototypes_are_rounded_before_they_are_weighed() -> None:
    # B's two references {u, v, b} and {u, v}: b in half of them rounds up to a Service List
    # weight of 1, which idf then scales (b and v are used by one of the two types, u by both).
    fps = FingerprintSet.from_fingerprints(
        [listed("b1", "u v b"), listed("b2", "u v"), listed("c1", "u c")]
    )
    refs = enroll(fps, {"b1": "B", "b2": "B", "c1": "C"}, mode="centroid", weighting="idf")
    axis = ("b", "c", "u", "v")
    expected = [[idf(2, 1), 0.0, idf(2, 2), idf(2, 1)], [0.0, idf(2, 1), idf(2, 2), 0.0]]
    np.testing.assert_allclose(refs.centroids(axis), expected, rtol=0, atol=1e-15)


def test_weighting_survives_the_references_file(tmp_path: Path) -> None:
    path = tmp_path / "refs.json"
    references().save(path)
    again = References.load(path)
    assert again.weighting == "idf"
    assert identify(query(), again)[0].best_type == "A"
    data = json.loads(path.read_text())
    # A file written before service weights (no key) weighs every service alike.
    del data["weighting"]
    assert References.from_json(data).weighting == "none"
    data["weighting"] = "tfidf"
    with pytest.raises(InputError, match="weighting 'tfidf'"):
        References.from_json(data, source="refs.json")
    with pytest.raises(InputError, match="service weighting 'tfidf'"):
        replace(references(), weighting="tfidf")  # type: ignore[arg-type]


def test_the_evaluation_grid_compares_weightings(tmp_path: Path) -> None:
    settings = EvalSettings(
        granularities=(1,),
        intensities=(None,),
        exporter=ExporterConfig(tau=0.9, k=2, n_min=5, n_max=10),
        modes=("nearest",),
        weightings=("none", "idf"),
    )
    metrics = evaluate(synthetic_dataset(), settings)
    assert [(r.weighting, r.label) for r in metrics.results] == [
        ("none", "list, nearest, unit 10 s"),
        ("idf", "list, nearest, idf, unit 10 s"),
    ]
    # The three types use disjoint services: both weightings identify every test window, and
    # every left-out type (sharing nothing with the rest) comes out unknown.
    for result in metrics.results:
        assert result.closed_set.accuracy == 1.0
        assert result.closed_set.confusion.matrix == ((8, 0, 0), (0, 8, 0), (0, 0, 8))
        assert result.open_set.unknown_detection == 1.0
    write_report(metrics, tmp_path / "report")
    text = (tmp_path / "report" / "report.md").read_text()
    assert "| 10 | list | built-in | nearest | 48 | 24 | 1.000 | 1.000 |" in text
    assert "| 10 | list | built-in | nearest idf | 48 | 24 | 1.000 | 1.000 |" in text
    saved = json.loads((tmp_path / "report" / "metrics.json").read_text())
    assert saved["settings"]["weightings"] == ["none", "idf"]
    assert [r["weighting"] for r in saved["results"]] == ["none", "idf"]
    with pytest.raises(InputError, match="service weightings"):
        EvalSettings(weightings=("tfidf",))  # type: ignore[arg-type]


def test_enroll_identify_and_evaluate_with_idf_from_the_command_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    train, labels = write_inputs(tmp_path, devices=2, units=12)
    refs = tmp_path / "refs.json"
    args = ["--activity", str(train), "--labels", str(labels), *EXPORTER]
    assert main(["enroll", *args, "--out", str(refs), "--service-weighting", "idf"]) == 0
    assert "nearest, idf service weights, θ = " in capsys.readouterr().out
    saved = json.loads(refs.read_text())
    assert saved["weighting"] == "idf"
    (tmp_path / "later").mkdir()
    test, _ = write_inputs(tmp_path / "later", devices=1, units=4, first=9)
    status = main(
        ["identify", "--activity", str(test), "--references", str(refs), "--output-format", "json"]
    )
    assert status == 0
    decisions = json.loads(capsys.readouterr().out)
    # Every test device repeats its type's references exactly: weights cancel, similarity 1.
    assert sorted((d["device"], d["label"], d["similarity"]) for d in decisions) == sorted(
        (mac(kind, 9), kind, 1.0) for kind in ("camera", "plug", "hub")
    )
    out = tmp_path / "report"
    status = main(
        [
            *("evaluate", *args, "--out", str(out), "--granularities", "list"),
            *("--intensities", "none", "--modes", "nearest", "--service-weightings", "none,idf"),
            "--no-progress",
        ]
    )
    assert status == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert [(r["weighting"], r["closed_set"]["accuracy"]) for r in metrics["results"]] == [
        ("none", 1.0),
        ("idf", 1.0),
    ]
    capsys.readouterr()
    with pytest.raises(SystemExit) as bad:
        main(["evaluate", *args, "--out", str(out), "--service-weightings", "tfidf"])
    assert bad.value.code == 2
    assert "service weighting 'tfidf'" in capsys.readouterr().err
