"""MUD documents and MUDgee flows files written for tests: small, with every element known."""

from __future__ import annotations

from pathlib import Path
from typing import Any

FLOWS_HEADER = (
    "srcMac,dstMac,ethType,vlanId,srcIp,dstIp,ipProto,srcPort,dstPort,priority,icmpType,"
    "icmpCode,volumeTransmitted,packetCount"
)


def ace(name: str, matches: dict[str, Any], forwarding: str = "accept") -> dict[str, Any]:
    """One ACE."""
    return {"name": name, "matches": matches, "actions": {"forwarding": forwarding}}


def port(number: int) -> dict[str, Any]:
    """An `eq` port match."""
    return {"operator": "eq", "port": number}


def document(
    from_aces: list[dict[str, Any]],
    to_aces: list[dict[str, Any]],
    model: str | None = "cam-1",
    acls_key: str = "ietf-access-control-list:acls",
) -> dict[str, Any]:
    """A MUD document with one from-device and one to-device IPv4 ACL."""
    mud: dict[str, Any] = {
        "mud-version": 1,
        "mud-url": "https://cam.example.com/cam-1.json",
        "last-update": "2024-01-02T03:04:05+00:00",
        "cache-validity": 48,
        "is-supported": True,
        "systeminfo": "An example camera",
        "from-device-policy": {"access-lists": {"access-list": [{"name": "from-cam"}]}},
        "to-device-policy": {"access-lists": {"access-list": [{"name": "to-cam"}]}},
    }
    if model is not None:
        mud["model-name"] = model
    return {
        "ietf-mud:mud": mud,
        acls_key: {
            "acl": [
                {"name": "from-cam", "type": "ipv4-acl-type", "aces": {"ace": from_aces}},
                {"name": "to-cam", "type": "ipv4-acl-type", "aces": {"ace": to_aces}},
            ]
        },
    }


def camera() -> dict[str, Any]:
    """A camera that connects to tcp/443 at a DNS name, queries DNS through the MUD controller
    class, serves udp/123 on the local network, and pings anywhere."""
    return document(
        [
            ace(
                "cl0-frdev",
                {
                    "ipv4": {"protocol": 6, "ietf-acldns:dst-dnsname": "cloud.example.com"},
                    "tcp": {
                        "destination-port": port(443),
                        "ietf-mud:direction-initiated": "from-device",
                    },
                },
            ),
            ace(
                "dns-frdev",
                {
                    "ietf-mud:mud": {"controller": "urn:ietf:params:mud:dns"},
                    "ipv4": {"protocol": 17},
                    "udp": {"destination-port": port(53)},
                },
            ),
            ace(
                "ntp-frdev",
                {
                    "ietf-mud:mud": {"local-networks": [None]},
                    "ipv4": {"protocol": 17},
                    "udp": {"source-port": port(123)},
                },
            ),
            ace("ping-frdev", {"ipv4": {"protocol": 1}, "icmp": {"type": 8, "code": 0}}),
        ],
        [
            ace(
                "cl0-todev",
                {
                    "ipv4": {"protocol": 6, "ietf-acldns:src-dnsname": "cloud.example.com"},
                    "tcp": {
                        "source-port": port(443),
                        "ietf-mud:direction-initiated": "from-device",
                    },
                },
            ),
            ace(
                "dns-todev",
                {
                    "ietf-mud:mud": {"controller": "urn:ietf:params:mud:dns"},
                    "ipv4": {"protocol": 17},
                    "udp": {"source-port": port(53)},
                },
            ),
            ace(
                "ntp-todev",
                {
                    "ietf-mud:mud": {"local-networks": [None]},
                    "ipv4": {"protocol": 17, "source-ipv4-network": "192.168.1.0/24"},
                    "udp": {"destination-port": port(123)},
                },
            ),
        ],
    )


def write_flows(path: Path, rows: list[str]) -> Path:
    """A MUDgee flows file with `rows` under its header."""
    path.write_text("\n".join([FLOWS_HEADER, *rows]) + "\n", encoding="utf-8")
    return path
