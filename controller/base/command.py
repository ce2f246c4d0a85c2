"""How every command-line entry point of the project ends: logging set up once, a `SvcfpError`
printed as one line naming the command with its exit status, Ctrl-C as status 130."""

from __future__ import annotations

import logging
import sys
from collections.abc import Callable

from controller.base.errors import SvcfpError

LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR")


def run_command(name: str, func: Callable[[], int], log_level: str = "INFO") -> int:
    """Run `func` as the command `name`; returns the process exit status."""
    logging.basicConfig(level=getattr(logging, log_level), format=LOG_FORMAT)
    try:
        return func()
    except SvcfpError as exc:
        print(f"{name}: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        return 130
