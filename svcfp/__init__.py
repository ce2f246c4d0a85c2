"""svcfp: in-network, service-level fingerprinting of IoT devices."""

from __future__ import annotations

from controller import __version__

__all__ = ["__version__"]
