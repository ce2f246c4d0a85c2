"""Where the checkout, its committed P4Info and the shared data sets are."""

from __future__ import annotations

import os
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent.parent
P4INFO = ROOT / "p4src" / "fingerprint.p4info.txtpb"
# The TNA program's P4Info: the reference switch takes it too (its contract is by name).
TNA_P4INFO = ROOT / "p4src" / "fingerprint_tna.p4info.txtpb"


def data_dir() -> Path | None:
    """The shared data folder from SVCFP_DATA_DIR, or ../shared/data beside the checkout."""
    env = os.environ.get("SVCFP_DATA_DIR")
    candidate = Path(env) if env else ROOT.parent / "shared" / "data"
    return candidate if candidate.is_dir() else None
