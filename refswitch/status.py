"""P4Runtime errors: a canonical gRPC status code with a message naming what was wrong.

A message names the field and shows at most the start of a value: a client's value can be as
large as a request, and an error travels in a gRPC trailer (16 KiB at most) and a log line.
"""

from __future__ import annotations

from finsy.proto import rpc_code

# Bytes of a value an error message shows.
SHOWN_BYTES = 64
# Characters of an error message; the rest is cut, and its length said.
MESSAGE_LIMIT = 512


def shown_bytes(data: bytes) -> str:
    """A value for an error message: its first SHOWN_BYTES bytes in hex, and its length if cut."""
    if len(data) <= SHOWN_BYTES:
        return f"0x{data.hex()}"
    return f"0x{data[:SHOWN_BYTES].hex()}… ({len(data)} bytes)"


def bounded(text: str, limit: int = MESSAGE_LIMIT) -> str:
    """`text` cut to `limit` characters, saying how long it was."""
    if len(text) <= limit:
        return text
    return f"{text[:limit]}… ({len(text)} characters)"


class P4RuntimeError(Exception):
    """A request the switch refuses, carried back to the client as a `google.rpc.Code`."""

    def __init__(self, code: int, message: str) -> None:
        message = bounded(message)
        super().__init__(message)
        self.code = code
        self.message = message

    @property
    def code_name(self) -> str:
        """The code's name, e.g. 'INVALID_ARGUMENT'."""
        return rpc_code.Code.Name(rpc_code.Code.ValueType(self.code))

    def __str__(self) -> str:
        return f"{self.code_name}: {self.message}"


def invalid_argument(message: str) -> P4RuntimeError:
    """The request is malformed or inconsistent with the P4Info."""
    return P4RuntimeError(rpc_code.INVALID_ARGUMENT, message)


def not_found(message: str) -> P4RuntimeError:
    """The request names an entity that does not exist."""
    return P4RuntimeError(rpc_code.NOT_FOUND, message)


def already_exists(message: str) -> P4RuntimeError:
    """An INSERT of an entity the target already holds."""
    return P4RuntimeError(rpc_code.ALREADY_EXISTS, message)


def unimplemented(message: str) -> P4RuntimeError:
    """The request is valid P4Runtime but this target (like BMv2) does not support it."""
    return P4RuntimeError(rpc_code.UNIMPLEMENTED, message)
