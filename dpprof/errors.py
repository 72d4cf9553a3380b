"""One error class for everything the user can fix; the CLI maps it to one line on stderr."""

from __future__ import annotations


class DpprofError(Exception):
    """A problem with the user's input or environment: reported as one line, exit code ``exit_code``."""

    exit_code = 2

    def __init__(self, message: str, exit_code: int | None = None) -> None:
        super().__init__(message)
        if exit_code is not None:
            self.exit_code = exit_code


class TraceError(DpprofError):
    """A trace file that cannot be read at all (not JSON, truncated, no events)."""


class Terminated(BaseException):
    """SIGTERM, raised so that a command unwinds like on Ctrl-C (temporary files removed); exit 128 + signal."""

    def __init__(self, signum: int) -> None:
        super().__init__(signum)
        self.signum = signum

