"""Packet I/O: Linux interfaces through AF_PACKET raw sockets, and pcap files in and out.

Each port is a switch port number bound to one place frames come from or go to
(`N@ifname` like BMv2's `-i`, or `N@file.pcap`). Receiving ports run one thread each and hand
frames to `Switch.receive`; `Ports.transmit` sends egressing frames to the port's interface or
pcap writer.
"""

from __future__ import annotations

import logging
import socket
import struct
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from controller.base.checks import is_decimal
from controller.base.errors import InputError, SvcfpError
from controller.base.pcapfile import PcapWriter, read_frames
from refswitch.pipeline import DROP_PORT
from refswitch.switch import Switch

log = logging.getLogger(__name__)

ETH_P_ALL = 0x0003
PACKET_OUTGOING = 4
SOL_PACKET = 263
PACKET_AUXDATA = 8
TP_STATUS_VLAN_VALID = 1 << 4
TP_STATUS_VLAN_TPID_VALID = 1 << 6
ETHERTYPE_VLAN = 0x8100
# struct tpacket_auxdata: status, len, snaplen (u32); mac, net, vlan_tci, vlan_tpid (u16).
_AUXDATA = struct.Struct("=IIIHHHH")
_MAX_FRAME = 65536 + 64
_POLL_SECONDS = 0.2


def parse_binding(text: str, flag: str) -> tuple[int, str]:
    """'N@name' → (N, name), as simple_switch's `-i` takes it."""
    number, sep, name = text.partition("@")
    if not sep or not name or not is_decimal(number):
        raise InputError(f"{flag} {text!r}: expected PORT@NAME, e.g. 0@veth0")
    port = int(number)
    if port >= DROP_PORT:
        raise InputError(f"{flag} {text!r}: port {port} must be below {DROP_PORT} (the drop port)")
    return port, name


class InterfacePort:
    """A switch port on a Linux interface via an AF_PACKET raw socket."""

    def __init__(self, port: int, ifname: str) -> None:
        self.port = port
        self.ifname = ifname
        try:
            self._socket = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(ETH_P_ALL))
            self._socket.bind((ifname, 0))
        except OSError as exc:
            raise InputError(f"cannot open interface {ifname} for port {port}: {exc}") from exc
        # The kernel strips VLAN tags on receive and reports them as auxiliary data; the switch
        # must see the frame as it was on the wire (libpcap, and so BMv2, put the tag back too).
        self._socket.setsockopt(SOL_PACKET, PACKET_AUXDATA, 1)
        self._socket.settimeout(_POLL_SECONDS)
        self.received = 0
        self.sent = 0

    def send(self, frame: bytes) -> None:
        """Transmit one frame; a failure is logged, not raised (the link may be down)."""
        try:
            self._socket.send(frame)
            self.sent += 1
        except OSError as exc:
            log.warning("port %d (%s): send failed: %s", self.port, self.ifname, exc)

    def serve(self, switch: Switch, stop: threading.Event) -> None:
        """Receive until `stop`; frames this host sent out of the interface are skipped."""
        while not stop.is_set():
            try:
                frame, ancillary, _, address = self._socket.recvmsg(
                    _MAX_FRAME, socket.CMSG_SPACE(_AUXDATA.size)
                )
            except TimeoutError:
                continue
            except OSError as exc:
                if stop.is_set():
                    return
                log.error("port %d (%s): receive failed: %s", self.port, self.ifname, exc)
                return
            # Our own transmissions come back as PACKET_OUTGOING; re-ingesting them would loop.
            if address[2] == PACKET_OUTGOING:
                continue
            self.received += 1
            switch.receive(_with_vlan_tag(frame, ancillary), self.port)

    def close(self) -> None:
        """Release the socket."""
        self._socket.close()


def _with_vlan_tag(frame: bytes, ancillary: list[tuple[int, int, bytes]]) -> bytes:
    """`frame` with the VLAN tag the kernel took off (if any) back after the MAC addresses."""
    for level, kind, data in ancillary:
        if level != SOL_PACKET or kind != PACKET_AUXDATA or len(data) < _AUXDATA.size:
            continue
        status, _, _, _, _, tci, tpid = _AUXDATA.unpack_from(data)
        if status & TP_STATUS_VLAN_VALID or tci:
            if not status & TP_STATUS_VLAN_TPID_VALID or not tpid:
                tpid = ETHERTYPE_VLAN
            return frame[:12] + struct.pack("!HH", tpid, tci) + frame[12:]
    return frame


@dataclass
class ReplayResult:
    """What a pcap replay did."""

    port: int
    path: Path
    frames: int = 0
    error: SvcfpError | None = None


class PcapInPort:
    """Replays a pcap into a switch port, as fast as possible or at capture timing."""

    def __init__(self, port: int, path: Path, *, timing: bool = False) -> None:
        self.port = port
        self.path = path
        self.timing = timing
        self.result = ReplayResult(port, path)

    def serve(self, switch: Switch, stop: threading.Event) -> None:
        """Replay every frame (until `stop`); a bad file is recorded in `result.error`."""
        first: float | None = None
        start = time.monotonic()
        try:
            for frame in read_frames(self.path):
                if stop.is_set():
                    return
                if self.timing:
                    if first is None:
                        first = frame.timestamp
                    delay = (frame.timestamp - first) - (time.monotonic() - start)
                    if delay > 0 and stop.wait(delay):
                        return
                switch.receive(frame.data, self.port)
                self.result.frames += 1
        except SvcfpError as exc:
            log.error("replay into port %d stopped: %s", self.port, exc)
            self.result.error = exc
        log.info(
            "replayed %d frames from %s into port %d", self.result.frames, self.path, self.port
        )


class Ports:
    """All of a switch's ports: where frames come from and where egressing frames go."""

    def __init__(self, switch: Switch) -> None:
        self.switch = switch
        self.interfaces: dict[int, InterfacePort] = {}
        self.writers: dict[int, PcapWriter] = {}
        self.replays: list[PcapInPort] = []
        self._write_lock = threading.Lock()
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self._replay_threads: list[threading.Thread] = []
        switch.set_transmit(self.transmit)

    def add_interface(self, port: int, ifname: str) -> None:
        """Bind `port` to a Linux interface."""
        if port in self.interfaces:
            raise InputError(f"port {port} is bound twice")
        self.interfaces[port] = InterfacePort(port, ifname)

    def add_pcap_out(self, port: int, path: Path) -> None:
        """Write what egresses `port` to a pcap file."""
        if port in self.writers:
            raise InputError(f"port {port} has two --pcap-out files")
        self.writers[port] = PcapWriter(path)

    def add_pcap_in(self, port: int, path: Path, *, timing: bool = False) -> None:
        """Replay a pcap into `port` once `start_replays` is called."""
        if not path.is_file():
            raise InputError(f"--pcap-in {port}@{path}: no such file")
        self.replays.append(PcapInPort(port, path, timing=timing))

    def transmit(self, port: int, frame: bytes) -> None:
        """Send a frame out of `port` (to its interface and/or pcap file)."""
        interface = self.interfaces.get(port)
        if interface is not None:
            interface.send(frame)
        writer = self.writers.get(port)
        if writer is not None:
            with self._write_lock:
                writer.write(frame, time.time())

    def start(self) -> None:
        """Start receiving on every interface."""
        self._threads += [
            self._serve(interface.serve, f"port-{interface.port}")
            for interface in self.interfaces.values()
        ]

    def start_replays(self) -> None:
        """Start every pcap replay."""
        self._replay_threads += [
            self._serve(replay.serve, f"replay-{replay.port}") for replay in self.replays
        ]

    def _serve(
        self, serve: Callable[[Switch, threading.Event], None], name: str
    ) -> threading.Thread:
        thread = threading.Thread(
            target=serve, args=(self.switch, self._stop), name=name, daemon=True
        )
        thread.start()
        return thread

    def wait_replays(self, timeout: float | None = None) -> bool:
        """Wait for the replays to finish; True when all have."""
        deadline = None if timeout is None else time.monotonic() + timeout
        for thread in self._replay_threads:
            remaining = None if deadline is None else max(0.0, deadline - time.monotonic())
            thread.join(remaining)
        return not any(t.is_alive() for t in self._replay_threads)

    def close(self) -> None:
        """Stop every thread, close sockets and move pcap outputs into place."""
        self._stop.set()
        for thread in self._threads + self._replay_threads:
            thread.join()
        for interface in self.interfaces.values():
            interface.close()
        with self._write_lock:
            for writer in self.writers.values():
                writer.close()
