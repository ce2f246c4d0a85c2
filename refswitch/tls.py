"""TLS for the switch's P4Runtime server: its certificate and key, and optionally a CA whose
client certificates it then requires (mutual TLS, as the controller's `--tls-cert` offers).

The files are checked as `svcfp run` checks its own (`controller.base.pem`) before gRPC gets them:
gRPC reports a bad certificate only as a failure to bind the address.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import grpc

from controller.base import pem
from controller.base.errors import InputError


@dataclass(frozen=True)
class ServerTls:
    """The server's certificate chain and key (PEM); with `ca`, clients must show a certificate
    that CA signed."""

    cert: Path
    key: Path
    ca: Path | None = None

    @property
    def mutual(self) -> bool:
        """Whether client certificates are required."""
        return self.ca is not None

    def credentials(self) -> grpc.ServerCredentials:
        """gRPC server credentials; InputError naming the flag and file when one is unusable."""
        cert, key = pem.read_chain("--tls-cert", self.cert, "--tls-key", self.key)
        ca = None if self.ca is None else pem.read_ca("--tls-ca", self.ca)
        return grpc.ssl_server_credentials(
            [(key, cert)], root_certificates=ca, require_client_auth=self.mutual
        )


def server_tls(cert: Path | None, key: Path | None, ca: Path | None) -> ServerTls | None:
    """TLS from the `--tls-*` flags: None without any; InputError for an incomplete set."""
    if cert is None and key is None:
        if ca is not None:
            raise InputError(
                "--tls-ca needs --tls-cert and --tls-key: the switch verifies client "
                "certificates only over TLS of its own"
            )
        return None
    if cert is None or key is None:
        raise InputError("--tls-cert and --tls-key must be given together")
    return ServerTls(cert, key, ca)
