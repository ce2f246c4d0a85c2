"""Making one part of the system slow on purpose, to see what else keeps going meanwhile."""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from refswitch.server import P4RuntimeService


@contextlib.contextmanager
def slow_reads(monkeypatch: pytest.MonkeyPatch, seconds: float) -> Iterator[threading.Event]:
    """Every Read served by reference switches made inside the block waits `seconds` first;
    the event is set once a Read is being served."""
    started = threading.Event()
    read = P4RuntimeService.read

    def slow(self: P4RuntimeService, request: Any, context: Any) -> Iterator[bytes]:
        started.set()
        time.sleep(seconds)
        yield from read(self, request, context)

    with monkeypatch.context() as patch:
        patch.setattr(P4RuntimeService, "read", slow)
        yield started


@contextlib.contextmanager
def stalled_reads(monkeypatch: pytest.MonkeyPatch) -> Iterator[threading.Event]:
    """Once the event is set, every Read served by reference switches made inside the block
    waits, unanswered, until the block ends: a switch that holds its session open and answers
    nothing (as a stopped process would)."""
    stalled = threading.Event()
    ended = threading.Event()
    read = P4RuntimeService.read

    def stalling(self: P4RuntimeService, request: Any, context: Any) -> Iterator[bytes]:
        if stalled.is_set():
            ended.wait()
        yield from read(self, request, context)

    with monkeypatch.context() as patch:
        patch.setattr(P4RuntimeService, "read", stalling)
        try:
            yield stalled
        finally:
            ended.set()


@contextlib.contextmanager
def unanswered(monkeypatch: pytest.MonkeyPatch, rpc: str) -> Iterator[threading.Event]:
    """Every call of the RPC method `rpc` of `P4RuntimeService` ('set_forwarding_pipeline_config',
    'write', 'read') served by reference switches made inside the block waits, unanswered,
    until the block ends: a switch that stops answering at that step of a controller's set-up.
    The event is set once a call is held."""
    held = threading.Event()
    ended = threading.Event()
    method = getattr(P4RuntimeService, rpc)

    def unary(self: P4RuntimeService, request: Any, context: Any) -> Any:
        held.set()
        ended.wait()
        return method(self, request, context)

    def streaming(self: P4RuntimeService, request: Any, context: Any) -> Iterator[Any]:
        held.set()
        ended.wait()
        yield from method(self, request, context)

    with monkeypatch.context() as patch:
        patch.setattr(P4RuntimeService, rpc, streaming if rpc == "read" else unary)
        try:
            yield held
        finally:
            ended.set()


class Gate:
    """Holds a call until released (or `timeout` passes), says when one is held, and whether the
    release came in time (it cannot while the releasing code is blocked by the held call)."""

    def __init__(self, timeout: float) -> None:
        self.timeout = timeout
        self.held = threading.Event()
        self.released = threading.Event()
        self.thread: str | None = None
        self.timed_out = False

    def wrap(self, func: Callable[..., Any]) -> Callable[..., Any]:
        """`func`, held at the gate the first time it is called."""

        def held(*args: Any, **kwargs: Any) -> Any:
            if not self.held.is_set():
                self.thread = threading.current_thread().name
                self.held.set()
                self.timed_out = not self.released.wait(self.timeout)
            return func(*args, **kwargs)

        return held
