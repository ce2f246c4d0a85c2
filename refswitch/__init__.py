"""Reference switch: a P4Runtime server running the fingerprint.p4 pipeline in Python.

For machines without BMv2: it accepts the same P4Info, implements p4src/README.md bit for bit and
moves real frames, so the controller, the demo and the PTF suite run unchanged against it.

- `program`: the P4 objects the pipeline needs, resolved by name from a pushed P4Info through
  `controller.base.contract` (names, widths, MAX_DEVICES, MAX_SERVICES, FLOOD_GROUP, ...).
- `pipeline`: the parser, ingress and egress of fingerprint.p4, its counter and registers.
- `tables`, `replication`, `digests`: table entries, multicast groups, digest configs and lists.
- `switch`: one device — the pipeline plus everything the control plane wrote to it.
- `server`: the gRPC P4Runtime service (arbitration, Write, Read, pipeline config, streams);
  wildcard counter reads are encoded by `controller.base.wire`, the codec the controller
  decodes with.
- `pcap`, `ports`: packet I/O on Linux interfaces (AF_PACKET) and pcap files.
- `cli`: `svcfp switch` (also `python -m refswitch`).
"""

from __future__ import annotations
