"""The process every emulated host runs inside its network namespace.

`python -m topology.entry devices PLAN.json` plays an emulated device's plan
(`topology.devices`); `python -m topology.entry servers CONFIG.json` runs a service host's servers
and probes (`topology.servers`). Either runs until its schedule ends or SIGTERM/SIGINT asks it to
finish early, and writes its report in both cases.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import signal
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import Any

from topology import devices, servers

# Role → what a host of that role does with its config until it is done or `stop` is set.
ROLES: dict[str, Callable[[dict[str, Any], asyncio.Event], Awaitable[object]]] = {
    "devices": lambda plan, stop: devices.run_device(devices.DevicePlan.from_json(plan), stop),
    "servers": lambda config, stop: servers.serve(servers.ServerConfig.from_json(config), stop),
}


def stop_on_termination(stop: Callable[[], object]) -> None:
    """Call `stop` when the running event loop's process receives SIGTERM or SIGINT."""
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop)


def main(argv: Sequence[str] | None = None) -> int:
    """Run one emulated host: its role and the JSON config the launcher wrote for it."""
    parser = argparse.ArgumentParser(description="svcfp emulated host")
    parser.add_argument("role", choices=sorted(ROLES), help="an IoT device or a service host")
    parser.add_argument("config", type=Path, help="device plan or server config JSON")
    args = parser.parse_args(argv)
    config = json.loads(args.config.read_text())

    async def run() -> None:
        stop = asyncio.Event()
        stop_on_termination(stop.set)
        await ROLES[args.role](config, stop)

    asyncio.run(run())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
