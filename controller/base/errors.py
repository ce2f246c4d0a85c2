"""Errors that carry a message meant for the user.

Library code raises these; only the CLI turns them into an exit status.
"""

from __future__ import annotations


class SvcfpError(Exception):
    """A failure the user can act on: the message names the input and what is wrong."""

    exit_code = 1


class InputError(SvcfpError):
    """Bad input: a malformed file, a wrong column, a P4Info that does not match."""

    exit_code = 2


class SwitchError(SvcfpError):
    """A switch is unreachable or refused a request."""

    exit_code = 3
