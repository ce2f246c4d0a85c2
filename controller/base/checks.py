"""The values of the conventional P4Runtime flags, checked one way for the controller and the
reference switch: a gRPC address, a device id, a switch port; and what a number in text is.

Each check returns the value or raises InputError naming the flag and the value, so `svcfp run`
and `svcfp switch` refuse the same input with the same words (exit status 2).
"""

from __future__ import annotations

import re

from controller.base import contract
from controller.base.errors import InputError

# Switch ports are as wide as the port parameter of the forward action (9 bits on v1model).
PORT_LIMIT = 1 << dict(contract.ACTIONS[contract.FORWARD])[contract.PORT]
UINT64_LIMIT = 2**64
_PORT_DIGITS = re.compile(r"[0-9]{1,5}")
_DIGITS = re.compile(r"[0-9]+")


def is_decimal(text: str) -> bool:
    """Whether `text` is a non-negative whole number written in ASCII digits (`str.isdigit` also
    takes "²" and other digits `int` refuses)."""
    return _DIGITS.fullmatch(text) is not None


def check_grpc_addr(addr: str, flag: str = "--grpc-addr", *, listen: bool = False) -> str:
    """`addr` if it is HOST:PORT (IPv6 hosts in brackets) with a port in 1..65535.

    A server's listening address (`listen`) may also name port 0: any free port.
    """
    lowest = 0 if listen else 1
    host, sep, port = addr.rpartition(":")
    if not sep or not host or not _PORT_DIGITS.fullmatch(port) or not lowest <= int(port) < 65536:
        raise InputError(f"{flag} {addr!r}: expected HOST:PORT with a port in {lowest}..65535")
    if host.startswith("[") != host.endswith("]") or (":" in host and not host.startswith("[")):
        raise InputError(f"{flag} {addr!r}: write an IPv6 host in brackets, e.g. [::1]:9559")
    return addr


def check_device_id(device_id: int, flag: str = "--device-id") -> int:
    """`device_id` if it fits P4Runtime's 64-bit device id."""
    if not 0 <= device_id < UINT64_LIMIT:
        raise InputError(f"{flag} {device_id}: P4Runtime device ids lie in 0..2^64-1")
    return device_id


def check_port(name: str, port: int) -> int:
    """`port` if it is a switch port number (as wide as the contract's port), else InputError."""
    if not 0 <= port < PORT_LIMIT:
        raise InputError(f"{name} {port}: switch ports lie in 0..{PORT_LIMIT - 1}")
    return port
