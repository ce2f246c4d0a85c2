"""Where the dashboard listens and who may read it.

Loopback by default. Any other address serves the dashboard, its event stream and its metrics
to whoever can reach it, so it needs an access token: a browser passes it once as `?token=`
(kept in a cookie), Prometheus and scripts as `Authorization: Bearer TOKEN`.
"""

from __future__ import annotations

import ipaddress
import os
from dataclasses import dataclass
from pathlib import Path

from controller.base.checks import is_decimal
from controller.base.errors import InputError
from controller.base.fileio import read_text

DEFAULT_LISTEN = "127.0.0.1:8080"
TOKEN_ENV = "SVCFP_HTTP_TOKEN"
# Shorter tokens are guessable.
MIN_TOKEN_LENGTH = 16


def is_loopback(host: str) -> bool:
    """Whether `host` (a name or an address) is this machine only."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


@dataclass(frozen=True)
class WebSettings:
    """The dashboard's address (port 0: any free one) and access token (None: no token)."""

    host: str = "127.0.0.1"
    port: int = 8080
    token: str | None = None

    def __post_init__(self) -> None:
        if not 0 <= self.port < 65536:
            raise InputError(f"--http port {self.port}: expected 0..65535")
        if self.token is not None and len(self.token) < MIN_TOKEN_LENGTH:
            raise InputError(f"the access token needs at least {MIN_TOKEN_LENGTH} characters")
        if self.token is None and not is_loopback(self.host):
            raise InputError(
                f"--http {self.host}:{self.port} serves beyond this machine: give an access token "
                f"(--http-token-file FILE, or {TOKEN_ENV}), or listen on 127.0.0.1"
            )

    @classmethod
    def parse(cls, listen: str, token_file: Path | None = None) -> WebSettings:
        """`HOST:PORT` (IPv6 in brackets), with the token from `token_file` or TOKEN_ENV."""
        host, sep, port = listen.rpartition(":")
        if not sep or not host or not is_decimal(port):
            raise InputError(f"--http {listen!r}: expected HOST:PORT, e.g. {DEFAULT_LISTEN}")
        token = None
        if token_file is not None:
            token = read_text(token_file, "access token file").strip()
        elif os.environ.get(TOKEN_ENV):
            token = os.environ[TOKEN_ENV].strip()
        return cls(host.strip("[]"), int(port), token or None)

    def url(self, port: int | None = None) -> str:
        """The dashboard's address as a browser takes it."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port if port is None else port}/"
