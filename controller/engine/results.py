"""What an evaluation returns: typed, frozen results with `to_json()` for metrics.json.

Arrays that only plots need (raw scores, similarity samples, decisions) are fields marked
`private`: they are kept in memory for the report and left out of the JSON.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, fields, is_dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from controller.base.errors import InputError
from controller.engine.identify import Scores
from controller.engine.metrics import auroc
from controller.engine.representation import BoolArray, FloatArray, IntArray

if TYPE_CHECKING:
    from controller.engine.evaluate import EvalSettings

PRIVATE = {"private": True}
"""Metadata of a dataclass field kept out of `to_json` (plot data, raw decisions)."""


def json_ready(value: Any) -> Any:
    """`value` as plain JSON types: dataclasses without their private fields (or through their own
    `to_json`), NaN as None."""
    if is_dataclass(value) and not isinstance(value, type):
        custom = getattr(value, "to_json", None)
        if custom is not None and not isinstance(value, Json):
            # A settings value with a JSON form of its own (e.g. representation names).
            return json_ready(custom())
        return {
            f.name: json_ready(getattr(value, f.name))
            for f in fields(value)
            if not f.metadata.get("private")
        }
    if isinstance(value, Mapping):
        return {str(k): json_ready(v) for k, v in value.items()}
    if isinstance(value, np.ndarray):
        return json_ready(value.tolist())
    if isinstance(value, list | tuple):
        return [json_ready(v) for v in value]
    if isinstance(value, np.floating | np.integer | np.bool_):
        return json_ready(value.item())
    if isinstance(value, float) and math.isnan(value):
        return None
    return value


class Json:
    """Mixin: `to_json()` through `json_ready`."""

    def to_json(self) -> dict[str, Any]:
        """A JSON-ready dict."""
        data: dict[str, Any] = json_ready(self)
        return data


@dataclass(frozen=True)
class Cdf(Json):
    """An empirical CDF: distinct sorted values and the fraction of values ≤ each."""

    units: tuple[float, ...] = ()
    fraction: tuple[float, ...] = ()


@dataclass(frozen=True)
class Confusion(Json):
    """matrix[i, j] = test windows of class i predicted as class j."""

    classes: tuple[str, ...]
    matrix: tuple[tuple[int, ...], ...]

    @classmethod
    def of(cls, classes: Sequence[str], matrix: IntArray) -> Confusion:
        """From a class list and an integer matrix."""
        return cls(tuple(classes), tuple(tuple(int(v) for v in row) for row in matrix.tolist()))

    def array(self) -> IntArray:
        """The matrix as an integer array."""
        return np.array(self.matrix, dtype=np.int64).reshape(len(self.classes), len(self.classes))


@dataclass(frozen=True)
class AnchorResult(Json):
    """An anchor baseline's closed-set result on the grid point's own training and test
    windows (see `controller.engine.anchors`)."""

    name: str
    n_test: int
    accuracy: float
    macro_f1: float
    accuracy_ci: tuple[float, float] = (math.nan, math.nan)


@dataclass(frozen=True)
class TypeResult(Json):
    """One type's closed-set result: its test windows, how many were right (with the Wilson 95 %
    interval of that accuracy), and its precision and F1."""

    type: str
    n: int
    correct: int
    accuracy: float
    ci_low: float
    ci_high: float
    precision: float
    f1: float


@dataclass(frozen=True)
class Calibration(Json):
    """How well the decisions' confidences match how often they are right: the expected
    calibration error over `bins` equal-width bins, the Brier score of the winning type, and
    the mean confidence against the accuracy."""

    ece: float = math.nan
    brier: float = math.nan
    mean_confidence: float = math.nan
    accuracy: float = math.nan
    bins: int = 10
    temperature: float | None = None


@dataclass(frozen=True)
class ClosedSet(Json):
    """Closed-set metrics on test windows whose types are all known, and the accuracy when θ may
    also answer "unknown" (global θ, and each type's own θ)."""

    n_test: int
    accuracy: float
    macro_f1: float
    accuracy_with_theta: float
    rejected_known: float
    theta: float
    confusion: Confusion
    per_type_accuracy: Mapping[str, float]
    accuracy_ci: tuple[float, float] = (math.nan, math.nan)
    accuracy_with_type_theta: float = math.nan
    per_type: tuple[TypeResult, ...] = ()
    calibration: Calibration = field(default_factory=Calibration)
    open_labels: tuple[str, ...] = field(default=(), compare=False, repr=False, metadata=PRIVATE)
    type_labels: tuple[str, ...] = field(default=(), compare=False, repr=False, metadata=PRIVATE)
    scores: Scores | None = field(default=None, compare=False, repr=False, metadata=PRIVATE)


@dataclass(frozen=True)
class OpenSetFold(Json):
    """One leave-one-type-out fold: `left_out` removed from the references must be "unknown"."""

    left_out: str
    theta: float
    n_unknown: int
    n_known: int
    unknown_detection: float
    known_accuracy: float
    auroc: float


@dataclass(frozen=True)
class OpenSet(Json):
    """Leave-one-type-out results: per fold, their means, and the AUROC over all folds pooled."""

    folds: tuple[OpenSetFold, ...] = ()
    unknown_detection: float = math.nan
    known_accuracy: float = math.nan
    auroc_mean: float = math.nan
    auroc: float = math.nan
    auroc_by_score: Mapping[str, float] = field(default_factory=dict)
    scores: FloatArray | None = field(default=None, compare=False, repr=False, metadata=PRIVATE)
    known: BoolArray | None = field(default=None, compare=False, repr=False, metadata=PRIVATE)

    @classmethod
    def pooled(
        cls,
        folds: Sequence[OpenSetFold],
        scores: FloatArray,
        known: BoolArray,
        auroc_by_score: Mapping[str, float] | None = None,
    ) -> OpenSet:
        """The folds, their means, and the AUROC of all folds' `scores` pooled (`known`: which
        of them belong to a type the references know)."""
        return cls(
            folds=tuple(folds),
            unknown_detection=float(np.mean([f.unknown_detection for f in folds])),
            known_accuracy=float(np.nanmean([f.known_accuracy for f in folds])),
            auroc_mean=float(np.nanmean([f.auroc for f in folds])),
            auroc=auroc(scores, known),
            auroc_by_score=dict(auroc_by_score or {}),
            scores=scores,
            known=known,
        )


@dataclass(frozen=True)
class TimeToIdentification(Json):
    """Per test track: units from its first test window's start to the end of its first
    correctly identified window."""

    tracks: int
    identified: int
    identified_fraction: float
    median_units: float | None
    mean_units: float | None
    cdf: Cdf


@dataclass(frozen=True)
class EarlyIdentification(Json):
    """Closed-set accuracy when only the first `units[i]` units of each test track are seen."""

    units: tuple[int, ...]
    seconds: tuple[float, ...]
    accuracy: tuple[float, ...]
    tracks_with_activity: tuple[int, ...]
    tracks: int


@dataclass(frozen=True)
class Convergence(Json):
    """How long exported windows took to converge."""

    windows: int
    converged_fraction: float
    median_units: float | None
    cdf: Cdf


@dataclass(frozen=True)
class RecurrenceSummary(Json):
    """Similarity of each device's successive fingerprints (intra) against other devices' (inter),
    and how well the first separates from the second (AUROC)."""

    intra_pairs: int
    inter_pairs: int
    intra_mean: float | None
    intra_median: float | None
    inter_mean: float | None
    inter_median: float | None
    separation_auroc: float
    intra: FloatArray | None = field(default=None, compare=False, repr=False, metadata=PRIVATE)
    inter: FloatArray | None = field(default=None, compare=False, repr=False, metadata=PRIVATE)


@dataclass(frozen=True)
class DeviceAccumulation(Json):
    """One test device's accumulated decisions: its windows, how many of them left the
    accumulated label right, and the units from its first test window's start until the label
    was right and stayed right to the end (None: never settled on the right type)."""

    device: str
    type: str
    windows: int
    right: int
    settled_units: int | None
    changes: int


@dataclass(frozen=True)
class Accumulation(Json):
    """Decisions accumulated over each test device's successive windows (see
    `controller.engine.accumulate`), and change detection on spliced devices: a device's test
    windows followed by those of a device of another type under the same name."""

    windows: int
    accuracy: float
    window_accuracy: float
    devices: tuple[DeviceAccumulation, ...]
    false_changes: int
    spliced: int
    detected: int
    detection_delay_median: float | None


@dataclass(frozen=True)
class Robustness(Json):
    """Closed-set results when the test data are observed through 1:`one_in` packet sampling
    (references from the full data)."""

    one_in: int
    n_test: int
    accuracy: float
    macro_f1: float


@dataclass(frozen=True)
class GridResult(Json):
    """Every metric of one grid point: (time unit, representation, matching mode, neighbours)."""

    unit_seconds: float
    representation: str
    granularity: int | None
    windows: int
    n_train: int
    convergence: Convergence
    recurrence: RecurrenceSummary
    mode: str
    closed_set: ClosedSet
    open_set: OpenSet
    time_to_identification: TimeToIdentification
    early_identification: EarlyIdentification | None = None
    intensity: str | None = None
    neighbours: int = 1
    open_set_per_type: OpenSet | None = None
    accumulation: Accumulation | None = None
    robustness: tuple[Robustness, ...] = ()
    catalogue: str = "built-in"
    services: int = 0
    anchors: tuple[AnchorResult, ...] = ()
    weighting: str = "none"
    families: tuple[tuple[str, ...], ...] = ()
    family_accuracy: float = math.nan
    open_set_families: OpenSet | None = None
    train_accuracy: float = math.nan
    """The leave-one-out accuracy of the training windows (`identify.left_out_accuracy`; a
    capture's prefixes stay references but are not scored): chooses among settings without
    the test windows (`Evaluation.chosen`)."""

    @property
    def label(self) -> str:
        """ "<representation>, <mode>[, k=<n>][, idf], unit <u> s[, train-learned catalogue]", as
        reports name a grid point."""
        k = f", k={self.neighbours}" if self.neighbours > 1 else ""
        k += "" if self.weighting == "none" else f", {self.weighting}"
        learned = "" if self.catalogue == "built-in" else f", {self.catalogue} catalogue"
        return f"{self.representation}, {self.mode}{k}, unit {self.unit_seconds:g} s{learned}"


@dataclass(frozen=True)
class Evaluation(Json):
    """An evaluation over a grid: the data set, the settings and one result per grid point."""

    dataset: str
    tracks: int
    types: tuple[str, ...]
    settings: EvalSettings
    results: tuple[GridResult, ...]

    def best(self) -> GridResult:
        """The grid point with the highest closed-set accuracy (ties: higher macro-F1, then the
        first in grid order). Picked on the test windows: with many settings, an optimistic
        choice (`chosen` picks on the training windows alone)."""
        if not self.results:
            raise InputError("no evaluation results")
        return max(
            self.results,
            key=lambda r: (_num(r.closed_set.accuracy), _num(r.closed_set.macro_f1)),
        )

    def chosen(self) -> GridResult | None:
        """The grid point whose training windows, each left out of its references, are most
        often right (`GridResult.train_accuracy`; ties: the first in grid order): the setting
        the training data alone picks, so its test numbers are those of a setting chosen
        without looking at the test windows. None when no grid point has that accuracy (no
        training windows, e.g. references from MUD files)."""
        scored = [r for r in self.results if not math.isnan(r.train_accuracy)]
        return max(scored, key=lambda r: r.train_accuracy) if scored else None

    def to_json(self) -> dict[str, Any]:
        """A JSON-ready dict, with the labels of the `best` and the `chosen` grid points."""
        data = super().to_json()
        chosen = self.chosen()
        if self.results:
            data["best_setting"] = self.best().label
        data["chosen_setting"] = None if chosen is None else chosen.label
        return data


def _num(value: float | None) -> float:
    return -1.0 if value is None or math.isnan(value) else float(value)
