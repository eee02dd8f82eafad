"""The one error type for user-facing failures, and its translation into an exit code.

Library code raises ``ToolkitError`` with a one-line message that names the file or value at
fault and what was expected. Only CLIs turn it into output and an exit status, through
``exit_on_toolkit_error``; nothing in the library prints and exits by itself.
"""
from __future__ import annotations

import functools
import sys
from typing import Callable, TypeVar

F = TypeVar("F", bound=Callable)

EXIT_USER_ERROR = 2


class ToolkitError(Exception):
    """A failure the user can act on: bad input, a missing file, a mismatched artifact."""


def exit_on_toolkit_error(fn: F) -> F:
    """Wrap a CLI entry point: a ToolkitError becomes ``error: <message>`` and exit code 2."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except ToolkitError as exc:
            print(f"error: {exc}", file=sys.stderr)
            sys.exit(EXIT_USER_ERROR)

    return wrapper  # type: ignore[return-value]
