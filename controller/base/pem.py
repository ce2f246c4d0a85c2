"""The PEM files of the `--tls-ca`, `--tls-cert` and `--tls-key` flags, read and checked one way for
`svcfp run` and `svcfp switch`.

gRPC takes any bytes as a certificate or key and reports a bad one only as a failed handshake or a
failure to bind the address, naming no file; so each file is checked with the standard library's
TLS first, and refused with an InputError naming its flag and path.
"""

from __future__ import annotations

import re
import ssl
from pathlib import Path

from controller.base.errors import InputError

_CERTIFICATE = re.compile(rb"-----BEGIN (X509 |TRUSTED )?CERTIFICATE-----")
_PRIVATE_KEY = re.compile(rb"-----BEGIN ([A-Z]+ )?PRIVATE KEY-----")


def read_ca(flag: str, path: Path) -> bytes:
    """The CA certificates of `path`, which verify the other end's certificate."""
    data = _read(flag, path, "CA certificate")
    try:
        ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT).load_verify_locations(cafile=path)
    except ssl.SSLError as exc:
        raise InputError(f"{flag} {path}: not a PEM CA certificate ({exc.reason or exc})") from None
    return data


def read_chain(cert_flag: str, cert: Path, key_flag: str, key: Path) -> tuple[bytes, bytes]:
    """A certificate chain and its private key (both PEM, the key unencrypted, as gRPC takes it)."""
    chain = _read(cert_flag, cert, "certificate")
    if _CERTIFICATE.search(chain) is None:
        raise InputError(f"{cert_flag} {cert}: not a PEM certificate")
    private = _read(key_flag, key, "private key")
    if _PRIVATE_KEY.search(private) is None:
        raise InputError(f"{key_flag} {key}: not a PEM private key")

    def encrypted() -> bytes:
        # Without this, OpenSSL would ask for the passphrase on the terminal.
        raise InputError(f"{key_flag} {key}: an encrypted private key; gRPC needs it unencrypted")

    try:
        ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT).load_cert_chain(cert, key, password=encrypted)
    except ssl.SSLError as exc:
        raise InputError(
            f"{cert_flag} {cert} / {key_flag} {key}: not a PEM certificate chain and its "
            f"private key ({exc.reason or exc})"
        ) from None
    return chain, private


def _read(flag: str, path: Path, what: str) -> bytes:
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise InputError(f"{flag} {path}: cannot read: {exc.strerror}") from None
    if not data.strip():
        raise InputError(f"{flag} {path}: empty file, expected a PEM {what}")
    return data
