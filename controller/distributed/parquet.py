"""Activity tables as Parquet files: the interchange between a cluster's workers and its client.

One file holds one table exactly as the engine keeps it (rows sorted and unique, device and
service codes into vocabularies stored in the file's metadata), so reading it back gives the very
table that was written, vocabulary order included: results assembled from such files are those
of one process. A folder of them (one per input file) is a partitioned data set any Parquet
reader opens: columns device and service hold the codes, the metadata their names.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from controller.base.errors import InputError
from controller.base.fileio import replace_atomically
from controller.engine.activity import ActivityTable

_META = b"svcfp.activity"


def write_activity(table: ActivityTable, path: Path) -> None:
    """Write `table` to the Parquet file `path` (appearing complete or not at all)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    meta = {
        "devices": list(table.devices),
        "services": list(table.services),
        "unit_seconds": table.unit_seconds,
    }
    data = pa.table(
        {
            "device": pa.array(table.device, pa.int32()),
            "unit": pa.array(table.unit, pa.int64()),
            "service": pa.array(table.service, pa.int32()),
            "packets": pa.array(table.packets, pa.int64()),
            "bytes": pa.array(table.bytes, pa.int64()),
        }
    ).replace_schema_metadata({_META: json.dumps(meta).encode()})
    replace_atomically(path, lambda tmp: pq.write_table(data, str(tmp)))


def read_activity(path: Path) -> ActivityTable:
    """The table `write_activity` wrote to `path`."""
    import pyarrow.parquet as pq

    try:
        data = pq.read_table(str(path))
        meta = json.loads((data.schema.metadata or {})[_META])
    except (OSError, KeyError, ValueError) as exc:
        raise InputError(f"{path}: not an svcfp activity Parquet file: {exc}") from exc

    def column(name: str, dtype: type[np.generic]) -> npt.NDArray[Any]:
        return np.asarray(data.column(name).to_numpy(), dtype=dtype)

    return ActivityTable(
        devices=tuple(meta["devices"]),
        services=tuple(meta["services"]),
        device=column("device", np.int32),
        unit=column("unit", np.int64),
        service=column("service", np.int32),
        packets=column("packets", np.int64),
        bytes=column("bytes", np.int64),
        unit_seconds=float(meta["unit_seconds"]),
    )
