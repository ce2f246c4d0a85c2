"""A test's own network namespace seen from the test process: sockets opened inside it, frames
injected and captured on its veths, and a loopback TCP port forwarded into it.

`setns(2)` moves only the calling thread, so each socket is created by a short-lived thread that
enters the namespace, opens the socket and ends; the socket stays in that namespace for good.
Nothing here creates or deletes namespaces: `ptf_tests.runner.namespace` does (by name).
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import select
import socket
import threading
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

_CLONE_NEWNET = 0x40000000
_ETH_P_ALL = 0x0003
_PACKET_OUTGOING = 4
_T = TypeVar("_T")


def in_netns(name: str, make: Callable[[], _T]) -> _T:
    """`make()` run by a thread inside network namespace `name`; its result."""
    result: list[_T] = []
    failure: list[BaseException] = []

    def enter_and_make() -> None:
        libc = ctypes.CDLL(None, use_errno=True)
        fd = os.open(Path("/run/netns") / name, os.O_RDONLY)
        try:
            if libc.setns(fd, _CLONE_NEWNET) != 0:
                error = ctypes.get_errno()
                raise OSError(error, f"setns into {name}: {os.strerror(error)}")
            result.append(make())
        except BaseException as exc:
            failure.append(exc)
        finally:
            os.close(fd)

    thread = threading.Thread(target=enter_and_make, name=f"netns-{name}")
    thread.start()
    thread.join()
    if failure:
        raise failure[0]
    return result[0]


def raw_socket(netns: str, interface: str) -> socket.socket:
    """An AF_PACKET socket bound to `interface` inside `netns`, receiving every frame."""

    def make() -> socket.socket:
        sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(_ETH_P_ALL))
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
        sock.bind((interface, 0))
        return sock

    return in_netns(netns, make)


def connect(netns: str, port: int, timeout: float = 1.0) -> socket.socket:
    """A TCP connection to 127.0.0.1:`port` inside `netns`."""
    return in_netns(netns, lambda: socket.create_connection(("127.0.0.1", port), timeout))


class Capture:
    """Frames arriving on veths inside a namespace (never the ones sent from there), as
    (port, frame) in arrival order, read by one thread until `close()`."""

    def __init__(self, sockets: dict[int, socket.socket]) -> None:
        self._sockets = sockets
        self._frames: list[tuple[int, bytes]] = []
        self._lock = threading.Lock()
        self._wake_read, self._wake_write = os.pipe()
        self._thread = threading.Thread(target=self._read, name="capture", daemon=True)
        self._thread.start()

    def frames(self) -> list[tuple[int, bytes]]:
        """Every frame captured so far."""
        with self._lock:
            return list(self._frames)

    def _read(self) -> None:
        by_fd = {sock.fileno(): (port, sock) for port, sock in self._sockets.items()}
        while True:
            ready, _, _ = select.select([*by_fd, self._wake_read], [], [])
            if self._wake_read in ready:
                return
            for fd in ready:
                port, sock = by_fd[fd]
                data, address = sock.recvfrom(1 << 16)
                if address[2] != _PACKET_OUTGOING:
                    with self._lock:
                        self._frames.append((port, data))

    def close(self) -> None:
        """Stop reading (the sockets are the caller's)."""
        os.write(self._wake_write, b"x")
        self._thread.join(timeout=5)
        os.close(self._wake_read)
        os.close(self._wake_write)


class Forwarder:
    """127.0.0.1:<ephemeral> in this process's namespace, forwarded to 127.0.0.1:`port` inside
    `netns`: how a client in the test process reaches a switch that lives in the namespace.

    A connection that cannot be made inside (the switch is down) is closed at once, as a
    refused connection would be."""

    def __init__(self, netns: str, port: int) -> None:
        self.netns = netns
        self.target_port = port
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port = int(self._listener.getsockname()[1])
        self._closing = threading.Event()
        self._open: set[socket.socket] = set()
        self._lock = threading.Lock()
        self._accepting = threading.Thread(target=self._accept, name="forwarder", daemon=True)
        self._accepting.start()

    @property
    def address(self) -> str:
        """Where clients connect."""
        return f"127.0.0.1:{self.port}"

    def _accept(self) -> None:
        while not self._closing.is_set():
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            try:
                upstream = connect(self.netns, self.target_port)
            except OSError:
                client.close()
                continue
            upstream.settimeout(None)
            with self._lock:
                self._open.update((client, upstream))
            for source, sink in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pump, args=(source, sink), daemon=True).start()

    def _pump(self, source: socket.socket, sink: socket.socket) -> None:
        try:
            while data := source.recv(1 << 16):
                sink.sendall(data)
        except OSError:
            pass
        finally:
            for sock in (source, sink):
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)

    def drop_connections(self) -> None:
        """Close every forwarded connection (both ends), as a switch that died would."""
        with self._lock:
            open_now, self._open = self._open, set()
        for sock in open_now:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
            sock.close()

    def close(self) -> None:
        """Stop listening and close every forwarded connection."""
        self._closing.set()
        with contextlib.suppress(OSError):
            self._listener.shutdown(socket.SHUT_RDWR)
        self._listener.close()
        self._accepting.join(timeout=5)
        self.drop_connections()
