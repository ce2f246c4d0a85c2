"""`svcfp testbed start|stop`: a Mininet testbed with a P4 switch and the controller."""

from __future__ import annotations

import argparse
import sys
from dataclasses import fields
from pathlib import Path

import p4src
from controller.base.errors import InputError
from topology import graph as topo
from topology import testbed
from topology.launch import SWITCH_KINDS
from topology.testbed import TestbedConfig


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add `svcfp testbed start|stop`."""
    parser = subparsers.add_parser(
        "testbed",
        help="start/stop a Mininet testbed with a P4 switch and the controller",
        description=testbed.__doc__,
    )
    actions = parser.add_subparsers(dest="action", metavar="ACTION", required=True)
    begin = actions.add_parser("start", help="build the network and run the controller")
    begin.add_argument("--switch", choices=SWITCH_KINDS, default="refswitch", help="P4 switch")
    begin.add_argument(
        "--grpc-addr",
        default=f"127.0.0.1:{topo.FIRST_GRPC_PORT}",
        help="switch s1's P4Runtime address",
    )
    begin.add_argument("--device-id", type=int, default=1, help="switch s1's P4Runtime device id")
    begin.add_argument("--logs", type=Path, default=Path("logs"), help="logs and the run record")
    begin.add_argument("--p4info", type=Path, default=p4src.P4INFO, help="P4Info of the program")
    begin.add_argument("--bmv2-json", type=Path, default=p4src.BMV2_JSON, help="BMv2 only")
    begin.add_argument("--topology", type=Path, help="topology JSON (default: built-in)")
    begin.add_argument("--devices", type=int, default=4, help="emulated devices (default topology)")
    begin.add_argument(
        "--units", type=int, default=600, help="time units the devices play (0: no traffic)"
    )
    begin.add_argument("--time-unit", type=float, default=1.0, help="seconds per time unit")
    begin.add_argument("--interval", type=float, default=1.0, help="counter poll interval, s")
    begin.add_argument(
        "--foreground", action="store_true", help="run the testbed in this process until SIGTERM"
    )
    begin.set_defaults(func=start)
    end = actions.add_parser("stop", help="stop the recorded testbed and remove what it created")
    end.add_argument("--logs", type=Path, default=Path("logs"), help="where the run is recorded")
    end.set_defaults(func=stop)


def start(args: argparse.Namespace) -> int:
    """`svcfp testbed start`."""
    config = _config(args)
    if args.foreground:
        return testbed.supervise(config)
    supervisor = [sys.executable, "-m", "svcfp", "testbed", "start", "--foreground"]
    print(testbed.start_testbed(config, [*supervisor, *_forwarded(args)]))
    return 0


def stop(args: argparse.Namespace) -> int:
    """`svcfp testbed stop`: end the recorded run and remove exactly what it created."""
    print(testbed.stop_testbed(args.logs))
    return 0


def _config(args: argparse.Namespace) -> TestbedConfig:
    if args.devices < 0 or args.units < 0 or args.time_unit <= 0 or args.interval <= 0:
        raise InputError("--devices and --units must be ≥ 0, --time-unit and --interval > 0")
    # Every field of the config is the `testbed start` option of the same name.
    chosen = {item.name: getattr(args, item.name) for item in fields(TestbedConfig)}
    if args.switch != "bmv2":
        chosen["bmv2_json"] = None
    return TestbedConfig(**chosen)


def _forwarded(args: argparse.Namespace) -> list[str]:
    """The `testbed start` options in `args` as command-line flags again, for the supervisor."""
    forwarded = []
    for item in fields(TestbedConfig):
        value = getattr(args, item.name)
        if value is not None:
            forwarded += [f"--{item.name.replace('_', '-')}", str(value)]
    return forwarded
