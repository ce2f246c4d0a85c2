"""Service hosts: small bounded servers that answer emulated devices, and probe devices' own ports.

Run inside a service host's network namespace (`python -m topology.entry servers CONFIG.json`).
Every service in the config gets a listener on its port (the low end of a range): UDP answers
DNS- and NTP-shaped replies or echoes, TCP accepts, answers once and closes. Scheduled probes
connect to ports devices serve themselves (a phone app polling a camera, say). The process runs
for at most `duration` seconds or until SIGTERM, then writes what it received to `stats_path`.
"""

from __future__ import annotations

import asyncio
import time
from collections import defaultdict
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, cast

from topology import protocols, sockets
from topology.files import write_json_atomic
from topology.stats import ServiceCounts

# Bounds on what one connection may cost: a peer that never sends is dropped quickly.
_READ_TIMEOUT = 1.0
_MAX_REQUEST = 4096
_MAX_CONNECTIONS = 64


@dataclass(frozen=True)
class Probe:
    """A connection the service host opens to a device's served port during one unit."""

    unit: int
    address: str
    service: str
    port: int = 0  # the device's port (0: the service's first port)


@dataclass(frozen=True)
class ServerConfig:
    """What a service host answers, for how long, and where it reports."""

    host: str
    address: str
    services: tuple[str, ...]
    duration: float
    stats_path: str
    start: float = 0.0
    unit_seconds: float = 1.0
    probes: tuple[Probe, ...] = ()
    # Source ports of probes, used in turn: ports no destination-table entry matches, so the
    # device's replies to them are counted by their source port, the service it offers.
    probe_sports: tuple[int, ...] = (40000,)
    # Service → port to listen on, where it is not the service's first port.
    ports: dict[str, int] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        """The config as JSON-ready data."""
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> ServerConfig:
        """Rebuild a config written by `to_json`."""
        probes = tuple(Probe(**probe) for probe in data.get("probes", ()))
        return cls(
            **{
                **data,
                "services": tuple(data["services"]),
                "probes": probes,
                "probe_sports": tuple(data.get("probe_sports", (40000,))),
                "ports": dict(data.get("ports", {})),
            }
        )


@dataclass
class _Tally:
    received: dict[str, ServiceCounts] = field(default_factory=lambda: defaultdict(ServiceCounts))
    probes: dict[str, ServiceCounts] = field(default_factory=lambda: defaultdict(ServiceCounts))


class _UdpResponder(asyncio.DatagramProtocol):
    def __init__(self, service: str, port: int, address: str, tally: _Tally) -> None:
        self.service = service
        self.port = port
        self.address = address
        self.tally = tally
        self.transport: asyncio.DatagramTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.DatagramTransport, transport)

    def datagram_received(self, data: bytes, addr: tuple[str | Any, int]) -> None:
        self.tally.received[self.service].add(addr[0], len(data))
        if self.transport is not None:
            reply = protocols.udp_response(self.port, data, self.address, time.time())
            self.transport.sendto(reply, addr)


async def serve(config: ServerConfig, stop: asyncio.Event | None = None) -> dict[str, Any]:
    """Answer the configured services and run the probes until `duration` ends or `stop` is set."""
    stop = stop or asyncio.Event()
    tally = _Tally()
    loop = asyncio.get_running_loop()
    closers: list[Any] = []
    limit = asyncio.Semaphore(_MAX_CONNECTIONS)
    bound: set[tuple[str | None, int]] = set()
    for name in config.services:
        key = protocols.parse_service(name)
        port = config.ports.get(name, key.port_lo)
        # Two services realised on one port (source-port services) share its listener.
        if (key.transport, port) in bound:
            continue
        bound.add((key.transport, port))
        if key.transport == "udp":
            responder = _UdpResponder(name, port, config.address, tally)
            transport, _ = await loop.create_datagram_endpoint(
                lambda responder=responder: responder,  # type: ignore[misc]
                local_addr=(config.address, port),
            )
            closers.append(transport)
        elif key.transport == "tcp":
            server = await asyncio.start_server(
                _tcp_handler(name, port, tally, limit),
                host=config.address,
                port=port,
                reuse_address=True,
            )
            closers.append(server)
    probes = asyncio.ensure_future(_run_probes(config, tally))
    try:
        await asyncio.wait_for(stop.wait(), timeout=max(0.0, config.duration))
    except TimeoutError:
        pass
    finally:
        probes.cancel()
        for closer in closers:
            closer.close()
    report = {
        "host": config.host,
        "received": {name: counts.to_json() for name, counts in sorted(tally.received.items())},
        "probes": {name: counts.to_json() for name, counts in sorted(tally.probes.items())},
    }
    write_json_atomic(Path(config.stats_path), report)
    return report


def _tcp_handler(service: str, port: int, tally: _Tally, limit: asyncio.Semaphore) -> Any:
    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        peer = writer.get_extra_info("peername")
        async with limit:
            try:
                request = await asyncio.wait_for(reader.read(_MAX_REQUEST), _READ_TIMEOUT)
                tally.received[service].add(peer[0], len(request))
                writer.write(protocols.tcp_response(port, request))
                await asyncio.wait_for(writer.drain(), _READ_TIMEOUT)
            except (TimeoutError, OSError):
                tally.received[service].fail(peer[0])
            finally:
                writer.close()

    return handle


async def _run_probes(config: ServerConfig, tally: _Tally) -> None:
    by_unit: dict[int, list[tuple[int, Probe]]] = defaultdict(list)
    for index, probe in enumerate(config.probes):
        by_unit[probe.unit].append((index, probe))
    for unit in sorted(by_unit):
        # Mid-unit, so the probe lands inside the unit even with a little clock skew.
        delay = config.start + (unit + 0.5) * config.unit_seconds - time.time()
        if delay > 0:
            await asyncio.sleep(delay)
        await asyncio.gather(
            *(_probe(config, probe, index, tally) for index, probe in by_unit[unit])
        )


async def _probe(config: ServerConfig, probe: Probe, index: int, tally: _Tally) -> None:
    key = protocols.parse_service(probe.service)
    counts = tally.probes[probe.service]
    timeout = min(_READ_TIMEOUT, config.unit_seconds * 0.4)
    local = (config.address, config.probe_sports[index % len(config.probe_sports)])
    port = probe.port or key.port_lo
    try:
        if key.transport == "tcp":
            reply = await sockets.tcp_exchange(
                local, (probe.address, port), protocols.tcp_request(port, probe.address), timeout
            )
        else:
            reply = await sockets.udp_exchange(
                local,
                (probe.address, port),
                b"svcfp probe",
                timeout,
            )
        if reply:
            counts.add(probe.address, len(reply))
        else:
            counts.fail(probe.address)
    except (TimeoutError, OSError):
        counts.fail(probe.address)
