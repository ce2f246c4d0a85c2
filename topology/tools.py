"""Which of the system tools the network modes need are missing, said so a user can act on it.

Mininet (Debian's `mininet` package: its Python module and `mnexec`) and `tcpreplay` are not
Python packages, so a fresh clone may lack them: the demo then falls back to its replay mode and
says why, and the tests that need them are skipped with the same reason.
"""

from __future__ import annotations

import importlib
import shutil

INSTALL_HINT = "apt-get install mininet tcpreplay"


def missing_for_mininet() -> list[str]:
    """What a Mininet network needs and this machine lacks (empty when nothing is missing)."""
    missing = []
    try:
        importlib.import_module("mininet.net")
    except ImportError:
        missing.append("the mininet Python module")
    if shutil.which("mnexec") is None:
        missing.append("mnexec")
    return missing


def missing_for_replay() -> list[str]:
    """What replaying a capture through a host needs and this machine lacks."""
    return [] if shutil.which("tcpreplay") else ["tcpreplay"]


def why_missing(missing: list[str]) -> str:
    """One sentence naming what is missing and how Debian installs it."""
    return f"{' and '.join(missing)} not found (Debian: {INSTALL_HINT})"
