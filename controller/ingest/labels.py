"""Device labels: which MAC address is which device type.

Two layouts are read: a CSV file with `mac,label` rows (a header row is optional), and the IoT
Sentinel layout, a directory holding `<Type>/_iotdevice-mac.txt` files (searched recursively, so
both the data set root and its `captures/` folder work).

In a CSV file a MAC given two labels is an error. In the directory layout it happens for real:
IoT Sentinel captured the Hue switch through the Hue bridge's MAC and the D-Link door sensor
through the home hub's, so one MAC's traffic belongs to two setups. Such a MAC is *shared*: it has
no label of its own (`by_mac` leaves it out, `shared` lists its types, `notes` says so), and each
capture in a type folder is labelled by that folder (`for_capture`), so its traffic is attributed
to the setup that was actually captured.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import numpy.typing as npt

from controller.base.errors import InputError
from controller.base.fileio import csv_rows, not_utf8
from controller.base.macs import NotAMac, mac_key, mac_to_int

UNKNOWN = "unknown"
MAC_FILE = "_iotdevice-mac.txt"


@dataclass(frozen=True)
class Labels:
    """MAC device key → label (`by_mac`). From the directory layout also: `shared`, MAC → the
    types it appears under when there are several, and `folders`, type folder (resolved) →
    (MAC, type) of the device its captures record."""

    by_mac: Mapping[str, str]
    source: str = "<memory>"
    notes: tuple[str, ...] = ()
    shared: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    folders: Mapping[Path, tuple[str, str]] = field(default_factory=dict)

    def label(self, mac: str, default: str | None = None) -> str:
        """The label of `mac`; `default` (or an InputError when None) for unlabelled MACs.

        A shared MAC has no label of its own: it raises even with a default, as guessing one of
        its types would silently mislabel the other's traffic."""
        key = mac_key(mac)
        if key in self.by_mac:
            return self.by_mac[key]
        if key in self.shared:
            raise InputError(
                f"{self.source}: {key} appears under {', '.join(self.shared[key])}: "
                "it is labelled per capture"
            )
        if default is None:
            raise InputError(f"{self.source}: no label for device {key}")
        return default

    def for_capture(self, capture: Path) -> dict[str, str]:
        """The labels that hold in one capture file.

        A capture in a type folder of the directory layout records that folder's device: its MAC
        gets the folder's type (which settles a shared MAC) and no other MAC is labelled. Any
        other file gets the labels by MAC."""
        found = self.folders.get(Path(capture).parent.resolve())
        if found is None:
            return dict(self.by_mac)
        mac, kind = found
        return {mac: kind}

    def macs(self) -> tuple[str, ...]:
        """Labelled device keys (shared ones included), sorted."""
        return tuple(sorted({*self.by_mac, *self.shared}))

    def mac_ints(self) -> npt.NDArray[np.uint64]:
        """Labelled MACs (shared ones included) as sorted 48-bit integers, for filtering."""
        return np.array([mac_to_int(m) for m in self.macs()], dtype=np.uint64)

    def labels(self) -> tuple[str, ...]:
        """Distinct labels (the types of shared MACs included), sorted."""
        shared = (kind for kinds in self.shared.values() for kind in kinds)
        return tuple(sorted({*self.by_mac.values(), *shared}))

    @classmethod
    def from_pairs(cls, pairs: Iterable[tuple[str, str]], source: str = "<memory>") -> Labels:
        """Build from (MAC, label) pairs; a MAC given two different labels is an error."""
        found: dict[str, str] = {}
        for mac, label in pairs:
            key = mac_key(mac)
            if key in found and found[key] != label:
                raise InputError(f"{source}: {key} labelled both {found[key]!r} and {label!r}")
            found[key] = label
        return cls(found, source)

    @classmethod
    def load(cls, path: Path) -> Labels:
        """Read a `mac,label` CSV file or an IoT Sentinel style directory."""
        path = Path(path)
        if path.is_dir():
            return cls._load_directory(path)
        try:
            handle = path.open(newline="", encoding="utf-8-sig")
        except OSError as exc:
            raise InputError(f"{path}: cannot read labels: {exc.strerror}") from exc
        try:
            with handle:
                found = cls._read_rows(path, csv_rows(path, handle))
        except UnicodeDecodeError as exc:
            raise not_utf8(path, "labels", exc) from None
        if not found:
            raise InputError(f"{path}: no labels found")
        return cls(found, str(path))

    @staticmethod
    def _read_rows(path: Path, rows: Iterable[list[str]]) -> dict[str, str]:
        """MAC → label from the rows of a labels CSV (an optional header row, # comments)."""
        found: dict[str, str] = {}
        for line_no, row in enumerate(rows, start=1):
            if not row or not "".join(row).strip() or row[0].lstrip().startswith("#"):
                continue
            if len(row) < 2:
                raise InputError(f"{path}: line {line_no}: expected 'mac,label'")
            mac, label = row[0].strip(), row[1].strip()
            try:
                key = mac_key(mac)
            except NotAMac:
                if line_no == 1:
                    continue  # a header row
                raise InputError(f"{path}: line {line_no}: not a MAC address: {mac!r}") from None
            if not label:
                raise InputError(f"{path}: line {line_no}: empty label for {key}")
            if key in found and found[key] != label:
                raise InputError(f"{path}: line {line_no}: {key} already labelled {found[key]!r}")
            found[key] = label
        return found

    @classmethod
    def _load_directory(cls, root: Path) -> Labels:
        folders: dict[Path, tuple[str, str]] = {}
        for mac_file in sorted(root.rglob(MAC_FILE)):
            try:
                text = mac_file.read_text(encoding="utf-8", errors="replace").strip()
            except OSError as exc:
                raise InputError(
                    f"{mac_file}: cannot read the device's MAC: {exc.strerror}"
                ) from exc
            try:
                key = mac_key(text.split()[0] if text else "")
            except NotAMac as exc:
                raise InputError(f"{mac_file}: {exc}") from None
            folders[mac_file.parent.resolve()] = (key, mac_file.parent.name)
        if not folders:
            raise InputError(f"{root}: no {MAC_FILE} files found below this directory")
        types: dict[str, set[str]] = {}
        for key, kind in folders.values():
            types.setdefault(key, set()).add(kind)
        shared = {mac: tuple(sorted(kinds)) for mac, kinds in types.items() if len(kinds) > 1}
        notes = tuple(
            f"{root}: {mac} appears under {', '.join(kinds)}: labelled per capture by its folder"
            for mac, kinds in sorted(shared.items())
        )
        by_mac = {mac: kinds.pop() for mac, kinds in types.items() if mac not in shared}
        return cls(by_mac, str(root), notes, shared, folders)
