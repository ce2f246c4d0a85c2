"""Reproducible performance measurements; see README.md."""
