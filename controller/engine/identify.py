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

Every decision carries an explanation against the reference it matched: per service, its part of
Σmin (numerator) and of Σmax (denominator), and its share min/Σmax of the similarity. The shares
sum to the reported similarity, which is Σnumerator / Σdenominator.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path
from typing import Any, Literal

import numpy as np
import numpy.typing as npt

from controller.base.errors import InputError
from controller.base.fileio import read_json, write_text_atomically
from controller.engine.exporter import ExporterConfig
from controller.engine.fingerprints import FingerprintSet
from controller.engine.representation import FloatArray, IntArray, representation_name
from controller.engine.similarity import similarity_matrix, similarity_pairs

Mode = Literal["nearest", "centroid"]
MODES: tuple[Mode, ...] = ("nearest", "centroid")
UNKNOWN = "unknown"
DEFAULT_MODE: Mode = "nearest"
"""Nearest-neighbour matching beat centroids on the IoT Sentinel captures (see report)."""
DEFAULT_PERCENTILE = 5.0
"""θ is this percentile of the references' leave-one-out similarity to their own type."""
DEFAULT_NEIGHBOURS = 1
"""Reference fingerprints that vote in nearest mode."""
FORMAT = "svcfp-references"
# Similarities held at once while scoring (rows × references), about 128 MB of float64.
_SCORE_BLOCK = 16_000_000
VERSION = 1


def _prototype(mean: FloatArray, granularity: int | None) -> FloatArray:
    """Round a mean fingerprint to the nearest level of the representation (halves go up)."""
    if granularity is None:
        return mean
    # A tiny tolerance keeps exact halves (e.g. 1 of 2 references) from rounding down.
    return np.floor(mean * granularity + 0.5 + 1e-9) / granularity


@dataclass(frozen=True, eq=False)
class References:
    """Reference fingerprints of known device types, with the settings that made them.

    Rows of `weights` are reference fingerprints over `services`; `labels[i]` is the type of row
    i and `origins[i]` says where it came from ("<device>@<start>-<end>").
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

    def __post_init__(self) -> None:
        n = len(self.labels)
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
    def type_index(self) -> IntArray:
        """Each reference row's index into `types`."""
        index = {t: i for i, t in enumerate(self.types)}
        return np.array([index[label] for label in self.labels], dtype=np.int64)

    def centroids(self) -> FloatArray:
        """One prototype per type (rows in `types` order)."""
        idx = self.type_index
        sums = np.zeros((len(self.types), len(self.services)))
        np.add.at(sums, idx, self.weights)
        counts = np.bincount(idx, minlength=len(self.types)).astype(np.float64)
        return _prototype(sums / counts[:, None], self.granularity)

    def with_settings(
        self,
        mode: Mode | None = None,
        theta: float | None = None,
        neighbours: int | None = None,
    ) -> References:
        """A copy with other matching settings (None keeps a setting)."""
        return replace(
            self,
            mode=self.mode if mode is None else mode,
            theta=self.theta if theta is None else theta,
            neighbours=self.neighbours if neighbours is None else neighbours,
        )

    def without_types(self, types: Sequence[str]) -> References:
        """The references with every fingerprint of `types` removed (θ kept as it is)."""
        drop = set(types)
        keep = np.array([label not in drop for label in self.labels], dtype=bool)
        return replace(
            self,
            weights=self.weights[keep],
            labels=tuple(label for label in self.labels if label not in drop),
            origins=tuple(o for o, k in zip(self.origins, keep.tolist(), strict=True) if k),
        )

    # --- persistence --------------------------------------------------------------------------

    def to_json(self) -> dict[str, Any]:
        """A JSON-ready dict (sparse weights: only non-zero services per reference)."""
        return {
            "format": FORMAT,
            "version": VERSION,
            "representation": representation_name(self.granularity),
            "granularity": self.granularity,
            "unit_seconds": self.unit_seconds,
            "mode": self.mode,
            "theta": self.theta,
            "neighbours": self.neighbours,
            "exporter": None if self.config is None else self.config.to_json(),
            "references": [
                {
                    "type": label,
                    "origin": origin,
                    "weights": {
                        self.services[j]: float(row[j]) for j in np.flatnonzero(row).tolist()
                    },
                }
                for label, origin, row in zip(self.labels, self.origins, self.weights, strict=True)
            ],
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any], source: str = "references") -> References:
        """References from `to_json` output; `source` names the input in errors."""
        if data.get("format") != FORMAT:
            raise InputError(f"{source}: not an svcfp references file (format {FORMAT!r})")
        if data.get("version") != VERSION:
            raise InputError(f"{source}: references version {data.get('version')} unsupported")
        try:
            entries = list(data["references"])
            services = tuple(sorted({str(s) for e in entries for s in e["weights"]}))
            col = {s: j for j, s in enumerate(services)}
            weights = np.zeros((len(entries), len(services)))
            for i, entry in enumerate(entries):
                for name, value in dict(entry["weights"]).items():
                    weights[i, col[str(name)]] = float(value)
            exporter = data.get("exporter")
            mode = str(data.get("mode", DEFAULT_MODE))
            if mode not in MODES:
                raise ValueError(f"mode {mode!r} is not one of {', '.join(MODES)}")
            return cls(
                services=services,
                weights=weights,
                labels=tuple(str(e["type"]) for e in entries),
                origins=tuple(str(e.get("origin", "")) for e in entries),
                granularity=None if data["granularity"] is None else int(data["granularity"]),
                unit_seconds=float(data["unit_seconds"]),
                mode=mode,
                theta=float(data.get("theta", 0.0)),
                neighbours=int(data.get("neighbours", DEFAULT_NEIGHBOURS)),
                config=None if exporter is None else ExporterConfig.from_json(exporter),
            )
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise InputError(f"{source}: malformed references: {exc}") from None

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
) -> References:
    """References from exported fingerprints of labelled devices (device key → type).

    Fingerprints of devices without a label, or labelled "unknown", are left out. θ is chosen
    with `choose_theta` at `percentile` unless given.
    """
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
        origins=tuple(
            f"{name}@{s}-{e}"
            for name, s, e in zip(names, chosen.start.tolist(), chosen.end.tolist(), strict=True)
        ),
        granularity=chosen.granularity,
        unit_seconds=chosen.unit_seconds,
        mode=mode,
        neighbours=neighbours,
        config=config,
    )
    if theta is None:
        theta = choose_theta(refs, percentile)
    return refs.with_settings(theta=theta)


def own_type_similarity(refs: References) -> FloatArray:
    """Leave-one-out similarity of each reference to its own type (NaN for a type's only
    reference): nearest mode — best similarity to another reference of the type; centroid mode —
    similarity to the type's prototype rebuilt without it."""
    idx = refs.type_index
    out = np.full(len(refs.labels), np.nan)
    if not len(refs.labels):
        return out
    counts = np.bincount(idx, minlength=len(refs.types))
    several = counts[idx] >= 2
    if refs.mode == "nearest":
        # Only same-type pairs matter: one small similarity matrix per type.
        for t in np.flatnonzero(counts >= 2).tolist():
            rows = np.flatnonzero(idx == t)
            sims = similarity_matrix(refs.weights[rows], refs.weights[rows])
            np.fill_diagonal(sims, -np.inf)
            out[rows] = sims.max(axis=1)
    else:
        sums = np.zeros((len(refs.types), len(refs.services)))
        np.add.at(sums, idx, refs.weights)
        rest = np.maximum(counts[idx] - 1, 1).astype(np.float64)
        loo = _prototype((sums[idx] - refs.weights) / rest[:, None], refs.granularity)
        out[several] = similarity_pairs(refs.weights[several], loo[several])
    return out


def choose_theta(refs: References, percentile: float = DEFAULT_PERCENTILE) -> float:
    """θ = the `percentile`-th percentile (an observed value, rounding down) of the references'
    leave-one-out similarity to their own type."""
    if not 0.0 <= percentile <= 100.0:
        raise InputError(f"percentile {percentile} must lie in [0, 100]")
    values = own_type_similarity(refs)
    values = values[~np.isnan(values)]
    if not values.size:
        raise InputError(
            "cannot choose θ: no known type has two reference fingerprints; give θ explicitly"
        )
    return float(np.percentile(values, percentile, method="lower"))


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


def _common_axis(
    fingerprints: FingerprintSet, refs: References
) -> tuple[tuple[str, ...], FloatArray, IntArray]:
    """The services of both, the fingerprints' weights over them, and where each reference
    service sits on that axis."""
    axis = tuple(sorted(set(refs.services) | set(fingerprints.services)))
    position = {name: j for j, name in enumerate(axis)}
    ref_cols = np.array([position[name] for name in refs.services], dtype=np.int64)
    return axis, fingerprints.aligned(axis), ref_cols


def score(fingerprints: FingerprintSet, refs: References) -> Scores:
    """Score every fingerprint against every known type in one matrix operation."""
    if not refs.labels:
        raise InputError("references hold no fingerprint")
    if fingerprints.granularity != refs.granularity:
        raise InputError(
            f"fingerprints use the {representation_name(fingerprints.granularity)} "
            f"representation, references the {representation_name(refs.granularity)} one"
        )
    axis, x, ref_cols = _common_axis(fingerprints, refs)
    types = refs.types
    m = len(fingerprints)
    if refs.mode == "centroid":
        protos = np.zeros((len(types), len(axis)))
        protos[:, ref_cols] = refs.centroids()
        type_scores = similarity_matrix(x, protos) if m else np.zeros((0, len(types)))
        winner = np.argmax(type_scores, axis=1) if m else np.zeros(0, dtype=np.int64)
        return Scores(types, type_scores, winner.astype(np.int64), winner.astype(np.int64))

    r = np.zeros((len(refs.labels), len(axis)))
    r[:, ref_cols] = refs.weights
    idx = refs.type_index
    # References sorted by type, so a type's best similarity is one reduceat over its columns.
    perm = np.argsort(idx, kind="stable")
    r, sorted_idx = r[perm], idx[perm]
    bounds = np.flatnonzero(np.diff(sorted_idx)) + 1
    firsts = np.concatenate([[0], bounds]).astype(np.int64)
    k = min(refs.neighbours, len(idx))
    type_scores = np.zeros((m, len(types)))
    winner = np.zeros(m, dtype=np.int64)
    matched = np.zeros(m, dtype=np.int64)
    # Rows in blocks: the fingerprint × reference matrix is never held whole.
    block = max(1, _SCORE_BLOCK // max(1, len(idx)))
    for lo in range(0, m, block):
        sims = similarity_matrix(x[lo : lo + block], r)
        ts = np.maximum.reduceat(sims, firsts, axis=1)
        if k == 1:
            win = np.argmax(ts, axis=1)
        else:
            # Votes of the k most similar references; the best score breaks ties (it is ≤ 1,
            # halved, so it never outweighs a whole vote).
            top = np.argpartition(-sims, k - 1, axis=1)[:, :k]
            votes = np.zeros(ts.shape)
            np.add.at(votes, (np.repeat(np.arange(len(ts)), k), sorted_idx[top].reshape(-1)), 1.0)
            win = np.argmax(votes + ts / 2.0, axis=1)
        of_winner = np.where(sorted_idx[None, :] == win[:, None], sims, -np.inf)
        type_scores[lo : lo + block] = ts
        winner[lo : lo + block] = win
        matched[lo : lo + block] = perm[np.argmax(of_winner, axis=1)]
    return Scores(types, type_scores, winner, matched)


@dataclass(frozen=True)
class ServiceContribution:
    """One service's part in a similarity: min and max of its two weights, and min / Σmax."""

    service: str
    observed: float
    reference: float
    numerator: float
    denominator: float
    share: float

    def to_json(self) -> dict[str, Any]:
        """A JSON-ready dict."""
        return asdict(self)


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


def explain(
    observed: npt.ArrayLike, reference: npt.ArrayLike, services: Sequence[str]
) -> Explanation:
    """Service-by-service breakdown of the weighted Jaccard of two aligned weight vectors."""
    a = np.asarray(observed, dtype=np.float64)
    b = np.asarray(reference, dtype=np.float64)
    lo = np.minimum(a, b)
    hi = np.maximum(a, b)
    numerator = math.fsum(lo.tolist())
    denominator = math.fsum(hi.tolist())
    similarity = 1.0 if denominator == 0.0 else numerator / denominator
    groups: dict[str, list[ServiceContribution]] = {"matched": [], "unexpected": [], "missing": []}
    for j in np.flatnonzero(hi > 0).tolist():
        contribution = ServiceContribution(
            service=services[j],
            observed=float(a[j]),
            reference=float(b[j]),
            numerator=float(lo[j]),
            denominator=float(hi[j]),
            share=float(lo[j]) / denominator,
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
    """The identification of one exported fingerprint, with its explanation."""

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

    @property
    def known(self) -> bool:
        """Whether the fingerprint was identified as a known type."""
        return self.label != UNKNOWN

    def to_json(self) -> dict[str, Any]:
        """A JSON-ready dict (the explanation in its own `to_json` form)."""
        shallow = {f.name: getattr(self, f.name) for f in fields(self)}
        return shallow | {"explanation": self.explanation.to_json()}


def identify(fingerprints: FingerprintSet, refs: References) -> list[Decision]:
    """Closed- and open-set decisions, with explanations, for every fingerprint."""
    if not len(fingerprints):
        return []
    scores = score(fingerprints, refs)
    axis, x, ref_cols = _common_axis(fingerprints, refs)
    if refs.mode == "centroid":
        targets = refs.centroids()
        target_names = [f"prototype of {t}" for t in refs.types]
    else:
        targets = refs.weights
        target_names = list(refs.origins)
    decisions = []
    names = fingerprints.device_names
    for i in range(len(fingerprints)):
        winner = int(scores.winner[i])
        target = np.zeros(len(axis))
        target[ref_cols] = targets[int(scores.matched[i])]
        why = explain(x[i], target, axis)
        others = np.delete(scores.type_scores[i], winner)
        other_types = [t for j, t in enumerate(scores.types) if j != winner]
        runner = int(np.argmax(others)) if others.size else None
        label = scores.types[winner] if why.similarity >= refs.theta else UNKNOWN
        decisions.append(
            Decision(
                device=names[i],
                start_unit=int(fingerprints.start[i]),
                end_unit=int(fingerprints.end[i]),
                label=label,
                best_type=scores.types[winner],
                similarity=why.similarity,
                theta=refs.theta,
                runner_up=None if runner is None else other_types[runner],
                runner_up_similarity=None if runner is None else float(others[runner]),
                reference=target_names[int(scores.matched[i])],
                explanation=why,
            )
        )
    return decisions
