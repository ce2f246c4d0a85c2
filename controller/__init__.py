"""svcfp control plane: P4Runtime session, registry, catalogue, collector, fingerprints."""

from __future__ import annotations

__version__ = "0.1.0"
