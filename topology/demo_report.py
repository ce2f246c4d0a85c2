"""The demo's report, read from the controller's database: per device its answer and why,
every stored decision, the activity, and plots (similarity over time, confusion).

What the report says is what the controller stored: the fingerprints its live exporter made and
the decisions its identification took, the same rows `svcfp run --references` writes.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from matplotlib.figure import Figure

from controller.base.fileio import replace_atomically, write_text_atomically
from controller.control.live import verdict
from controller.engine.identify import UNKNOWN
from controller.engine.metrics import confusion_matrix
from controller.engine.report import plot_confusion
from controller.engine.representation import representation_name
from controller.engine.results import Confusion
from controller.store.records import accumulated_label
from controller.store.storage import DecisionRecord, Storage
from topology import graph as topo
from topology.files import write_json_atomic
from topology.scenario import DemoConfig, Scenario


def stored_decisions(db: Path, scenario: Scenario) -> list[dict[str, Any]]:
    """The controller's stored decisions on the scenario's devices, oldest first, keyed by host
    name (with the MAC), each with its stored explanation."""
    hosts = {h.mac: h.name for h in topo.hosts(scenario.graph, topo.DEVICE)}
    with Storage(db) as storage:
        records = storage.decisions()
    return [_decision(hosts[r.device], r) for r in records if r.device in hosts]


def _decision(host: str, record: DecisionRecord) -> dict[str, Any]:
    why = record.explanation
    return {
        "device": host,
        "mac": record.device,
        "start_unit": record.window_start_unit,
        "end_unit": record.window_end_unit,
        "representation": record.representation,
        "label": record.label,
        "best_type": why.get("best_type"),
        "similarity": record.similarity,
        "explanation": why,
    }


def outcome(scenario: Scenario, decisions: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """Per emulated device: its true type, the controller's verdict, and whether it is right (a
    known type identified as itself, the held-out type as unknown; None for a device that
    changed its behaviour, whose alerts say what happened)."""
    macs = {h.name: h.mac for h in topo.hosts(scenario.graph, topo.DEVICE)}
    rows = []
    for host in sorted(scenario.truth):
        truth = scenario.truth[host]
        expected = truth if truth in scenario.references.types else UNKNOWN
        mine = [d for d in decisions if d["device"] == host]
        answer = (
            mine[verdict([d["label"] for d in mine], accumulated_label(mine[-1]["explanation"]))]
            if mine
            else None
        )
        change = scenario.change if scenario.change and scenario.change.host == host else None
        correct = answer is not None and answer["label"] == expected
        rows.append(
            {
                "device": host,
                "mac": macs[host],
                "true_type": truth,
                "expected": expected,
                "identified": answer["label"] if answer else None,
                "best_type": answer["best_type"] if answer else None,
                "similarity": answer["similarity"] if answer else None,
                "decisions": len(mine),
                "exported": bool(mine),
                "correct": None if change is not None else correct,
                "changed": None
                if change is None
                else {"profile": change.profile, "at_unit": change.at_unit},
                "latest": mine[-1]["label"] if mine else None,
                "explanation": answer["explanation"] if answer else None,
            }
        )
    return rows


def write_report(
    config: DemoConfig,
    scenario: Scenario,
    db: Path,
    mode: str,
    seconds: float,
    extra: Mapping[str, Any],
) -> tuple[dict[str, Any], list[Path]]:
    """decisions.json, activity.csv, report.md and plots under `config.out`, from `db`; returns
    the summary (what decisions.json holds) and the files written."""
    out = config.out
    out.mkdir(parents=True, exist_ok=True)
    decisions = stored_decisions(db, scenario)
    rows = outcome(scenario, decisions)
    with Storage(db) as storage:
        stored = {
            "fingerprints": len(storage.fingerprints()),
            "decisions": len(storage.decisions()),
        }
        activity = storage.activity_table(unit_seconds=config.unit_seconds)
        hosts = {h.mac: h.name for h in topo.hosts(scenario.graph, topo.DEVICE)}
        alerts = [
            {**a.to_json(), "host": hosts.get(a.device or "")} for a in reversed(storage.alerts())
        ]
    summary = {
        "mode": mode,
        "switch": config.switch,
        "seconds": round(seconds, 1),
        "units": config.units,
        "unit_seconds": config.unit_seconds,
        "known_types": list(scenario.references.types),
        "held_out": scenario.held_out,
        "theta": scenario.references.theta,
        "exporter": config.exporter.to_json(),
        "database": str(db),
        "stored": stored,
        "correct": sum(1 for r in rows if r["correct"]),
        "devices": rows,
        "decisions": decisions,
        "alerts": alerts,
        "playback": dict(extra),
    }
    written = [out / "decisions.json", out / "report.md"]
    write_json_atomic(out / "decisions.json", summary)
    if len(activity):
        activity.to_csv(out / "activity.csv")
        written.append(out / "activity.csv")
    plots = {"Similarity over time": "similarity.png"}
    _plot_timeline(decisions, scenario, config.unit_seconds, out / "similarity.png")
    known = [d for d in decisions if scenario.truth[d["device"]] in scenario.references.types]
    if known:
        classes, matrix = confusion_matrix(
            [scenario.truth[d["device"]] for d in known], [d["best_type"] for d in known]
        )
        title = (
            f"{representation_name(config.exporter.granularity)}, {scenario.references.mode}, "
            f"unit {config.unit_seconds:g} s"
        )
        plots["Confusion of exported fingerprints (known types)"] = "confusion.png"
        plot_confusion(Confusion.of(classes, matrix), title, out / "confusion.png")
    write_text_atomically(out / "report.md", _markdown(summary, rows, plots))
    return summary, written + [out / name for name in plots.values()]


def _plot_timeline(
    decisions: Sequence[Mapping[str, Any]], scenario: Scenario, unit_seconds: float, path: Path
) -> None:
    """Similarity of every stored decision to its best type, per device, with θ."""
    fig = Figure(figsize=(8.0, 4.0))
    ax = fig.add_subplot()
    first = min((d["start_unit"] for d in decisions), default=0)
    for host in sorted(scenario.truth):
        mine = [d for d in decisions if d["device"] == host]
        if mine:
            ax.plot(
                [d["end_unit"] - first for d in mine],
                [d["similarity"] for d in mine],
                marker="o",
                label=f"{host} ({scenario.truth[host]})",
            )
    ax.axhline(scenario.references.theta, color="grey", linestyle="--", label="θ (unknown below)")
    ax.set_xlabel(f"unit ({unit_seconds:g} s each) when the fingerprint was exported")
    ax.set_ylabel("similarity to the best type")
    ax.set_ylim(0.0, 1.02)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    replace_atomically(path, lambda temp: fig.savefig(temp, format="png", dpi=110))


def _markdown(
    summary: Mapping[str, Any], rows: Sequence[Mapping[str, Any]], plots: Mapping[str, str]
) -> str:
    lines = [
        "# svcfp demo",
        "",
        f"Mode: {summary['mode']} ({summary['switch']} switch), {summary['units']} units of "
        f"{summary['unit_seconds']:g} s, {summary['seconds']:.0f} s in all. Known types: "
        f"{', '.join(summary['known_types'])}; held out of the references: "
        f"{summary['held_out']}. θ = {summary['theta']:.3f}.",
        "",
        f"**{summary['correct']} of {sum(1 for r in rows if r['correct'] is not None)} devices "
        "answered correctly** (a known type as "
        "itself, the held-out type as unknown). The controller stored "
        f"{summary['stored']['fingerprints']} fingerprints and {summary['stored']['decisions']} "
        f"decisions in `{summary['database']}`.",
        "",
        "| device | MAC | true type | identified as | similarity | decisions | right |",
        "|---|---|---|---|---|---|---|",
    ]
    for row in rows:
        similarity = "–" if row["similarity"] is None else f"{row['similarity']:.3f}"
        right = "changed" if row["correct"] is None else "yes" if row["correct"] else "NO"
        lines.append(
            f"| {row['device']} | {row['mac']} | {row['true_type']} | {row['identified']} | "
            f"{similarity} | {row['decisions']} | {right} |"
        )
    lines += ["", "## Alerts", ""]
    lines += [
        f"- {time.strftime('%H:%M:%S', time.localtime(a['raised_at']))} "
        f"**{a['kind']}** ({a['severity']}): {a['message']}"
        for a in summary["alerts"]
    ] or ["None."]
    lines += ["", "## Why", ""]
    for row in rows:
        why = row["explanation"]
        if why is None:
            continue
        parts = []
        for group in ("matched", "unexpected", "missing"):
            services = ", ".join(f"{c['service']} ({c['share']:.2f})" for c in why[group])
            parts.append(f"{group}: {services or '–'}")
        lines.append(f"- **{row['device']}** → {row['identified']}: " + "; ".join(parts))
    for title, name in plots.items():
        lines += ["", f"## {title}", "", f"![{title}]({name})"]
    return "\n".join(lines) + "\n"
