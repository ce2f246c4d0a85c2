"""One bounded network exchange each: what emulated hosts do with real sockets under asyncio.

Every function takes a timeout and returns what came back (b"" when nothing did) instead of
raising for a silent peer, so a unit of emulated activity always ends on time.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import struct
from typing import Any

_MAX_REPLY = 4096


async def udp_exchange(
    local: tuple[str, int],
    remote: tuple[str, int],
    payload: bytes,
    timeout: float,
) -> bytes:
    """Send one datagram from `local` to `remote` and wait up to `timeout` for one reply."""
    loop = asyncio.get_running_loop()
    reply: asyncio.Future[bytes] = loop.create_future()

    class _Client(asyncio.DatagramProtocol):
        def datagram_received(self, data: bytes, addr: tuple[str | Any, int]) -> None:
            if not reply.done():
                reply.set_result(data)

    transport, _ = await loop.create_datagram_endpoint(
        _Client, local_addr=local, remote_addr=remote, reuse_port=local[1] != 0
    )
    try:
        transport.sendto(payload)
        return await asyncio.wait_for(reply, timeout)
    except TimeoutError:
        return b""
    finally:
        transport.close()


async def tcp_exchange(
    local: tuple[str, int], remote: tuple[str, int], payload: bytes, timeout: float
) -> bytes:
    """Connect, send `payload`, read one reply, close; b"" if the peer stays silent."""
    reader, writer = await asyncio.wait_for(
        asyncio.open_connection(remote[0], remote[1], local_addr=local), timeout
    )
    try:
        writer.write(payload)
        await asyncio.wait_for(writer.drain(), timeout)
        try:
            return await asyncio.wait_for(reader.read(_MAX_REPLY), timeout)
        except TimeoutError:
            return b""
    finally:
        writer.close()
        with contextlib.suppress(OSError, TimeoutError):
            await asyncio.wait_for(writer.wait_closed(), timeout)


async def multicast_send(
    local: tuple[str, int], group: tuple[str, int], payload: bytes, ttl: int = 255
) -> None:
    """Send one datagram from `local` (address, port or 0) to a multicast group (mDNS, SSDP)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        # Mininet hosts have no default route: name the interface by its address.
        sock.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_IF, socket.inet_aton(local[0]))
        sock.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_TTL, ttl)
        sock.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_LOOP, 0)
        sock.bind(local)
        sock.setblocking(False)
        await asyncio.get_running_loop().sock_sendto(sock, payload, group)


async def icmp_echo(remote: str, ident: int, timeout: float) -> bytes:
    """Send one ICMP echo request (needs root) and wait for the matching reply."""
    loop = asyncio.get_running_loop()
    with socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_ICMP) as sock:
        sock.setblocking(False)
        payload = b"svcfp-" + os.urandom(10)
        header = struct.pack("!BBHHH", 8, 0, 0, ident & 0xFFFF, 1)
        packet = header[:2] + struct.pack("!H", _checksum(header + payload)) + header[4:] + payload
        await loop.sock_sendto(sock, packet, (remote, 0))
        deadline = loop.time() + timeout
        while (left := deadline - loop.time()) > 0:
            try:
                data = await asyncio.wait_for(loop.sock_recv(sock, _MAX_REPLY), left)
            except TimeoutError:
                break
            ihl = (data[0] & 0x0F) * 4
            if len(data) >= ihl + 8 and data[ihl] == 0 and data[ihl + 4 : ihl + 6] == header[4:6]:
                return data[ihl:]
        return b""


async def icmpv6_all_nodes(interface: str, ident: int) -> None:
    """Send one ICMPv6 echo request to all nodes on `interface`'s link (needs root and IPv6)."""
    with socket.socket(socket.AF_INET6, socket.SOCK_RAW, socket.IPPROTO_ICMPV6) as sock:
        sock.setblocking(False)
        # The kernel fills in the ICMPv6 checksum on raw ICMPv6 sockets.
        packet = struct.pack("!BBHHH", 128, 0, 0, ident & 0xFFFF, 1) + b"svcfp"
        scope = socket.if_nametoindex(interface)
        await asyncio.get_running_loop().sock_sendto(sock, packet, ("ff02::1", 0, 0, scope))


async def raw_ip_send(local: str, remote: str, proto: int, payload: bytes) -> None:
    """Send one IPv4 datagram of protocol `proto` (needs root); no reply is expected.

    The IP header is built here (IP_HDRINCL), so any protocol number works, 0 included.
    """
    header = struct.pack(
        "!BBHHHBBH4s4s",
        0x45,
        0,
        20 + len(payload),
        os.getpid() & 0xFFFF,
        0,
        64,
        proto,
        0,
        socket.inet_aton(local),
        socket.inet_aton(remote),
    )
    header = header[:10] + struct.pack("!H", _checksum(header)) + header[12:]
    with socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_RAW) as sock:
        sock.setblocking(False)
        await asyncio.get_running_loop().sock_sendto(sock, header + payload, (remote, 0))


def _checksum(data: bytes) -> int:
    if len(data) % 2:
        data += b"\x00"
    total = sum(struct.unpack(f"!{len(data) // 2}H", data))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return int(~total & 0xFFFF)
