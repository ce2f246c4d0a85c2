"""`svcfp demo`: emulated IoT devices identified live by the services they use."""

from __future__ import annotations

import argparse
from pathlib import Path

import p4src
from controller.base.errors import InputError
from controller.base.fileio import writable_folder
from controller.base.logformat import logging_to
from controller.web.settings import DEFAULT_LISTEN, WebSettings
from topology import demo
from topology import graph as topo
from topology.launch import SWITCH_KINDS
from topology.scenario import BehaviourChange, DemoConfig, check_sizes


def _names(text: str) -> tuple[str, ...]:
    return tuple(name.strip() for name in text.split(",") if name.strip())


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add `svcfp demo`."""
    parser = subparsers.add_parser(
        "demo",
        help="emulated IoT devices identified live by their services",
        description=demo.__doc__,
    )
    parser.add_argument("--switch", choices=SWITCH_KINDS, default="refswitch", help="P4 switch")
    parser.add_argument("--out", type=Path, default=Path("logs/demo"), help="report folder")
    parser.add_argument("--logs", type=Path, default=Path("logs"), help="switch logs, run record")
    parser.add_argument("--units", type=int, default=60, help="time units the devices play")
    parser.add_argument(
        "--time-unit", type=float, default=1.0, help="seconds per unit (default: 1.0)"
    )
    parser.add_argument("--seed", type=int, default=7, help="seed of the synthetic traffic")
    parser.add_argument(
        "--known",
        type=_names,
        default=(),
        help="known types, comma-separated (default: camera,plug,speaker,thermostat)",
    )
    parser.add_argument(
        "--held-out", default=None, help="the type left out of the references (default: hub)"
    )
    parser.add_argument(
        "--devices-per-type", type=int, default=1, help="emulated devices of each type"
    )
    parser.add_argument(
        "--no-network", action="store_true", help="replay synthesised frames even as root"
    )
    parser.add_argument("--p4info", type=Path, default=p4src.P4INFO, help="P4Info of the program")
    parser.add_argument("--bmv2-json", type=Path, default=p4src.BMV2_JSON, help="BMv2 only")
    parser.add_argument(
        "--grpc-port",
        type=int,
        default=topo.FIRST_GRPC_PORT,
        help="switch s1's P4Runtime port (0: a free one)",
    )
    parser.add_argument(
        "--http",
        default=DEFAULT_LISTEN,
        metavar="HOST:PORT",
        help="serve the live dashboard here while the demo runs (port 0: any free one; "
        "'off': none)",
    )
    parser.add_argument(
        "--change",
        default=None,
        metavar="HOST=TYPE@UNIT",
        help="one device starts behaving as another type at a unit, e.g. d2=hub@30",
    )
    parser.set_defaults(func=main)


def main(args: argparse.Namespace) -> int:
    """Entry point of `svcfp demo`."""
    check_sizes(args.units, args.time_unit, args.devices_per_type)
    http = getattr(args, "http", DEFAULT_LISTEN)
    change = getattr(args, "change", None)
    config = DemoConfig(
        switch=args.switch,
        out=args.out,
        logs=args.logs,
        units=args.units,
        unit_seconds=args.time_unit,
        seed=args.seed,
        known=args.known,
        held_out=args.held_out,
        devices_per_type=args.devices_per_type,
        no_network=args.no_network,
        p4info=args.p4info,
        bmv2_json=args.bmv2_json,
        grpc_port=args.grpc_port,
        http=None if http == "off" else _loopback(http),
        change=None if change is None else BehaviourChange.parse(change),
    )
    writable_folder(config.out, "--out")
    writable_folder(config.logs, "--logs")
    # The terminal shows the live table; the controller's log goes to a file beside the others.
    log_file = config.logs / "demo.log"
    print(f"svcfp demo: the controller logs to {log_file}", flush=True)
    with logging_to(log_file):
        summary = demo.run_demo(config)
    # Stopped by Ctrl-C or SIGTERM: the report covers what was stored, the status says so.
    return 130 if summary["playback"].get("interrupted") else 0


def _loopback(listen: str) -> WebSettings:
    settings = WebSettings.parse(listen)
    if settings.token is not None:
        raise InputError("the demo's dashboard listens on loopback, without a token")
    return settings
