"""Protocol-shaped payloads for emulated devices and service hosts.

The switch counts services by protocol and port only, but the emulated traffic still looks like
what real IoT devices send (DNS queries, NTP client requests, TLS ClientHello records, HTTP
requests, MQTT CONNECT), so captures of a testbed run read sensibly in any packet analyser.
"""

from __future__ import annotations

import os
import struct
from dataclasses import dataclass

from controller.engine import services

MDNS_GROUP = "224.0.0.251"
SSDP_GROUP = "239.255.255.250"
MULTICAST_SERVICES = {"udp/5353": (MDNS_GROUP, 5353), "udp/1900": (SSDP_GROUP, 1900)}
# ICMPv6 is played as an echo request to all nodes on the link (ff02::1): it needs no peer.
ALL_NODES = "ff02::1"
LINK_LOCAL_SERVICES = frozenset({"icmpv6"})

_NTP_CLIENT = 0x1B  # LI 0, version 3, mode 3 (client)
_NTP_SERVER = 0x1C  # LI 0, version 3, mode 4 (server)
_TLS_PORTS = frozenset({443, 8443, 8883, 5223})
_HTTP_PORTS = frozenset({80, 8080, 8008})
_MQTT_PORTS = frozenset({1883})


@dataclass(frozen=True)
class ServiceKey:
    """A service name parsed into IP protocol and port range (ports 0 for port-less protocols)."""

    name: str
    proto: int | None
    port_lo: int
    port_hi: int

    @property
    def transport(self) -> str | None:
        """'tcp' or 'udp' for port services, else None."""
        return {6: "tcp", 17: "udp"}.get(self.proto or -1)


def parse_service(name: str) -> ServiceKey:
    """Parse `tcp/443`, `udp/49152-65535`, `icmp`, `icmpv6`, `ip/<proto>` or `other`."""
    if name == "other":
        return ServiceKey(name, None, 0, 0)
    proto, lo, hi = services.parse_service(name)
    return ServiceKey(name, proto, lo, hi)


def dns_query(name: str, query_id: int) -> bytes:
    """A standard recursive DNS query for the A record of `name`."""
    header = struct.pack("!HHHHHH", query_id & 0xFFFF, 0x0100, 1, 0, 0, 0)
    return header + _dns_name(name) + struct.pack("!HH", 1, 1)


def dns_response(query: bytes, address: str) -> bytes:
    """Answer a DNS query with one A record for `address`; garbage gets a FORMERR header."""
    if len(query) < 12:
        return struct.pack("!HHHHHH", 0, 0x8001, 0, 0, 0, 0)
    query_id = struct.unpack("!H", query[:2])[0]
    question = query[12:]
    header = struct.pack("!HHHHHH", query_id, 0x8180, 1, 1, 0, 0)
    # Answer name is a pointer to the question's name at offset 12.
    answer = struct.pack("!HHHIH", 0xC00C, 1, 1, 60, 4) + bytes(
        int(part) for part in address.split(".")
    )
    return header + question + answer


def ntp_request(transmit_seconds: float) -> bytes:
    """A 48-byte NTP v3 client request carrying its transmit timestamp."""
    return struct.pack("!B47x", _NTP_CLIENT)[:40] + _ntp_timestamp(transmit_seconds)


def ntp_response(request: bytes, now_seconds: float) -> bytes:
    """An NTP server reply (stratum 2) that echoes the client's transmit time as origin."""
    origin = request[40:48] if len(request) >= 48 else bytes(8)
    stamp = _ntp_timestamp(now_seconds)
    return (
        struct.pack("!BBbb", _NTP_SERVER, 2, 6, -20)
        + bytes(8)  # root delay, root dispersion
        + b"SVCF"  # reference id
        + stamp
        + origin
        + stamp
        + stamp
    )


def mdns_query(service: str = "_services._dns-sd._udp.local") -> bytes:
    """An mDNS PTR query as devices send when they browse the local network."""
    return struct.pack("!HHHHHH", 0, 0, 1, 0, 0, 0) + _dns_name(service) + struct.pack("!HH", 12, 1)


def ssdp_search() -> bytes:
    """An SSDP M-SEARCH for all devices."""
    return (
        b'M-SEARCH * HTTP/1.1\r\nHOST: 239.255.255.250:1900\r\nMAN: "ssdp:discover"\r\n'
        b"MX: 1\r\nST: ssdp:all\r\n\r\n"
    )


def tcp_request(port: int, host: str) -> bytes:
    """What a device sends first on a TCP connection to `port`."""
    if port in _TLS_PORTS:
        return tls_client_hello(host)
    if port in _MQTT_PORTS:
        return mqtt_connect(f"svcfp-{host}")
    if port in _HTTP_PORTS:
        return f"GET /status HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n".encode()
    return b"svcfp hello\n"


def tcp_response(port: int, request: bytes) -> bytes:
    """What a server answers on a TCP connection to `port`."""
    if port in _TLS_PORTS:
        # A TLS 1.2 handshake record header with a ServerHello-sized random body.
        body = b"\x02" + struct.pack("!I", 70)[1:] + b"\x03\x03" + os.urandom(66)
        return b"\x16\x03\x03" + struct.pack("!H", len(body)) + body
    if port in _MQTT_PORTS:
        return b"\x20\x02\x00\x00"  # CONNACK, accepted
    if port in _HTTP_PORTS:
        body = b'{"status":"ok"}'
        return (
            b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: "
            + str(len(body)).encode()
            + b"\r\nConnection: close\r\n\r\n"
            + body
        )
    return request


def udp_response(port: int, request: bytes, own_address: str, now_seconds: float) -> bytes:
    """What a server answers to a datagram on `port`: DNS, NTP, or an echo."""
    if port == 53:
        return dns_response(request, own_address)
    if port == 123:
        return ntp_response(request, now_seconds)
    return request


def tls_client_hello(server_name: str) -> bytes:
    """A TLS 1.2 ClientHello record with an SNI extension (no real handshake follows)."""
    name = server_name.encode()
    sni = struct.pack("!HHHBH", 0, len(name) + 5, len(name) + 3, 0, len(name)) + name
    ciphers = struct.pack("!HHHH", 6, 0xC02F, 0xC030, 0x009C)
    body = (
        b"\x03\x03"
        + os.urandom(32)
        + b"\x00"
        + ciphers
        + b"\x01\x00"
        + struct.pack("!H", len(sni))
        + sni
    )
    handshake = b"\x01" + struct.pack("!I", len(body))[1:] + body
    return b"\x16\x03\x01" + struct.pack("!H", len(handshake)) + handshake


def mqtt_connect(client_id: str) -> bytes:
    """An MQTT 3.1.1 CONNECT packet with a clean session and a 60 s keep-alive."""
    ident = client_id.encode()
    variable = b"\x00\x04MQTT\x04\x02\x00\x3c"
    payload = struct.pack("!H", len(ident)) + ident
    remaining = len(variable) + len(payload)
    return b"\x10" + bytes([remaining]) + variable + payload


def _dns_name(name: str) -> bytes:
    encoded = b""
    for label in name.strip(".").split("."):
        raw = label.encode()
        encoded += bytes([len(raw)]) + raw
    return encoded + b"\x00"


def _ntp_timestamp(seconds: float) -> bytes:
    # NTP counts from 1900; Unix time from 1970.
    ntp = seconds + 2_208_988_800
    whole = int(ntp)
    return struct.pack("!II", whole & 0xFFFFFFFF, int((ntp - whole) * 2**32) & 0xFFFFFFFF)
