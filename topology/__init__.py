"""Mininet topologies, switch launchers and emulated IoT devices."""

from __future__ import annotations
