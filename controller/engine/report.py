"""The evaluation report: metrics.json, report.md and PNG plots in one directory.

Plots are drawn on `matplotlib.figure.Figure` objects (Agg canvas, no pyplot state), so reports
can be made from threads, servers and machines without a display.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from controller.base.errors import InputError
from controller.base.fileio import check_writable, replace_atomically, write_text_atomically
from controller.engine.representation import (
    SIZE_SPREADS,
    SIZE_TOLERANCE_FLOOR,
    representation_name,
)
from controller.engine.results import Confusion, Evaluation, GridResult, OpenSetFold

if TYPE_CHECKING:
    from matplotlib.figure import Figure


def _fmt(value: Any, digits: int = 3) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "–"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


def matching(result: GridResult) -> str:
    """How a grid point matched references: "nearest", "nearest k=3", "nearest idf"."""
    mode = result.mode if result.neighbours == 1 else f"{result.mode} k={result.neighbours}"
    return mode if result.weighting == "none" else f"{mode} {result.weighting}"


def summary_cells(result: GridResult) -> list[str]:
    """The headline numbers of one grid point, formatted as the settings table's cells."""
    closed, opened = result.closed_set, result.open_set
    typed = result.open_set_per_type
    lo, hi = closed.accuracy_ci
    mode = matching(result)
    return [
        _fmt(result.unit_seconds, 0),
        result.representation,
        result.catalogue,
        mode,
        str(result.windows),
        str(closed.n_test),
        _fmt(result.train_accuracy),
        _fmt(closed.accuracy),
        _fmt(closed.macro_f1),
        f"{_fmt(lo)}–{_fmt(hi)}",
        _fmt(closed.accuracy_with_theta),
        _fmt(closed.theta),
        _fmt(opened.unknown_detection),
        _fmt(opened.known_accuracy),
        _fmt(opened.auroc),
        _fmt(None if typed is None else typed.unknown_detection),
        _fmt(None if typed is None else typed.auroc),
        _fmt(closed.calibration.ece),
        _fmt(result.time_to_identification.median_units, 1),
        _fmt(result.convergence.converged_fraction),
        _fmt(result.recurrence.intra_mean),
        _fmt(result.recurrence.inter_mean),
    ]


SUMMARY_HEADER = (
    "| unit s | representation | catalogue | mode | windows | test | train left-out acc. "
    "| accuracy | macro-F1 | 95 % CI "
    "| acc. with θ | θ | unknown det. | known acc. | AUROC | unknown det. (type θ) "
    "| AUROC (type θ) | ECE | TTI median (units) | converged | intra | inter |"
)


def top_confusions(result: GridResult, limit: int = 15) -> list[tuple[str, str, int]]:
    """The largest off-diagonal cells of a result's confusion matrix: (true, predicted, count)."""
    classes = result.closed_set.confusion.classes
    matrix = result.closed_set.confusion.array()
    cells = [
        (classes[i], classes[j], int(matrix[i, j]))
        for i in range(len(classes))
        for j in range(len(classes))
        if i != j and matrix[i, j] > 0
    ]
    return sorted(cells, key=lambda c: (-c[2], c[0], c[1]))[:limit]


def best_presence(metrics: Evaluation) -> GridResult | None:
    """The best grid point among the presence-only (paper's) representations."""
    baseline = [r for r in metrics.results if r.intensity is None]
    return (
        Evaluation(
            metrics.dataset, metrics.tracks, metrics.types, metrics.settings, tuple(baseline)
        ).best()
        if baseline
        else None
    )


def _table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> list[str]:
    return [
        "| " + " | ".join(header) + " |",
        "|" + "---|" * len(header),
        *("| " + " | ".join(row) + " |" for row in rows),
    ]


def _per_type_lines(best: GridResult, baseline: GridResult | None) -> list[str]:
    base = {} if baseline is None else {t.type: t for t in baseline.closed_set.per_type}
    header = ["type", "test windows", "right", "accuracy", "95 % CI", "precision", "F1"]
    if baseline is not None and baseline is not best:
        header.append(f"accuracy ({baseline.representation})")
    rows = []
    for t in best.closed_set.per_type:
        row = [
            t.type,
            str(t.n),
            str(t.correct),
            _fmt(t.accuracy),
            f"{_fmt(t.ci_low)}–{_fmt(t.ci_high)}",
            _fmt(t.precision),
            _fmt(t.f1),
        ]
        if len(header) > 7:
            other = base.get(t.type)
            row.append(_fmt(None if other is None else other.accuracy))
        rows.append(row)
    return _table(header, rows)


def _confusion_lines(result: GridResult) -> list[str]:
    classes = result.closed_set.confusion.classes
    matrix = result.closed_set.confusion.array()
    short = [f"{i + 1}" for i in range(len(classes))]
    rows = [
        [f"{i + 1} {name}", *(str(int(v)) if v else "·" for v in matrix[i])]
        for i, name in enumerate(classes)
    ]
    return [
        "Rows: true type; columns: predicted type (numbered as the rows); cells: test windows.",
        "",
        *_table(["true \\ predicted", *short], rows),
    ]


def _accumulation_lines(result: GridResult) -> list[str]:
    acc = result.accumulation
    if acc is None:
        return []
    lines = [
        "",
        "### Decisions accumulated over each device's windows",
        "",
        f"Windows right alone: {_fmt(acc.window_accuracy)}; with the device's accumulated "
        f"decision: {_fmt(acc.accuracy)} ({acc.windows} test windows). Changes of behaviour "
        f"declared on unchanged devices: {acc.false_changes}. Spliced devices (one device's "
        f"windows, then another type's under its name): {acc.detected} of {acc.spliced} "
        f"changes detected, median delay {_fmt(acc.detection_delay_median, 1)} windows.",
        "",
    ]
    rows = [
        [
            d.device,
            d.type,
            str(d.windows),
            str(d.right),
            _fmt(d.right / d.windows if d.windows else None),
            "never" if d.settled_units is None else str(d.settled_units),
            str(d.changes),
        ]
        for d in acc.devices
    ]
    header = ["device", "type", "windows", "right", "share right", "settled after (units)"]
    return lines + _table([*header, "changes"], rows)


def _open_set_lines(result: GridResult) -> list[str]:
    if not result.open_set.folds:
        return []
    return [
        "",
        "### Open set, type by type",
        "",
        "Each type left out of the references in turn (worst AUROC first): a type whose "
        "traffic another type repeats cannot come out unknown.",
        "",
        *_fold_table(result.open_set.folds),
    ]


def _fold_table(folds: Iterable[OpenSetFold]) -> list[str]:
    """Open-set folds as a table, worst AUROC first."""
    rows = [
        [
            f.left_out,
            str(f.n_unknown),
            str(f.n_known),
            _fmt(f.theta),
            _fmt(f.unknown_detection),
            _fmt(f.known_accuracy),
            _fmt(f.auroc),
        ]
        for f in sorted(folds, key=lambda f: (_order(f.auroc), f.left_out))
    ]
    header = ["left out", "unknown windows", "known windows", "θ", "unknown det."]
    return _table([*header, "known acc.", "AUROC"], rows)


def _open_set_score_lines(metrics: Evaluation) -> list[str]:
    """The open-set study: pooled leave-one-type-out AUROC of every known-vs-unknown score,
    per grid point."""
    shown = [r for r in metrics.results if r.open_set.auroc_by_score]
    if not shown:
        return []
    names = list(shown[0].open_set.auroc_by_score)
    rows = [
        [
            _fmt(r.unit_seconds, 0),
            r.representation,
            r.catalogue,
            matching(r),
            *(_fmt(r.open_set.auroc_by_score.get(name)) for name in names),
        ]
        for r in shown
    ]
    return [
        "",
        "## Open-set scores",
        "",
        "Leave-one-type-out AUROC (pooled over the folds) of each known-vs-unknown score: the "
        "best similarity; its margin over the winner's own θ; its margin over the second-best "
        "type; the distance ratio 1 − (1 − best) / (1 − second); the best similarity "
        "standardised by the winner's leave-one-out own-type similarities.",
        "",
        *_table(["unit s", "representation", "catalogue", "mode", *names], rows),
    ]


def _family_lines(metrics: Evaluation, best: GridResult) -> list[str]:
    """Per grid point, the types its references cannot tell apart and what identification
    reaches when siblings count as one: closed-set accuracy and leave-one-family-out AUROC;
    the best setting's family folds."""
    shown = [r for r in metrics.results if r.open_set_families is not None]
    if not shown:
        return []
    rows = []
    for r in shown:
        assert r.open_set_families is not None
        rows.append(
            [
                _fmt(r.unit_seconds, 0),
                r.representation,
                r.catalogue,
                matching(r),
                "; ".join(" + ".join(family) for family in r.families),
                _fmt(r.closed_set.accuracy),
                _fmt(r.family_accuracy),
                _fmt(r.open_set.auroc),
                _fmt(r.open_set_families.auroc),
            ]
        )
    header = ["unit s", "representation", "catalogue", "mode", "families", "accuracy"]
    lines = [
        "",
        "## Sibling families",
        "",
        "Types the training references cannot tell apart (a share of "
        f"{metrics.settings.sibling_share:g} or more of a type's references, each left out, "
        "score another type as high as their own) form a family. "
        "A new device of a known family is named as one of its types, so its type cannot come "
        "out unknown; leaving whole families out measures whether a device of a family the "
        "references have never seen does. Family accuracy counts a sibling's name as right.",
        "",
        *_table([*header, "family accuracy", "AUROC (types)", "AUROC (families)"], rows),
    ]
    opened = best.open_set_families
    if opened is None:
        return lines
    named = {" + ".join(family) for family in best.families}
    return [
        *lines,
        "",
        f"The best setting ({best.label}) with each family left out of the references:",
        "",
        *_fold_table(f for f in opened.folds if f.left_out in named),
    ]


def _order(value: float) -> float:
    return math.inf if math.isnan(value) else value


def _anchor_lines(metrics: Evaluation) -> list[str]:
    """The method next to the anchor baselines, on the same windows, per grid point (first
    mode, neighbour count and service weighting only: the anchors do not depend on them)."""
    settings = metrics.settings
    first = (settings.modes[0], settings.neighbours[0], settings.weightings[0])
    shown = [
        r for r in metrics.results if r.anchors and (r.mode, r.neighbours, r.weighting) == first
    ]
    if not shown:
        return []
    names = [a.name for a in shown[0].anchors]

    def cells(accuracy: float, ci: tuple[float, float], f1: float) -> list[str]:
        return [_fmt(accuracy), f"{_fmt(ci[0])}–{_fmt(ci[1])}", _fmt(f1)]

    header = ["unit s", "representation", "catalogue", "test", "method", "95 % CI", "macro-F1"]
    for name in names:
        header += [name, "95 % CI", "macro-F1"]
    rows = []
    for r in shown:
        closed = r.closed_set
        row = [_fmt(r.unit_seconds, 0), r.representation, r.catalogue, str(closed.n_test)]
        row += cells(closed.accuracy, closed.accuracy_ci, closed.macro_f1)
        for a in r.anchors:
            row += cells(a.accuracy, a.accuracy_ci, a.macro_f1)
        rows.append(row)
    return [
        "",
        "## Anchor baselines",
        "",
        f"Closed-set accuracy of the method ({first[0]}) and of simple classifiers on the same "
        "training and test windows: 1-NN over log(1 + packets) per service (Euclidean), and "
        "the most frequent training type.",
        "",
        *_table(header, rows),
    ]


def _robustness_lines(metrics: Evaluation) -> list[str]:
    rows = [
        [r.representation, str(x.one_in), str(x.n_test), _fmt(x.accuracy), _fmt(x.macro_f1)]
        for r in metrics.results
        for x in r.robustness
    ]
    if not rows:
        return []
    return [
        "",
        "## Observed through packet sampling",
        "",
        "Test data thinned by 1:N random packet sampling (references from the full data), "
        "nearest reference, one neighbour:",
        "",
        *_table(["representation", "1:N", "test windows", "accuracy", "macro-F1"], rows),
    ]


def markdown(
    metrics: Evaluation,
    plots: Mapping[str, str],
    sections: Sequence[str] = (),
    intro: str | None = None,
) -> str:
    """The Markdown report; `sections` (Markdown, each starting with its heading) go before the
    plots, and `intro` replaces the sentence describing the settings."""
    settings = metrics.settings
    best = metrics.best()
    baseline = best_presence(metrics)
    lines = [
        f"# Fingerprint evaluation: {metrics.dataset}",
        "",
        intro
        or f"{metrics.tracks} tracks of {len(metrics.types)} types; windows: "
        f"{settings.windows}; split: {settings.split} (train fraction "
        f"{settings.train_fraction}); exporter {settings.exporter.to_json()}; θ: "
        + (
            f"{settings.theta}"
            if settings.theta is not None
            else f"{settings.percentile}th percentile of leave-one-out own-type similarity"
        )
        + '. Representations without "+" are the paper\'s presence-only ones; "+intensity" '
        'adds each service\'s packet share and packet size, "+sizes" also matches its mean '
        "packet size within τ learned per service from the references "
        f"({SIZE_SPREADS:g} within-type deviations, at least {SIZE_TOLERANCE_FLOOR * 100:g} %), "
        '"+rate" its packets per unit. '
        "Catalogue built-in: services as ingested; train-learned: the most used ports of each "
        "split's training traffic alone, so no test port shapes the services.",
        "",
        "## All settings",
        "",
        SUMMARY_HEADER,
        "|" + "---|" * SUMMARY_HEADER.count(" |"),
    ]
    lines += ["| " + " | ".join(summary_cells(r)) + " |" for r in metrics.results]
    chosen = metrics.chosen()
    if chosen is not None:
        lines += _chosen_lines(chosen, best)
    lines += [
        "",
        f"## Best setting: {best.label}",
        "",
        f"Closed-set accuracy {_fmt(best.closed_set.accuracy)} (95 % CI "
        f"{_fmt(best.closed_set.accuracy_ci[0])}–{_fmt(best.closed_set.accuracy_ci[1])}), "
        f"macro-F1 {_fmt(best.closed_set.macro_f1)} on {best.closed_set.n_test} test windows"
        + (
            ""
            if baseline is None or baseline is best
            else f"; the best presence-only setting ({baseline.label}) reaches "
            f"{_fmt(baseline.closed_set.accuracy)}, macro-F1 {_fmt(baseline.closed_set.macro_f1)}"
        )
        + ".",
    ]
    calibration = best.closed_set.calibration
    if calibration.temperature is not None:
        lines += [
            "",
            f"Confidence: temperature {calibration.temperature:.4g}, mean confidence "
            f"{_fmt(calibration.mean_confidence)} against accuracy {_fmt(calibration.accuracy)}, "
            f"expected calibration error {_fmt(calibration.ece)}, Brier score "
            f"{_fmt(calibration.brier)}.",
        ]
    lines += ["", "### Most frequent confusions", ""]
    lines += _table(
        ["true type", "predicted", "windows"],
        [[t, p, str(n)] for t, p, n in top_confusions(best)] or [["–", "–", "0"]],
    )
    early = best.early_identification
    if early is not None:
        what = "capture" if settings.captures else "device's test period"
        lines += [
            "",
            "### Early identification",
            "",
            f"Closed-set accuracy when only the first seconds of each test {what} are seen:",
            "",
            *_table(
                ["seen (s)", *(_fmt(t, 0) for t in early.seconds)],
                [["accuracy", *(_fmt(a) for a in early.accuracy)]],
            ),
        ]
    lines += _accumulation_lines(best)
    lines += ["", "### Per type", ""]
    lines += _per_type_lines(best, baseline)
    lines += ["", "### Confusion matrix", ""]
    lines += _confusion_lines(best)
    lines += _open_set_lines(best)
    lines += _family_lines(metrics, best)
    lines += _anchor_lines(metrics)
    lines += _open_set_score_lines(metrics)
    lines += _robustness_lines(metrics)
    for section in sections:
        lines += ["", section.rstrip("\n")]
    lines += ["", "## Plots", ""]
    lines += [f"![{title}]({name})" for title, name in plots.items()]
    lines.append("")
    return "\n".join(lines)


def _chosen_lines(chosen: GridResult, best: GridResult) -> list[str]:
    """The setting the training windows alone choose, and what it reaches on the test windows."""
    closed = chosen.closed_set
    lo, hi = closed.accuracy_ci
    return [
        "",
        f"## Setting chosen on the training windows: {chosen.label}",
        "",
        "Chosen by the leave-one-out accuracy of the training windows alone (each scored "
        "against the other training references, its device's other windows left out too where "
        f"its type has several devices): {_fmt(chosen.train_accuracy)}. On the test windows it "
        f"reaches accuracy {_fmt(closed.accuracy)} (95 % CI {_fmt(lo)}–{_fmt(hi)}), macro-F1 "
        f"{_fmt(closed.macro_f1)}, open-set AUROC {_fmt(chosen.open_set.auroc)}. "
        + (
            "It is also the best setting on the test windows."
            if chosen is best
            else "The best setting below is the best on the test windows themselves: with many "
            "settings compared, an optimistic choice."
        ),
    ]


def _figure(figsize: tuple[float, float]) -> Figure:
    """A new figure. matplotlib is imported here, on the first plot, so that importing the engine
    (every controller and switch process does) does not load it."""
    from matplotlib.figure import Figure

    return Figure(figsize=figsize)


def _finish(fig: Figure, ax: Any, xlabel: str, ylabel: str, path: Path) -> None:
    """Label a [0, 1] plot, add its legend (if it drew anything) and save it."""
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_ylim(0.0, 1.02)
    ax.grid(alpha=0.3)
    handles, _ = ax.get_legend_handles_labels()
    if handles:
        ax.legend(fontsize=7)
    _save(fig, path)


def _save(fig: Figure, path: Path) -> None:
    fig.tight_layout()
    replace_atomically(path, lambda tmp: fig.savefig(tmp, format="png", dpi=110))


def plot_confusion(confusion: Confusion, title: str, path: Path) -> None:
    """Row-normalised confusion matrix with each cell's count of windows, titled
    "Confusion (<title>)"."""
    classes = confusion.classes
    matrix = confusion.array().astype(np.float64)
    rows = matrix.sum(axis=1, keepdims=True)
    shares = np.divide(matrix, rows, out=np.zeros_like(matrix), where=rows > 0)
    size = max(4.0, 0.32 * len(classes) + 2.5)
    fig = _figure(figsize=(size, size))
    ax = fig.add_subplot()
    image = ax.imshow(shares, cmap="Blues", vmin=0.0, vmax=1.0)
    ax.set_xticks(range(len(classes)), classes, rotation=90, fontsize=7)
    ax.set_yticks(range(len(classes)), classes, fontsize=7)
    ax.set_xlabel("predicted type")
    ax.set_ylabel("true type")
    ax.set_title(f"Confusion ({title})", fontsize=9)
    counts = confusion.array()
    for i, j in zip(*np.nonzero(counts), strict=True):
        ax.text(
            int(j),
            int(i),
            str(int(counts[i, j])),
            ha="center",
            va="center",
            fontsize=6,
            color="white" if shares[i, j] > 0.5 else "black",
        )
    fig.colorbar(image, ax=ax, fraction=0.046, label="share of the true type's windows")
    _save(fig, path)


def plot_convergence(metrics: Evaluation, path: Path) -> None:
    """CDF of convergence times, one curve per granularity and unit (intensity does not move
    where windows end)."""
    fig = _figure(figsize=(6.0, 4.0))
    ax = fig.add_subplot()
    seen = set()
    for r in metrics.results:
        key = (r.granularity, r.unit_seconds)
        if key in seen:
            continue
        seen.add(key)
        curve = r.convergence.cdf
        if curve.units:
            ax.step(
                curve.units,
                curve.fraction,
                where="post",
                label=f"{representation_name(r.granularity)}, {_fmt(r.unit_seconds, 0)} s",
            )
    _finish(fig, ax, "convergence time (units)", "fraction of converged windows", path)


def plot_similarities(result: GridResult, path: Path) -> None:
    """Similarity distributions: recurrence (same device vs different devices) and open set
    (best similarity of windows of known vs left-out types)."""
    fig = _figure(figsize=(10.0, 4.0))
    bins = [i / 20 for i in range(21)]
    left, right = fig.add_subplot(1, 2, 1), fig.add_subplot(1, 2, 2)
    rec = result.recurrence
    for values, label in ((rec.intra, "same device"), (rec.inter, "other devices")):
        if values is not None and len(values):
            left.hist(values, bins=bins, density=True, alpha=0.55, label=label)
    left.set_title("Recurrence: similarity of exported fingerprints", fontsize=9)
    left.set_xlabel("weighted Jaccard")
    scores, known = result.open_set.scores, result.open_set.known
    if scores is not None and known is not None and len(scores):
        k = np.asarray(known, dtype=bool)
        right.hist(scores[k], bins=bins, density=True, alpha=0.55, label="known type")
        right.hist(scores[~k], bins=bins, density=True, alpha=0.55, label="left-out type")
    right.set_title("Open set: best similarity to the references", fontsize=9)
    right.set_xlabel("best similarity")
    for ax in (left, right):
        ax.set_ylabel("density")
        handles, _ = ax.get_legend_handles_labels()
        if handles:
            ax.legend(fontsize=8)
    fig.suptitle(result.label, fontsize=9)
    _save(fig, path)


def plot_early(metrics: Evaluation, path: Path) -> None:
    """Early identification: accuracy against the seconds of each test capture seen, one curve
    per representation (its best mode)."""
    fig = _figure(figsize=(6.0, 4.0))
    ax = fig.add_subplot()
    best: dict[str, GridResult] = {}
    for r in metrics.results:
        if r.early_identification is None:
            continue
        held = best.get(r.representation)
        if held is None or r.closed_set.accuracy > held.closed_set.accuracy:
            best[r.representation] = r
    for name, r in best.items():
        early = r.early_identification
        assert early is not None
        style = "-" if r.intensity is not None else "--"
        ax.plot(early.seconds, early.accuracy, style, marker="o", markersize=3, label=name)
    ax.set_xscale("log")
    _finish(fig, ax, "seconds of the capture seen", "closed-set accuracy", path)


def prepare_report_folder(out_dir: Path) -> None:
    """Create the report folder and check that files can be written into it, so that a bad
    `--out` is refused before an evaluation runs rather than after."""
    out = Path(out_dir)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise InputError(f"{out}: cannot create the report directory: {exc.strerror}") from exc
    check_writable(out / "metrics.json", "report folder")


def write_report(metrics: Evaluation, out_dir: Path, sections: Sequence[str] = ()) -> list[Path]:
    """Write metrics.json, report.md and the plots into `out_dir` (created if missing); every
    file appears only once complete. Returns the paths written."""
    out = Path(out_dir)
    prepare_report_folder(out)
    best = metrics.best()
    plots = {"Confusion matrix (best setting)": "confusion.png"}
    plot_confusion(best.closed_set.confusion, best.label, out / "confusion.png")
    # Whole captures are one window each: they have no convergence to show.
    if metrics.settings.windows == "exporter":
        plots["Convergence time CDF"] = "convergence_cdf.png"
        plot_convergence(metrics, out / "convergence_cdf.png")
    plots["Similarity distributions (best setting)"] = "similarity.png"
    plot_similarities(best, out / "similarity.png")
    if any(r.early_identification is not None for r in metrics.results) and (
        metrics.settings.captures
    ):
        plots["Early identification"] = "early_identification.png"
        plot_early(metrics, out / "early_identification.png")
    text = json.dumps(metrics.to_json(), indent=1, sort_keys=True) + "\n"
    write_text_atomically(out / "metrics.json", text)
    report = markdown(metrics, plots, sections)
    write_text_atomically(out / "report.md", report)
    return [out / "metrics.json", out / "report.md", *(out / name for name in plots.values())]
