"""Identification: reference fingerprints of known types, closed- and open-set decisions, and the
explanation of every decision (DESIGN §5).

References are exported fingerprints of labelled devices. Two ways to compare against them:

- ``nearest``: every reference fingerprint is kept; a fingerprint's score for a type is its best
  similarity to any reference of that type, and the decision is a vote among the `neighbours`
  most similar references (ties go to the type with the higher score).
- ``centroid``: one prototype per type, the per-service mean of its reference fingerprints rounded
  to the nearest level of the representation (so a Service List prototype holds the services used
  in at least half of the type's references); the score is the similarity to the prototype.

Open set: the answer is "unknown" when the winning score is below θ. By default θ is a low
percentile of the references' leave-one-out similarity to their own type (nearest: best
similarity to another reference of the type; centroid: similarity to the prototype rebuilt
without it) — "as similar as the least typical reference still is to its own kind".

Per-type thresholds: each known type with at least `MIN_TYPE_REFERENCES` leave-one-out values
gets its own θ (the same percentile of its own values): a type whose references all look alike
rejects a stranger that a global θ, set by the loosest type, would let in. Other types use the
global θ.

Confidence: the probability that the winning type is right, a softmax of the type scores at a
temperature fitted to the references' own leave-one-out scores (the temperature that gives their
true types the highest likelihood). It is what `controller.engine.accumulate` adds up over a
device's successive windows.

Sibling families (`sibling_families`): the types the references cannot tell apart, found at
enrolment from the same leave-one-out scores. A decision names the winner's siblings: a device
of a family the references know is named as one of its types even when its own type is not
among them, which no threshold on the similarity to a look-alike can see.

Every decision carries an explanation against the reference it matched: per service, its part of
Σmin (numerator) and of Σmax (denominator), and its share min/Σmax of the similarity. The shares
sum to the reported similarity, which is Σnumerator / Σdenominator. With intensity a service's
part sums its three weights (prevalence, share or rate, size) — sized intensity adds a fourth,
the size-matched mass — and the explanation quotes the intensity itself: packets per active
unit and bytes per packet, against the range of the matched type's references.

Service weights (`weighting`): with "idf" every service's weights (prevalence and intensity
alike) are scaled by how few of the known types use it, learned from the references alone:
w(s) = (1 + ln((1 + T) / (1 + T_s))) / (1 + ln(1 + T)) for T known types of which T_s have a
reference that uses s (the smoothed inverse document frequency, types as documents). A service
no known type uses weighs 1, one that every type uses 1 / (1 + ln(1 + T)). Both sides of a
comparison are scaled alike, so similarity stays the weighted Jaccard index in [0, 1] and every
service's share stays exact (explanations then quote the scaled prevalence). The weights follow
the references: removing a type (the open-set folds) learns them again from the rest. "none"
(the default) weighs every service alike: on IoT Sentinel (group split, 274 test captures) idf
raised list+intensity from 0.869 to 0.883 but lowered the default prevalence+intensity from
0.850 to 0.847 (with the train-learned catalogue it lowered both), and left tj-oconnor where
it was (list+intensity 0.962, prevalence+intensity 1.000).

References files carry a version: 1 (presence only) is still read; 2 adds every reference's
usage, the intensity, per-type thresholds, the temperature and the service weighting (and,
read when present, the sibling families).
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, fields, replace
from functools import cached_property
from pathlib import Path
from typing import Any, Literal, NamedTuple

import numpy as np
import numpy.typing as npt

from controller.base.errors import InputError
from controller.base.fileio import read_json, write_text_atomically
from controller.engine.activity import MAX_ROW_COUNT, MAX_UNIT_SECONDS, MIN_UNIT_SECONDS
from controller.engine.exporter import ExporterConfig
from controller.engine.fingerprints import USAGE_ROWS, FingerprintSet
from controller.engine.representation import (
    INTENSITIES,
    SIZE_TOLERANCE,
    FloatArray,
    IntArray,
    Intensity,
    feature_matrix,
    representation_name,
    size_tolerances,
)
from controller.engine.similarity import Tolerance, parts, similarity_matrix, similarity_pairs

Mode = Literal["nearest", "centroid"]
MODES: tuple[Mode, ...] = ("nearest", "centroid")
Weighting = Literal["none", "idf"]
WEIGHTINGS: tuple[Weighting, ...] = ("none", "idf")
DEFAULT_WEIGHTING: Weighting = "none"
"""How services weigh against each other (see the module docstring): alike by default."""
UNKNOWN = "unknown"
DEFAULT_MODE: Mode = "nearest"
"""Nearest-neighbour matching beat centroids on the IoT Sentinel captures (see report)."""
DEFAULT_PERCENTILE = 5.0
"""θ is this percentile of the references' leave-one-out similarity to their own type."""
DEFAULT_NEIGHBOURS = 1
"""Reference fingerprints that vote in nearest mode."""
DEFAULT_PER_TYPE_THETA = False
"""Whether enrolment gives types their own θ by default (see the module docstring)."""
MIN_TYPE_REFERENCES = 3
"""Leave-one-out values a type needs for a θ of its own."""
CALIBRATION_ROWS = 2_000
"""References (a seeded sample, at most) whose leave-one-out scores fit the temperature."""
SIBLING_SHARE = 0.25
"""Share of a type's left-out references that must score another type as high as their own
for the two to be siblings (`sibling_families`). On IoT Sentinel's training captures the
families it finds are the vendors' look-alikes: four D-Link types (a quarter to a half of each
type's references), the two Edimax plugs (about half), the two TP-Link plugs (about half) and
the two kettles (all); the next closest pair, the two WeMo switches, is at 12 %."""
TEMPERATURES = np.geomspace(0.002, 1.0, 60)
FORMAT = "svcfp-references"
# Similarities held at once while scoring (rows × references), about 128 MB of float64.
_SCORE_BLOCK = 16_000_000
VERSION = 2
READABLE_VERSIONS = (1, 2)


def _prototype(mean: FloatArray, granularity: int | None, services: int) -> FloatArray:
    """Round a mean fingerprint to the nearest level of the representation (halves go up); only
    the prevalence weights (the first `services` columns) have levels, intensity weights stay
    means."""
    if granularity is None:
        return mean
    out = mean.copy()
    # A tiny tolerance keeps exact halves (e.g. 1 of 2 references) from rounding down.
    out[..., :services] = np.floor(mean[..., :services] * granularity + 0.5 + 1e-9) / granularity
    return out


@dataclass(frozen=True, eq=False)
class References:
    """Reference fingerprints of known device types, with the settings that made them.

    Rows of `weights` are reference fingerprints over `services`; `labels[i]` is the type of row
    i and `origins[i]` says where it came from ("<device>@<start>-<end>"). `usage` (3 × rows ×
    services, optional for presence representations) holds each reference's active units,
    packets and bytes. `thetas` holds per-type thresholds (aligned with `types`; None: θ for
    every type); `temperature` the confidence calibration (None: not fitted); `families` the
    types these references cannot tell apart (`sibling_families`, found at enrolment). Sized
    references match packet sizes within τ per service learned from their own usage
    (`tolerance`).
    """

    services: tuple[str, ...]
    weights: FloatArray
    labels: tuple[str, ...]
    origins: tuple[str, ...]
    granularity: int | None
    unit_seconds: float
    mode: Mode = DEFAULT_MODE
    theta: float = 0.0
    neighbours: int = DEFAULT_NEIGHBOURS
    config: ExporterConfig | None = None
    usage: IntArray | None = None
    intensity: Intensity | None = None
    thetas: tuple[float, ...] | None = None
    temperature: float | None = None
    weighting: Weighting = DEFAULT_WEIGHTING
    families: tuple[tuple[str, ...], ...] = ()

    def __post_init__(self) -> None:
        n = len(self.labels)
        strangers = sorted({t for family in self.families for t in family} - set(self.labels))
        if strangers or any(len(family) < 2 for family in self.families):
            raise InputError(
                "references: sibling families need two known types each"
                + (f"; no reference is of type {', '.join(strangers)}" if strangers else "")
            )
        if self.weighting not in WEIGHTINGS:
            raise InputError(
                f"references: service weighting {self.weighting!r} is not one of "
                + ", ".join(WEIGHTINGS)
            )
        if self.usage is not None and self.usage.shape != (len(USAGE_ROWS), *self.weights.shape):
            raise InputError(
                f"references: usage of shape {self.usage.shape} for weights {self.weights.shape}"
            )
        if self.intensity is not None and self.usage is None:
            raise InputError(
                f"references: the {self.representation} representation needs every "
                "reference's packet and byte counts"
            )
        if self.thetas is not None and len(self.thetas) != len(self.types):
            raise InputError(
                f"references: {len(self.thetas)} per-type thresholds for {len(self.types)} types"
            )
        if self.weights.shape != (n, len(self.services)) or len(self.origins) != n:
            raise InputError(
                f"references: {n} labels, {len(self.origins)} origins and weights of shape "
                f"{self.weights.shape} over {len(self.services)} services do not agree"
            )
        if self.mode not in MODES:
            raise InputError(f"references: mode {self.mode!r} is not one of {', '.join(MODES)}")
        if self.neighbours < 1:
            raise InputError(f"references: neighbours={self.neighbours} must be ≥ 1")

    @property
    def types(self) -> tuple[str, ...]:
        """The known types, sorted."""
        return tuple(sorted(set(self.labels)))

    @property
    def representation(self) -> str:
        """The name of the references' representation."""
        return representation_name(self.granularity, self.intensity)

    @property
    def sized(self) -> bool:
        """Whether the features match packet sizes (the sized intensity)."""
        return self.intensity == "sized"

    @cached_property
    def _tolerances(self) -> FloatArray | None:
        """τ per service over the references' own axis (None: not sized)."""
        if not self.sized or self.usage is None:
            return None
        return size_tolerances(self.usage, self.type_index, len(self.types))

    def tolerance(self, services: Sequence[str] | None = None) -> Tolerance:
        """τ of the size match per service over `services` (default: the references' own
        axis), learned from the references (`size_tolerances`); `SIZE_TOLERANCE` for a service
        they do not use, and for every service without the sized intensity."""
        learned = self._tolerances
        axis = self.services if services is None else tuple(services)
        if learned is None or axis == self.services:
            return SIZE_TOLERANCE if learned is None else learned
        out = np.full(len(axis), SIZE_TOLERANCE)
        out[self._columns_in(axis)] = learned
        return out

    def theta_of(self, types: IntArray) -> FloatArray:
        """The threshold that applies to each of `types` (indices into `types`)."""
        if self.thetas is None:
            return np.full(len(types), self.theta)
        thetas: FloatArray = np.asarray(self.thetas, dtype=np.float64)[types]
        return thetas

    def service_weights(self, services: Sequence[str] | None = None) -> FloatArray:
        """Each service's weight over `services` (default: the references' own axis): all 1 without
        a weighting; with "idf" the smoothed inverse type frequency of the module docstring."""
        axis = self.services if services is None else tuple(services)
        out = np.ones(len(axis))
        if self.weighting == "none" or not self.labels:
            return out
        n_types = len(self.types)
        used = self.weights > 0
        idx = self.type_index
        per_type = np.zeros((n_types, len(self.services)), dtype=bool)
        np.logical_or.at(per_type, idx, used)
        users = per_type.sum(axis=0)
        idf = (1.0 + np.log((1.0 + n_types) / (1.0 + users))) / (1.0 + math.log(1.0 + n_types))
        position = {name: j for j, name in enumerate(axis)}
        cols = np.array([position[name] for name in self.services if name in position], dtype=int)
        known = np.array([name in position for name in self.services], dtype=bool)
        out[cols] = idf[known]
        return out

    def weigh(self, features: FloatArray, services: Sequence[str] | None = None) -> FloatArray:
        """`features` over `services` (prevalence, and intensity blocks if any) scaled by the
        service weights; unchanged without a weighting."""
        if self.weighting == "none":
            return features
        weights = self.service_weights(services)
        blocks = features.shape[-1] // max(1, len(weights))
        scaled: FloatArray = features * np.tile(weights, blocks)
        return scaled

    def features(self, services: Sequence[str] | None = None) -> FloatArray:
        """What similarity compares, per reference, laid out over `services` (default: the
        references' own axis), scaled by the service weights."""
        return self.weigh(self.raw_features(services), services)

    def raw_features(self, services: Sequence[str] | None = None) -> FloatArray:
        """The references' features over `services` before service weights."""
        axis = self.services if services is None else tuple(services)
        if axis == self.services:
            weights, usage = self.weights, self.usage
        else:
            cols = self._columns_in(axis)
            weights = np.zeros((len(self.labels), len(axis)))
            weights[:, cols] = self.weights
            usage = None
            if self.usage is not None:
                usage = np.zeros((len(USAGE_ROWS), len(self.labels), len(axis)), dtype=np.int64)
                usage[:, :, cols] = self.usage
        return feature_matrix(
            weights,
            None if usage is None else usage[0],
            None if usage is None else usage[1],
            None if usage is None else usage[2],
            self.intensity,
        )

    def _columns_in(self, axis: Sequence[str]) -> IntArray:
        """Where each of the references' services sits on `axis` (which holds them all)."""
        position = {name: j for j, name in enumerate(axis)}
        return np.array([position[name] for name in self.services], dtype=np.int64)

    @property
    def type_index(self) -> IntArray:
        """Each reference row's index into `types`."""
        index = {t: i for i, t in enumerate(self.types)}
        return np.array([index[label] for label in self.labels], dtype=np.int64)

    def centroids(self, services: Sequence[str] | None = None) -> FloatArray:
        """One prototype per type (rows in `types` order), in feature space over `services`: the
        rounded mean of the type's references, then scaled by the service weights."""
        features = self.raw_features(services)
        idx = self.type_index
        sums = np.zeros((len(self.types), features.shape[1]))
        np.add.at(sums, idx, features)
        counts = np.bincount(idx, minlength=len(self.types)).astype(np.float64)
        width = len(self.services) if services is None else len(services)
        return self.weigh(_prototype(sums / counts[:, None], self.granularity, width), services)

    def with_settings(
        self,
        theta: float | None = None,
        neighbours: int | None = None,
    ) -> References:
        """A copy with another θ or k (None keeps a setting). A θ given here applies to every
        type: per-type thresholds are dropped. The temperature and the sibling families stay:
        neither depends on θ or k. The mode and the service weighting shape everything learned at
        enrolment (thresholds, temperature, families), so changing them means enrolling again."""
        return replace(
            self,
            theta=self.theta if theta is None else theta,
            thetas=self.thetas if theta is None else None,
            neighbours=self.neighbours if neighbours is None else neighbours,
        )

    def without_types(self, types: Sequence[str]) -> References:
        """The references with every fingerprint of `types` removed (θ kept as it is)."""
        drop = set(types)
        keep = np.array([label not in drop for label in self.labels], dtype=bool)
        thetas = None
        if self.thetas is not None:
            thetas = tuple(
                t for name, t in zip(self.types, self.thetas, strict=True) if name not in drop
            )
        families = tuple(
            kept
            for kept in (tuple(t for t in f if t not in drop) for f in self.families)
            if len(kept) > 1
        )
        return replace(
            self,
            weights=self.weights[keep],
            labels=tuple(label for label in self.labels if label not in drop),
            origins=tuple(o for o, k in zip(self.origins, keep.tolist(), strict=True) if k),
            usage=None if self.usage is None else self.usage[:, keep],
            thetas=thetas,
            families=families,
        )

    # --- persistence --------------------------------------------------------------------------

    def to_json(self) -> dict[str, Any]:
        """A JSON-ready dict (sparse weights: only non-zero services per reference)."""
        return {
            "format": FORMAT,
            "version": VERSION,
            "representation": self.representation,
            "granularity": self.granularity,
            "intensity": self.intensity,
            "unit_seconds": self.unit_seconds,
            "mode": self.mode,
            "theta": self.theta,
            "thetas": None
            if self.thetas is None
            else dict(zip(self.types, self.thetas, strict=True)),
            "temperature": self.temperature,
            "neighbours": self.neighbours,
            "weighting": self.weighting,
            "families": [list(family) for family in self.families],
            "exporter": None if self.config is None else self.config.to_json(),
            "references": [self._entry(i) for i in range(len(self.labels))],
        }

    def _entry(self, i: int) -> dict[str, Any]:
        row = self.weights[i]
        used = np.flatnonzero(row).tolist()
        entry: dict[str, Any] = {
            "type": self.labels[i],
            "origin": self.origins[i],
            "weights": {self.services[j]: float(row[j]) for j in used},
        }
        if self.usage is not None:
            entry["usage"] = {self.services[j]: self.usage[:, i, j].tolist() for j in used}
        return entry

    @classmethod
    def from_json(cls, data: Mapping[str, Any], source: str = "references") -> References:
        """References from `to_json` output; `source` names the input in errors."""
        if data.get("format") != FORMAT:
            raise InputError(f"{source}: not an svcfp references file (format {FORMAT!r})")
        version = data.get("version")
        if version not in READABLE_VERSIONS:
            raise InputError(
                f"{source}: references version {version!r} unsupported: this svcfp reads "
                f"versions {', '.join(map(str, READABLE_VERSIONS))}; enroll the references again"
            )
        try:
            entries = list(data["references"])
            services = tuple(sorted({str(s) for e in entries for s in e["weights"]}))
            col = {s: j for j, s in enumerate(services)}
            weights = np.zeros((len(entries), len(services)))
            for i, entry in enumerate(entries):
                for name, value in dict(entry["weights"]).items():
                    weights[i, col[str(name)]] = float(value)
            if not bool(np.all((weights >= 0.0) & (weights <= 1.0))):
                raise ValueError("weights must lie in [0, 1]")
            usage = None
            if entries and all("usage" in e for e in entries):
                usage = np.zeros((len(USAGE_ROWS), len(entries), len(services)), dtype=np.int64)
                for i, entry in enumerate(entries):
                    for name, counts in dict(entry["usage"]).items():
                        values = [int(v) for v in counts]
                        if len(values) != len(USAGE_ROWS):
                            raise ValueError(
                                f"usage of {name}: expected {len(USAGE_ROWS)} counts "
                                f"({', '.join(USAGE_ROWS)}), got {values}"
                            )
                        if not all(0 <= v <= MAX_ROW_COUNT for v in values):
                            raise ValueError(f"usage of {name} out of range (0..2^56): {values}")
                        usage[:, i, col[str(name)]] = values
            exporter = data.get("exporter")
            mode = str(data.get("mode", DEFAULT_MODE))
            if mode not in MODES:
                raise ValueError(f"mode {mode!r} is not one of {', '.join(MODES)}")
            intensity = data.get("intensity")
            if intensity not in (None, *INTENSITIES):
                raise ValueError(f"intensity {intensity!r} is not one of {', '.join(INTENSITIES)}")
            per_type = data.get("thetas")
            labels = tuple(str(e["type"]) for e in entries)
            thetas = (
                None
                if per_type is None
                else tuple(float(dict(per_type)[t]) for t in sorted(set(labels)))
            )
            temperature = data.get("temperature")
            theta = float(data.get("theta", 0.0))
            if not all(0.0 <= t <= 1.0 for t in (theta, *(thetas or ()))):
                raise ValueError("thresholds must be finite numbers in [0, 1], as similarities")
            if temperature is not None and not (
                math.isfinite(float(temperature)) and temperature > 0
            ):
                raise ValueError(f"temperature {temperature!r} must be a positive number")
            families = data.get("families") or []
            if not isinstance(families, list) or not all(isinstance(f, list) for f in families):
                raise ValueError("families must be a list of lists of types")
            weighting = data.get("weighting", DEFAULT_WEIGHTING)
            if weighting not in WEIGHTINGS:
                raise ValueError(f"weighting {weighting!r} is not one of {', '.join(WEIGHTINGS)}")
            unit_seconds = float(data["unit_seconds"])
            if not MIN_UNIT_SECONDS <= unit_seconds <= MAX_UNIT_SECONDS:
                raise ValueError(
                    f"unit_seconds {unit_seconds} must be a number of seconds in "
                    f"[{MIN_UNIT_SECONDS:g}, {MAX_UNIT_SECONDS:g}]"
                )
            return cls(
                services=services,
                weights=weights,
                labels=labels,
                origins=tuple(str(e.get("origin", "")) for e in entries),
                granularity=None if data["granularity"] is None else int(data["granularity"]),
                unit_seconds=unit_seconds,
                mode=mode,
                theta=theta,
                neighbours=int(data.get("neighbours", DEFAULT_NEIGHBOURS)),
                config=None if exporter is None else ExporterConfig.from_json(exporter),
                usage=usage,
                intensity=intensity,
                thetas=thetas,
                temperature=None if temperature is None else float(temperature),
                weighting=weighting,
                families=tuple(tuple(str(t) for t in family) for family in families),
            )
        except (KeyError, TypeError, ValueError, AttributeError, OverflowError) as exc:
            raise InputError(f"{source}: malformed references: {exc}") from None
        except InputError as exc:
            # What the references' own checks refuse, said of the file.
            raise InputError(f"{source}: {exc}") from None

    def save(self, path: Path) -> None:
        """Write as JSON; the file appears only once complete."""
        write_text_atomically(path, json.dumps(self.to_json(), indent=1, sort_keys=True) + "\n")

    @classmethod
    def load(cls, path: Path) -> References:
        """Read a file written by `save`."""
        data = read_json(path, "references")
        if not isinstance(data, dict):
            raise InputError(f"{path}: expected a JSON object")
        return cls.from_json(data, source=str(path))


def enroll(
    fingerprints: FingerprintSet,
    labels: Mapping[str, str],
    mode: Mode = DEFAULT_MODE,
    theta: float | None = None,
    percentile: float = DEFAULT_PERCENTILE,
    neighbours: int = DEFAULT_NEIGHBOURS,
    config: ExporterConfig | None = None,
    per_type: bool = DEFAULT_PER_TYPE_THETA,
    calibrate: bool = True,
    weighting: Weighting = DEFAULT_WEIGHTING,
    sibling_share: float = SIBLING_SHARE,
) -> References:
    """References from exported fingerprints of labelled devices (device key → type).

    Fingerprints of devices without a label, or labelled "unknown", are left out. θ is chosen
    with `choose_theta` at `percentile` unless given; with `per_type` (and no θ given) every
    type with enough references gets its own (`choose_thetas`). `calibrate` fits the confidence
    temperature (`fit_temperature`) and finds the types the references cannot tell apart
    (`sibling_families` at `sibling_share`); `weighting` how services weigh (see the module
    docstring).
    """
    check_sibling_share(sibling_share)
    rows = [
        i
        for i, name in enumerate(fingerprints.device_names)
        if labels.get(name, UNKNOWN) != UNKNOWN
    ]
    if not rows:
        raise InputError("no exported fingerprint belongs to a labelled device: nothing to enroll")
    chosen = fingerprints.select(np.array(rows, dtype=np.int64))
    used = np.flatnonzero(chosen.weights.any(axis=0))
    names = chosen.device_names
    refs = References(
        services=tuple(chosen.services[j] for j in used.tolist()),
        weights=chosen.weights[:, used],
        labels=tuple(labels[name] for name in names),
        origins=tuple(chosen.origins),
        granularity=chosen.granularity,
        unit_seconds=chosen.unit_seconds,
        mode=mode,
        neighbours=neighbours,
        config=config,
        usage=None if chosen.usage is None else chosen.usage[:, :, used],
        intensity=chosen.intensity,
        weighting=weighting,
    )
    if theta is None:
        refs, _ = with_thresholds(refs, percentile, per_type)
    else:
        refs = replace(refs, theta=theta)
    if calibrate:
        refs, _ = calibrated(refs, sibling_share)
    return refs


def calibrated(
    refs: References, sibling_share: float = SIBLING_SHARE
) -> tuple[References, LeftOut]:
    """`refs` with the confidence temperature (`fit_temperature`) and the sibling families
    (`sibling_families` at `sibling_share`) fitted on one `left_out_sample`; with that sample,
    for `left_out_accuracy` to reuse."""
    check_sibling_share(sibling_share)
    sample = left_out_sample(refs)
    fitted = replace(
        refs,
        temperature=fit_temperature(refs, sample=sample),
        families=sibling_families(refs, sibling_share, sample=sample),
    )
    return fitted, sample


def _held_out_together(refs: References) -> tuple[IntArray, npt.NDArray[np.bool_]]:
    """Each reference's device (from its origin "<device>@<start>-<end>"), and per type whether
    it has references of several devices. A reference is left out of its own type together
    with every other reference of its device when the type has other devices: windows of one
    device (or the short prefixes of one capture) resemble each other more than a new device
    of the type resembles any of them."""
    names = [origin.rpartition("@")[0] or f"#{i}" for i, origin in enumerate(refs.origins)]
    _, device = np.unique(np.array(names, dtype=object), return_inverse=True)
    device = device.astype(np.int64).reshape(-1)
    idx = refs.type_index
    multi = np.zeros(len(refs.types), dtype=bool)
    for t in range(len(refs.types)):
        multi[t] = np.unique(device[idx == t]).size > 1
    return device, multi


def own_type_similarity(refs: References) -> FloatArray:
    """Leave-one-out similarity of each reference to its own type (NaN when nothing of its type
    is left): nearest mode — best similarity to another reference of the type, of another
    device where the type has several (see `_held_out_together`); centroid mode — similarity to
    the type's prototype rebuilt without it."""
    idx = refs.type_index
    out = np.full(len(refs.labels), np.nan)
    if not len(refs.labels):
        return out
    features = refs.features()
    tolerance = refs.tolerance()
    counts = np.bincount(idx, minlength=len(refs.types))
    several = counts[idx] >= 2
    if refs.mode == "nearest":
        device, multi = _held_out_together(refs)
        # Only same-type pairs matter: one small similarity matrix per type.
        for t in np.flatnonzero(counts >= 2).tolist():
            rows = np.flatnonzero(idx == t)
            sims = similarity_matrix(features[rows], features[rows], refs.sized, tolerance)
            if multi[t]:
                sims[device[rows][:, None] == device[rows][None, :]] = -np.inf
            else:
                np.fill_diagonal(sims, -np.inf)
            out[rows] = sims.max(axis=1)
    else:
        raw = refs.raw_features()
        sums = np.zeros((len(refs.types), raw.shape[1]))
        np.add.at(sums, idx, raw)
        rest = np.maximum(counts[idx] - 1, 1).astype(np.float64)
        loo = refs.weigh(
            _prototype((sums[idx] - raw) / rest[:, None], refs.granularity, len(refs.services))
        )
        out[several] = similarity_pairs(features[several], loo[several], refs.sized, tolerance)
    return out


def choose_theta(
    refs: References, percentile: float = DEFAULT_PERCENTILE, own: FloatArray | None = None
) -> float:
    """θ = the `percentile`-th percentile (an observed value, rounding down) of the references'
    leave-one-out similarity to their own type (`own_type_similarity`, or `own` when given)."""
    if not 0.0 <= percentile <= 100.0:
        raise InputError(f"percentile {percentile} must lie in [0, 100]")
    values = own_type_similarity(refs) if own is None else own
    values = values[~np.isnan(values)]
    if not values.size:
        raise InputError(
            "cannot choose θ: no known type has two reference fingerprints; give θ explicitly"
        )
    return float(np.percentile(values, percentile, method="lower"))


def with_thresholds(
    refs: References,
    percentile: float = DEFAULT_PERCENTILE,
    per_type: bool = DEFAULT_PER_TYPE_THETA,
) -> tuple[References, FloatArray]:
    """`refs` with θ chosen at `percentile` (`choose_theta`) and, with `per_type`, every type's
    own (`choose_thetas`); with the references' `own_type_similarity` both came from, for the
    open set to reuse."""
    own = own_type_similarity(refs)
    theta = choose_theta(refs, percentile, own)
    thetas = choose_thetas(refs, percentile, theta, own) if per_type else None
    return replace(refs, theta=theta, thetas=thetas), own


def choose_thetas(
    refs: References, percentile: float, fallback: float, own: FloatArray | None = None
) -> tuple[float, ...]:
    """Per type (in `types` order): the `percentile`-th percentile of its own leave-one-out
    similarities when it has at least `MIN_TYPE_REFERENCES` of them, else `fallback`."""
    values = own_type_similarity(refs) if own is None else own
    idx = refs.type_index
    out = []
    for t in range(len(refs.types)):
        mine = values[(idx == t) & ~np.isnan(values)]
        enough = mine.size >= MIN_TYPE_REFERENCES
        out.append(float(np.percentile(mine, percentile, method="lower")) if enough else fallback)
    return tuple(out)


def loo_type_scores(refs: References, rows: IntArray | None = None) -> tuple[FloatArray, IntArray]:
    """Each reference's score for every type with itself left out (nearest: best similarity to
    the type's other references; centroid: similarity to the prototypes, its own rebuilt
    without it), -inf for a type with no other reference; and the type it is given so
    (`score`'s decision: in nearest mode the votes of `refs.neighbours` of the other
    references). `rows` picks references (default all)."""
    chosen = np.arange(len(refs.labels)) if rows is None else np.asarray(rows, dtype=np.int64)
    features = refs.features()
    tolerance = refs.tolerance()
    idx = refs.type_index
    n_types = len(refs.types)
    out = np.full((len(chosen), n_types), -np.inf)
    if refs.mode == "centroid":
        protos = refs.centroids()
        counts = np.bincount(idx, minlength=n_types)
        out[:] = similarity_matrix(features[chosen], protos, refs.sized, tolerance)
        own = idx[chosen]
        rest = counts[own] - 1
        raw = refs.raw_features()
        all_sums = np.zeros((n_types, raw.shape[1]))
        np.add.at(all_sums, idx, raw)
        rebuilt = refs.weigh(
            _prototype(
                (all_sums[own] - raw[chosen]) / np.maximum(rest, 1)[:, None],
                refs.granularity,
                len(refs.services),
            )
        )
        mine = similarity_pairs(features[chosen], rebuilt, refs.sized, tolerance)
        out[np.arange(len(chosen)), own] = np.where(rest > 0, mine, -np.inf)
        return out, np.argmax(out, axis=1)
    device, multi = _held_out_together(refs)
    perm = np.argsort(idx, kind="stable")
    sorted_idx = idx[perm]
    sorted_device = device[perm]
    bounds = np.flatnonzero(np.diff(sorted_idx)) + 1
    firsts = np.concatenate([[0], bounds]).astype(np.int64)
    columns = features[perm]
    position = np.empty(len(perm), dtype=np.int64)
    position[perm] = np.arange(len(perm))
    winners = np.zeros(len(chosen), dtype=np.int64)
    block = max(1, _SCORE_BLOCK // max(1, len(perm)))
    for lo in range(0, len(chosen), block):
        part = chosen[lo : lo + block]
        sims = similarity_matrix(features[part], columns, refs.sized, tolerance)
        sims[np.arange(len(part)), position[part]] = -np.inf
        together = (sorted_device[None, :] == device[part][:, None]) & multi[idx[part]][:, None]
        sims[together] = -np.inf
        out[lo : lo + block] = np.maximum.reduceat(sims, firsts, axis=1)
        winners[lo : lo + block] = _vote(sims, out[lo : lo + block], sorted_idx, refs.neighbours)
    return out, winners


def _vote(sims: FloatArray, ts: FloatArray, column_type: IntArray, k: int) -> IntArray:
    """Each row's type from its similarities `sims` to references of types `column_type` and
    its type scores `ts`: the best score with one neighbour; else the votes of the `k` most
    similar references, the best score breaking ties (it is ≤ 1, halved, so it never outweighs
    a whole vote; an exact tie goes to the first type). References at -inf (left out) never
    vote."""
    k = min(k, sims.shape[1])
    if k <= 1:
        best: IntArray = np.argmax(ts, axis=1)
        return best
    top = np.argpartition(-sims, k - 1, axis=1)[:, :k].reshape(-1)
    rows = np.repeat(np.arange(len(ts)), k)
    voting = np.isfinite(sims[rows, top])
    votes = np.zeros(ts.shape)
    np.add.at(votes, (rows[voting], column_type[top[voting]]), 1.0)
    out: IntArray = np.argmax(votes + ts / 2.0, axis=1)
    return out


def softmax(scores: FloatArray, temperature: float) -> FloatArray:
    """Row-wise softmax of type scores at `temperature` (-inf scores get probability 0)."""
    z = scores / temperature
    z = z - np.max(z, axis=-1, keepdims=True)
    e = np.exp(z)
    out: FloatArray = e / e.sum(axis=-1, keepdims=True)
    return out


class LeftOut(NamedTuple):
    """References (row numbers), their leave-one-out type scores (`loo_type_scores`), and the
    type each is given left out (as `score` decides, with the references' neighbours)."""

    rows: IntArray
    scores: FloatArray
    winners: IntArray


def left_out_sample(refs: References, seed: int = 0, among: IntArray | None = None) -> LeftOut:
    """The leave-one-out type scores of the references of types with two or more (of the rows
    `among` only, when given): at most `CALIBRATION_ROWS` of them, a seeded sample, in order.
    No rows with fewer than two types."""
    idx = refs.type_index
    counts = np.bincount(idx, minlength=len(refs.types))
    eligible = np.flatnonzero(counts[idx] >= 2)
    if among is not None:
        eligible = np.intersect1d(eligible, among)
    if len(refs.types) < 2:
        eligible = eligible[:0]
    if eligible.size > CALIBRATION_ROWS:
        rng = np.random.default_rng(seed)
        eligible = np.sort(rng.choice(eligible, CALIBRATION_ROWS, replace=False))
    if not eligible.size:
        return LeftOut(eligible, np.zeros((0, len(refs.types))), eligible)
    return LeftOut(eligible, *loo_type_scores(refs, eligible))


def left_out_accuracy(
    refs: References, among: IntArray | None = None, sample: LeftOut | None = None
) -> float:
    """The share of the references (`left_out_sample` of the rows `among`, default all; or
    `sample`, one already scored, which then stands for them) that, each left out as for
    `loo_type_scores`, are given their own type, as `score` decides (with several neighbours,
    by their votes): how well the references tell their types apart, measured on nothing but
    themselves. NaN when no type has two references."""
    left = left_out_sample(refs, among=among) if sample is None else sample
    if not left.rows.size:
        return math.nan
    return float((left.winners == refs.type_index[left.rows]).mean())


def fit_temperature(refs: References, seed: int = 0, sample: LeftOut | None = None) -> float | None:
    """The temperature (from `TEMPERATURES`) that maximises the likelihood of the references'
    true types under the softmax of their leave-one-out type scores; None when no type has two
    references. At most `CALIBRATION_ROWS` references (a seeded sample) are scored, or those
    of `sample` (`left_out_sample`)."""
    eligible, scores, _ = left_out_sample(refs, seed) if sample is None else sample
    if not eligible.size:
        return None
    truth = refs.type_index[eligible]
    best, best_nll = None, math.inf
    for t in TEMPERATURES.tolist():
        p = softmax(scores, t)[np.arange(len(truth)), truth]
        nll = float(-np.log(np.maximum(p, 1e-12)).mean())
        if nll < best_nll:
            best, best_nll = t, nll
    return best


def check_sibling_share(share: float) -> None:
    """Refuse a sibling share outside (0, 1]."""
    if not 0.0 < share <= 1.0:
        raise InputError(
            f"sibling share {share:g}: the share of a type's references that must score "
            "another type as high lies in (0, 1]"
        )


def sibling_families(
    refs: References, share: float = SIBLING_SHARE, seed: int = 0, sample: LeftOut | None = None
) -> tuple[tuple[str, ...], ...]:
    """Types the references cannot tell apart, in families of two or more (each in `types`
    order, the families by their first type).

    Type t is a sibling of u when at least `share` of t's references, each left out (as for
    `loo_type_scores`), score u as high as their own type or higher, at a similarity above 0;
    families are the connected groups of siblings. References are sampled as for the
    temperature (`left_out_sample`, or `sample`). A new device of a family the references know
    is named as one of its types, so decisions name the winner's siblings and evaluations also
    leave whole families out (`open_set`)."""
    check_sibling_share(share)
    rows, scores, _ = left_out_sample(refs, seed) if sample is None else sample
    if not rows.size:
        return ()
    own_type = refs.type_index[rows]
    own = scores[np.arange(len(rows)), own_type]
    rivals = (scores >= own[:, None]) & (scores > 0.0) & np.isfinite(own)[:, None]
    rivals[np.arange(len(rows)), own_type] = False
    n_types = len(refs.types)
    hits = np.zeros((n_types, n_types), dtype=np.int64)
    np.add.at(hits, own_type, rivals.astype(np.int64))
    sampled = np.bincount(own_type, minlength=n_types)
    linked = hits >= np.maximum(share * sampled, 1.0)[:, None]
    family = np.arange(n_types)
    for t, u in zip(*np.nonzero(linked | linked.T), strict=True):
        a, b = family[t], family[u]
        if a != b:
            family[family == max(a, b)] = min(a, b)
    groups = [np.flatnonzero(family == f) for f in np.unique(family)]
    return tuple(tuple(refs.types[i] for i in g.tolist()) for g in groups if g.size > 1)


def family_of(families: Sequence[Sequence[str]]) -> dict[str, tuple[str, ...]]:
    """Each type of `families` (`sibling_families`) with its whole family; a type in none has
    no entry."""
    return {t: tuple(family) for family in families for t in family}


@dataclass(frozen=True)
class Scores:
    """Per fingerprint: its score for every known type, and the reference row it matched best.

    `type_scores[i, t]` is fingerprint i's score for `types[t]`; `winner[i]` the decided type
    index (vote or best score); `matched[i]` the reference row (nearest) or prototype (centroid)
    that the decision is explained against.
    """

    types: tuple[str, ...]
    type_scores: FloatArray
    winner: IntArray
    matched: IntArray

    @property
    def best(self) -> FloatArray:
        """The winning type's score per fingerprint."""
        scored: FloatArray = self.type_scores[np.arange(len(self.winner)), self.winner]
        return scored

    def confidence(self, temperature: float | None) -> FloatArray:
        """The calibrated probability of each winning type (NaN without a temperature)."""
        if temperature is None:
            return np.full(len(self.winner), np.nan)
        probs = softmax(self.type_scores, temperature)
        chosen: FloatArray = probs[np.arange(len(self.winner)), self.winner]
        return chosen


def _common_axis(fingerprints: FingerprintSet, refs: References) -> tuple[str, ...]:
    """The services of both, sorted."""
    return tuple(sorted(set(refs.services) | set(fingerprints.services)))


def _check_representation(fingerprints: FingerprintSet, refs: References) -> None:
    if not refs.labels:
        raise InputError("references hold no fingerprint")
    if (fingerprints.granularity, fingerprints.intensity) != (refs.granularity, refs.intensity):
        raise InputError(
            f"fingerprints use the {fingerprints.representation} representation, "
            f"references the {refs.representation} one"
        )


def score(fingerprints: FingerprintSet, refs: References) -> Scores:
    """Score every fingerprint against every known type in one matrix operation."""
    _check_representation(fingerprints, refs)
    axis = _common_axis(fingerprints, refs)
    x = refs.weigh(fingerprints.features(axis), axis)
    types = refs.types
    m = len(fingerprints)
    if refs.mode == "centroid":
        protos = refs.centroids(axis)
        type_scores = (
            similarity_matrix(x, protos, refs.sized, refs.tolerance(axis))
            if m
            else np.zeros((0, len(types)))
        )
        winner = np.argmax(type_scores, axis=1) if m else np.zeros(0, dtype=np.int64)
        return Scores(types, type_scores, winner.astype(np.int64), winner.astype(np.int64))

    r = refs.features(axis)
    tolerance = refs.tolerance(axis)
    idx = refs.type_index
    # References sorted by type, so a type's best similarity is one reduceat over its columns.
    perm = np.argsort(idx, kind="stable")
    r, sorted_idx = r[perm], idx[perm]
    bounds = np.flatnonzero(np.diff(sorted_idx)) + 1
    firsts = np.concatenate([[0], bounds]).astype(np.int64)
    ends = np.append(firsts[1:], len(idx))
    k = min(refs.neighbours, len(idx))
    type_scores = np.zeros((m, len(types)))
    winner = np.zeros(m, dtype=np.int64)
    matched = np.zeros(m, dtype=np.int64)
    # Rows in blocks: the fingerprint × reference matrix is never held whole.
    block = max(1, _SCORE_BLOCK // max(1, len(idx)))
    for lo in range(0, m, block):
        sims = similarity_matrix(x[lo : lo + block], r, refs.sized, tolerance)
        ts = np.maximum.reduceat(sims, firsts, axis=1)
        win = _vote(sims, ts, sorted_idx, k)
        type_scores[lo : lo + block] = ts
        winner[lo : lo + block] = win
        # The best reference of the winning type: its columns are one slice.
        for t in np.unique(win).tolist():
            rows = np.flatnonzero(win == t)
            best = np.argmax(sims[rows, firsts[t] : ends[t]], axis=1)
            matched[lo + rows] = perm[firsts[t] + best]
    return Scores(types, type_scores, winner, matched)


@dataclass(frozen=True)
class ServiceContribution:
    """One service's part in a similarity: min and max of its weights (summed over prevalence and
    intensity weights), and min / Σmax. `observed` and `reference` are the prevalence weights.

    With usage: the fingerprint's packets per active unit and bytes per packet, and the lowest
    and highest of each among the matched type's references that use the service. With sized
    features: `size_tolerance`, the τ within which the service's sizes matched."""

    service: str
    observed: float
    reference: float
    numerator: float
    denominator: float
    share: float
    packets_per_unit: float | None = None
    bytes_per_packet: float | None = None
    reference_packets_per_unit: tuple[float, float] | None = None
    reference_bytes_per_packet: tuple[float, float] | None = None
    size_tolerance: float | None = None

    def to_json(self) -> dict[str, Any]:
        """A JSON-ready dict (ranges as [low, high] lists, as JSON reads them back)."""
        return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items()}

    def describe(self, unit_seconds: float) -> str:
        """The contribution in intensity terms: "udp/10001: 210 packets/h (references 40-60),
        120 B/packet (references 110-130), share 0.120"; sized: "120 B/packet (references
        110-130, sizes matched within 2 %)"."""
        per = _per_unit(unit_seconds)
        parts = [self.service + ":"]
        if self.packets_per_unit is not None:
            parts.append(f"{self.packets_per_unit:.4g} packets/{per}")
            if self.reference_packets_per_unit is not None:
                lo, hi = self.reference_packets_per_unit
                parts.append(f"(references {lo:.4g}-{hi:.4g}),")
            parts.append(f"{self.bytes_per_packet:.4g} B/packet")
            if self.reference_bytes_per_packet is not None:
                lo, hi = self.reference_bytes_per_packet
                within = ""
                if self.size_tolerance is not None:
                    within = f", sizes matched within {self.size_tolerance * 100:.2g} %"
                parts.append(f"(references {lo:.4g}-{hi:.4g}{within}),")
        parts.append(f"prevalence {self.observed:.3g} (reference {self.reference:.3g}),")
        parts.append(f"share {self.share:.3f}")
        return " ".join(parts)


def _per_unit(unit_seconds: float) -> str:
    names = {1.0: "s", 60.0: "min", 3600.0: "h", 86400.0: "day"}
    return names.get(float(unit_seconds), f"{unit_seconds:g} s")


@dataclass(frozen=True)
class Explanation:
    """Why a fingerprint is as similar as it is to a reference.

    matched: services in both; unexpected: in the fingerprint only; missing: in the reference
    only. similarity = numerator / denominator = Σ share over all three lists.
    """

    matched: tuple[ServiceContribution, ...]
    unexpected: tuple[ServiceContribution, ...]
    missing: tuple[ServiceContribution, ...]
    numerator: float
    denominator: float
    similarity: float

    def to_json(self) -> dict[str, Any]:
        """A JSON-ready dict."""
        return {
            "similarity": self.similarity,
            "numerator": self.numerator,
            "denominator": self.denominator,
            "matched": [c.to_json() for c in self.matched],
            "unexpected": [c.to_json() for c in self.unexpected],
            "missing": [c.to_json() for c in self.missing],
        }


Intensities = Mapping[
    str, tuple[float, float, tuple[float, float] | None, tuple[float, float] | None]
]
"""Per service: packets per unit, bytes per packet, and the references' ranges of both."""


def explain(
    observed: npt.ArrayLike,
    reference: npt.ArrayLike,
    services: Sequence[str],
    intensities: Intensities | None = None,
    sized: bool = False,
    tolerance: Tolerance = SIZE_TOLERANCE,
) -> Explanation:
    """Service-by-service breakdown of the weighted Jaccard of two aligned feature vectors (one
    weight per service, or with intensity three: [prevalence | share or rate | size]; `sized`:
    five, of which the size-matched mass counts as far as the sizes agree within `tolerance`)."""
    a = np.asarray(observed, dtype=np.float64)
    b = np.asarray(reference, dtype=np.float64)
    width = len(services)
    if a.shape != b.shape or (width == 0 and a.size) or (width and a.size % width):
        raise ValueError(f"feature vectors of shape {a.shape} and {b.shape} for {width} services")
    lo_all, hi_all = parts(a, b, sized, tolerance)
    blocks = lo_all.size // width if width else 1
    numerator = math.fsum(lo_all.tolist())
    denominator = math.fsum(hi_all.tolist())
    similarity = 1.0 if denominator == 0.0 else numerator / denominator
    lo = lo_all.reshape(blocks, width).sum(axis=0) if width else lo_all
    hi = hi_all.reshape(blocks, width).sum(axis=0) if width else hi_all
    groups: dict[str, list[ServiceContribution]] = {"matched": [], "unexpected": [], "missing": []}
    per_service = np.broadcast_to(np.asarray(tolerance, dtype=np.float64), (width,))
    for j in np.flatnonzero(hi > 0).tolist():
        extra = (intensities or {}).get(services[j])
        contribution = ServiceContribution(
            service=services[j],
            observed=float(a[j]),
            reference=float(b[j]),
            numerator=float(lo[j]),
            denominator=float(hi[j]),
            share=float(lo[j]) / denominator,
            packets_per_unit=None if extra is None else extra[0],
            bytes_per_packet=None if extra is None else extra[1],
            reference_packets_per_unit=None if extra is None else extra[2],
            reference_bytes_per_packet=None if extra is None else extra[3],
            size_tolerance=float(per_service[j]) if sized else None,
        )
        key = "matched" if a[j] > 0 and b[j] > 0 else "unexpected" if a[j] > 0 else "missing"
        groups[key].append(contribution)

    def ordered(items: list[ServiceContribution]) -> tuple[ServiceContribution, ...]:
        return tuple(sorted(items, key=lambda c: (-c.share, -c.denominator, c.service)))

    return Explanation(
        matched=ordered(groups["matched"]),
        unexpected=ordered(groups["unexpected"]),
        missing=ordered(groups["missing"]),
        numerator=numerator,
        denominator=denominator,
        similarity=similarity,
    )


@dataclass(frozen=True)
class Decision:
    """The identification of one exported fingerprint, with its explanation.

    `theta` is the threshold of the best type (its own, or the global one); `confidence` the
    calibrated probability that `best_type` is right (NaN when the references carry no
    calibration); `siblings` the types the references cannot tell `best_type` apart from (its
    `sibling_families` family but itself)."""

    device: str
    start_unit: int
    end_unit: int
    label: str
    best_type: str
    similarity: float
    theta: float
    runner_up: str | None
    runner_up_similarity: float | None
    reference: str
    explanation: Explanation
    confidence: float = math.nan
    siblings: tuple[str, ...] = ()

    @property
    def known(self) -> bool:
        """Whether the fingerprint was identified as a known type."""
        return self.label != UNKNOWN

    def to_json(self) -> dict[str, Any]:
        """A JSON-ready dict (the explanation in its own `to_json` form; NaN as None)."""
        shallow = {f.name: getattr(self, f.name) for f in fields(self)}
        if math.isnan(self.confidence):
            shallow["confidence"] = None
        shallow["siblings"] = list(self.siblings)
        return shallow | {"explanation": self.explanation.to_json()}


def _intensities(
    fingerprints: FingerprintSet, i: int, refs: References, winner: int, axis: Sequence[str]
) -> Intensities | None:
    """Packets per unit and bytes per packet of row i's services, with the ranges among the
    winning type's references that use each."""
    if fingerprints.usage is None:
        return None
    mine = fingerprints.aligned_usage(axis)[:, i]
    ref_rows = np.flatnonzero(refs.type_index == winner)
    theirs = None
    if refs.usage is not None:
        position = {name: j for j, name in enumerate(refs.services)}
        theirs = (refs.usage[:, ref_rows], position)
    out: dict[str, tuple[float, float, tuple[float, float] | None, tuple[float, float] | None]] = {}
    for j, name in enumerate(axis):
        units, packets, sent = (int(v) for v in mine[:, j])
        rate_range = size_range = None
        if theirs is not None and name in theirs[1]:
            c, p, b = (theirs[0][r, :, theirs[1][name]] for r in range(len(USAGE_ROWS)))
            use = (c > 0) & (p > 0)
            if use.any():
                rates, sizes = p[use] / c[use], b[use] / p[use]
                rate_range = (float(rates.min()), float(rates.max()))
                size_range = (float(sizes.min()), float(sizes.max()))
        if units or rate_range is not None:
            out[name] = (
                packets / units if units else 0.0,
                sent / packets if packets else 0.0,
                rate_range,
                size_range,
            )
    return out


def identify(fingerprints: FingerprintSet, refs: References) -> list[Decision]:
    """Closed- and open-set decisions, with explanations, for every fingerprint."""
    if not len(fingerprints):
        return []
    scores = score(fingerprints, refs)
    axis = _common_axis(fingerprints, refs)
    x = refs.weigh(fingerprints.features(axis), axis)
    if refs.mode == "centroid":
        targets = refs.centroids(axis)
        target_names = [f"prototype of {t}" for t in refs.types]
    else:
        targets = refs.features(axis)
        target_names = list(refs.origins)
    thetas = refs.theta_of(scores.winner)
    tolerance = refs.tolerance(axis)
    confidence = scores.confidence(refs.temperature)
    family = family_of(refs.families)
    decisions = []
    names = fingerprints.device_names
    for i in range(len(fingerprints)):
        winner = int(scores.winner[i])
        why = explain(
            x[i],
            targets[int(scores.matched[i])],
            axis,
            _intensities(fingerprints, i, refs, winner, axis),
            refs.sized,
            tolerance,
        )
        others = np.delete(scores.type_scores[i], winner)
        other_types = [t for j, t in enumerate(scores.types) if j != winner]
        runner = int(np.argmax(others)) if others.size else None
        theta = float(thetas[i])
        best = scores.types[winner]
        label = best if why.similarity >= theta else UNKNOWN
        decisions.append(
            Decision(
                device=names[i],
                start_unit=int(fingerprints.start[i]),
                end_unit=int(fingerprints.end[i]),
                label=label,
                best_type=best,
                similarity=why.similarity,
                theta=theta,
                runner_up=None if runner is None else other_types[runner],
                runner_up_similarity=None if runner is None else float(others[runner]),
                reference=target_names[int(scores.matched[i])],
                explanation=why,
                confidence=float(confidence[i]),
                siblings=tuple(t for t in family.get(best, ()) if t != best),
            )
        )
    return decisions
