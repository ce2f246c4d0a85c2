"""Turn off checksum and segmentation offloads on an interface (what `ethtool -K` does).

A software switch reads frames from one veth and writes them to another with packet sockets.
With transmit checksum offload on, the kernel leaves TCP/UDP checksums unfinished on veth
frames; once such a frame has passed through a user-space switch the receiving host sees a bad
checksum and drops it. Run inside a host's namespace: `python -m topology.offload h1-eth0`.
"""

from __future__ import annotations

import argparse
import ctypes
import fcntl
import socket
import struct
from collections.abc import Sequence

_SIOCETHTOOL = 0x8946
# Legacy single-value ethtool commands (get, set); still honoured by current kernels.
OFFLOADS = {
    "tx-checksum": (0x16, 0x17),
    "scatter-gather": (0x18, 0x19),
    "tcp-segmentation": (0x1E, 0x1F),
    "generic-segmentation": (0x23, 0x24),
}


def _ethtool(interface: str, command: int, value: int = 0) -> int:
    # struct ethtool_value {u32 cmd; u32 data;}, passed by address inside struct ifreq.
    data = (ctypes.c_uint32 * 2)(command, value)
    request = struct.pack("16sP", interface.encode(), ctypes.addressof(data))
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        fcntl.ioctl(sock.fileno(), _SIOCETHTOOL, request)
    return int(data[1])


def offloads(interface: str) -> dict[str, bool]:
    """Which of the offloads this module manages are on for `interface`."""
    return {name: bool(_ethtool(interface, get)) for name, (get, _) in OFFLOADS.items()}


def disable_offloads(interface: str) -> None:
    """Switch off tx checksum, scatter-gather, TSO and GSO on `interface` (needs root)."""
    for _, set_command in OFFLOADS.values():
        _ethtool(interface, set_command, 0)


def main(argv: Sequence[str] | None = None) -> int:
    """Disable offloads on each interface named on the command line."""
    parser = argparse.ArgumentParser(description="disable checksum/segmentation offloads")
    parser.add_argument("interfaces", nargs="+")
    args = parser.parse_args(argv)
    for interface in args.interfaces:
        disable_offloads(interface)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
