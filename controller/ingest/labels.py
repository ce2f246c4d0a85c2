"""Device labels: which MAC address is which device type.

Two layouts are read: a CSV file with `mac,label` rows (a header row is optional), and the IoT
Sentinel layout, a directory holding `<Type>/_iotdevice-mac.txt` files (searched recursively, so
both the data set root and its `captures/` folder work).

In a CSV file a MAC given two labels is an error. In the directory layout it happens for real:
IoT Sentinel captured the Hue switch through the Hue bridge's MAC and the D-Link door sensor
through the home hub's, so one MAC's traffic belongs to two setups. Such a MAC gets the joined
label ("D-LinkDoorSensor+D-LinkHomeHub"), and `notes` says so.
"""

from __future__ import annotations

import csv
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt

from controller.errors import InputError

UNKNOWN = "unknown"
MAC_FILE = "_iotdevice-mac.txt"
_HEX12 = re.compile(r"^[0-9a-f]{12}$")


def mac_key(text: str) -> str:
    """The device key of a MAC address: lower-case, colon-separated ("aa:bb:cc:dd:ee:01").

    Accepts colons, dashes, dots or no separators; raises ValueError for anything else."""
    digits = re.sub(r"[:\-.]", "", text.strip().lower())
    if not _HEX12.match(digits):
        raise ValueError(f"not a MAC address: {text!r}")
    return ":".join(digits[i : i + 2] for i in range(0, 12, 2))


def mac_to_int(text: str) -> int:
    """A MAC address as a 48-bit integer."""
    return int(mac_key(text).replace(":", ""), 16)


def int_to_mac(value: int) -> str:
    """A 48-bit integer as a MAC device key."""
    digits = f"{value:012x}"
    return ":".join(digits[i : i + 2] for i in range(0, 12, 2))


def macs_to_keys(values: npt.NDArray[np.uint64]) -> list[str]:
    """Device keys of an array of 48-bit MAC integers."""
    return [int_to_mac(v) for v in values.tolist()]


@dataclass(frozen=True)
class Labels:
    """MAC device key → label."""

    by_mac: Mapping[str, str]
    source: str = "<memory>"
    notes: tuple[str, ...] = ()

    def label(self, mac: str, default: str | None = None) -> str:
        """The label of `mac`; `default` (or an InputError when None) for unlabelled MACs."""
        key = mac_key(mac)
        if key in self.by_mac:
            return self.by_mac[key]
        if default is None:
            raise InputError(f"{self.source}: no label for device {key}")
        return default

    def macs(self) -> tuple[str, ...]:
        """Labelled device keys, sorted."""
        return tuple(sorted(self.by_mac))

    def mac_ints(self) -> npt.NDArray[np.uint64]:
        """Labelled MACs as sorted 48-bit integers (for vectorised filtering)."""
        return np.array(sorted(mac_to_int(m) for m in self.by_mac), dtype=np.uint64)

    def labels(self) -> tuple[str, ...]:
        """Distinct labels, sorted."""
        return tuple(sorted(set(self.by_mac.values())))

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
            handle = path.open(newline="", encoding="utf-8")
        except OSError as exc:
            raise InputError(f"{path}: cannot read labels: {exc.strerror}") from exc
        found: dict[str, str] = {}
        with handle:
            for line_no, row in enumerate(csv.reader(handle), start=1):
                if not row or not "".join(row).strip() or row[0].lstrip().startswith("#"):
                    continue
                if len(row) < 2:
                    raise InputError(f"{path}: line {line_no}: expected 'mac,label'")
                mac, label = row[0].strip(), row[1].strip()
                try:
                    key = mac_key(mac)
                except ValueError as exc:
                    if line_no == 1:
                        continue  # a header row
                    raise InputError(f"{path}: line {line_no}: {exc}") from exc
                if not label:
                    raise InputError(f"{path}: line {line_no}: empty label for {key}")
                if key in found and found[key] != label:
                    raise InputError(
                        f"{path}: line {line_no}: {key} already labelled {found[key]!r}"
                    )
                found[key] = label
        if not found:
            raise InputError(f"{path}: no labels found")
        return cls(found, str(path))

    @classmethod
    def _load_directory(cls, root: Path) -> Labels:
        found: dict[str, set[str]] = {}
        for mac_file in sorted(root.rglob(MAC_FILE)):
            text = mac_file.read_text(encoding="utf-8", errors="replace").strip()
            try:
                key = mac_key(text.split()[0] if text else "")
            except ValueError as exc:
                raise InputError(f"{mac_file}: {exc}") from exc
            found.setdefault(key, set()).add(mac_file.parent.name)
        if not found:
            raise InputError(f"{root}: no {MAC_FILE} files found below this directory")
        notes = tuple(
            f"{root}: {mac} appears under {', '.join(sorted(names))}: labelled "
            f"{'+'.join(sorted(names))}"
            for mac, names in sorted(found.items())
            if len(names) > 1
        )
        labels = {mac: "+".join(sorted(names)) for mac, names in found.items()}
        return cls(labels, str(root), notes)
