"""The data plane as the package ships it: `fingerprint.p4`, and the P4Info and BMv2 JSON p4c
wrote for it (`make build` regenerates both and fails when they drift from the source); the
Tofino program `fingerprint_tna.p4` and its P4Info (`make build TARGET=tofino`)."""

from __future__ import annotations

from pathlib import Path

FOLDER = Path(__file__).resolve().parent
P4_SOURCE = FOLDER / "fingerprint.p4"
P4INFO = FOLDER / "fingerprint.p4info.txtpb"
BMV2_JSON = FOLDER / "fingerprint.json"
# The Tofino (TNA) program and the P4Info the Tofino compiler wrote for it.
TNA_SOURCE = FOLDER / "fingerprint_tna.p4"
TNA_P4INFO = FOLDER / "fingerprint_tna.p4info.txtpb"
