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
from typing import Any, Literal

import numpy as np
import numpy.typing as npt

from controller.base.errors import InputError
from controller.engine import partition
from controller.engine.activity import ActivityTable
from controller.engine.exporter import ExporterConfig, whole_windows
from controller.engine.fingerprints import FingerprintSet
from controller.engine.identify import (
    DEFAULT_NEIGHBOURS,
    DEFAULT_PERCENTILE,
    MODES,
    UNKNOWN,
    Mode,
    References,
    Scores,
    choose_theta,
    enroll,
    own_type_similarity,
    score,
)
from controller.engine.metrics import accuracy, auroc, cdf, confusion_matrix, macro_f1
from controller.engine.partition import SERIAL, Parallel
from controller.engine.recurrence import recurrence
from controller.engine.representation import FloatArray, IntArray, representation_name
from controller.engine.results import (
    Cdf,
    ClosedSet,
    Confusion,
    Convergence,
    EarlyIdentification,
    Evaluation,
    GridResult,
    OpenSet,
    OpenSetFold,
    RecurrenceSummary,
    TimeToIdentification,
)

Windows = Literal["exporter", "whole"]
Split = Literal["time", "group"]
Progress = Callable[[int, int], None]
"""Called with (grid points done, grid points in all) as an evaluation advances."""
DEFAULT_GRANULARITIES: tuple[int | None, ...] = (1, 2, 4, 8, None)
DEFAULT_TRAIN_FRACTION = 0.5
DEFAULT_PREFIXES = (1, 2, 5, 10, 20, 30, 60, 120, 300)
"""Observation lengths (units) at which early identification of captures is measured."""


# --- data and settings ----------------------------------------------------------------------------


@dataclass(frozen=True)
class Dataset:
    """Labelled activity to evaluate on.

    Device keys of `activity` are *tracks*: a device, or one capture of a device (for capture
    data sets, where each capture is its own short observation). `labels` maps every track to its
    type; `groups` (optional) maps tracks to their setup/capture group for group splits.
    """

    activity: ActivityTable
    labels: Mapping[str, str]
    groups: Mapping[str, str] | None = None
    name: str = "dataset"


@dataclass(frozen=True)
class EvalSettings:
    """What to evaluate: the grid, how windows are made and split, how references are matched.

    `captures`: every track is a separate short capture, so its timeline ends with its own last
    activity and the window still open there is exported too (unconverged); early
    identification is then measured on the first `prefixes` units of every test capture.
    """

    granularities: tuple[int | None, ...] = DEFAULT_GRANULARITIES
    unit_seconds: tuple[float, ...] = ()
    exporter: ExporterConfig = field(default_factory=ExporterConfig)
    windows: Windows = "exporter"
    captures: bool = False
    split: Split = "time"
    train_fraction: float = DEFAULT_TRAIN_FRACTION
    modes: tuple[Mode, ...] = MODES
    neighbours: int = DEFAULT_NEIGHBOURS
    percentile: float = DEFAULT_PERCENTILE
    theta: float | None = None
    prefixes: tuple[int, ...] = DEFAULT_PREFIXES

    def to_json(self) -> dict[str, Any]:
        """The settings as a JSON-ready dict (representations by name)."""
        return {
            "granularities": [representation_name(g) for g in self.granularities],
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
        }

    def __post_init__(self) -> None:
        if not 0.0 < self.train_fraction < 1.0:
            raise InputError(f"train fraction {self.train_fraction} must lie strictly in (0, 1)")
        if not self.granularities:
            raise InputError("the grid needs at least one granularity")
        bad = [m for m in self.modes if m not in MODES]
        if bad or not self.modes:
            raise InputError(f"modes {bad or '(none)'}: choose from {', '.join(MODES)}")


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
    rest test. A device or type with a single window or group trains only.
    """
    names = fps.device_names
    keep = [i for i, name in enumerate(names) if labels.get(name, UNKNOWN) != UNKNOWN]
    train: list[int] = []
    test: list[int] = []
    if how == "time":
        by_device: dict[str, list[int]] = {}
        for i in keep:
            by_device.setdefault(names[i], []).append(i)
        for rows in by_device.values():
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
    θ may also answer "unknown"); the raw decisions and scores ride along for plots."""
    scores = score(test, refs)
    predicted = [scores.types[w] for w in scores.winner.tolist()]
    best = scores.best
    open_labels = [
        p if b >= refs.theta else UNKNOWN for p, b in zip(predicted, best.tolist(), strict=True)
    ]
    classes, matrix = confusion_matrix(truth, predicted)
    return ClosedSet(
        n_test=len(truth),
        accuracy=accuracy(truth, predicted),
        macro_f1=macro_f1(truth, predicted),
        accuracy_with_theta=accuracy(truth, open_labels),
        rejected_known=sum(label == UNKNOWN for label in open_labels) / max(1, len(truth)),
        theta=refs.theta,
        confusion=Confusion.of(classes, matrix),
        per_type_accuracy=_per_type(truth, predicted),
        open_labels=tuple(open_labels),
        scores=scores,
    )


def _per_type(truth: Sequence[str], predicted: Sequence[str]) -> dict[str, float]:
    out: dict[str, list[bool]] = {}
    for t, p in zip(truth, predicted, strict=True):
        out.setdefault(t, []).append(t == p)
    return {t: sum(v) / len(v) for t, v in sorted(out.items())}


def open_set(
    refs: References,
    test: FingerprintSet,
    truth: Sequence[str],
    percentile: float,
    theta: float | None,
    scores: Scores | None = None,
) -> OpenSet:
    """Leave-one-type-out: each type with test windows in turn is removed from the references
    (θ re-chosen from what is left unless given) and must come out "unknown".

    Removing a type leaves every other type's score as it was (its references and prototype
    are untouched, and so are the other types' leave-one-out similarities behind θ), so with a
    single voting neighbour one scoring of `test` (`scores`, computed if not given) serves every
    fold; with several voting neighbours each fold is scored anew.
    """
    folds = []
    pooled_scores: list[FloatArray] = []
    pooled_known: list[npt.NDArray[np.bool_]] = []
    truth_arr = np.array(truth, dtype=object)
    reuse = refs.mode == "centroid" or refs.neighbours == 1
    full = scores if scores is not None else score(test, refs) if reuse and len(test) else None
    own = own_type_similarity(refs) if theta is None else None
    labels_arr = np.array(refs.labels, dtype=object)
    for left_out in sorted(set(truth) & set(refs.labels)):
        rest_types = tuple(t for t in refs.types if t != left_out)
        if not rest_types:
            continue
        if theta is not None:
            fold_theta = theta
        else:
            assert own is not None
            values = own[(labels_arr != left_out) & ~np.isnan(own)]
            fold_theta = (
                float(np.percentile(values, percentile, method="lower")) if values.size else 0.0
            )
        if full is not None:
            ts = full.type_scores.copy()
            ts[:, full.types.index(left_out)] = -np.inf
            winner = np.argmax(ts, axis=1)
            best = ts[np.arange(len(winner)), winner]
            predicted = np.array([full.types[w] for w in winner.tolist()], dtype=object)
        else:
            fold = score(test, refs.without_types([left_out]))
            best = fold.best
            predicted = np.array([fold.types[w] for w in fold.winner.tolist()], dtype=object)
        unknown = truth_arr == left_out
        # Known test windows of types the references never had cannot be judged here.
        judged = unknown | np.isin(truth_arr, np.array(rest_types, dtype=object))
        known = judged & ~unknown
        accepted = best >= fold_theta
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
                auroc=auroc(best[judged], known[judged]),
            )
        )
        pooled_scores.append(best[judged])
        pooled_known.append(known[judged])
    if not folds:
        return OpenSet()
    all_scores, all_known = np.concatenate(pooled_scores), np.concatenate(pooled_known)
    return OpenSet(
        folds=tuple(folds),
        unknown_detection=float(np.mean([f.unknown_detection for f in folds])),
        known_accuracy=float(np.nanmean([f.known_accuracy for f in folds])),
        auroc_mean=float(np.nanmean([f.auroc for f in folds])),
        auroc=auroc(all_scores, all_known),
        scores=all_scores,
        known=all_known,
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
) -> EarlyIdentification:
    """Closed-set accuracy when only the first t units of each track are seen, per t.

    Each test track (device key → true type) is cut to units [first, first + t) of its own
    timeline and fingerprinted as one window: how fast a capture is recognised.
    """
    sub = activity.select(devices=tracks)
    first = np.full(len(sub.devices), np.iinfo(np.int64).max)
    np.minimum.at(first, sub.device, sub.unit)
    offset = sub.unit - first[sub.device]
    accuracies: list[float] = []
    seen: list[int] = []
    for t in prefixes:
        fps = whole_windows(sub.where(offset < t), refs.granularity, threshold)
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


def evaluate(
    dataset: Dataset,
    settings: EvalSettings,
    progress: Progress | None = None,
    parallel: Parallel = SERIAL,
) -> Evaluation:
    """Every metric for every (time unit, G, mode) of the grid; `progress` hears of each grid
    point done (the CLI draws a progress bar with it); fingerprints are computed per group of
    devices as `parallel` says (in this process by default)."""
    base = dataset.activity.unit_seconds
    units = settings.unit_seconds or (base,)
    grid = [(u, g) for u in units for g in settings.granularities]
    results: list[GridResult] = []
    for done, (unit_seconds, granularity) in enumerate(grid):
        activity = (
            dataset.activity
            if math.isclose(unit_seconds, base)
            else dataset.activity.with_unit_seconds(unit_seconds)
        )
        results.extend(_evaluate_one(dataset, activity, granularity, settings, parallel))
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
    settings: EvalSettings,
    parallel: Parallel,
) -> Iterator[GridResult]:
    config = replace(settings.exporter, granularity=granularity)
    fps = make_windows(activity, config, settings.windows, settings.captures, parallel)
    split = split_rows(fps, dataset.labels, dataset.groups, settings.split, settings.train_fraction)
    if not split.train.size or not split.test.size:
        raise InputError(
            f"{dataset.name}: {representation_name(granularity)} at {activity.unit_seconds} s "
            f"gives {split.train.size} training and {split.test.size} test windows; "
            "need some of each"
        )
    convergence = _convergence(fps)
    recurrence_summary = _recurrence(fps)
    train = fps.select(split.train)
    test = fps.select(split.test)
    truth = [dataset.labels[name] for name in test.device_names]
    for mode in settings.modes:
        refs = enroll(
            train,
            dataset.labels,
            mode=mode,
            theta=settings.theta if settings.theta is not None else 0.0,
            neighbours=settings.neighbours,
            config=settings.exporter,
        )
        if settings.theta is None:
            try:
                refs = refs.with_settings(theta=choose_theta(refs, settings.percentile))
            except InputError:
                refs = refs.with_settings(theta=0.0)
        closed = closed_set(refs, test, truth)
        early = None
        if settings.captures and settings.prefixes:
            tracks = dict(zip(test.device_names, truth, strict=True))
            early = early_identification(
                refs, activity, tracks, settings.prefixes, settings.exporter.threshold
            )
        yield GridResult(
            unit_seconds=activity.unit_seconds,
            representation=representation_name(granularity),
            granularity=granularity,
            windows=len(fps),
            n_train=int(split.train.size),
            convergence=convergence,
            recurrence=recurrence_summary,
            mode=mode,
            closed_set=closed,
            open_set=open_set(
                refs, test, truth, settings.percentile, settings.theta, closed.scores
            ),
            time_to_identification=time_to_identification(test, truth, closed.open_labels),
            early_identification=early,
        )


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
