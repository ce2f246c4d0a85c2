"""Synthetic IoT traffic from device profiles: flow records, activity, and per-device schedules.

A profile (controller/data/profiles.json) lists the services a kind of device uses. Each service
has a prevalence (the chance it is used in a time unit), a median packet count per active unit
(lognormal with `sigma`), a packet size, a role (`client`: the device sends to the service port
from an ephemeral port; `server`: it answers from the service port), and optionally a period
(used only in every `period`-th unit, at a per-device phase, with its prevalence as the chance
of each due use). A profile's diurnal factor scales the prevalence of non-periodic services
over the day, peaking at `peak_hour`: p(u) = prevalence · (1 + diurnal ·
cos(2π (hour(u) − peak_hour) / 24)), clipped to [0, 1]. `noise` services are the same but rare.

Everything is drawn from one seeded numpy generator, so the same (profiles, devices, units,
seed) always gives the same traffic. Three views of it:
- `uses`: one row per (device, unit, service entry) that is active, with packets and bytes;
- `flows`: those uses split into flow records (IPFIX CSV via `write_flows_csv`);
- `schedule`: one device's uses as (unit, service, proto, port, role, packets, bytes), which an
  emulated device turns into real packets.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any, Literal, NamedTuple

import numpy as np
import numpy.typing as npt

from controller.base.errors import InputError
from controller.base.fileio import listed, parse_json, read_text, replace_atomically
from controller.base.macs import int_to_mac, mac_to_int
from controller.engine.activity import ActivityTable
from controller.engine.catalogue import Catalogue
from controller.engine.services import TCP, UDP, parse_service
from controller.ingest.flows import FlowBatch, batch_to_activity

Role = Literal["client", "server"]
GATEWAY_MAC = 0x02_00_00_FF_FF_FE
EPHEMERAL = (49152, 65535)
FLOW_COLUMNS = (
    "flowStartMilliseconds",
    "sourceMacAddress",
    "destinationMacAddress",
    "protocolIdentifier",
    "sourceTransportPort",
    "destinationTransportPort",
    "packetDeltaCount",
    "octetDeltaCount",
    "reversePacketDeltaCount",
    "reverseOctetDeltaCount",
)


@dataclass(frozen=True)
class ServiceUse:
    """How a device kind uses one service."""

    service: str
    proto: int
    port_lo: int
    port_hi: int
    role: Role
    prevalence: float
    packets: float
    sigma: float = 0.5
    packet_size: int = 120
    period: int = 1
    flows: float = 1.0


@dataclass(frozen=True)
class DeviceProfile:
    """A kind of device: its services, rare noise services and daily rhythm."""

    name: str
    services: tuple[ServiceUse, ...]
    noise: tuple[ServiceUse, ...] = ()
    diurnal: float = 0.0
    peak_hour: float = 12.0

    @property
    def entries(self) -> tuple[ServiceUse, ...]:
        """Services then noise services: the indices `uses` and `schedule` refer to."""
        return self.services + self.noise


@dataclass(frozen=True)
class SynthDevice:
    """One synthetic device: its MAC key and profile."""

    mac: str
    profile: DeviceProfile


class ScheduledUse(NamedTuple):
    """One active (unit, service) of a device's schedule."""

    unit: int
    service: str
    proto: int
    port: int
    role: Role
    packets: int
    bytes: int


@dataclass(frozen=True, eq=False)
class Uses:
    """Active (device, unit, entry) cells with their packet and byte counts."""

    device: npt.NDArray[np.int64]
    unit: npt.NDArray[np.int64]
    entry: npt.NDArray[np.int64]
    packets: npt.NDArray[np.int64]
    bytes: npt.NDArray[np.int64]


# --- profiles ---------------------------------------------------------------------------------


def load_profiles(path: Path | None = None) -> dict[str, DeviceProfile]:
    """Profiles by name from a JSON file (the built-in profiles when `path` is None)."""
    if path is None:
        resource = resources.files("controller.ingest").joinpath("data", "profiles.json")
        text, source = resource.read_text(encoding="utf-8"), "built-in profiles.json"
    else:
        text, source = read_text(path, "profiles"), str(path)
    profiles: dict[str, DeviceProfile] = {}
    for i, entry in enumerate(listed(parse_json(text, source), "profiles", source)):
        where = f"{source}: profile {i + 1}"
        if not isinstance(entry, dict) or not isinstance(entry.get("name"), str):
            raise InputError(f"{where}: expected an object with a name")
        name = entry["name"]
        services = tuple(
            _service_use(s, f"{where} ({name}) service {j + 1}")
            for j, s in enumerate(_uses(entry, "services", f"{where} ({name})"))
        )
        noise = tuple(
            _service_use(s, f"{where} ({name}) noise {j + 1}")
            for j, s in enumerate(_uses(entry, "noise", f"{where} ({name})"))
        )
        if not services:
            raise InputError(f"{where} ({name}): no services")
        profiles[name] = DeviceProfile(
            name=name,
            services=services,
            noise=noise,
            diurnal=float(_number(entry.get("diurnal", 0.0), where, 0.0, 1.0)),
            peak_hour=float(_number(entry.get("peak_hour", 12.0), where, 0.0, 24.0)),
        )
    if not profiles:
        raise InputError(f"{source}: no profiles")
    return profiles


def _uses(entry: dict[str, Any], key: str, where: str) -> list[Any]:
    """A profile's `key` list of services (none when the key is left out)."""
    uses = entry.get(key, [])
    if not isinstance(uses, list):
        raise InputError(f'{where}: "{key}" must be a list of services, got {uses!r}')
    return uses


def _number(value: Any, where: str, lo: float, hi: float) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not lo <= value <= hi:
        raise InputError(f"{where}: expected a number in {lo}..{hi}, got {value!r}")
    return float(value)


def _service_use(entry: Any, where: str) -> ServiceUse:
    if not isinstance(entry, dict) or not isinstance(entry.get("service"), str):
        raise InputError(f"{where}: expected an object with a service name")
    try:
        proto, lo, hi = parse_service(entry["service"])
    except ValueError as exc:
        raise InputError(f"{where}: {exc}") from exc
    role = entry.get("role", "client")
    if role not in ("client", "server"):
        raise InputError(f"{where}: role must be 'client' or 'server', got {role!r}")
    packets = _number(entry.get("packets", 1), where, 1, 1e9)
    default_flows = min(20.0, max(1.0, packets / 25))
    return ServiceUse(
        service=entry["service"],
        proto=proto,
        port_lo=lo,
        port_hi=hi,
        role=role,
        prevalence=_number(entry.get("prevalence", 0.5), where, 0.0, 1.0),
        packets=packets,
        sigma=_number(entry.get("sigma", 0.5), where, 0.0, 5.0),
        packet_size=int(_number(entry.get("packet_size", 120), where, 28, 65535)),
        period=int(_number(entry.get("period", 1), where, 1, 1e6)),
        flows=_number(entry.get("flows", default_flows), where, 1.0, 1e6),
    )


def make_fleet(
    profiles: dict[str, DeviceProfile], devices: int, kinds: Sequence[str] | None = None
) -> list[SynthDevice]:
    """`devices` synthetic devices, kinds assigned round-robin, MACs 02:00:00:00:xx:xx."""
    names = list(kinds) if kinds else sorted(profiles)
    if not names:
        raise InputError("no device profiles to make a fleet of")
    unknown = [n for n in names if n not in profiles]
    if unknown:
        raise InputError(f"unknown profile(s) {', '.join(unknown)}; have {', '.join(profiles)}")
    if not 1 <= devices <= 0xFFFF:
        raise InputError(f"devices must lie in 1..65535, got {devices}")
    return [
        SynthDevice(int_to_mac(0x02_00_00_00_00_00 + i + 1), profiles[names[i % len(names)]])
        for i in range(devices)
    ]


# --- generation -------------------------------------------------------------------------------


def uses(
    fleet: Sequence[SynthDevice],
    units: int,
    seed: int,
    unit_seconds: float = 3600.0,
    start_unit: int = 0,
) -> Uses:
    """Active (device, unit, entry) cells of the fleet over `units` units from `start_unit`."""
    if units < 1:
        raise InputError(f"units must be at least 1, got {units}")
    if seed < 0:
        raise InputError(f"the random seed must be 0 or more, got {seed}")
    rng = np.random.default_rng(seed)
    absolute = start_unit + np.arange(units, dtype=np.int64)
    hours = (absolute * unit_seconds / 3600.0) % 24.0
    parts: list[tuple[npt.NDArray[np.int64], ...]] = []
    kinds = np.array([d.profile.name for d in fleet], dtype=object)
    for name, profile in _profiles_in_order(fleet):
        members = np.flatnonzero(kinds == name).astype(np.int64)
        factor = 1.0 + profile.diurnal * np.cos(2 * math.pi * (hours - profile.peak_hour) / 24)
        for entry_index, use in enumerate(profile.entries):
            # Periodic services are timer-driven: the daily rhythm does not touch them.
            scale = factor if use.period == 1 else np.ones_like(factor)
            p = np.clip(use.prevalence * scale, 0.0, 1.0)
            active = rng.random((len(members), units)) < p[None, :]
            if use.period > 1:
                phase = rng.integers(0, use.period, len(members))
                active &= (absolute[None, :] + phase[:, None]) % use.period == 0
            rows, cols = np.nonzero(active)
            median = max(use.packets, 1.0)
            packets = np.maximum(
                1, np.rint(rng.lognormal(math.log(median), use.sigma, len(rows)))
            ).astype(np.int64)
            parts.append(
                (
                    members[rows],
                    absolute[cols],
                    np.full(len(rows), entry_index, dtype=np.int64),
                    packets,
                    packets * use.packet_size,
                )
            )
    if not parts:
        empty = np.zeros(0, np.int64)
        return Uses(empty, empty, empty, empty, empty)
    dev, unit, entry, packets, octets = (np.concatenate(c) for c in zip(*parts, strict=True))
    order = np.lexsort((entry, unit, dev))
    return Uses(dev[order], unit[order], entry[order], packets[order], octets[order])


def flows(
    fleet: Sequence[SynthDevice],
    units: int,
    seed: int,
    unit_seconds: float = 3600.0,
    start_unit: int = 0,
) -> FlowBatch:
    """Flow records of the fleet: each active use split into about `flows` records, started at
    random times inside its unit, from a fresh ephemeral port each; the peer is a gateway MAC
    that answers every packet."""
    used = uses(fleet, units, seed, unit_seconds, start_unit)
    rng = np.random.default_rng([seed, 1])
    entries = _entry_table(fleet)
    first_entry = _first_entry_index(fleet)
    row = first_entry[used.device] + used.entry
    mean_flows = entries["flows"][row]
    count = np.minimum(used.packets, 1 + rng.poisson(mean_flows - 1.0)).astype(np.int64)
    total = int(count.sum())
    owner = np.repeat(np.arange(len(count)), count)
    # Position of each flow within its use: 0..count-1.
    position = np.arange(total) - np.repeat(np.cumsum(count) - count, count)
    base = used.packets[owner] // count[owner]
    packets = base + (position < used.packets[owner] % count[owner])
    size = entries["size"][row[owner]]
    proto = entries["proto"][row[owner]]
    lo = entries["lo"][row[owner]]
    hi = entries["hi"][row[owner]]
    # A service given as a port range (a P2P or media session port) uses one port of it per
    # device, as real devices keep a session port for hours.
    session = np.random.default_rng([seed, 2]).random((len(fleet), len(entries["lo"])))
    pick = session[used.device[owner], row[owner]]
    service_port = lo + (pick * (hi - lo + 1)).astype(np.int64)
    ephemeral = rng.integers(EPHEMERAL[0], EPHEMERAL[1] + 1, total)
    server = entries["server"][row[owner]]
    transport = (proto == TCP) | (proto == UDP)
    sport = np.where(transport, np.where(server, service_port, ephemeral), 0)
    dport = np.where(transport, np.where(server, ephemeral, service_port), 0)
    start_ms = np.floor((used.unit[owner] + rng.random(total)) * unit_seconds * 1000.0).astype(
        np.int64
    )
    macs = np.array([mac_to_int(d.mac) for d in fleet], dtype=np.uint64)
    order = np.argsort(start_ms, kind="stable")
    return FlowBatch(
        start=start_ms[order] / 1000.0,
        src_mac=macs[used.device[owner]][order],
        dst_mac=np.full(total, GATEWAY_MAC, dtype=np.uint64),
        proto=proto[order],
        sport=sport[order],
        dport=dport[order],
        packets=packets[order],
        bytes=(packets * size)[order],
        rev_packets=packets[order],
        rev_bytes=(packets * 80)[order],
    )


def activity(
    fleet: Sequence[SynthDevice],
    units: int,
    seed: int,
    catalogue: Catalogue,
    unit_seconds: float = 3600.0,
    start_unit: int = 0,
) -> ActivityTable:
    """The fleet's activity, attributed through `catalogue` exactly as ingesting its flows."""
    batch = flows(fleet, units, seed, unit_seconds, start_unit)
    devices = np.array(sorted(mac_to_int(d.mac) for d in fleet), dtype=np.uint64)
    return batch_to_activity(batch, catalogue, unit_seconds, devices)


def schedule(
    profile: DeviceProfile,
    units: int,
    seed: int,
    unit_seconds: float = 3600.0,
    start_unit: int = 0,
) -> list[ScheduledUse]:
    """One device's traffic plan: per active unit and service, how many packets and bytes.

    `port` is the service port (for ranges, the range's first port): a client sends to it, a
    server sends from it; non-TCP/UDP services have port 0.
    """
    device = SynthDevice(int_to_mac(0x02_00_00_00_00_01), profile)
    used = uses([device], units, seed, unit_seconds, start_unit)
    entries = profile.entries
    return [
        ScheduledUse(
            unit=u,
            service=entries[e].service,
            proto=entries[e].proto,
            port=entries[e].port_lo,
            role=entries[e].role,
            packets=p,
            bytes=b,
        )
        for u, e, p, b in zip(
            used.unit.tolist(),
            used.entry.tolist(),
            used.packets.tolist(),
            used.bytes.tolist(),
            strict=True,
        )
    ]


def write_flows_csv(path: Path, batch: FlowBatch) -> None:
    """Write flow records as IPFIX CSV (IANA names); the file appears only when complete."""
    replace_atomically(path, lambda tmp: _write_csv(tmp, batch))


def _write_csv(path: Path, batch: FlowBatch) -> None:
    start_ms = np.rint(batch.start * 1000.0).astype(np.int64)
    rev_packets = batch.rev_packets if batch.rev_packets is not None else np.zeros_like(start_ms)
    rev_bytes = batch.rev_bytes if batch.rev_bytes is not None else np.zeros_like(start_ms)
    macs, mac_codes = np.unique(np.concatenate([batch.src_mac, batch.dst_mac]), return_inverse=True)
    names = [int_to_mac(m) for m in macs.tolist()]
    n = len(start_ms)
    import pyarrow as pa
    import pyarrow.csv as pacsv

    dictionary = pa.array(names, type=pa.string())

    def mac_column(codes: npt.NDArray[np.intp]) -> Any:
        return pa.DictionaryArray.from_arrays(pa.array(codes.astype(np.int32)), dictionary)

    table = pa.table(
        [
            pa.array(start_ms),
            mac_column(mac_codes[:n]).cast(pa.string()),
            mac_column(mac_codes[n:]).cast(pa.string()),
            pa.array(batch.proto),
            pa.array(batch.sport),
            pa.array(batch.dport),
            pa.array(batch.packets),
            pa.array(batch.bytes),
            pa.array(rev_packets),
            pa.array(rev_bytes),
        ],
        names=list(FLOW_COLUMNS),
    )
    with path.open("wb") as binary:
        binary.write((",".join(FLOW_COLUMNS) + "\n").encode())
        pacsv.write_csv(
            table,
            binary,
            write_options=pacsv.WriteOptions(include_header=False, quoting_style="none"),
        )


def _first_entry_index(fleet: Sequence[SynthDevice]) -> npt.NDArray[np.int64]:
    """Per device, the row of its first entry in `_entry_table`."""
    offsets: dict[str, int] = {}
    total = 0
    for name, profile in _profiles_in_order(fleet):
        offsets[name] = total
        total += len(profile.entries)
    return np.array([offsets[d.profile.name] for d in fleet], dtype=np.int64)


def _profiles_in_order(fleet: Sequence[SynthDevice]) -> list[tuple[str, DeviceProfile]]:
    """The fleet's profiles sorted by name: the order in which `uses` draws their traffic from
    the generator and `_entry_table` lays out their entries."""
    found: dict[str, DeviceProfile] = {}
    for device in fleet:
        found.setdefault(device.profile.name, device.profile)
    return sorted(found.items())


def _entry_table(fleet: Sequence[SynthDevice]) -> dict[str, npt.NDArray[Any]]:
    rows = [use for _name, profile in _profiles_in_order(fleet) for use in profile.entries]
    return {
        "proto": np.array([u.proto for u in rows], dtype=np.int64),
        "lo": np.array([u.port_lo for u in rows], dtype=np.int64),
        "hi": np.array([u.port_hi for u in rows], dtype=np.int64),
        "server": np.array([u.role == "server" for u in rows], dtype=bool),
        "size": np.array([u.packet_size for u in rows], dtype=np.int64),
        "flows": np.array([u.flows for u in rows], dtype=np.float64),
    }
