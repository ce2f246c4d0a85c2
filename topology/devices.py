"""Emulated IoT devices: a per-unit plan of service use, played as real traffic with sockets.

Run inside a device host's network namespace (`python -m topology.entry devices PLAN.json`).
Unit u of the plan starts at `start + u * unit_seconds` (time acceleration: one unit of a second
can stand for an hour of a real device's life); in it the device performs each planned activity:
DNS queries (udp/53) and NTP requests (udp/123) to the service hosts that answer them, TCP
exchanges shaped like TLS, HTTP or MQTT, mDNS and SSDP multicast, ICMP echo, datagrams of other
IP protocols. Ports the device serves itself are answered for the whole run. Every exchange is
bounded by a timeout inside its unit, the whole run by the plan's length, and the process writes
what it did per service to `stats_path` when it ends (plan done or SIGTERM).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
from collections import defaultdict
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from topology import protocols, servers, sockets
from topology.files import write_json_atomic
from topology.stats import ServiceCounts

# At most this many exchanges of one service in one unit, whatever the plan asks: a plan built
# from packet counts of a chatty real device must not flood the emulated network.
MAX_EXCHANGES_PER_UNIT = 5
# Services no emulated device can produce on purpose.
UNPLAYABLE = frozenset({"other"})


@dataclass(frozen=True)
class Activity:
    """Use `service` `count` times within one unit.

    `port` is the destination port (0: the service's first port); `sports` are client ports
    used in turn (empty: any port the kernel picks). See `topology.ports` for why.
    """

    service: str
    count: int = 1
    port: int = 0
    sports: tuple[int, ...] = ()


@dataclass(frozen=True)
class DevicePlan:
    """What one emulated device does, unit by unit, and where its services are answered."""

    name: str
    address: str
    unit_seconds: float
    start: float
    units: tuple[tuple[Activity, ...], ...]
    # Service → IPv4 address of the host that answers it (multicast services need none).
    targets: dict[str, str]
    stats_path: str
    serve: tuple[str, ...] = ()
    # Served service → the port the device listens on, where not the service's first port.
    serve_ports: dict[str, int] = field(default_factory=dict)
    # The host's interface, for link-local services (icmpv6).
    interface: str = ""
    # Grace after the last unit, so replies and probes of the last unit still arrive.
    grace: float = 1.0

    @property
    def end(self) -> float:
        """Epoch seconds when the device stops."""
        return self.start + len(self.units) * self.unit_seconds + self.grace

    def services(self) -> list[str]:
        """Every service the device uses as a client at least once, sorted."""
        return sorted({a.service for unit in self.units for a in unit})

    def to_json(self) -> dict[str, Any]:
        """The plan as JSON-ready data."""
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> DevicePlan:
        """Rebuild a plan written by `to_json`."""
        units = tuple(
            tuple(Activity(**{**a, "sports": tuple(a.get("sports", ()))}) for a in unit)
            for unit in data["units"]
        )
        return cls(
            **{
                **data,
                "units": units,
                "serve": tuple(data.get("serve", ())),
                "serve_ports": dict(data.get("serve_ports", {})),
                "targets": dict(data["targets"]),
            }
        )


@dataclass
class _Log:
    services: dict[str, ServiceCounts] = field(default_factory=lambda: defaultdict(ServiceCounts))
    units_played: int = 0
    late_units: int = 0


async def run_device(plan: DevicePlan, stop: asyncio.Event | None = None) -> dict[str, Any]:
    """Play `plan` (serving `plan.serve` meanwhile) and return and write the per-service report."""
    stop = stop or asyncio.Event()
    log = _Log()
    server_task = None
    served_path = Path(plan.stats_path).with_suffix(".served.json")
    if plan.serve:
        config = servers.ServerConfig(
            host=plan.name,
            address=plan.address,
            services=plan.serve,
            duration=max(0.0, plan.end - time.time()),
            stats_path=str(served_path),
            ports=plan.serve_ports,
        )
        server_task = asyncio.ensure_future(servers.serve(config, stop))
    try:
        for index, unit in enumerate(plan.units):
            begin = plan.start + index * plan.unit_seconds
            if time.time() > begin + plan.unit_seconds:
                log.late_units += 1
                continue
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), max(0.0, begin - time.time()))
            if stop.is_set():
                break
            budget = plan.unit_seconds * 0.8
            await asyncio.gather(*(_play(plan, activity, index, budget, log) for activity in unit))
            log.units_played += 1
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), max(0.0, plan.end - time.time()))
    finally:
        stop.set()
        served = await server_task if server_task is not None else None
    report = {
        "device": plan.name,
        "units_played": log.units_played,
        "late_units": log.late_units,
        "sent": {name: counts.to_json() for name, counts in sorted(log.services.items())},
        "served": served["received"] if served else {},
    }
    write_json_atomic(Path(plan.stats_path), report)
    return report


async def _play(plan: DevicePlan, activity: Activity, unit: int, budget: float, log: _Log) -> None:
    if activity.service in UNPLAYABLE:
        return
    counts = log.services[activity.service]
    repeats = max(1, min(activity.count, MAX_EXCHANGES_PER_UNIT))
    timeout = budget / repeats
    for attempt in range(repeats):
        target = plan.targets.get(activity.service, "")
        try:
            reply = await asyncio.wait_for(
                exchange(plan, activity, target, unit * 16 + attempt, timeout), timeout
            )
        except (TimeoutError, OSError):
            counts.fail(target)
            continue
        if reply is None or reply:
            counts.add(target, len(reply or b""))
        else:
            counts.fail(target)


async def exchange(
    plan: DevicePlan, activity: Activity, target: str, sequence: int, timeout: float
) -> bytes | None:
    """Use the activity's service once against `target`.

    Returns the reply, b"" if none came, or None when the service expects no reply.
    """
    service = activity.service
    key = protocols.parse_service(service)
    local = plan.address
    sport = activity.sports[sequence % len(activity.sports)] if activity.sports else 0
    if service in protocols.MULTICAST_SERVICES:
        group, port = protocols.MULTICAST_SERVICES[service]
        payload = protocols.mdns_query() if port == 5353 else protocols.ssdp_search()
        # mDNS speaks from port 5353 to port 5353; SSDP searches come from an ephemeral port.
        await sockets.multicast_send((local, port if port == 5353 else 0), (group, port), payload)
        return None
    if service in protocols.LINK_LOCAL_SERVICES:
        await sockets.icmpv6_all_nodes(plan.interface, os.getpid() + sequence)
        return None
    if not target:
        raise OSError(f"no host answers {service}")
    if key.proto == 1:
        return await sockets.icmp_echo(target, os.getpid() + sequence, timeout)
    if key.transport is None:
        assert key.proto is not None
        await sockets.raw_ip_send(local, target, key.proto, b"svcfp")
        return None
    port = activity.port or key.port_lo
    if key.transport == "tcp":
        payload = protocols.tcp_request(port, f"{plan.name}.svcfp.test")
        return await sockets.tcp_exchange((local, sport), (target, port), payload, timeout)
    if port == 53:
        payload = protocols.dns_query(f"{plan.name}.cloud.svcfp.test", sequence)
    elif port == 123:
        payload = protocols.ntp_request(time.time())
    else:
        payload = f"svcfp {plan.name} {sequence}".encode()
    return await sockets.udp_exchange((local, sport), (target, port), payload, timeout)
