from __future__ import annotations

import asyncio
import json
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import dpkt
import pytest

from topology import protocols, servers
from topology.devices import Activity, DevicePlan, run_device

SERVER = "127.0.0.2"
DEVICE = "127.0.0.3"


def test_parse_service_names() -> None:
    assert protocols.parse_service("tcp/443") == protocols.ServiceKey("tcp/443", 6, 443, 443)
    key = protocols.ServiceKey
    assert protocols.parse_service("udp/49152-65535") == key("udp/49152-65535", 17, 49152, 65535)
    assert protocols.parse_service("icmp") == key("icmp", 1, 0, 0)
    assert protocols.parse_service("icmpv6") == key("icmpv6", 58, 0, 0)
    assert protocols.parse_service("ip/47") == key("ip/47", 47, 0, 0)
    assert protocols.parse_service("other") == key("other", None, 0, 0)
    assert [protocols.parse_service(s).transport for s in ("tcp/1", "udp/1", "icmp", "ip/47")] == [
        "tcp", "udp", None, None
    ]  # fmt: skip
    for bad in ("tcp/", "tcp/70000", "udp/9-3", "sctp/5", "ip/300"):
        with pytest.raises(ValueError, match="not a service name"):
            protocols.parse_service(bad)


def test_dns_reply_answers_the_query_with_an_a_record() -> None:
    query = dpkt.dns.DNS(protocols.dns_query("cam.cloud.svcfp.test", 0x1234))
    assert (query.id, query.qd[0].name, query.qd[0].type) == (0x1234, "cam.cloud.svcfp.test", 1)
    reply = dpkt.dns.DNS(protocols.dns_response(bytes(query), "10.0.0.3"))
    assert reply.id == 0x1234
    assert reply.qr == dpkt.dns.DNS_R
    assert [(rr.name, rr.ip) for rr in reply.an] == [("cam.cloud.svcfp.test", bytes([10, 0, 0, 3]))]


def test_ntp_reply_is_a_server_reply_echoing_the_origin() -> None:
    request = protocols.ntp_request(1_700_000_000.25)
    assert len(request) == 48
    assert dpkt.ntp.NTP(request).mode == dpkt.ntp.CLIENT
    reply = dpkt.ntp.NTP(protocols.ntp_response(request, 1_700_000_001.0))
    assert (reply.mode, reply.stratum) == (dpkt.ntp.SERVER, 2)
    assert reply.originate_time == dpkt.ntp.NTP(request).transmit_time


def test_tls_and_mqtt_payloads_are_well_formed() -> None:
    record = dpkt.ssl.TLSRecord(protocols.tls_client_hello("cloud.svcfp.test"))
    assert record.type == 22
    hello = dpkt.ssl.TLSHandshake(record.data)
    assert isinstance(hello.data, dpkt.ssl.TLSClientHello)
    connect = protocols.mqtt_connect("svcfp-d1")
    assert connect[0] == 0x10 and connect[1] == len(connect) - 2
    assert connect[4:8] == b"MQTT"


def test_device_and_service_host_exchange_exactly_the_planned_traffic(tmp_path: Path) -> None:
    unit = 0.4
    start = time.time() + 0.3
    server_config = servers.ServerConfig(
        host="cloud",
        address=SERVER,
        services=("tcp/8080", "tcp/8883", "udp/10053"),
        duration=start - time.time() + 3 * unit + 1.5,
        stats_path=str(tmp_path / "cloud.json"),
        start=start,
        unit_seconds=unit,
        probes=(servers.Probe(1, DEVICE, "tcp/10000"), servers.Probe(2, DEVICE, "udp/10001")),
        probe_sports=(40123,),
    )
    plan = DevicePlan(
        name="d1",
        address=DEVICE,
        unit_seconds=unit,
        start=start,
        units=(
            (Activity("tcp/8080"), Activity("udp/10053", 2)),
            (Activity("tcp/8883"),),
            (Activity("udp/10053"),),
        ),
        targets={"tcp/8080": SERVER, "tcp/8883": SERVER, "udp/10053": SERVER},
        stats_path=str(tmp_path / "d1.json"),
        serve=("tcp/10000", "udp/10001"),
        grace=0.8,
    )

    async def both() -> tuple[dict[str, object], dict[str, object]]:
        server = asyncio.ensure_future(servers.serve(server_config))
        await asyncio.sleep(0.1)
        device = await run_device(plan)
        return device, await server

    device, server = asyncio.run(asyncio.wait_for(both(), 10))
    assert json.loads((tmp_path / "d1.json").read_text()) == device
    assert device["units_played"] == 3 and device["late_units"] == 0
    sent = {name: (c["ok"], c["failed"]) for name, c in device["sent"].items()}  # type: ignore[attr-defined]
    assert sent == {"tcp/8080": (1, 0), "tcp/8883": (1, 0), "udp/10053": (3, 0)}
    received = {name: c["ok"] for name, c in server["received"].items()}  # type: ignore[attr-defined]
    assert received == {"tcp/8080": 1, "tcp/8883": 1, "udp/10053": 3}
    for counts in server["received"].values():  # type: ignore[attr-defined]
        assert counts["peers"] == [DEVICE]
    probes = {name: (c["ok"], c["failed"]) for name, c in server["probes"].items()}  # type: ignore[attr-defined]
    assert probes == {"tcp/10000": (1, 0), "udp/10001": (1, 0)}
    served = {name: (c["ok"], c["peers"]) for name, c in device["served"].items()}  # type: ignore[attr-defined]
    assert served == {"tcp/10000": (1, [SERVER]), "udp/10001": (1, [SERVER])}


def test_unanswered_service_is_counted_as_failed(tmp_path: Path) -> None:
    plan = DevicePlan(
        name="d1",
        address=DEVICE,
        unit_seconds=0.3,
        start=time.time() + 0.1,
        units=((Activity("tcp/8081"),),),
        targets={"tcp/8081": SERVER},
        stats_path=str(tmp_path / "d1.json"),
        grace=0.1,
    )
    report = asyncio.run(asyncio.wait_for(run_device(plan), 5))
    assert report["sent"] == {"tcp/8081": {"ok": 0, "failed": 1, "bytes": 0, "peers": [SERVER]}}


def test_plan_round_trips_through_json() -> None:
    plan = DevicePlan(
        name="d1",
        address=DEVICE,
        unit_seconds=1.0,
        start=5.0,
        units=((Activity("udp/53", 2),), ()),
        targets={"udp/53": SERVER},
        stats_path="x.json",
        serve=("tcp/80",),
    )
    assert DevicePlan.from_json(json.loads(json.dumps(plan.to_json()))) == plan
    assert plan.services() == ["udp/53"]
    assert plan.end == 5.0 + 2 * 1.0 + 1.0


def test_a_host_process_stops_on_sigterm_and_still_reports(tmp_path: Path) -> None:
    with socket.socket() as probe:
        probe.bind((SERVER, 0))
        port = probe.getsockname()[1]
    config = servers.ServerConfig(
        host="cloud",
        address=SERVER,
        services=(f"tcp/{port}",),
        duration=60.0,
        stats_path=str(tmp_path / "cloud.json"),
    )
    path = tmp_path / "cloud.config.json"
    path.write_text(json.dumps(config.to_json()))
    process = subprocess.Popen([sys.executable, "-m", "topology.entry", "servers", str(path)])
    try:
        deadline = time.monotonic() + 10
        while True:
            try:
                client = socket.create_connection((SERVER, port), timeout=1)
                break
            except ConnectionRefusedError:
                assert time.monotonic() < deadline and process.poll() is None
                time.sleep(0.05)
        with client:
            client.sendall(b"hello")
            assert client.recv(100) == b"hello"
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=10) == 0
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    report = json.loads((tmp_path / "cloud.json").read_text())
    assert report["received"] == {
        f"tcp/{port}": {"ok": 1, "failed": 0, "bytes": 5, "peers": ["127.0.0.1"]}
    }
