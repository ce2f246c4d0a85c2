"""Shared pytest fixtures and the skip rules for tests that need root, BMv2, p4c or data."""

from __future__ import annotations

import os
import shutil
import socket
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.support.paths import data_dir
from topology.tools import missing_for_mininet, missing_for_replay, why_missing


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    is_root = os.geteuid() == 0
    no_mininet = missing_for_mininet()
    no_tcpreplay = missing_for_replay()
    reasons = {
        "root": None
        if is_root
        else "needs root for network namespaces, veth pairs and raw sockets",
        "bmv2": None
        if shutil.which("simple_switch_grpc")
        else "BMv2 simple_switch_grpc is not on PATH",
        "p4c": None if shutil.which("p4c") else "p4c is not on PATH",
        "data": None
        if data_dir()
        else "shared data folder not found (set SVCFP_DATA_DIR to ../shared/data)",
        "mininet": why_missing(no_mininet) if no_mininet else None,
        "tcpreplay": why_missing(no_tcpreplay) if no_tcpreplay else None,
    }
    for item in items:
        for marker, reason in reasons.items():
            if reason and item.get_closest_marker(marker):
                item.add_marker(pytest.mark.skip(reason=reason))


@pytest.fixture
def shared_data() -> Path:
    """The shared data folder; tests using it also carry the `data` marker."""
    found = data_dir()
    assert found is not None
    return found


@pytest.fixture
def free_port() -> Callable[[], int]:
    """A function that picks a loopback TCP port nothing is bound to at the moment of the call
    (for a switch's gRPC port)."""

    def pick() -> int:
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            return int(sock.getsockname()[1])

    return pick
