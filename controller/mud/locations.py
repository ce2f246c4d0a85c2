"""Cross-location evaluation: identify a device from its flows against the MUD files of the same
model captured elsewhere, and check it against them.

The data set is a folder of capture folders, one per device and place (`<name>/` holding the
MUD files MUDgee wrote there, `*.json`, and the device's flow rules, `<mac>_ipflows.csv`). The
same model appears in several folders: captured in other countries, through a VPN, in a US and
a UK lab. For every flows file (a *track*, one time unit: the files have no timestamps):

- cross-location (closed and open set): the references are the MUD files of every *other*
  folder, θ chosen from them; the decision is the most similar type, "unknown" below θ;
- unknown detection: the references also lose every MUD file of the track's own model, and the
  track must come out "unknown"; known accuracy is measured in the same folds on the tracks of
  the other models (each without its own folder);
- compliance: a track identified as a known type is checked, in the roles its flow rules show,
  against the profiles of that type from the other folders.

A folder's model comes from its name (`location_model`: place words and this data set's
spellings dropped, so `uk_t_vemo_plug` and `t_wemo_plug_merged_us` are both `t_wemo_plug`), or
from a mapping the caller gives. A track's true model is that of its MAC where some folder holds
that MAC's flows alone (a folder recording several devices labels the others by their own
folders), else its folder's.

The result has the shape of `controller.engine.evaluate.evaluate` (one result per matching
mode), so `controller.engine.report` renders it, plus per-track and per-model tables.
"""

from __future__ import annotations

import json
import math
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from controller.base.errors import InputError
from controller.base.fileio import write_text_atomically
from controller.engine.evaluate import EvalSettings
from controller.engine.exporter import ExporterConfig, whole_windows
from controller.engine.fingerprints import FingerprintSet
from controller.engine.identify import (
    DEFAULT_PERCENTILE,
    MODES,
    UNKNOWN,
    Mode,
    References,
    Scores,
    own_type_similarity,
    score,
)
from controller.engine.metrics import accuracy, auroc, confusion_matrix, macro_f1
from controller.engine.representation import DEFAULT_UNIT_SECONDS, FloatArray
from controller.engine.results import (
    Cdf,
    ClosedSet,
    Confusion,
    Convergence,
    Evaluation,
    GridResult,
    Json,
    OpenSet,
    OpenSetFold,
    RecurrenceSummary,
    TimeToIdentification,
)
from controller.engine.similarity import similarity_matrix
from controller.mud.compliance import Finding, check_uses
from controller.mud.flows import DeviceFlows, flows_files, read_flows
from controller.mud.mudfile import NotMud, read_mud
from controller.mud.profile import MudProfile, MudProfiles
from controller.mud.references import SERVICE_LIST, references_of

# Words of this data set's folder names that say where (or how) a capture was made.
PLACE_WORDS = frozenset(
    {
        "antartica",
        "argentina",
        "australia",
        "austrelia",
        "brazil",
        "ch",
        "china",
        "france",
        "germany",
        "hk",
        "il",
        "india",
        "mexico",
        "russia",
        "spain",
        "uk",
        "us",
        "merged",
        "by",
        "vpn",
        "and",
        "location",
        "cords",
        "with",
        "firemware",
        "firmware",
        "update",
    }
)
SPELLINGS = {"bolb": "bulb", "vemo": "wemo"}


def location_model(folder: str) -> str:
    """The device model a capture folder of this data set records (see the module docstring)."""
    words = [SPELLINGS.get(w, w) for w in folder.lower().split("_") if w]
    kept = [w for w in words if w not in PLACE_WORDS]
    return "_".join(kept) or folder


@dataclass(frozen=True)
class Track:
    """One flows file: its folder, device, true model and activity."""

    folder: str
    model: str
    flows: DeviceFlows

    @property
    def key(self) -> str:
        """The track's device key: MAC and folder."""
        return f"{self.flows.device}#{self.folder}"


@dataclass(frozen=True)
class LocationData:
    """The MUD profiles (typed by their folder's model) and tracks of a data set folder, and
    the JSON files passed over as not MUD documents."""

    name: str
    profiles: tuple[MudProfile, ...]
    profile_folders: tuple[str, ...]
    tracks: tuple[Track, ...]
    skipped: tuple[str, ...]

    @property
    def models(self) -> tuple[str, ...]:
        """Every model with a profile or a track, sorted."""
        return tuple(sorted({p.type for p in self.profiles} | {t.model for t in self.tracks}))


def load_locations(root: Path, models: Mapping[str, str] | None = None) -> LocationData:
    """Read every capture folder of `root` (see the module docstring); `models` maps folder
    names to models where the names do not say it."""
    if not root.is_dir():
        raise InputError(f"{root}: not a folder of capture folders")
    folders = sorted(p for p in root.iterdir() if p.is_dir())
    if not folders:
        raise InputError(f"{root}: no capture folder inside")
    model_of = {f.name: (models or {}).get(f.name) or location_model(f.name) for f in folders}
    profiles: list[MudProfile] = []
    owners: list[str] = []
    skipped: list[str] = []
    raw: list[tuple[str, DeviceFlows]] = []
    for folder in folders:
        for path in sorted(folder.glob("*.json")):
            try:
                profiles.append(read_mud(path, model_of[folder.name]))
            except NotMud as exc:
                skipped.append(str(exc))
                continue
            owners.append(folder.name)
        raw.extend((folder.name, read_flows(path)) for path in flows_files(folder))
    if not profiles or not raw:
        raise InputError(f"{root}: needs MUD files and flows files (<mac>_ipflows.csv)")
    files_in = Counter(name for name, _ in raw)
    by_mac: dict[str, set[str]] = {}
    for name, flows in raw:
        if files_in[name] == 1:
            by_mac.setdefault(flows.device, set()).add(model_of[name])
    tracks = []
    for name, flows in raw:
        mac_models = by_mac.get(flows.device, set())
        model = next(iter(mac_models)) if len(mac_models) == 1 else model_of[name]
        tracks.append(Track(name, model, flows))
    return LocationData(root.name, tuple(profiles), tuple(owners), tuple(tracks), tuple(skipped))


@dataclass(frozen=True)
class LocationSettings:
    """How the evaluation matches: modes, θ (None: each of `percentiles` of each fold's
    references' leave-one-out own-type similarity, one result each), and h (packets for a
    service to count)."""

    modes: tuple[Mode, ...] = MODES
    percentiles: tuple[float, ...] = (DEFAULT_PERCENTILE, 25.0, 50.0)
    theta: float | None = None
    threshold: int = 1
    unit_seconds: float = DEFAULT_UNIT_SECONDS

    def __post_init__(self) -> None:
        if not self.percentiles or any(not 0.0 <= p <= 100.0 for p in self.percentiles):
            raise InputError(f"percentiles {self.percentiles} must lie in [0, 100]")
        if self.threshold < 1:
            raise InputError(f"threshold h={self.threshold} must be ≥ 1 packet")


class _Folds:
    """Per capture folder, the references without its MUD files, each one's leave-one-out
    similarity to its own type (behind θ) and the folder's tracks scored against them.

    Leaving a whole model out as well changes no other type's score or leave-one-out
    similarity (their references and prototypes stay as they are), so every fold is one of
    these with that model's column and references masked."""

    def __init__(
        self,
        data: LocationData,
        refs: References,
        fingerprints: Sequence[FingerprintSet],
        theta: float | None,
        percentile: float,
    ) -> None:
        self.theta = theta
        self.percentile = percentile
        usable = [p for p in data.profiles if p.services]
        owner = dict(zip((p.source for p in data.profiles), data.profile_folders, strict=True))
        ref_folder = np.array([owner[p.source] for p in usable], dtype=object)
        self._folds: dict[str, tuple[References, FloatArray, Scores]] = {}
        self._row: dict[int, tuple[str, int]] = {}
        for folder in sorted({t.folder for t in data.tracks}):
            rows = np.flatnonzero(ref_folder != folder)
            fold = replace(
                refs,
                weights=refs.weights[rows],
                labels=tuple(refs.labels[i] for i in rows.tolist()),
                origins=tuple(refs.origins[i] for i in rows.tolist()),
            )
            mine = [i for i, t in enumerate(data.tracks) if t.folder == folder]
            for position, i in enumerate(mine):
                self._row[i] = (folder, position)
            tracks = FingerprintSet.concat([fingerprints[i] for i in mine])
            self._folds[folder] = (fold, own_type_similarity(fold), score(tracks, fold))

    def references(self, track: int, model: str) -> int:
        """How many reference fingerprints of `model` a track is identified against."""
        refs = self._folds[self._row[track][0]][0]
        return sum(label == model for label in refs.labels)

    def decide(self, track: int, left_out: str | None = None) -> tuple[str, float, float]:
        """(best type, its score, θ) of a track against the references without its folder's
        MUD files, and without `left_out`'s."""
        folder, position = self._row[track]
        refs, own, scores = self._folds[folder]
        type_scores = scores.type_scores[position].copy()
        keep = ~np.isnan(own)
        winner = int(scores.winner[position])
        if left_out is not None and left_out in scores.types:
            type_scores[scores.types.index(left_out)] = -np.inf
            keep &= np.array(refs.labels, dtype=object) != left_out
            winner = int(np.argmax(type_scores))
        theta = self.theta
        if theta is None:
            values = own[keep]
            theta = (
                float(np.percentile(values, self.percentile, method="lower"))
                if values.size
                else 0.0
            )
        return scores.types[winner], float(type_scores[winner]), theta


def evaluate_locations(data: LocationData, settings: LocationSettings) -> LocationEvaluation:
    """Every metric of the cross-location evaluation, per matching mode, as one JSON-ready
    dict in the shape of `controller.engine.evaluate.evaluate` (plus `tracks` and `per_model`
    in each result). Keys starting with "_" hold arrays for plots."""
    if len({t.model for t in data.tracks} & {p.type for p in data.profiles}) < 2:
        raise InputError(f"{data.name}: need tracks of at least two models with MUD files")
    fingerprints = [
        whole_windows(
            t.flows.activity(t.key, unit_seconds=settings.unit_seconds),
            SERVICE_LIST,
            settings.threshold,
        )
        for t in data.tracks
    ]
    percentiles: tuple[float | None, ...] = (
        (None,) if settings.theta is not None else settings.percentiles
    )
    results = [
        _evaluate_mode(data, fingerprints, mode, percentile, settings)
        for percentile in percentiles
        for mode in settings.modes
    ]
    return LocationEvaluation(
        dataset=data.name,
        tracks=len(data.tracks),
        types=tuple(sorted({t.model for t in data.tracks})),
        settings=settings,
        profiles=len(data.profiles),
        skipped=data.skipped,
        results=tuple(results),
    )


@dataclass(frozen=True)
class LocationResult(Json):
    """One (θ percentile, matching mode) of the evaluation: the engine's metrics of a grid
    point, and the per-track and per-model tables."""

    percentile: float | None
    grid: GridResult
    tracks: tuple[Mapping[str, Any], ...]
    per_model: tuple[Mapping[str, Any], ...]


@dataclass(frozen=True)
class LocationEvaluation(Json):
    """The cross-location evaluation: one result per (θ percentile, matching mode)."""

    dataset: str
    tracks: int
    types: tuple[str, ...]
    settings: LocationSettings
    profiles: int
    skipped: tuple[str, ...]
    results: tuple[LocationResult, ...]

    def best(self) -> LocationResult:
        """The result of the highest closed-set accuracy (ties: macro-F1, then the first)."""
        best = self.as_evaluation().best()
        return next(r for r in self.results if r.grid is best)

    def as_evaluation(self) -> Evaluation:
        """The results as an engine `Evaluation`, for its report."""
        return Evaluation(
            dataset=self.dataset,
            tracks=self.tracks,
            types=self.types,
            settings=EvalSettings(
                granularities=(SERVICE_LIST,),
                unit_seconds=(self.settings.unit_seconds,),
                exporter=ExporterConfig(
                    granularity=SERVICE_LIST, threshold=self.settings.threshold
                ),
                windows="whole",
                captures=True,
                modes=self.settings.modes,
                theta=self.settings.theta,
            ),
            results=tuple(r.grid for r in self.results),
        )


def _evaluate_mode(
    data: LocationData,
    fingerprints: Sequence[FingerprintSet],
    mode: Mode,
    percentile: float | None,
    settings: LocationSettings,
) -> LocationResult:
    refs = references_of(data.profiles, settings.unit_seconds, mode=mode, theta=0.0)
    folds = _Folds(data, refs, fingerprints, settings.theta, percentile or DEFAULT_PERCENTILE)
    models = sorted({t.model for t in data.tracks} & set(refs.labels))
    judged = [i for i, t in enumerate(data.tracks) if t.model in models]
    rows = [_track_row(data, i, folds) for i in judged]
    truth = [r["model"] for r in rows]
    predicted = [r["best_type"] for r in rows]
    open_labels = [r["label"] for r in rows]
    classes, matrix = confusion_matrix(truth, predicted)
    # Open set, one fold per model left out: its tracks must be rejected; the other models'
    # tracks (each without its own folder too) must be accepted and right.
    fold_rows = []
    for left_out in models:
        unknown = [r for r in rows if r["model"] == left_out]
        known = [r for r in rows if r["model"] != left_out]
        known_right = []
        known_scores = []
        for r, i in zip(rows, judged, strict=True):
            if r["model"] == left_out:
                continue
            best_type, best, theta = folds.decide(i, left_out)
            known_right.append(best >= theta and best_type == r["model"])
            known_scores.append(best)
        fold_rows.append(
            OpenSetFold(
                left_out=left_out,
                theta=float(np.mean([r["unknown_theta"] for r in unknown])),
                n_unknown=len(unknown),
                n_known=len(known),
                unknown_detection=float(np.mean([r["rejected"] for r in unknown])),
                known_accuracy=float(np.mean(known_right)) if known_right else math.nan,
                auroc=auroc(
                    np.array([r["unknown_best"] for r in unknown] + known_scores),
                    np.array([False] * len(unknown) + [True] * len(known_scores)),
                ),
            )
        )
    scores = np.array([r["similarity"] for r in rows] + [r["unknown_best"] for r in rows])
    known_flags = np.array([True] * len(rows) + [False] * len(rows))
    intra, inter = _profile_similarity(refs)
    grid = GridResult(
        unit_seconds=settings.unit_seconds,
        representation="list" if percentile is None else f"list, θ at p{percentile:g}",
        granularity=SERVICE_LIST,
        windows=len(rows),
        n_train=len(refs.labels),
        convergence=Convergence(len(rows), math.nan, None, Cdf()),
        recurrence=RecurrenceSummary(
            intra_pairs=int(intra.size),
            inter_pairs=int(inter.size),
            intra_mean=float(intra.mean()) if intra.size else None,
            intra_median=float(np.median(intra)) if intra.size else None,
            inter_mean=float(inter.mean()) if inter.size else None,
            inter_median=float(np.median(inter)) if inter.size else None,
            separation_auroc=auroc(
                np.concatenate([intra, inter]),
                np.concatenate([np.ones(intra.size, bool), np.zeros(inter.size, bool)]),
            ),
            intra=intra,
            inter=inter,
        ),
        mode=mode,
        closed_set=ClosedSet(
            n_test=len(rows),
            accuracy=accuracy(truth, predicted),
            macro_f1=macro_f1(truth, predicted),
            accuracy_with_theta=accuracy(truth, open_labels),
            rejected_known=sum(label == UNKNOWN for label in open_labels) / max(1, len(rows)),
            theta=float(np.mean([r["theta"] for r in rows])),
            confusion=Confusion.of(classes, matrix),
            per_type_accuracy=_per_model(truth, predicted),
            open_labels=tuple(open_labels),
        ),
        open_set=OpenSet.pooled(fold_rows, scores, known_flags),
        time_to_identification=TimeToIdentification(
            tracks=len(rows),
            identified=sum(r["label"] == r["model"] for r in rows),
            identified_fraction=accuracy(truth, open_labels),
            median_units=1.0 if rows else None,
            mean_units=1.0 if rows else None,
            cdf=Cdf((1.0,), (1.0,)),
        ),
    )
    return LocationResult(percentile, grid, tuple(rows), tuple(per_model_rows(rows, data)))


def _track_row(data: LocationData, index: int, folds: _Folds) -> dict[str, Any]:
    track = data.tracks[index]
    best_type, best, theta = folds.decide(index)
    label = best_type if best >= theta else UNKNOWN
    unknown_type, unknown_best, unknown_theta = folds.decide(index, track.model)
    others = MudProfiles(
        tuple(
            p
            for p, owner in zip(data.profiles, data.profile_folders, strict=True)
            if owner != track.folder
        )
    )
    findings: list[Finding] = []
    if label != UNKNOWN:
        findings = check_uses(track.key, label, track.flows.uses, others)
    return {
        "folder": track.folder,
        "file": Path(track.flows.source).name,
        "device": track.flows.device,
        "model": track.model,
        "services": list(track.flows.services),
        "references": folds.references(index, track.model),
        "best_type": best_type,
        "similarity": best,
        "theta": theta,
        "label": label,
        "unknown_best_type": unknown_type,
        "unknown_best": unknown_best,
        "unknown_theta": unknown_theta,
        "rejected": unknown_best < unknown_theta,
        "findings": [f.to_json() for f in findings],
    }


def _per_model(truth: Sequence[str], predicted: Sequence[str]) -> dict[str, float]:
    hits: dict[str, list[bool]] = {}
    for t, p in zip(truth, predicted, strict=True):
        hits.setdefault(t, []).append(t == p)
    return {t: sum(v) / len(v) for t, v in sorted(hits.items())}


def per_model_rows(rows: Sequence[Mapping[str, Any]], data: LocationData) -> list[dict[str, Any]]:
    """Per model: its folders, tracks and MUD files, accuracy (closed set and with θ), unknown
    detection, and the compliance findings of its tracks (against the type they were identified
    as): tracks checked, tracks with findings, and the services flagged, most packets first."""
    files = Counter(p.type for p in data.profiles)
    out = []
    for model in sorted({r["model"] for r in rows}):
        mine = [r for r in rows if r["model"] == model]
        flagged: Counter[str] = Counter()
        for r in mine:
            for f in r["findings"]:
                flagged[f["service"] if f["role"] is None else f"{f['service']} {f['role']}"] += f[
                    "packets"
                ]
        checked = [r for r in mine if r["label"] != UNKNOWN]
        out.append(
            {
                "model": model,
                "folders": len({r["folder"] for r in mine}),
                "tracks": len(mine),
                "mud_files": files.get(model, 0),
                "accuracy": float(np.mean([r["best_type"] == model for r in mine])),
                "accuracy_with_theta": float(np.mean([r["label"] == model for r in mine])),
                "unknown_detection": float(np.mean([r["rejected"] for r in mine])),
                "checked": len(checked),
                "with_findings": sum(1 for r in checked if r["findings"]),
                "findings": sum(len(r["findings"]) for r in mine),
                "flagged": [[s, n] for s, n in flagged.most_common()],
            }
        )
    return out


def _profile_similarity(
    refs: References,
) -> tuple[npt.NDArray[np.float64], npt.NDArray[np.float64]]:
    """Similarity of MUD files of the same model to each other, and of different models."""
    sims = similarity_matrix(refs.weights, refs.weights)
    labels = np.array(refs.labels, dtype=object)
    i, j = np.triu_indices(len(labels), k=1)
    same = labels[i] == labels[j]
    intra: npt.NDArray[np.float64] = sims[i[same], j[same]]
    inter: npt.NDArray[np.float64] = sims[i[~same], j[~same]]
    return intra, inter


def markdown_sections(evaluation: LocationEvaluation) -> list[str]:
    """Report sections for the best result: the per-model table and the tracks."""
    best = evaluation.best()
    lines = [
        f"## Cross-location identification per model ({best.grid.label})",
        "",
        "References: the MUD files of the model's other folders (the track's own folder never "
        "counts). Accuracy: closed set / with θ. Unknown det.: share of the model's tracks "
        "rejected with all its MUD files left out. Compliance: tracks checked (identified as a "
        "known type) / with findings, and the services flagged (packets).",
        "",
        "| model | folders | tracks | MUD files | accuracy | acc. with θ | unknown det. | checked "
        "| with findings | flagged services |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for m in best.per_model:
        flagged = ", ".join(f"{s} ({n})" for s, n in m["flagged"][:6]) or "–"
        if len(m["flagged"]) > 6:
            flagged += f", … {len(m['flagged']) - 6} more"
        lines.append(
            f"| {m['model']} | {m['folders']} | {m['tracks']} | {m['mud_files']} | "
            f"{m['accuracy']:.3f} | {m['accuracy_with_theta']:.3f} | "
            f"{m['unknown_detection']:.3f} | {m['checked']} | {m['with_findings']} | {flagged} |"
        )
    lines += [
        "",
        "## Tracks",
        "",
        "| folder | device | model | best type | similarity | θ | decision | rejected when "
        "left out | findings |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in best.tracks:
        lines.append(
            f"| {r['folder']} | {r['device']} | {r['model']} | {r['best_type']} | "
            f"{r['similarity']:.3f} | {r['theta']:.3f} | {r['label']} | "
            f"{'yes' if r['rejected'] else 'no'} | {len(r['findings'])} |"
        )
    return ["\n".join(lines)]


def write_location_report(evaluation: LocationEvaluation, out_dir: Path) -> list[Path]:
    """metrics.json, report.md (the evaluation report with the per-model and per-track
    sections) and the confusion and similarity plots of the best result, in `out_dir`."""
    from controller.engine.report import (
        markdown,
        plot_confusion,
        plot_similarities,
        prepare_report_folder,
    )

    prepare_report_folder(out_dir)
    best = evaluation.best().grid
    plots = {
        "Confusion matrix (best setting)": "confusion.png",
        "Similarity distributions (best setting)": "similarity.png",
    }
    plot_confusion(
        best.closed_set.confusion, best.label, out_dir / plots["Confusion matrix (best setting)"]
    )
    plot_similarities(best, out_dir / plots["Similarity distributions (best setting)"])
    text = json.dumps(evaluation.to_json(), indent=1, sort_keys=True) + "\n"
    write_text_atomically(out_dir / "metrics.json", text)
    intro = (
        f"{evaluation.tracks} tracks (one flows file each, one window: no timestamps) of "
        f"{len(evaluation.types)} models; references: the {evaluation.profiles} MUD files "
        "of the other capture folders; θ: "
        + (
            f"{evaluation.settings.theta}"
            if evaluation.settings.theta is not None
            else "the given percentile of each fold's leave-one-out own-type similarity"
        )
        + "."
    )
    report = markdown(evaluation.as_evaluation(), plots, markdown_sections(evaluation), intro)
    write_text_atomically(out_dir / "report.md", report)
    return [out_dir / "metrics.json", out_dir / "report.md", *(out_dir / n for n in plots.values())]
