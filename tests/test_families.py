"""Sibling families: types the references cannot tell apart, the open set with whole families
left out, and accuracy where a sibling's name counts as right, on hand-made data."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest

from controller.base.errors import InputError
from controller.control.live import LiveIdentification, LiveSettings, decision_record
from controller.engine.accumulate import Accumulator
from controller.engine.activity import ActivityTable
from controller.engine.evaluate import Dataset, EvalSettings, evaluate, family_accuracy, open_set
from controller.engine.exporter import ExporterConfig
from controller.engine.fingerprints import FingerprintSet
from controller.engine.identify import (
    SIBLING_SHARE,
    References,
    enroll,
    identify,
    own_type_similarity,
    sibling_families,
)
from controller.engine.report import write_report
from controller.engine.results import Confusion
from controller.store.storage import Storage
from svcfp.cli import main
from tests.support.fingerprints import listed

# A and S use the same services; a quarter of C's references (c1) is closer to B than to C;
# E's two references share nothing, with each other or anyone.
TYPES = {
    "A": ("x y", "x y", "x y z"),
    "S": ("x y", "x y w"),
    "B": ("p", "p"),
    "C": ("p q r", "r t", "r t", "r t"),
    "E": ("u", "v"),
}
"""Each type's references' services; reference i of type A is device "a<i>"."""
REFERENCES = {
    f"{kind.lower()}{i}": (kind, services)
    for kind, listed_services in TYPES.items()
    for i, services in enumerate(listed_services, 1)
}


def references(share: float = SIBLING_SHARE) -> References:
    fps = FingerprintSet.from_fingerprints(
        [listed(name, services) for name, (_, services) in REFERENCES.items()]
    )
    labels = {name: kind for name, (kind, _) in REFERENCES.items()}
    return enroll(fps, labels, theta=0.5, sibling_share=share)


class TestSiblingFamilies:
    def test_types_whose_references_score_another_type_as_high(self) -> None:
        # A's references score S as high as A (1 = 1, 2/3 = 2/3), S's score A higher; c1 scores
        # B 1/3 against C 1/4: one of C's four references. E's similarities are all 0.
        assert sibling_families(references()) == (("A", "S"), ("B", "C"))

    def test_share_of_references_that_must_be_confused(self) -> None:
        assert sibling_families(references(), share=0.3) == (("A", "S"),)
        assert sibling_families(references(), share=1.0) == (("A", "S"),)
        # Enrolment at a share of its own keeps what that share finds.
        assert references().families == (("A", "S"), ("B", "C"))
        assert references(0.3).families == (("A", "S"),)

    @pytest.mark.parametrize("share", [0.0, -0.25, 1.5])
    def test_a_share_outside_zero_to_one_is_refused(self, share: float) -> None:
        message = rf"sibling share {share:g}: .* lies in \(0, 1\]"
        with pytest.raises(InputError, match=message):
            sibling_families(references(), share=share)
        with pytest.raises(InputError, match=message):
            references(share)
        with pytest.raises(InputError, match=message):
            EvalSettings(sibling_share=share)

    def test_no_families_among_separate_types(self) -> None:
        refs = references().without_types(["S", "C"])
        assert sibling_families(refs) == ()


class TestEnrolledFamilies:
    def test_enrolment_finds_them_and_the_file_keeps_them(self) -> None:
        refs = references()
        assert refs.families == (("A", "S"), ("B", "C"))
        again = References.from_json(json.loads(json.dumps(refs.to_json())))
        assert again.families == refs.families
        # A family losing all but one type is no family.
        assert refs.without_types(["S"]).families == (("B", "C"),)

    def test_another_theta_or_k_keeps_what_enrolment_learned(self) -> None:
        refs = references()
        assert refs.temperature is not None
        changed = refs.with_settings(theta=0.3, neighbours=3)
        assert (changed.theta, changed.neighbours) == (0.3, 3)
        assert (changed.families, changed.temperature) == (refs.families, refs.temperature)

    @pytest.mark.parametrize(
        ("families", "message"),
        [
            ([["A", "Q"]], "no reference is of type Q"),
            ([["A"]], "two known types each"),
            (["AS"], "a list of lists of types"),
        ],
    )
    def test_a_family_of_types_the_file_does_not_have_is_refused(
        self, families: list[object], message: str
    ) -> None:
        data = references().to_json() | {"families": families}
        with pytest.raises(InputError, match=message):
            References.from_json(data, "refs.json")

    def test_decisions_name_the_winners_siblings(self) -> None:
        test = FingerprintSet.from_fingerprints(
            [listed("ta", "x y"), listed("tb", "p"), listed("te", "u"), listed("tn", "n")]
        )
        decisions = identify(test, references())
        found = [(d.device, d.label, d.best_type, d.siblings) for d in decisions]
        # {n} shares nothing: similarity 0 < θ, unknown; its best type (A, the first on a
        # tie) still has its sibling.
        assert found == [
            ("ta", "A", "A", ("S",)),
            ("tb", "B", "B", ("C",)),
            ("te", "E", "E", ()),
            ("tn", "unknown", "A", ("S",)),
        ]
        assert decisions[0].to_json()["siblings"] == ["S"]
        assert decision_record(decisions[1], "list", 0.0).explanation["siblings"] == ["C"]


TEST_WINDOWS = {"ta": ("A", "x y"), "ts": ("S", "x y"), "tb": ("B", "p")}


class TestFamiliesLeftOut:
    def _open_set(self, groups: tuple[tuple[str, ...], ...]) -> list[tuple[object, ...]]:
        test = FingerprintSet.from_fingerprints(
            [listed(name, services) for name, (_, services) in TEST_WINDOWS.items()]
        )
        truth = [kind for kind, _ in TEST_WINDOWS.values()]
        found = open_set(references(), test, truth, 5.0, 0.5, groups=groups)
        return [
            (f.left_out, f.n_unknown, f.n_known, f.unknown_detection, f.known_accuracy, f.auroc)
            for f in found.folds
        ]

    def test_the_callers_leave_one_out_similarities_serve_every_fold(self) -> None:
        refs = references()
        test = FingerprintSet.from_fingerprints(
            [listed(name, services) for name, (_, services) in TEST_WINDOWS.items()]
        )
        truth = [kind for kind, _ in TEST_WINDOWS.values()]
        chosen = open_set(refs, test, truth, 5.0, None)
        given = open_set(refs, test, truth, 5.0, None, own=own_type_similarity(refs))
        assert [(f.left_out, f.theta, f.auroc) for f in given.folds] == [
            (f.left_out, f.theta, f.auroc) for f in chosen.folds
        ]
        # Given similarities of 1 for every reference, every fold's θ is 1.
        ones = open_set(refs, test, truth, 5.0, None, own=np.ones(len(refs.labels)))
        assert [f.theta for f in ones.folds] == [1.0] * len(chosen.folds)
        assert [f.theta for f in chosen.folds] != [1.0] * len(chosen.folds)

    def test_a_family_leaves_as_one_fold(self) -> None:
        # Without A and S both test windows share nothing with what is left: unknown. Without
        # B, its window's best is c1 at 1/3 < θ: unknown; the S window ties A and S at 1 and
        # is named A (the first type), so half the known windows are right.
        assert self._open_set((("A", "S"),)) == [
            ("A + S", 2, 1, 1.0, 1.0, 1.0),
            ("B", 1, 2, 1.0, 0.5, 1.0),
        ]

    def test_a_sibling_left_out_alone_is_taken_for_the_other(self) -> None:
        # Either sibling left out alone, its window scores the other 1, as every known does.
        folds = self._open_set(())
        assert folds[0] == ("A", 1, 2, 0.0, 1.0, 0.5)
        assert folds[2] == ("S", 1, 2, 0.0, 1.0, 0.5)

    def test_family_accuracy_counts_a_siblings_name_as_right(self) -> None:
        confusion = Confusion.of(("A", "B", "S"), np.array([[3, 0, 1], [1, 2, 0], [2, 0, 1]]))
        # A→S and S→A count, B→A does not: (3 + 1 + 2 + 2 + 1) of 10.
        assert family_accuracy(confusion, (("A", "S"),)) == pytest.approx(0.9)
        assert math.isnan(family_accuracy(confusion, ()))


def sibling_dataset() -> Dataset:
    """Two camera types on the same services, a plug on its own; two devices each."""
    services = {"cam": ["tcp/443", "tcp/554"], "cam2": ["tcp/443", "tcp/554"], "plug": ["udp/9999"]}
    rows = []
    labels = {}
    for k, (kind, used) in enumerate(services.items()):
        for i in (1, 2):
            mac = f"02:00:00:00:{k:02x}:0{i}"
            labels[mac] = kind
            rows += [(mac, unit, s, 2, 200) for unit in range(40) for s in used]
    return Dataset(ActivityTable.from_records(rows, unit_seconds=10.0), labels, name="siblings")


def test_evaluation_reports_families(tmp_path: Path) -> None:
    settings = EvalSettings(
        granularities=(1,),
        intensities=(None,),
        modes=("nearest",),
        exporter=ExporterConfig(tau=0.9, k=2, n_min=5, n_max=10),
    )
    metrics = evaluate(sibling_dataset(), settings)
    (result,) = metrics.results
    assert result.families == (("cam", "cam2"),)
    # Every camera window ties both camera types and is named "cam": 8 of 16 camera windows
    # wrong by type, none by family.
    assert result.closed_set.accuracy == pytest.approx(16 / 24)
    assert result.family_accuracy == 1.0
    by_type = {f.left_out: f.unknown_detection for f in result.open_set.folds}
    assert by_type == {"cam": 0.0, "cam2": 0.0, "plug": 1.0}
    families = result.open_set_families
    assert families is not None
    assert [(f.left_out, f.n_unknown, f.n_known) for f in families.folds] == [
        ("cam + cam2", 16, 8),
        ("plug", 8, 16),
    ]
    assert [f.unknown_detection for f in families.folds] == [1.0, 1.0]
    assert families.auroc == 1.0
    assert result.open_set.auroc < 1.0
    write_report(metrics, tmp_path)
    report = (tmp_path / "report.md").read_text()
    assert "## Sibling families" in report
    assert "(a share of 0.25 or more of a type's references, each left out," in report
    assert "| 10 | list | built-in | nearest | cam + cam2 | 0.667 | 1.000 |" in report
    theta = f"{families.folds[0].theta:.3f}"
    assert f"| cam + cam2 | 16 | 8 | {theta} | 1.000 | 1.000 | 1.000 |" in report
    saved = json.loads((tmp_path / "metrics.json").read_text())
    assert saved["settings"]["sibling_share"] == SIBLING_SHARE == 0.25
    (stored,) = saved["results"]
    assert stored["families"] == [["cam", "cam2"]]
    assert stored["family_accuracy"] == 1.0
    assert [f["left_out"] for f in stored["open_set_families"]["folds"]] == ["cam + cam2", "plug"]


def test_enroll_and_identify_say_which_types_are_not_told_apart(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    dataset = sibling_dataset()
    activity = tmp_path / "activity.csv"
    dataset.activity.to_csv(activity)
    labels = tmp_path / "labels.csv"
    labels.write_text("mac,label\n" + "".join(f"{m},{t}\n" for m, t in dataset.labels.items()))
    refs = tmp_path / "refs.json"
    exporter = ["--time-unit", "10", "--tau", "0.9", "--k", "2", "--n-min", "5", "--n-max", "10"]
    args = ["--activity", str(activity), *exporter]
    assert main(["enroll", *args, "--labels", str(labels), "--out", str(refs)]) == 0
    out = capsys.readouterr().out
    assert "  not told apart: cam + cam2\n" in out
    assert json.loads(refs.read_text())["families"] == [["cam", "cam2"]]
    assert main(["identify", *args, "--references", str(refs)]) == 0
    lines = capsys.readouterr().out.splitlines()[1:]
    cameras = [line for line in lines if line.startswith("02:00:00:00:00:")]
    plugs = [line for line in lines if line.startswith("02:00:00:00:02:")]
    assert cameras and all(line.endswith("\tnot told apart from: cam2") for line in cameras)
    assert plugs and not any("not told apart" in line for line in plugs)
    # A share out of range is refused, naming it, and the references written before stay.
    before = refs.read_bytes()
    bad = ["enroll", *args, "--labels", str(labels), "--out", str(refs), "--sibling-share", "2"]
    assert main(bad) != 0
    assert "sibling share 2: " in capsys.readouterr().err
    assert refs.read_bytes() == before


def test_the_live_path_accumulates_siblings_as_one(tmp_path: Path) -> None:
    refs = references()
    # One device: ten windows like A's references, then six like S's own (s2 at 1.0).
    windows = [listed("d", "x y", start=10 * u) for u in range(10)]
    windows += [listed("d", "x y w", start=10 * u) for u in range(10, 16)]
    decisions = identify(FingerprintSet.from_fingerprints(windows), refs)
    assert [d.best_type for d in decisions] == ["A"] * 10 + ["S"] * 6
    with Storage(tmp_path / "svcfp.db") as store:
        live = LiveIdentification(store, LiveSettings(ExporterConfig(), refs), 1.0)
        beliefs = live.accumulate(decisions)
    assert not any(b.changed for b in beliefs)
    assert [b.label for b in beliefs][-1] == "S"
    # Without the families S's windows would have declared a change.
    alone = Accumulator(refs.types)
    assert any(
        alone.update(d.device, d.end_unit, d.best_type, d.confidence, d.known).changed
        for d in decisions
    )
