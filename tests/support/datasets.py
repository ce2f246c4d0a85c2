"""Labels for the shared real data sets, written the way `svcfp evaluate --labels` reads them."""

from __future__ import annotations

import ast
from pathlib import Path


def tj_oconnor_labels(data: Path, out: Path) -> Path:
    """A mac,label CSV for the tj-oconnor captures: every capture's device (its MAC from the
    data set's `devices.py`) labelled by its model, the name without the unit number
    (blink-cam-01, -02 and -03 are all "blink-cam")."""
    source = data / "tj-oconnor" / "devices.py"
    tree = ast.parse(source.read_text(encoding="utf-8"))
    devices = next(
        ast.literal_eval(node.value)
        for node in tree.body
        if isinstance(node, ast.Assign)
        and any(isinstance(t, ast.Name) and t.id == "devices" for t in node.targets)
    )
    captured = sorted(p.stem for p in (data / "tj-oconnor" / "pcaps").glob("*.pcap"))
    lines = ["mac,label"]
    lines += [f"{devices[name]['ether']},{name.rsplit('-', 1)[0]}" for name in captured]
    out.write_text("\n".join(lines) + "\n")
    return out


# How the MUD profiles' folder names spell one device model: country or setup words around it,
# and a few typos of the data set ("bolb", "vemo").
_MUD_NOISE = {
    "merged",
    "uk",
    "us",
    "hk",
    "ch",
    "il",
    "china",
    "india",
    "antartica",
    "argentina",
    "australia",
    "austrelia",
    "brazil",
    "france",
    "germany",
    "mexico",
    "russia",
    "spain",
    "with",
    "firemware",
    "update",
    "by",
    "vpn",
    "and",
    "location",
    "cords",
    "t",
}
_MUD_SPELLING = {"bolb": "bulb", "vemo": "wemo", "tp": "tplink"}


def mud_type(folder: str) -> str:
    """The device model a MUD profile folder holds: "uk_by_vpn_and_location_cords_tp_plug" →
    "tplink_plug", "mi_bolb_us_firemware_update" → "mi_bulb", "t_wemo_plug_merged_uk" →
    "wemo_plug"."""
    words = [_MUD_SPELLING.get(w, w) for w in folder.lower().split("_") if w not in _MUD_NOISE]
    return "_".join(words)


def mud_labels(data: Path, out: Path) -> Path:
    """A mac,label CSV for the MUD profiles' flow summaries: each MAC labelled with the model most
    of its folders name (one folder of the data set holds another model's MAC)."""
    votes: dict[str, dict[str, int]] = {}
    for flows in sorted((data / "mud-profiles").glob("*/*_ipflows.csv")):
        mac = flows.name.split("_", 1)[0]
        kind = mud_type(flows.parent.name)
        votes.setdefault(mac, {}).setdefault(kind, 0)
        votes[mac][kind] += 1
    lines = ["mac,label"]
    for mac, kinds in sorted(votes.items()):
        label = max(sorted(kinds), key=lambda k: kinds[k])
        lines.append(f"{':'.join(mac[i : i + 2] for i in range(0, 12, 2))},{label}")
    out.write_text("\n".join(lines) + "\n")
    return out
