"""Reference switch: a P4Runtime server running the fingerprint.p4 pipeline in Python."""

from __future__ import annotations
