"""How every command-line entry point of the project ends: logging set up once, a `SvcfpError`
printed as one line naming the command with its exit status, Ctrl-C as status 130, a closed
output pipe as status 141."""

from __future__ import annotations

import os
import signal
import sys
from collections.abc import Callable

from controller.base.errors import SvcfpError
from controller.base.logformat import LOG_FORMAT, LogFormat, configure_logging

__all__ = ["LOG_FORMAT", "LOG_LEVELS", "run_command"]

LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR")


def run_command(
    name: str, func: Callable[[], int], log_level: str = "INFO", log_format: LogFormat = "text"
) -> int:
    """Run `func` as the command `name`; returns the process exit status."""
    configure_logging(log_level, log_format)
    try:
        return func()
    except SvcfpError as exc:
        print(f"{name}: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        # Whoever read our output went away (`svcfp identify ... | head`): stop quietly, with
        # the status a process ended by SIGPIPE has, and keep Python's exit-time flush of
        # stdout from failing again.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
        return 128 + signal.SIGPIPE
