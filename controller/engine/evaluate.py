"""Offline evaluation of the fingerprint method on labelled activity (DESIGN §5).

For every time unit and representation G of a grid, and both matching modes (nearest reference
fingerprint, type prototype):

- fingerprints are made with the exporter (or one per device span, for short captures);
- a time-ordered split sends earlier windows to training and later ones to testing — per device,
  or, for capture data sets, per type by setup/capture group (train on the first groups of a
  type, test on the others);
- closed set: accuracy, macro-F1, confusion matrix, time to identification;
- open set, leaving one type out of the references at a time: unknown-detection rate, known
  accuracy, and the AUROC of the best similarity as a known-vs-unknown score;
- convergence (the CDF of convergence times) and recurrence (intra- vs inter-device similarity).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from functools import partial
from typing import Any, Literal

import numpy as np
import numpy.typing as npt

from controller.base.errors import InputError
from controller.engine import partition
from controller.engine.accumulate import Accumulator, Belief, WindowDecision, accumulate
from controller.engine.activity import ActivityTable
from controller.engine.anchors import anchor_results
from controller.engine.catalogue import Catalogue
from controller.engine.exporter import (
    ExporterConfig,
    prefix_windows,
)
from controller.engine.fingerprints import FingerprintSet
from controller.engine.identify import (
    DEFAULT_NEIGHBOURS,
    DEFAULT_PERCENTILE,
    DEFAULT_WEIGHTING,
    MODES,
    SIBLING_SHARE,
    UNKNOWN,
    WEIGHTINGS,
    Mode,
    References,
    Scores,
    Weighting,
    calibrated,
    check_sibling_share,
    choose_thetas,
    enroll,
    family_of,
    left_out_accuracy,
    own_type_similarity,
    score,
    with_thresholds,
)
from controller.engine.learned import FlowCells, for_granularity
from controller.engine.metrics import (
    accuracy,
    auroc,
    cdf,
    confusion_matrix,
    macro_f1,
    wilson_interval,
)
from controller.engine.partition import SERIAL, Parallel
from controller.engine.recurrence import recurrence
from controller.engine.representation import (
    INTENSITIES,
    FloatArray,
    IntArray,
    Intensity,
    representation_name,
)
from controller.engine.results import (
    Accumulation,
    Calibration,
    Cdf,
    ClosedSet,
    Confusion,
    Convergence,
    DeviceAccumulation,
    EarlyIdentification,
    Evaluation,
    GridResult,
    OpenSet,
    OpenSetFold,
    RecurrenceSummary,
    Robustness,
    TimeToIdentification,
    TypeResult,
)
from controller.engine.sampling import sample_packets

Windows = Literal["exporter", "whole"]
CatalogueChoice = Literal["built-in", "train-learned"]
CATALOGUES: tuple[CatalogueChoice, ...] = ("built-in", "train-learned")
"""built-in: services as the activity was attributed (the built-in catalogue unless ingested
otherwise); train-learned: per split, the `learned` granularity's catalogue learned from the
training split's flow records alone, every track's records attributed with it."""
Split = Literal["time", "group", "instance"]
SPLITS: tuple[Split, ...] = ("time", "group", "instance")
Progress = Callable[[int, int], None]
"""Called with (grid points done, grid points in all) as an evaluation advances."""
DEFAULT_GRANULARITIES: tuple[int | None, ...] = (1, 2, 4, 8, None)
DEFAULT_INTENSITIES: tuple[Intensity | None, ...] = ("sized", "relative", None, "absolute")
"""Every grid compares the default sized intensity (relative intensity with packet sizes
matched) with relative intensity alone (rate-free, robust to sampling), the paper's
presence-only representations and absolute intensity (packets per unit, for unsampled counts);
the default comes first, so it is the best setting where it ties."""
CALIBRATION_BINS = 10
MAX_SPLICES = 200
"""Spliced device pairs that test change detection (a seeded sample when there are more)."""
DEFAULT_TRAIN_FRACTION = 0.5
DEFAULT_PREFIXES = (1, 2, 5, 10, 20, 30, 60, 120, 300)
"""Observation lengths (units) at which early identification of captures is measured."""
DEFAULT_REFERENCE_PREFIXES = (10, 30, 60)
"""Captures: besides its whole capture, each training capture enrols its first 10, 30 and 60
units, so a device seen only briefly is compared with references seen as briefly (IoT Sentinel:
accuracy after 30 s 0.72 → 0.84 with intensity, whole captures unchanged within 0.005)."""


# --- data and settings ----------------------------------------------------------------------------


@dataclass(frozen=True)
class Dataset:
    """Labelled activity to evaluate on.

    Device keys of `activity` are *tracks*: a device, or one capture of a device (for capture
    data sets, where each capture is its own short observation). `labels` maps every track to its
    type; `groups` (optional) maps tracks to their setup/capture group for group splits;
    `flows` (optional) the tracks' flow records by ports, which the train-learned catalogue
    needs.
    """

    activity: ActivityTable
    labels: Mapping[str, str]
    groups: Mapping[str, str] | None = None
    name: str = "dataset"
    flows: FlowCells | None = None


@dataclass(frozen=True)
class EvalSettings:
    """What to evaluate: the grid, how windows are made and split, how references are matched.

    `captures`: every track is a separate short capture, so its timeline ends with its own last
    activity and the window still open there is exported too (unconverged); early
    identification is then measured on the first `prefixes` units of every test capture, and
    every training capture also enrols its first `reference_prefixes` units as references.
    `sampling`: each 1:N also identifies the test data thinned by packet sampling.
    `catalogues`: which service catalogues to compare (see `CATALOGUES`).
    `weightings`: which service weightings of the references to compare (`WEIGHTINGS`).
    `sibling_share`: how alike two types' references must be to make them siblings
    (`sibling_families`).
    """

    granularities: tuple[int | None, ...] = DEFAULT_GRANULARITIES
    unit_seconds: tuple[float, ...] = ()
    exporter: ExporterConfig = field(default_factory=ExporterConfig)
    windows: Windows = "exporter"
    captures: bool = False
    split: Split = "time"
    train_fraction: float = DEFAULT_TRAIN_FRACTION
    modes: tuple[Mode, ...] = MODES
    neighbours: tuple[int, ...] = (DEFAULT_NEIGHBOURS,)
    percentile: float = DEFAULT_PERCENTILE
    theta: float | None = None
    prefixes: tuple[int, ...] = DEFAULT_PREFIXES
    intensities: tuple[Intensity | None, ...] = DEFAULT_INTENSITIES
    reference_prefixes: tuple[int, ...] = DEFAULT_REFERENCE_PREFIXES
    sampling: tuple[int, ...] = ()
    seed: int = 0
    catalogues: tuple[CatalogueChoice, ...] = ("built-in",)
    weightings: tuple[Weighting, ...] = (DEFAULT_WEIGHTING,)
    sibling_share: float = SIBLING_SHARE

    @property
    def representations(self) -> list[str]:
        """The names of the grid's representations, in grid order."""
        return [representation_name(g, i) for g in self.granularities for i in self.intensities]

    def to_json(self) -> dict[str, Any]:
        """The settings as a JSON-ready dict (representations by name)."""
        return {
            "granularities": [representation_name(g) for g in self.granularities],
            "intensities": list(self.intensities),
            "representations": self.representations,
            "sampling": list(self.sampling),
            "reference_prefixes": list(self.reference_prefixes),
            "unit_seconds": list(self.unit_seconds),
            "exporter": self.exporter.to_json(),
            "windows": self.windows,
            "captures": self.captures,
            "split": self.split,
            "train_fraction": self.train_fraction,
            "modes": list(self.modes),
            "neighbours": self.neighbours,
            "percentile": self.percentile,
            "theta": self.theta,
            "catalogues": list(self.catalogues),
            "weightings": list(self.weightings),
            "sibling_share": self.sibling_share,
        }

    def __post_init__(self) -> None:
        if self.split not in SPLITS:
            raise InputError(f"split {self.split!r}: choose one of {', '.join(SPLITS)}")
        if not 0.0 < self.train_fraction < 1.0:
            raise InputError(f"train fraction {self.train_fraction} must lie strictly in (0, 1)")
        if not 0.0 <= self.percentile <= 100.0:
            raise InputError(f"percentile {self.percentile} must lie in [0, 100]")
        if not self.granularities:
            raise InputError("the grid needs at least one granularity")
        bad = [m for m in self.modes if m not in MODES]
        if bad or not self.modes:
            raise InputError(f"modes {bad or '(none)'}: choose from {', '.join(MODES)}")
        if not self.neighbours or min(self.neighbours) < 1:
            raise InputError(f"neighbours {self.neighbours}: give one or more counts ≥ 1")
        if not self.intensities or any(i not in (None, *INTENSITIES) for i in self.intensities):
            raise InputError(
                f"intensities {self.intensities}: choose from none, {', '.join(INTENSITIES)}"
            )
        if any(n < 1 for n in self.sampling):
            raise InputError(f"sampling {self.sampling}: every 1:N needs N ≥ 1")
        if not self.catalogues or any(c not in CATALOGUES for c in self.catalogues):
            raise InputError(f"catalogues {self.catalogues}: choose from {', '.join(CATALOGUES)}")
        if not self.weightings or any(w not in WEIGHTINGS for w in self.weightings):
            raise InputError(
                f"service weightings {self.weightings}: choose from {', '.join(WEIGHTINGS)}"
            )
        check_sibling_share(self.sibling_share)


@dataclass(frozen=True)
class SplitRows:
    """Row indices of a fingerprint set for training and testing."""

    train: IntArray
    test: IntArray


def split_rows(
    fps: FingerprintSet,
    labels: Mapping[str, str],
    groups: Mapping[str, str] | None,
    how: Split,
    train_fraction: float,
) -> SplitRows:
    """Time-ordered split of labelled rows.

    time: per device, its windows in time order; the first ⌈fraction·n⌉ − (1 if that leaves no
    test window and n ≥ 2) train, the rest test. group: per type, its groups ordered by their
    earliest window (ties by name); the first ⌈fraction·g⌉ groups train (at most g − 1), the
    rest test. A device or type with a single window or group trains only. instance: per type
    with several devices, the first ⌊fraction·d⌋ devices by name (at least one, at most d − 1)
    train and the others test, whole (a type is recognised on units never enrolled); a type
    with one device is split in time.
    """
    names = fps.device_names
    keep = [i for i, name in enumerate(names) if labels.get(name, UNKNOWN) != UNKNOWN]
    train: list[int] = []
    test: list[int] = []
    if how in ("time", "instance"):
        by_device: dict[str, list[int]] = {}
        for i in keep:
            by_device.setdefault(names[i], []).append(i)
        instances: dict[str, list[str]] = {}
        for name in sorted(by_device):
            instances.setdefault(labels[name], []).append(name)
        for name, rows in by_device.items():
            siblings = instances[labels[name]]
            if how == "instance" and len(siblings) > 1:
                n_devices = min(
                    len(siblings) - 1, max(1, math.floor(train_fraction * len(siblings)))
                )
                (train if name in siblings[:n_devices] else test).extend(rows)
                continue
            rows.sort(key=lambda i: int(fps.start[i]))
            n_train = _n_train(len(rows), train_fraction)
            train.extend(rows[:n_train])
            test.extend(rows[n_train:])
    else:
        if groups is None:
            raise InputError("a group split needs the group (setup or capture) of every device")
        by_type: dict[str, dict[str, list[int]]] = {}
        for i in keep:
            group = groups.get(names[i])
            if group is None:
                raise InputError(f"device {names[i]} has no group for the group split")
            by_type.setdefault(labels[names[i]], {}).setdefault(group, []).append(i)
        for type_groups in by_type.values():
            ordered = sorted(
                type_groups, key=lambda g: (min(int(fps.start[i]) for i in type_groups[g]), g)
            )
            n_train = _n_train(len(ordered), train_fraction)
            for g in ordered[:n_train]:
                train.extend(type_groups[g])
            for g in ordered[n_train:]:
                test.extend(type_groups[g])
    return SplitRows(
        np.array(sorted(train), dtype=np.int64), np.array(sorted(test), dtype=np.int64)
    )


def _n_train(n: int, fraction: float) -> int:
    if n <= 1:
        return n
    return min(n - 1, max(1, math.ceil(fraction * n)))


@dataclass(frozen=True)
class TrainLearned:
    """A catalogue learned from a split's training traffic alone, and every track's activity
    attributed with it.

    `cut` is, per track of the split (in units of the evaluation): where its test part begins —
    the start of its first test window, before its first unit when it only tests, and never
    (+∞) when it only trains. Only records before a track's cut taught the catalogue.
    """

    catalogue: Catalogue
    activity: ActivityTable
    cut: Mapping[str, float]

    def split(self, fps: FingerprintSet, labels: Mapping[str, str]) -> SplitRows:
        """The same split on windows of the learned activity: a labelled track's windows that
        end by its cut train, those that start at or after it test; a window across the cut
        (possible in a time split, whose windows the new services may place differently) is
        left out, so neither references nor catalogue see test traffic."""
        train: list[int] = []
        test: list[int] = []
        for i, name in enumerate(fps.device_names):
            cut = self.cut.get(name)
            if cut is None or labels.get(name, UNKNOWN) == UNKNOWN:
                continue
            if fps.end[i] <= cut:
                train.append(i)
            elif fps.start[i] >= cut:
                test.append(i)
        return SplitRows(np.array(train, dtype=np.int64), np.array(test, dtype=np.int64))


def train_learned(
    flows: FlowCells, unit_seconds: float, fps: FingerprintSet, split: SplitRows
) -> TrainLearned:
    """The `learned` granularity's catalogue from the records of `split`'s training part of
    `fps` (windows of `unit_seconds`), and all of `flows` attributed with it."""
    factor = round(unit_seconds / flows.unit_seconds)
    names = fps.device_names
    cut: dict[str, float] = {}
    for i in split.train.tolist():
        cut.setdefault(names[i], math.inf)
    for i in split.test.tolist():
        begin = float(fps.start[i]) if names[i] in cut else -math.inf
        cut[names[i]] = min(cut.get(names[i], math.inf), begin)
    limit = np.array([cut.get(t, -math.inf) for t in flows.tracks], dtype=np.float64)
    taught = flows.unit < limit[flows.track] * factor if len(flows) else np.zeros(0, dtype=bool)
    catalogue = for_granularity("learned", observed=flows.usage(taught))
    activity = flows.activity(catalogue)
    if factor != 1:
        activity = activity.with_unit_seconds(unit_seconds)
    return TrainLearned(catalogue, activity, cut)


# --- evaluation -----------------------------------------------------------------------------------


def make_windows(
    activity: ActivityTable,
    config: ExporterConfig,
    windows: Windows,
    captures: bool,
    parallel: Parallel = SERIAL,
) -> FingerprintSet:
    """Fingerprints of every track: the exporter's windows (for `captures`, each track ending
    with its own last activity and its open window exported too), or one whole window per track;
    computed per group of devices as `parallel` says (in this process by default)."""
    return partition.windows(activity, config, windows == "whole", captures, parallel)


def closed_set(refs: References, test: FingerprintSet, truth: Sequence[str]) -> ClosedSet:
    """Closed-set metrics on test fingerprints whose types are all known (and the accuracy when
    θ, global or per type, may also answer "unknown"); the raw decisions and scores ride along
    for plots and accumulation."""
    scores = score(test, refs)
    predicted = [scores.types[w] for w in scores.winner.tolist()]
    best = scores.best
    open_labels = [
        p if b >= refs.theta else UNKNOWN for p, b in zip(predicted, best.tolist(), strict=True)
    ]
    type_theta = refs.theta_of(scores.winner)
    typed_labels = [
        p if b >= t else UNKNOWN
        for p, b, t in zip(predicted, best.tolist(), type_theta.tolist(), strict=True)
    ]
    classes, matrix = confusion_matrix(truth, predicted)
    right = sum(t == p for t, p in zip(truth, predicted, strict=True))
    return ClosedSet(
        n_test=len(truth),
        accuracy=accuracy(truth, predicted),
        macro_f1=macro_f1(truth, predicted),
        accuracy_with_theta=accuracy(truth, open_labels),
        rejected_known=sum(label == UNKNOWN for label in open_labels) / max(1, len(truth)),
        theta=refs.theta,
        confusion=Confusion.of(classes, matrix),
        per_type_accuracy=_per_type(truth, predicted),
        accuracy_ci=wilson_interval(right, len(truth)),
        accuracy_with_type_theta=accuracy(truth, typed_labels),
        per_type=_type_results(classes, matrix, set(truth)),
        calibration=_calibration(
            scores.confidence(refs.temperature),
            np.array([t == p for t, p in zip(truth, predicted, strict=True)], dtype=bool),
            refs.temperature,
        ),
        open_labels=tuple(open_labels),
        type_labels=tuple(typed_labels),
        scores=scores,
    )


def family_accuracy(confusion: Confusion, families: Sequence[Sequence[str]]) -> float:
    """The share of test windows named as a type of their own type's family (a type in no
    family is a family of its own): closed-set accuracy where siblings count as right; NaN
    without families or test windows."""
    matrix = confusion.array()
    if not families or not matrix.sum():
        return math.nan
    family = family_of(families)
    key = [family.get(c, (c,)) for c in confusion.classes]
    same = np.array([[a == b for b in key] for a in key], dtype=bool)
    return float(matrix[same].sum() / matrix.sum())


def _per_type(truth: Sequence[str], predicted: Sequence[str]) -> dict[str, float]:
    out: dict[str, list[bool]] = {}
    for t, p in zip(truth, predicted, strict=True):
        out.setdefault(t, []).append(t == p)
    return {t: sum(v) / len(v) for t, v in sorted(out.items())}


def _type_results(
    classes: Sequence[str], matrix: IntArray, true_types: set[str]
) -> tuple[TypeResult, ...]:
    out = []
    for i, name in enumerate(classes):
        if name not in true_types:
            continue
        n, hit, called = int(matrix[i].sum()), int(matrix[i, i]), int(matrix[:, i].sum())
        lo, hi = wilson_interval(hit, n)
        out.append(
            TypeResult(
                type=name,
                n=n,
                correct=hit,
                accuracy=hit / n if n else math.nan,
                ci_low=lo,
                ci_high=hi,
                precision=hit / called if called else math.nan,
                f1=2 * hit / (n + called) if n + called else math.nan,
            )
        )
    return tuple(out)


def _calibration(
    confidence: FloatArray, correct: npt.NDArray[np.bool_], temperature: float | None
) -> Calibration:
    if temperature is None or not confidence.size:
        return Calibration(temperature=temperature)
    bins = np.minimum((confidence * CALIBRATION_BINS).astype(np.int64), CALIBRATION_BINS - 1)
    gap = 0.0
    for b in range(CALIBRATION_BINS):
        inside = bins == b
        if inside.any():
            gap += abs(float(correct[inside].mean()) - float(confidence[inside].mean())) * float(
                inside.mean()
            )
    return Calibration(
        ece=gap,
        brier=float(np.mean((confidence - correct) ** 2)),
        mean_confidence=float(confidence.mean()),
        accuracy=float(correct.mean()),
        bins=CALIBRATION_BINS,
        temperature=temperature,
    )


OPEN_SET_SCORES = (
    "similarity",
    "margin to type θ",
    "margin to second type",
    "distance ratio",
    "type z-score",
)
"""Known-vs-unknown scores whose AUROC the open-set study reports (higher: more likely known):
the best type's similarity; its margin over the winner's own θ (per-type percentile of
leave-one-out own-type similarity); its margin over the second-best type; 1 − (1 − best) /
(1 − second), the nearest-neighbour distance ratio; and the best similarity standardised by the
winner's leave-one-out own-type similarities (mean and spread)."""


def open_set_scores(
    type_scores: FloatArray,
    types: Sequence[str],
    labels: Sequence[str],
    own: FloatArray,
    thetas: Mapping[str, float],
) -> dict[str, FloatArray]:
    """Every `OPEN_SET_SCORES` score of each row of `type_scores` (scores for `types`, −∞ for
    types left out); `own` is the leave-one-out own-type similarity of references of types
    `labels`, `thetas` each type's θ. A type with fewer than two own values is standardised by
    all of them."""
    order = np.argsort(-type_scores, axis=1, kind="stable")
    rows = np.arange(len(type_scores))
    winner = order[:, 0]
    best = type_scores[rows, winner]
    second = (
        type_scores[rows, order[:, 1]] if type_scores.shape[1] > 1 else np.full(len(rows), -np.inf)
    )
    second = np.where(np.isfinite(second), second, 0.0)
    winner_types = [types[w] for w in winner.tolist()]
    label = np.array(labels, dtype=object)
    valid = ~np.isnan(own)
    overall = own[valid]
    centre: dict[str, tuple[float, float]] = {}
    for name in set(winner_types):
        mine = own[(label == name) & valid]
        pool = mine if mine.size >= 2 else overall
        width = float(pool.std()) if pool.size >= 2 else 0.0
        centre[name] = (float(pool.mean()) if pool.size else 0.0, max(width, 1e-3))
    mean = np.array([centre[t][0] for t in winner_types], dtype=np.float64)
    spread = np.array([centre[t][1] for t in winner_types], dtype=np.float64)
    bar = np.array([thetas[t] for t in winner_types], dtype=np.float64)
    return {
        "similarity": best,
        "margin to type θ": best - bar,
        "margin to second type": best - second,
        "distance ratio": 1.0 - (1.0 - best) / np.maximum(1.0 - second, 1e-9),
        "type z-score": (best - mean) / spread,
    }


def open_set(
    refs: References,
    test: FingerprintSet,
    truth: Sequence[str],
    percentile: float,
    theta: float | None,
    scores: Scores | None = None,
    per_type: bool = False,
    groups: Sequence[Sequence[str]] = (),
    own: FloatArray | None = None,
) -> OpenSet:
    """Leave-one-type-out: each type with test windows in turn is removed from the references
    (θ re-chosen from what is left unless given) and must come out "unknown". `groups`: these
    types leave together, each group as one fold named "<type> + <type>" (e.g. the
    `sibling_families`); the types in no group leave one by one.

    Removing a type leaves every other type's score as it was (its references and prototype
    are untouched, and so are the other types' leave-one-out similarities behind θ), so with a
    single voting neighbour one scoring of `test` (`scores`, computed if not given) serves every
    fold; with several voting neighbours each fold is scored anew, and so is every fold of
    references with service weights (which the fold's references learn again).

    `per_type`: each remaining type's own θ (`choose_thetas`, the fold's θ for types with too
    few references) decides, and the known-vs-unknown score of the AUROC is the margin of the
    best similarity over the winner's θ. Either way the AUROC of every `OPEN_SET_SCORES` score,
    pooled over the folds, is reported too. `own`: the references' `own_type_similarity`, when
    the caller has it already.
    """
    folds = []
    pooled_scores: list[FloatArray] = []
    pooled_known: list[npt.NDArray[np.bool_]] = []
    pooled_study: dict[str, list[FloatArray]] = {name: [] for name in OPEN_SET_SCORES}
    truth_arr = np.array(truth, dtype=object)
    reuse = refs.weighting == "none" and (refs.mode == "centroid" or refs.neighbours == 1)
    full = scores if scores is not None else score(test, refs) if reuse and len(test) else None
    all_own = own_type_similarity(refs) if own is None else own
    labels_arr = np.array(refs.labels, dtype=object)
    grouped = {t for group in groups for t in group}
    folds_of = [tuple(g) for g in groups] + [(t,) for t in refs.types if t not in grouped]
    for group in sorted(g for g in folds_of if set(g) & set(truth)):
        left_out = " + ".join(group)
        rest_types = tuple(t for t in refs.types if t not in group)
        if not rest_types:
            continue
        gone = np.isin(labels_arr, np.array(group, dtype=object))
        own = all_own
        if refs.weighting != "none":
            own = np.full(len(refs.labels), np.nan)
            own[~gone] = own_type_similarity(refs.without_types(group))
        if theta is not None:
            fold_theta = theta
        else:
            values = own[~gone & ~np.isnan(own)]
            fold_theta = (
                float(np.percentile(values, percentile, method="lower")) if values.size else 0.0
            )
        if full is not None:
            ts = full.type_scores.copy()
            fold_types = full.types
            ts[:, [fold_types.index(t) for t in group]] = -np.inf
            winner = np.argmax(ts, axis=1)
            best = ts[np.arange(len(winner)), winner]
            winner_types = [full.types[w] for w in winner.tolist()]
        else:
            fold = score(test, refs.without_types(group))
            ts, fold_types = fold.type_scores, fold.types
            best = fold.best
            winner_types = [fold.types[w] for w in fold.winner.tolist()]
        predicted = np.array(winner_types, dtype=object)
        thetas = dict(
            zip(refs.types, choose_thetas(refs, percentile, fold_theta, own), strict=True)
        )
        if per_type:
            bar = np.array([thetas[t] for t in winner_types], dtype=np.float64)
        else:
            bar = np.full(len(best), fold_theta)
        unknown = np.isin(truth_arr, np.array(group, dtype=object))
        # Known test windows of types the references never had cannot be judged here.
        judged = unknown | np.isin(truth_arr, np.array(rest_types, dtype=object))
        known = judged & ~unknown
        accepted = best >= bar
        margin = best - bar if per_type else best
        folds.append(
            OpenSetFold(
                left_out=left_out,
                theta=fold_theta,
                n_unknown=int(unknown.sum()),
                n_known=int(known.sum()),
                unknown_detection=float((~accepted[unknown]).mean()),
                known_accuracy=float(
                    (accepted[known] & (predicted[known] == truth_arr[known])).mean()
                )
                if known.any()
                else math.nan,
                auroc=auroc(margin[judged], known[judged]),
            )
        )
        pooled_scores.append(margin[judged])
        pooled_known.append(known[judged])
        study = open_set_scores(ts[judged], fold_types, refs.labels, own, thetas)
        for name in OPEN_SET_SCORES:
            pooled_study[name].append(study[name])
    if not folds:
        return OpenSet()
    all_scores, all_known = np.concatenate(pooled_scores), np.concatenate(pooled_known)
    return OpenSet.pooled(
        folds,
        all_scores,
        all_known,
        {name: auroc(np.concatenate(pooled_study[name]), all_known) for name in OPEN_SET_SCORES},
    )


def time_to_identification(
    test: FingerprintSet, truth: Sequence[str], labels_out: Sequence[str]
) -> TimeToIdentification:
    """Per test track: units from the start of its first test window to the end of its first
    correctly identified window (open-set labels, so "unknown" is not correct)."""
    first: dict[int, int] = {}
    hit: dict[int, int] = {}
    order = np.lexsort((test.start, test.device))
    for i in order.tolist():
        d = int(test.device[i])
        first.setdefault(d, int(test.start[i]))
        if d not in hit and labels_out[i] == truth[i]:
            hit[d] = int(test.end[i]) - first[d]
    times = sorted(hit.values())
    units, fraction = cdf(times)
    return TimeToIdentification(
        tracks=len(first),
        identified=len(hit),
        identified_fraction=len(hit) / len(first) if first else math.nan,
        median_units=float(np.median(times)) if times else None,
        mean_units=float(np.mean(times)) if times else None,
        cdf=Cdf(tuple(units), tuple(fraction)),
    )


def early_identification(
    refs: References,
    activity: ActivityTable,
    tracks: Mapping[str, str],
    prefixes: Sequence[int],
    threshold: int,
    starts: Mapping[str, int] | None = None,
) -> EarlyIdentification:
    """Closed-set accuracy when only the first t units of each track are seen, per t.

    Each test track (device key → true type) is cut to units [first, first + t) of its own
    timeline — from its first unit, or from `starts[track]` (where its test windows begin) —
    and fingerprinted as one window: how fast a capture, or a device, is recognised.
    """
    sub = activity.select(devices=tracks)
    accuracies: list[float] = []
    seen: list[int] = []
    for t in prefixes:
        fps = prefix_windows(sub, t, refs.granularity, threshold, refs.intensity, starts)
        names = fps.device_names
        predicted = [] if not names else [refs.types[w] for w in score(fps, refs).winner.tolist()]
        hits = sum(p == tracks[n] for p, n in zip(predicted, names, strict=True))
        # A track silent in its first t units (below h) counts as not identified.
        accuracies.append(hits / len(tracks) if tracks else math.nan)
        seen.append(len(names))
    return EarlyIdentification(
        units=tuple(prefixes),
        seconds=tuple(t * activity.unit_seconds for t in prefixes),
        accuracy=tuple(accuracies),
        tracks_with_activity=tuple(seen),
        tracks=len(tracks),
    )


def window_decisions(
    refs: References, test: FingerprintSet, closed: ClosedSet
) -> list[WindowDecision]:
    """What accumulation needs of every test window's decision."""
    scores = closed.scores if closed.scores is not None else score(test, refs)
    confidence = scores.confidence(refs.temperature)
    return [
        WindowDecision(
            device=name,
            start_unit=int(test.start[i]),
            end_unit=int(test.end[i]),
            best_type=scores.types[int(scores.winner[i])],
            confidence=float(confidence[i]),
            known=closed.type_labels[i] != UNKNOWN,
        )
        for i, name in enumerate(test.device_names)
    ]


def accumulation(
    types: Sequence[str],
    windows: Sequence[WindowDecision],
    truth: Mapping[str, str],
    seed: int = 0,
    families: Sequence[Sequence[str]] = (),
) -> Accumulation:
    """Accumulated decisions per test device, and change detection on spliced pairs (of
    types in different `families`: siblings are no change the references can see)."""
    beliefs = accumulate(types, windows, families)
    by_device: dict[str, list[Belief]] = {}
    for belief in beliefs:
        by_device.setdefault(belief.device, []).append(belief)
    starts: dict[str, int] = {}
    for w in windows:
        starts[w.device] = min(starts.get(w.device, w.start_unit), w.start_unit)
    devices = []
    for name, seq in sorted(by_device.items()):
        right = [b.label == truth[name] for b in seq]
        settled = None
        if right[-1]:
            k = len(right)
            while k > 0 and right[k - 1]:
                k -= 1
            settled = seq[k].end_unit - starts[name]
        devices.append(
            DeviceAccumulation(
                device=name,
                type=truth[name],
                windows=len(seq),
                right=sum(right),
                settled_units=settled,
                changes=sum(b.changed for b in seq),
            )
        )
    window_right = [w.best_type == truth[w.device] and w.known for w in windows]
    spliced, detected, delays = _splices(types, windows, truth, seed, families)
    return Accumulation(
        windows=len(beliefs),
        accuracy=sum(d.right for d in devices) / max(1, len(beliefs)),
        window_accuracy=sum(window_right) / max(1, len(window_right)),
        devices=tuple(devices),
        false_changes=sum(d.changes for d in devices),
        spliced=spliced,
        detected=detected,
        detection_delay_median=float(np.median(delays)) if delays else None,
    )


def _splices(
    types: Sequence[str],
    windows: Sequence[WindowDecision],
    truth: Mapping[str, str],
    seed: int,
    families: Sequence[Sequence[str]],
) -> tuple[int, int, list[int]]:
    """Change detection: device a's test windows, then device b's (another type, of another
    family) under a's name. Returns (pairs, pairs whose change was declared after the splice,
    windows from the splice to the declaration)."""
    family = family_of(families)
    by_device: dict[str, list[WindowDecision]] = {}
    for w in sorted(windows, key=lambda w: w.start_unit):
        by_device.setdefault(w.device, []).append(w)
    pairs = [
        (a, b)
        for a in sorted(by_device)
        for b in sorted(by_device)
        if truth[a] != truth[b]
        and family.get(truth[a], (truth[a],)) != family.get(truth[b], (truth[b],))
        and len(by_device[a]) >= 2
        and len(by_device[b]) >= 2
    ]
    if len(pairs) > MAX_SPLICES:
        rng = np.random.default_rng(seed)
        pairs = [pairs[i] for i in sorted(rng.choice(len(pairs), MAX_SPLICES, replace=False))]
    detected, delays = 0, []
    for a, b in pairs:
        accumulator = Accumulator(types, families)
        before = by_device[a]
        for w in before:
            accumulator.update(a, 0, w.best_type, w.confidence, w.known)
        for k, w in enumerate(by_device[b]):
            if accumulator.update(a, 0, w.best_type, w.confidence, w.known).changed:
                detected += 1
                delays.append(k + 1)
                break
    return len(pairs), detected, delays


def robustness(
    refs: References,
    activity: ActivityTable,
    config: ExporterConfig,
    settings: EvalSettings,
    test: FingerprintSet,
    labels: Mapping[str, str],
) -> tuple[Robustness, ...]:
    """Closed-set results on the test devices observed through 1:N packet sampling: their
    activity is sampled, fingerprinted again, and the windows from where their test windows
    began are identified against the references of the full data."""
    begin: dict[str, int] = {}
    for name, start in zip(test.device_names, test.start.tolist(), strict=True):
        begin[name] = min(begin.get(name, start), start)
    out = []
    for n in settings.sampling:
        thinned = sample_packets(activity.select(devices=begin), n, settings.seed)
        fps = make_windows(thinned, config, settings.windows, settings.captures)
        rows = [
            i
            for i, (name, start) in enumerate(
                zip(fps.device_names, fps.start.tolist(), strict=True)
            )
            if name in begin and start >= begin[name]
        ]
        sub = fps.select(np.array(rows, dtype=np.int64))
        truth = [labels[name] for name in sub.device_names]
        predicted = [refs.types[w] for w in score(sub, refs).winner.tolist()] if len(sub) else []
        # Test devices with no window left under sampling count as wrong.
        missing = len(set(begin) - set(sub.device_names))
        total = len(truth) + missing
        right = sum(t == p for t, p in zip(truth, predicted, strict=True))
        out.append(
            Robustness(
                one_in=n,
                n_test=total,
                accuracy=right / total if total else math.nan,
                macro_f1=macro_f1(truth, predicted) if truth else math.nan,
            )
        )
    return tuple(out)


def evaluate(
    dataset: Dataset,
    settings: EvalSettings,
    progress: Progress | None = None,
    parallel: Parallel = SERIAL,
) -> Evaluation:
    """Every metric for every (time unit, G, intensity, mode, neighbours) of the grid;
    `progress` hears of each (time unit, representation) done (the CLI draws a progress bar);
    fingerprints are computed per group of devices as `parallel` says (in this process by
    default)."""
    if "train-learned" in settings.catalogues and dataset.flows is None:
        raise InputError(
            f"{dataset.name}: the train-learned catalogue needs flow records or captures "
            "(activity CSVs and databases hold services, not ports)"
        )
    base = dataset.activity.unit_seconds
    units = settings.unit_seconds or (base,)
    grid = [
        (u, g, i, c)
        for u in units
        for g in settings.granularities
        for i in settings.intensities
        for c in settings.catalogues
    ]
    results: list[GridResult] = []
    for done, (unit_seconds, granularity, intensity, catalogue) in enumerate(grid):
        activity = (
            dataset.activity
            if math.isclose(unit_seconds, base)
            else dataset.activity.with_unit_seconds(unit_seconds)
        )
        results.extend(
            _evaluate_one(dataset, activity, granularity, intensity, catalogue, settings, parallel)
        )
        if progress is not None:
            progress(done + 1, len(grid))
    return Evaluation(
        dataset=dataset.name,
        tracks=len(dataset.activity.used_devices()),
        types=tuple(sorted(set(dataset.labels.values()) - {UNKNOWN})),
        settings=replace(settings, unit_seconds=tuple(units)),
        results=tuple(results),
    )


def _evaluate_one(
    dataset: Dataset,
    activity: ActivityTable,
    granularity: int | None,
    intensity: Intensity | None,
    catalogue: CatalogueChoice,
    settings: EvalSettings,
    parallel: Parallel,
) -> Iterator[GridResult]:
    config = replace(settings.exporter, granularity=granularity, intensity=intensity)
    name = representation_name(granularity, intensity)
    fps = make_windows(activity, config, settings.windows, settings.captures, parallel)
    split = split_rows(fps, dataset.labels, dataset.groups, settings.split, settings.train_fraction)
    services = len(activity.services)
    if catalogue == "train-learned" and split.train.size:
        assert dataset.flows is not None
        learned = train_learned(dataset.flows, activity.unit_seconds, fps, split)
        activity = learned.activity
        services = learned.catalogue.max_id
        fps = make_windows(activity, config, settings.windows, settings.captures, parallel)
        split = learned.split(fps, dataset.labels)
    if not split.train.size or not split.test.size:
        raise InputError(
            f"{dataset.name}: {name} at {activity.unit_seconds} s "
            f"gives {split.train.size} training and {split.test.size} test windows; "
            "need some of each"
        )
    convergence = _convergence(fps)
    recurrence_summary = _recurrence(fps)
    train = fps.select(split.train)
    whole = set(train.origins)
    if settings.captures and settings.reference_prefixes:
        train = _with_prefixes(train, activity, settings.reference_prefixes, config)
    test = fps.select(split.test)
    truth = [dataset.labels[name] for name in test.device_names]
    tracks = dict(zip(test.device_names, truth, strict=True))
    anchors = anchor_results(train, [dataset.labels[n] for n in train.device_names], test, truth)
    # Votes matter only among nearest references; a prototype per type is one neighbour.
    combos = [
        (m, k if m == "nearest" else 1, w)
        for w in settings.weightings
        for m in settings.modes
        for k in settings.neighbours
    ]
    for mode, k, weighting in dict.fromkeys(combos):
        refs = enroll(
            train,
            dataset.labels,
            mode=mode,
            theta=settings.theta if settings.theta is not None else 0.0,
            neighbours=k,
            config=config,
            weighting=weighting,
            calibrate=False,
        )
        own = None
        if settings.theta is None:
            try:
                refs, own = with_thresholds(refs, settings.percentile, per_type=True)
            except InputError:
                refs = refs.with_settings(theta=0.0)
        if own is None:
            own = own_type_similarity(refs)
        refs, sample = calibrated(refs, settings.sibling_share)
        closed = closed_set(refs, test, truth)
        families = refs.families
        early = None
        if settings.prefixes and (settings.captures or settings.windows == "exporter"):
            starts: dict[str, int] | None = None
            if not settings.captures:
                starts = {}
                for d, start in zip(test.device_names, test.start.tolist(), strict=True):
                    starts[d] = min(starts.get(d, start), start)
            early = early_identification(
                refs, activity, tracks, settings.prefixes, settings.exporter.threshold, starts
            )
        accumulated = None
        if not settings.captures and settings.windows == "exporter":
            accumulated = accumulation(
                refs.types, window_decisions(refs, test, closed), tracks, settings.seed, families
            )
        # Every open set below shares the one scoring of `test` and the leave-one-out pass.
        opened = partial(
            open_set, refs, test, truth, settings.percentile, settings.theta, closed.scores, own=own
        )
        # Scored on the training windows like the test windows (not the captures' prefixes);
        # without prefixes those are the rows calibration scored.
        like_test = np.flatnonzero([origin in whole for origin in refs.origins])
        if like_test.size == len(refs.origins):
            train_accuracy = left_out_accuracy(refs, sample=sample)
        else:
            train_accuracy = left_out_accuracy(refs, like_test)
        yield GridResult(
            train_accuracy=train_accuracy,
            unit_seconds=activity.unit_seconds,
            representation=name,
            catalogue=catalogue,
            services=services,
            anchors=anchors,
            granularity=granularity,
            intensity=intensity,
            neighbours=k,
            weighting=weighting,
            windows=len(fps),
            n_train=len(train),
            convergence=convergence,
            recurrence=recurrence_summary,
            mode=mode,
            closed_set=closed,
            open_set=opened(),
            open_set_per_type=opened(per_type=True) if settings.theta is None else None,
            families=families,
            family_accuracy=family_accuracy(closed.confusion, families),
            open_set_families=opened(groups=families) if families else None,
            time_to_identification=time_to_identification(test, truth, closed.open_labels),
            early_identification=early,
            accumulation=accumulated,
            robustness=robustness(refs, activity, config, settings, test, dataset.labels)
            if settings.sampling and mode == "nearest" and k == 1
            else (),
        )


def _with_prefixes(
    train: FingerprintSet, activity: ActivityTable, lengths: Sequence[int], config: ExporterConfig
) -> FingerprintSet:
    """The training captures, and each one's first `lengths` units as references of their own
    (only where the capture is longer: a shorter one's prefix is the capture itself)."""
    span = dict(zip(train.device_names, train.n_units.tolist(), strict=True))
    trained = activity.select(devices=set(span))
    parts = [train]
    for t in lengths:
        cut = prefix_windows(trained, t, config.granularity, config.threshold, config.intensity)
        longer = [i for i, name in enumerate(cut.device_names) if span[name] > t]
        parts.append(cut.select(np.array(longer, dtype=np.int64)))
    return FingerprintSet.concat(parts)


def _convergence(fps: FingerprintSet) -> Convergence:
    n = fps.n_units
    converged = n[fps.converged]
    units, fraction = cdf(converged)
    return Convergence(
        windows=len(fps),
        converged_fraction=float(fps.converged.mean()) if len(fps) else math.nan,
        median_units=float(np.median(converged)) if converged.size else None,
        cdf=Cdf(tuple(units), tuple(fraction)),
    )


def _recurrence(fps: FingerprintSet) -> RecurrenceSummary:
    stats = recurrence(fps)
    summary = stats.summary()
    return RecurrenceSummary(
        intra_pairs=int(summary["intra_pairs"] or 0),
        inter_pairs=int(summary["inter_pairs"] or 0),
        intra_mean=summary["intra_mean"],
        intra_median=summary["intra_median"],
        inter_mean=summary["inter_mean"],
        inter_median=summary["inter_median"],
        separation_auroc=auroc(
            np.concatenate([stats.intra, stats.inter]),
            np.concatenate([np.ones(stats.intra.size, bool), np.zeros(stats.inter.size, bool)]),
        ),
        intra=stats.intra,
        inter=stats.inter,
    )
