"""`svcfp switch`: run the reference switch, with flags modelled on simple_switch_grpc.

    svcfp switch --grpc-addr 127.0.0.1:9559 --device-id 0 -i 0@veth0 -i 1@veth2 \\
        --log-file logs/s1.log

Pcap replays: `--pcap-in 0@trace.pcap` feeds a port from a file (as fast as possible, or at capture
timing with `--pcap-timing`), `--pcap-out 1@out.pcap` records what leaves a port. A controller can
program the switch and read its counters over gRPC while a replay runs; `--replay-start pipeline`
holds the replay until a pipeline is committed, `--replay-start signal` until SIGUSR1 (sent by the
controller once its tables are written). `--counters-out FILE.json` writes the final counters when
the replay is done, and `--exit-when-done` then stops the switch.

Serving: `--tls-cert`/`--tls-key` serve P4Runtime over TLS, `--tls-ca` then also requires client
certificates signed by that CA. A client (a host) holds at most `--max-streams-per-client`
StreamChannels and all clients at most `--max-streams`; Read, Write, Capabilities and the
pipeline RPCs keep `--unary-workers` threads of their own, so idle streams cannot starve them.
Requests above `--max-request-mib` are refused by gRPC with RESOURCE_EXHAUSTED.
"""

from __future__ import annotations

import argparse
import json
import logging
import signal
import threading
from collections.abc import Sequence
from pathlib import Path

from finsy.proto import p4r

from controller.base.checks import PORT_LIMIT, check_device_id, check_grpc_addr, check_port
from controller.base.command import LOG_FORMAT, LOG_LEVELS, run_command
from controller.base.errors import InputError
from controller.base.fileio import check_outputs, writable_folder, write_text_atomically
from controller.base.p4info import P4Schema
from refswitch.limits import ServerLimits
from refswitch.ports import Ports, parse_binding
from refswitch.server import P4RuntimeServer
from refswitch.status import P4RuntimeError
from refswitch.switch import Switch
from refswitch.tls import server_tls

log = logging.getLogger(__name__)


def main(argv: Sequence[str] | None = None) -> int:
    """`python -m refswitch`: the switch on its own, loading nothing but the switch."""
    parser = argparse.ArgumentParser(
        prog="python -m refswitch",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--log-level", default="INFO", choices=LOG_LEVELS, help="logging threshold (default: INFO)"
    )
    add_arguments(parser)
    args = parser.parse_args(argv)
    return run_command("svcfp switch", lambda: run(args), args.log_level)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The switch's flags (also used by `python -m refswitch`)."""
    parser.add_argument(
        "--grpc-addr",
        "--grpc-server-addr",
        dest="grpc_addr",
        default="127.0.0.1:9559",
        help="P4Runtime server address (default: 127.0.0.1:9559)",
    )
    parser.add_argument("--device-id", type=int, default=0, help="P4Runtime device id (default 0)")
    defaults = ServerLimits()
    parser.add_argument(
        "--max-streams",
        type=int,
        default=defaults.max_streams,
        help=f"StreamChannels open at once, all clients together (default {defaults.max_streams})",
    )
    parser.add_argument(
        "--max-streams-per-client",
        type=int,
        default=defaults.max_streams_per_client,
        help="StreamChannels open at once from one client host "
        f"(default {defaults.max_streams_per_client})",
    )
    parser.add_argument(
        "--unary-workers",
        type=int,
        default=defaults.unary_workers,
        help="threads kept for Read, Write, Capabilities and the pipeline RPCs "
        f"(default {defaults.unary_workers})",
    )
    parser.add_argument(
        "--max-request-mib",
        type=int,
        default=defaults.max_request_mib,
        help="largest request accepted, in MiB; larger ones get RESOURCE_EXHAUSTED "
        f"(default {defaults.max_request_mib})",
    )
    parser.add_argument("--tls-cert", type=Path, help="serve TLS with this certificate (PEM)")
    parser.add_argument("--tls-key", type=Path, help="the private key of --tls-cert (PEM)")
    parser.add_argument(
        "--tls-ca",
        type=Path,
        help="require client certificates signed by this CA (PEM; needs --tls-cert/--tls-key)",
    )
    parser.add_argument(
        "-i",
        "--interface",
        action="append",
        default=[],
        metavar="N@IFNAME",
        help="bind switch port N to a Linux interface (repeatable; needs root)",
    )
    parser.add_argument(
        "--pcap-in",
        action="append",
        default=[],
        metavar="N@FILE",
        help="replay a pcap file into port N (repeatable)",
    )
    parser.add_argument(
        "--pcap-out",
        action="append",
        default=[],
        metavar="N@FILE",
        help="write what egresses port N to a pcap file (repeatable)",
    )
    parser.add_argument(
        "--pcap-timing",
        action="store_true",
        help="replay at capture timing instead of as fast as possible",
    )
    parser.add_argument(
        "--replay-start",
        choices=["now", "pipeline", "signal"],
        default="now",
        help="start replays at once, once a pipeline is committed, or on SIGUSR1 (default: now)",
    )
    parser.add_argument(
        "--digest-repeat-us",
        type=int,
        help="model another DIGEST_REPEAT_US than the one the pushed P4Info carries "
        "(default: the P4Info's, from @svcfp_contract)",
    )
    parser.add_argument(
        "--cpu-port",
        type=int,
        help=f"port whose frames become PacketIn messages (0..{PORT_LIMIT - 1})",
    )
    parser.add_argument("--log-file", type=Path, help="this switch's log file")
    parser.add_argument("--p4info", type=Path, help="preload a pipeline from this P4Info")
    parser.add_argument(
        "--bmv2-json", type=Path, help="device config stored with a preloaded pipeline (optional)"
    )
    parser.add_argument(
        "--counters-out",
        type=Path,
        help="after the replays, write the service_hits counter (non-zero cells) to this JSON",
    )
    parser.add_argument(
        "--exit-when-done", action="store_true", help="stop once every replay has finished"
    )


def run(args: argparse.Namespace) -> int:
    """Run the switch until SIGTERM/SIGINT (or the end of the replays with --exit-when-done)."""
    if args.exit_when_done and not args.pcap_in:
        raise InputError("--exit-when-done needs at least one --pcap-in")
    check_grpc_addr(args.grpc_addr, listen=True)
    check_device_id(args.device_id)
    if args.cpu_port is not None:
        check_port("--cpu-port", args.cpu_port)
    limits = ServerLimits(
        max_streams=args.max_streams,
        max_streams_per_client=args.max_streams_per_client,
        unary_workers=args.unary_workers,
        max_request_mib=args.max_request_mib,
    )
    tls = server_tls(args.tls_cert, args.tls_key, args.tls_ca)
    pcap_out = [parse_binding(text, "--pcap-out") for text in args.pcap_out]
    pcap_in = [parse_binding(text, "--pcap-in") for text in args.pcap_in]
    # What the switch writes never replaces what it reads, nor another of its outputs. The log
    # file's folder is made if missing, as logging to it always did.
    if args.log_file:
        writable_folder(Path(args.log_file).parent, "--log-file")
    outputs: dict[str, Path | None] = {
        "--log-file": args.log_file,
        "--counters-out": args.counters_out,
    }
    outputs.update({f"--pcap-out (port {port})": Path(name) for port, name in pcap_out})
    read = [Path(name) for _port, name in pcap_in]
    read += [Path(p) for p in (args.p4info, args.bmv2_json) if p]
    check_outputs(outputs, read)
    _plain_loggers()
    if args.log_file:
        _log_to(args.log_file)
    if args.digest_repeat_us is not None and args.digest_repeat_us < 0:
        raise InputError("--digest-repeat-us must not be negative")
    switch = Switch(args.device_id, cpu_port=args.cpu_port, digest_repeat_us=args.digest_repeat_us)
    stop = threading.Event()
    start_replay = threading.Event()
    ports = Ports(switch)
    server: P4RuntimeServer | None = None
    previous: dict[signal.Signals, signal._HANDLER] = {}
    try:
        for text in args.interface:
            ports.add_interface(*parse_binding(text, "-i"))
        for port, name in pcap_out:
            ports.add_pcap_out(port, Path(name))
        for port, name in pcap_in:
            ports.add_pcap_in(port, Path(name), timing=args.pcap_timing)
        if args.p4info:
            _preload(switch, args.p4info, args.bmv2_json)
        try:
            server = P4RuntimeServer(switch, args.grpc_addr, limits, tls).start()
        except (OSError, RuntimeError) as exc:
            raise InputError(f"--grpc-addr {args.grpc_addr}: cannot listen: {exc}") from exc

        def on_stop(signum: int, frame: object) -> None:
            log.info("signal %d: shutting down", signum)
            stop.set()

        for signum, handler in (
            (signal.SIGTERM, on_stop),
            (signal.SIGINT, on_stop),
            (signal.SIGUSR1, lambda signum, frame: start_replay.set()),
        ):
            previous[signum] = signal.signal(signum, handler)
        ports.start()
        print(
            f"svcfp switch: device {args.device_id} serving P4Runtime on {server.address}",
            flush=True,
        )
        return _serve(args, switch, ports, stop, start_replay)
    finally:
        for restored, saved in previous.items():
            signal.signal(restored, saved)
        if server is not None:
            server.stop()
        ports.close()
        switch.close()


def _serve(
    args: argparse.Namespace,
    switch: Switch,
    ports: Ports,
    stop: threading.Event,
    start_replay: threading.Event,
) -> int:
    if ports.replays:
        while not stop.is_set():
            ready = {
                "now": True,
                "pipeline": switch.program is not None,
                "signal": start_replay.is_set(),
            }[args.replay_start]
            if ready:
                break
            stop.wait(0.05)
        if stop.is_set():
            return 0
        ports.start_replays()
        while not ports.wait_replays(timeout=0.1):
            if stop.is_set():
                return 0
        if args.counters_out:
            write_counters(switch, args.counters_out)
        errors = [r.result.error for r in ports.replays if r.result.error is not None]
        if args.exit_when_done:
            if errors:
                raise errors[0]
            return 0
        for error in errors:
            log.error("%s", error)
    # Never an untimed wait: a signal the kernel hands to one of gRPC's threads (as it may after
    # a SIGSTOP and SIGCONT) runs its handler only once the main thread wakes up.
    while not stop.wait(0.2):
        pass
    return 0


def _preload(switch: Switch, p4info: Path, device_config: Path | None) -> None:
    schema = P4Schema.load(p4info)
    config = p4r.ForwardingPipelineConfig()
    config.p4info.CopyFrom(schema.p4info)
    if device_config is not None:
        try:
            config.p4_device_config = device_config.read_bytes()
        except OSError as exc:
            raise InputError(f"cannot read {device_config}: {exc.strerror}") from exc
    try:
        switch.set_pipeline(p4r.SetForwardingPipelineConfigRequest.VERIFY_AND_COMMIT, config)
    except P4RuntimeError as exc:
        raise InputError(f"{p4info}: {exc.message}") from None


def write_counters(switch: Switch, path: Path) -> None:
    """The non-zero cells of service_hits as JSON, written atomically."""
    program = switch.program
    if program is None:
        raise InputError(f"--counters-out {path}: no pipeline was loaded, nothing was counted")
    packets, byte_counts = switch.read_counters()
    cells = [
        {
            "index": int(index),
            "device_id": int(index) // program.max_services,
            "service_id": int(index) % program.max_services,
            "packets": int(packets[index]),
            "bytes": int(byte_counts[index]),
        }
        for index in packets.nonzero()[0]
    ]
    document = {
        "counter": program.service_hits.name,
        "max_devices": program.max_devices,
        "max_services": program.max_services,
        "cells": cells,
    }
    try:
        write_text_atomically(path, json.dumps(document, indent=1) + "\n")
    except OSError as exc:
        raise InputError(f"cannot write {path}: {exc.strerror}") from exc
    log.info("wrote %d non-zero counter cells to %s", len(cells), path)


def _plain_loggers() -> None:
    """Make the switch's loggers plain children of the root logger again.

    Importing Mininet (mininet.log) replaces the logger class for the whole process, so every
    logger created afterwards gets its own level and stderr handler; whether that happened to
    refswitch's loggers depends on import order, and the switch's log must not.
    """
    for name, logger in list(logging.Logger.manager.loggerDict.items()):
        if (name == "refswitch" or name.startswith("refswitch.")) and isinstance(
            logger, logging.Logger
        ):
            logger.setLevel(logging.NOTSET)
            for handler in list(logger.handlers):
                logger.removeHandler(handler)
            logger.propagate = True


def _log_to(path: Path) -> None:
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        handler = logging.FileHandler(path)
    except OSError as exc:
        raise InputError(f"--log-file {path}: {exc.strerror}") from exc
    handler.setFormatter(logging.Formatter(LOG_FORMAT))
    logging.getLogger().addHandler(handler)
