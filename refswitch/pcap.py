"""Classic libpcap files: a struct-based reader and an atomic writer (Ethernet link type)."""

from __future__ import annotations

import os
import struct
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import BinaryIO

from controller.base.errors import InputError

LINKTYPE_ETHERNET = 1
_MAGIC_US = 0xA1B2C3D4
_MAGIC_NS = 0xA1B23C4D
_PCAPNG_MAGIC = 0x0A0D0D0A
_GLOBAL = struct.Struct("IHHiIII")
_RECORD_LEN = 16


@dataclass(frozen=True)
class PcapFrame:
    """One captured frame: its capture time (seconds) and bytes."""

    timestamp: float
    data: bytes


def read_pcap(path: Path) -> Iterator[PcapFrame]:
    """Frames of a pcap file in order.

    A file cut short raises InputError naming the path and the frame number, after every complete
    frame before it has been yielded.
    """
    try:
        handle = path.open("rb")
    except OSError as exc:
        raise InputError(f"cannot read pcap {path}: {exc.strerror}") from exc
    with handle:
        header = handle.read(_GLOBAL.size)
        if len(header) < _GLOBAL.size:
            raise InputError(f"{path}: not a pcap file (only {len(header)} bytes)")
        magic_le = struct.unpack("<I", header[:4])[0]
        if magic_le == _PCAPNG_MAGIC:
            raise InputError(f"{path}: pcapng is not supported here; write classic pcap")
        for order in ("<", ">"):
            magic = struct.unpack(order + "I", header[:4])[0]
            if magic in (_MAGIC_US, _MAGIC_NS):
                break
        else:
            raise InputError(f"{path}: not a pcap file (magic 0x{magic_le:08x})")
        scale = 1e-6 if magic == _MAGIC_US else 1e-9
        _, _, _, _, _, _, linktype = struct.unpack(order + "IHHiIII", header)
        if linktype & 0xFFFF != LINKTYPE_ETHERNET:
            raise InputError(f"{path}: link type {linktype} is not Ethernet (1)")
        record = struct.Struct(order + "IIII")
        number = 0
        while True:
            head = handle.read(_RECORD_LEN)
            if not head:
                return
            number += 1
            if len(head) < _RECORD_LEN:
                raise InputError(f"{path}: frame {number} is truncated (record header cut short)")
            seconds, fraction, captured, _ = record.unpack(head)
            data = handle.read(captured)
            if len(data) < captured:
                raise InputError(
                    f"{path}: frame {number} is truncated ({len(data)} of {captured} bytes)"
                )
            yield PcapFrame(seconds + fraction * scale, data)


class PcapWriter:
    """Writes frames to `path` through a temporary file renamed into place on close."""

    def __init__(self, path: Path, snaplen: int = 262144) -> None:
        self.path = path
        self._temp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        try:
            self._handle: BinaryIO = self._temp.open("wb")
        except OSError as exc:
            raise InputError(f"cannot write pcap {path}: {exc.strerror}") from exc
        self._handle.write(_GLOBAL.pack(_MAGIC_US, 2, 4, 0, 0, snaplen, LINKTYPE_ETHERNET))
        self.frames = 0

    def write(self, frame: bytes, timestamp: float) -> None:
        """Append one frame."""
        seconds = int(timestamp)
        micros = round((timestamp - seconds) * 1e6)
        if micros >= 1_000_000:
            seconds, micros = seconds + 1, micros - 1_000_000
        self._handle.write(struct.pack("IIII", seconds, micros, len(frame), len(frame)))
        self._handle.write(frame)
        self.frames += 1

    def close(self) -> None:
        """Flush and move the file into place."""
        if self._handle.closed:
            return
        self._handle.close()
        os.replace(self._temp, self.path)

    def __enter__(self) -> PcapWriter:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()
