"""MAC addresses, one set of rules for the whole project.

A MAC is written as six groups of one or two hex digits separated by colons or dashes
("02:00:00:00:00:0a", "2-0-0-0-0-a"), as three dot-separated groups of four (Cisco's
"0200.0000.000a"), or as twelve bare hex digits; upper and lower case alike. Its device key —
how registry, activity, labels and reports name a device — is the lower-case colon form. Group
addresses (the I/G bit, the lowest bit of the first octet: multicast and broadcast) never name a
device: no device sends from one.
"""

from __future__ import annotations

import re

import numpy as np
import numpy.typing as npt

from controller.base.errors import InputError

BROADCAST = "ff:ff:ff:ff:ff:ff"


class NotAMac(InputError, ValueError):
    """A text or number that is not a MAC address. It is a ValueError too, so a reader that turns
    a field's ValueError into a message naming its file and line handles it like any other."""


_SEPARATED = re.compile(r"^[0-9a-f]{1,2}([:-])[0-9a-f]{1,2}(\1[0-9a-f]{1,2}){4}$")
_DOTTED = re.compile(r"^[0-9a-f]{4}\.[0-9a-f]{4}\.[0-9a-f]{4}$")
_BARE = re.compile(r"^[0-9a-f]{12}$")


def mac_to_int(text: str) -> int:
    """A MAC address as a 48-bit integer; `InputError` naming the text if it is not one."""
    digits = text.strip().lower()
    if _SEPARATED.match(digits):
        return int("".join(f"{int(part, 16):02x}" for part in re.split(r"[:-]", digits)), 16)
    if _DOTTED.match(digits) or _BARE.match(digits):
        return int(digits.replace(".", ""), 16)
    raise NotAMac(f"{text!r} is not a MAC address")


def int_to_mac(value: int) -> str:
    """A 48-bit integer as a MAC device key ("aa:bb:cc:dd:ee:ff")."""
    if not 0 <= value < 1 << 48:
        raise NotAMac(f"{value} is not a 48-bit MAC address")
    digits = f"{value:012x}"
    return ":".join(digits[i : i + 2] for i in range(0, 12, 2))


def mac_key(text: str) -> str:
    """The device key of a MAC written in any accepted form."""
    return int_to_mac(mac_to_int(text))


def mac_bytes(text: str) -> bytes:
    """The six octets of a MAC address."""
    return mac_to_int(text).to_bytes(6, "big")


def macs_to_keys(values: npt.NDArray[np.uint64]) -> list[str]:
    """Device keys of an array of 48-bit MAC integers."""
    return [int_to_mac(v) for v in values.tolist()]


def host_macs(values: npt.NDArray[np.uint64]) -> npt.NDArray[np.bool_]:
    """Which 48-bit MAC integers can be a host's source address: not a group address (the I/G
    bit, the lowest bit of the first octet) and not all zeros."""
    found: npt.NDArray[np.bool_] = (values != 0) & ((values >> np.uint64(40)) & np.uint64(1) == 0)
    return found


def is_unicast(mac: str) -> bool:
    """Whether `mac` can be a host's source address (see `host_macs`)."""
    return bool(host_macs(np.array([mac_to_int(mac)], dtype=np.uint64))[0])
