"""MUDgee flows files (`<mac>_ipflows.csv`) as ingested activity, attributed by the catalogue.

`controller.mud.flows` reads which services (protocol and port) the device used and how much;
here each port becomes the catalogue service the switch's source-port table gives it (every
service is in that table; the highest priority wins), so the activity names services as every
other reader does — a port the catalogue lists by itself keeps its name, others fall into
catch-alls. The file has no timestamps: all of it is unit 0.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import numpy.typing as npt

from controller.base.macs import mac_to_int
from controller.engine.activity import ActivityTable
from controller.engine.catalogue import Catalogue
from controller.engine.services import parse_service
from controller.ingest.flows import IngestStats
from controller.mud.flows import read_flows


def service_of(catalogue: Catalogue, service: str) -> str:
    """The catalogue's name for an exact `proto/port` service ("other" when none matches)."""
    proto, port, _ = parse_service(service)
    matching = [
        s for s in catalogue.services if s.proto in (None, proto) and s.port_lo <= port <= s.port_hi
    ]
    return max(matching, key=lambda s: s.priority).name if matching else "other"


def read_mudgee(
    path: Path,
    catalogue: Catalogue,
    unit_seconds: float,
    devices: npt.NDArray[np.uint64] | None,
) -> tuple[ActivityTable, IngestStats]:
    """The activity of the device a MUDgee flows file is named after (none when `devices`,
    48-bit MACs, leaves it out)."""
    flows = read_flows(path)
    stats = IngestStats(records=flows.rows)
    if devices is not None and np.uint64(mac_to_int(flows.device)) not in set(devices.tolist()):
        return ActivityTable.empty(unit_seconds, services=catalogue.names), stats
    records = [
        (flows.device, 0, service_of(catalogue, u.service), u.packets, u.bytes) for u in flows.uses
    ]
    return ActivityTable.from_records(records, unit_seconds=unit_seconds), stats
