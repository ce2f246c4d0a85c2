"""Identification on the real IoT Sentinel setup captures: a regression guard on accuracy.

Each capture is one track and one window (1 s units); per type, the earlier half of the captures
enrol and the later half is identified. Accuracy measured when this guard was set: prevalence
0.828, list 0.745 (27 types, 274 test captures); the floors sit a little below.
"""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from controller.engine.evaluate import Dataset, EvalSettings, evaluate
from controller.engine.learned import Granularity
from controller.ingest.sources import Sources, load
from svcfp.cli import main

pytestmark = pytest.mark.data


def sentinel_sources(shared_data: Path, granularity: Granularity = "catalogue") -> Sources:
    """Every setup capture its own track, instances of a model merged, 1 s units."""
    captures = shared_data / "iot-sentinel" / "captures"
    return Sources(
        files=(captures,),
        labels=captures,
        tracks="capture",
        merge_instances=True,
        time_unit=1.0,
        service_granularity=granularity,
    )


CAPTURE_SETTINGS = EvalSettings(
    granularities=(1, None), windows="whole", captures=True, split="group", modes=("nearest",)
)


def test_closed_set_accuracy_on_setup_captures(shared_data: Path) -> None:
    inputs = load(sentinel_sources(shared_data), need_labels=True)
    assert len(set(inputs.labels.values())) == 27
    assert len(inputs.labels) == 550
    settings = replace(CAPTURE_SETTINGS, intensities=(None,), reference_prefixes=())
    metrics = evaluate(Dataset(inputs.activity, inputs.labels, inputs.groups), settings)
    by_representation = {r.representation: r.closed_set for r in metrics.results}
    prevalence, service_list = by_representation["prevalence"], by_representation["list"]
    assert prevalence.n_test == 274
    assert prevalence.accuracy >= 0.80
    assert prevalence.macro_f1 >= 0.80
    assert service_list.accuracy >= 0.72
    for well_separated in ("HueBridge", "Lightify", "Aria", "Withings", "EdnetGateway"):
        assert prevalence.per_type_accuracy[well_separated] == 1.0, well_separated
    # The D-Link sensors and sirens use the same services: their confusions are the known hard
    # case, and stay well below the separated types.
    assert prevalence.per_type_accuracy["D-LinkWaterSensor"] < 0.8


def test_evaluate_on_the_captures_folder_without_flags(
    shared_data: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    captures = shared_data / "iot-sentinel" / "captures"
    out = tmp_path / "report"
    args = ["evaluate", str(captures), "--labels", str(captures), "--out", str(out)]
    assert main([*args, "--no-progress"]) == 0
    assert "best: " in capsys.readouterr().out
    metrics = json.loads((out / "metrics.json").read_text())
    # Every type folder is a type of its own, the two that share a MAC with another included.
    assert metrics["types"] == sorted(p.parent.name for p in captures.glob("*/_iotdevice-mac.txt"))
    assert len(metrics["types"]) == 31
    # 27 MACs of one type each are one track apiece; the two shared MACs (HueBridge/HueSwitch,
    # D-LinkHomeHub/D-LinkDoorSensor) are one track per capture that holds their traffic.
    assert metrics["tracks"] == 107


def test_intensity_and_short_references_on_setup_captures(shared_data: Path) -> None:
    """Measured when this guard was set (27 types, 274 test captures, nearest, one neighbour,
    references from whole training captures and their first 10, 30 and 60 s): built-in
    catalogue prevalence 0.825, prevalence+intensity 0.850 (macro-F1 0.845); learned catalogue
    prevalence+intensity 0.891, list+intensity 0.887; accuracy after 30 s of a capture 0.82–0.84
    with intensity (0.72 without the short references). The remaining errors are the
    indistinguishable families: iKettle2 and SmarterCoffee send identical setups, and so do
    the D-Link motion and water sensors."""
    found = {}
    granularities: tuple[Granularity, ...] = ("catalogue", "learned")
    for granularity in granularities:
        inputs = load(sentinel_sources(shared_data, granularity), need_labels=True)
        settings = replace(CAPTURE_SETTINGS, prefixes=(30,))
        metrics = evaluate(Dataset(inputs.activity, inputs.labels, inputs.groups), settings)
        found[granularity] = {r.representation: r for r in metrics.results}
    built_in, learned = found["catalogue"], found["learned"]
    assert built_in["prevalence+intensity"].closed_set.accuracy >= 0.84
    assert (
        built_in["prevalence+intensity"].closed_set.accuracy
        > built_in["prevalence"].closed_set.accuracy
    )
    assert learned["prevalence+intensity"].closed_set.accuracy >= 0.88
    assert learned["prevalence+intensity"].closed_set.macro_f1 >= 0.87
    early = learned["prevalence+intensity"].early_identification
    assert early is not None and early.accuracy[0] >= 0.80
    per_type = {t.type: t for t in learned["prevalence+intensity"].closed_set.per_type}
    assert sum(t.n for t in per_type.values()) == 274


def test_train_learned_catalogue_on_setup_captures(shared_data: Path) -> None:
    """The catalogue learned per split from the training captures alone (measured when this
    guard was set, 274 test captures: list+intensity 0.905, prevalence+intensity 0.887, against
    0.905 and 0.891 when the catalogue is learned from all captures, test ones included)."""
    sources = replace(sentinel_sources(shared_data), flow_cells=True)
    inputs = load(sources, need_labels=True)
    assert inputs.flows is not None and inputs.catalogue is not None
    # The kept records, attributed with the ingest's catalogue, are the ingested activity.
    again = inputs.flows.activity(inputs.catalogue)
    assert list(again.records()) == list(inputs.activity.records())
    settings = replace(CAPTURE_SETTINGS, prefixes=(30,), catalogues=("built-in", "train-learned"))
    dataset = Dataset(inputs.activity, inputs.labels, inputs.groups, "sentinel", inputs.flows)
    found = {(r.representation, r.catalogue): r for r in evaluate(dataset, settings).results}
    learned = found["list+intensity", "train-learned"].closed_set
    assert learned.n_test == 274
    assert learned.accuracy >= 0.90
    assert found["prevalence+intensity", "train-learned"].closed_set.accuracy >= 0.88


# Types whose setup captures use the same services (and the same intensity within the noise).
SIBLINGS = (
    {"iKettle2", "SmarterCoffee"},
    {"D-LinkSensor", "D-LinkWaterSensor", "D-LinkSiren", "D-LinkSwitch"},
    {"TP-LinkPlugHS100", "TP-LinkPlugHS110"},
    {"EdimaxPlug1101W", "EdimaxPlug2101W"},
)


def test_every_confusion_is_between_siblings_with_either_service_weighting(
    shared_data: Path,
) -> None:
    """Measured when this guard was set (built-in catalogue, 274 test captures): without
    service weights list+intensity 0.869 (macro-F1 0.846), prevalence+intensity 0.850 (0.846);
    with idf weights 0.883 (0.861) and 0.847 (0.843). Every wrong answer names a sibling of the
    true type, so weighing services differently can only reorder siblings."""
    inputs = load(sentinel_sources(shared_data), need_labels=True)
    settings = replace(
        CAPTURE_SETTINGS, intensities=("relative",), prefixes=(), weightings=("none", "idf")
    )
    metrics = evaluate(Dataset(inputs.activity, inputs.labels, inputs.groups), settings)
    found = {(r.representation, r.weighting): r.closed_set for r in metrics.results}
    assert found["list+intensity", "none"].accuracy >= 0.86
    assert found["list+intensity", "idf"].accuracy > found["list+intensity", "none"].accuracy
    assert found["prevalence+intensity", "idf"].accuracy >= 0.84
    family = {t: i for i, members in enumerate(SIBLINGS) for t in members}
    for closed in found.values():
        classes, matrix = closed.confusion.classes, closed.confusion.array()
        wrong = [
            (classes[i], classes[j]) for i, j in zip(*np.nonzero(matrix), strict=True) if i != j
        ]
        assert wrong
        for true, predicted in wrong:
            assert true in family and family[true] == family.get(predicted), (true, predicted)


def test_matched_packet_sizes_on_setup_captures(shared_data: Path) -> None:
    """Measured when this guard was set (train-learned catalogue, 274 test captures, references
    from whole training captures and their first 10, 30 and 60 s): list+intensity 0.905
    (macro-F1 0.883, AUROC 0.819, after 30 s 0.836); list+intensity+sizes, sizes matched within
    τ learned per service from the references, 0.931 (0.917, 0.861, 0.850; with τ = 2 % for
    every service 0.891, 0.872, 0.862, 0.891), its confidence calibrated to an error of 0.091
    against 0.180. The D-Link motion sensor 1 → 9 of 10 right; leave-one-type-out AUROC of the
    motion sensor 0.47 → 0.85, of Aria 0.87 → 0.98 and Withings 0.87 → 1.00; leaving the four
    sibling families out whole, AUROC 0.992."""
    sources = replace(sentinel_sources(shared_data), flow_cells=True)
    inputs = load(sources, need_labels=True)
    settings = replace(
        CAPTURE_SETTINGS,
        granularities=(1,),
        intensities=("relative", "sized"),
        prefixes=(30,),
        catalogues=("train-learned",),
    )
    dataset = Dataset(inputs.activity, inputs.labels, inputs.groups, "sentinel", inputs.flows)
    found = {r.representation: r for r in evaluate(dataset, settings).results}
    relative, sized = found["list+intensity"], found["list+intensity+sizes"]
    assert sized.closed_set.n_test == 274
    assert sized.closed_set.accuracy >= 0.92
    assert sized.closed_set.accuracy > relative.closed_set.accuracy
    assert sized.closed_set.macro_f1 >= 0.91
    assert sized.open_set.auroc >= relative.open_set.auroc + 0.03
    assert sized.open_set.auroc >= 0.85
    early = sized.early_identification
    assert early is not None and early.accuracy[0] >= 0.84
    assert sized.closed_set.calibration.ece < relative.closed_set.calibration.ece
    per_type = {t.type: t for t in sized.closed_set.per_type}
    before = {t.type: t for t in relative.closed_set.per_type}
    # The HomeMatic plug talks to tcp/9292 from port 50756 in its training captures and from
    # 51067 in its test captures; the HueBridge once used 50756 towards HTTP. The catalogue
    # learned from the training captures names tcp/9292 (the flow to a system port does not
    # make 50756 a service), so both test ports are the service the references know.
    assert before["HomeMaticPlug"].correct == per_type["HomeMaticPlug"].correct == 10
    # The motion sensor's DHCP request (353 B, every capture) against the water sensor's (357 B):
    # a size its references repeat to the byte matches within the learned floor of 0.5 % only,
    # while tcp/80 and DNS, whose sizes vary between setups, match within their own spread.
    assert before["D-LinkSensor"].correct <= 2 and per_type["D-LinkSensor"].correct >= 8
    # Leave-one-type-out: a type without a sibling that repeats its traffic comes out unknown
    # far more reliably than one with; the DHCP request's size lifts the D-Link motion sensor.
    folds = {f.left_out: f.auroc for f in sized.open_set.folds}
    earlier = {f.left_out: f.auroc for f in relative.open_set.folds}
    assert min(folds[t] for t in ("HueBridge", "Lightify", "Aria", "Withings")) >= 0.97
    assert max(folds[t] for t in ("iKettle2", "SmarterCoffee")) < 0.5
    assert folds["D-LinkSensor"] >= earlier["D-LinkSensor"] + 0.2
    # The families the training references cannot tell apart are the look-alikes above, found
    # from the references alone; with a whole family left out, a device of a family they have
    # never seen comes out unknown (measured 0.992), and every answer names the true family.
    assert {frozenset(f) for f in sized.families} == {frozenset(s) for s in SIBLINGS}
    assert sized.family_accuracy == 1.0
    assert sized.open_set_families is not None
    assert sized.open_set_families.auroc >= 0.98
    family_folds = {f.left_out: f.unknown_detection for f in sized.open_set_families.folds}
    assert family_folds["SmarterCoffee + iKettle2"] == 1.0
