"""Replay a real capture through an emulated device host, as if that device had sent it.

The frames the captured device sent (source MAC = its MAC) are kept, their source MAC rewritten
to the emulated host's, and the result is pushed out of the host's interface by `tcpreplay`
inside the host's namespace, bounded in packets and time. Frames other hosts sent in the capture
(the cloud's answers) are left out: the switch would count them under other devices.
"""

from __future__ import annotations

import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import dpkt

from controller.base.checks import is_decimal
from controller.base.errors import InputError, SvcfpError
from controller.base.fileio import replace_atomically
from controller.base.macs import NotAMac, mac_bytes
from topology.state import TestbedState

MAX_PACKETS = 100_000


@dataclass(frozen=True)
class Prepared:
    """A capture filtered to one device's frames and rewritten to a new source MAC."""

    path: Path
    frames: int
    skipped: int
    duration: float


def _mac_bytes(mac: str, source: str) -> bytes:
    try:
        return mac_bytes(mac)
    except NotAMac:
        raise InputError(f"{source}: {mac!r} is not a MAC address") from None


def prepare(
    capture: Path, device_mac: str, new_mac: str, out: Path, limit: int = MAX_PACKETS
) -> Prepared:
    """Write to `out` the first `limit` frames `device_mac` sent in `capture`, from `new_mac`."""
    old = _mac_bytes(device_mac, str(capture))
    new = _mac_bytes(new_mac, "new MAC")
    kept = skipped = 0
    first = last = 0.0

    def write(temp: Path) -> None:
        nonlocal kept, skipped, first, last
        with capture.open("rb") as source, temp.open("wb") as sink:
            try:
                reader = dpkt.pcap.Reader(source)
            except (ValueError, dpkt.NeedData) as exc:
                raise InputError(f"{capture}: not a pcap file: {exc}") from exc
            if reader.datalink() != dpkt.pcap.DLT_EN10MB:
                raise InputError(f"{capture}: link type {reader.datalink()} is not Ethernet")
            writer = dpkt.pcap.Writer(sink, linktype=dpkt.pcap.DLT_EN10MB)
            for timestamp, data in reader:
                if len(data) < 14 or data[6:12] != old:
                    skipped += 1
                    continue
                if kept == 0:
                    first = timestamp
                last = timestamp
                writer.writepkt(data[:6] + new + data[12:], ts=timestamp)
                kept += 1
                if kept >= limit:
                    break
        if kept == 0:
            raise InputError(f"{capture}: no frame was sent by {device_mac}")

    out.parent.mkdir(parents=True, exist_ok=True)
    try:
        replace_atomically(out, write)
    except OSError as exc:
        raise InputError(f"{capture}: cannot replay: {exc}") from exc
    return Prepared(out, kept, skipped, last - first)


def device_mac_of(capture: Path) -> str:
    """The device MAC IoT Sentinel keeps beside its captures (`_iotdevice-mac.txt`)."""
    path = capture.parent / "_iotdevice-mac.txt"
    try:
        return path.read_text().split()[0].lower()
    except (OSError, IndexError) as exc:
        raise InputError(f"{path}: no device MAC beside the capture: {exc}") from exc


def replay(
    host: Any,
    prepared: Prepared,
    speed: float = 1.0,
    max_seconds: float = 60.0,
    state: TestbedState | None = None,
) -> int:
    """Send the prepared frames out of `host`'s interface with tcpreplay; returns frames sent.

    `speed` multiplies the capture's pace; the run is cut after `max_seconds` either way.
    """
    binary = shutil.which("tcpreplay")
    if binary is None:
        raise SvcfpError("tcpreplay is not installed (apt-get install tcpreplay)")
    interface = host.defaultIntf().name
    command = [
        binary,
        "--quiet",
        f"--intf1={interface}",
        f"--multiplier={speed}",
        f"--duration={max(1, int(max_seconds))}",
        str(prepared.path),
    ]
    process = host.popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    if state is not None:
        state.add_process(f"tcpreplay:{host.name}", process.pid)
    try:
        output, _ = process.communicate(timeout=max_seconds + 10)
    except subprocess.TimeoutExpired:
        process.kill()
        process.communicate()
        raise SvcfpError(
            f"tcpreplay on {host.name} did not finish within {max_seconds} s"
        ) from None
    text = output.decode(errors="replace")
    if process.returncode != 0:
        raise SvcfpError(f"tcpreplay on {host.name} failed ({process.returncode}): {text.strip()}")
    return _sent(text, prepared.frames)


def _sent(output: str, default: int) -> int:
    # tcpreplay reports "Actual: N packets (...)"; without that line assume all were sent.
    for line in output.splitlines():
        words = line.split()
        if len(words) > 1 and words[0] == "Actual:" and is_decimal(words[1]):
            return int(words[1])
    return default
