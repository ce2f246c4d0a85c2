"""P4Runtime errors: a canonical gRPC status code with a message naming what was wrong."""

from __future__ import annotations

from finsy.proto import rpc_code


class P4RuntimeError(Exception):
    """A request the switch refuses, carried back to the client as a `google.rpc.Code`."""

    def __init__(self, code: int, message: str) -> None:
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
