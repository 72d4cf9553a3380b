"""The one way dpprof prints: strings from files made safe for a terminal, and a closed pipe is not an error.

Names, paths, backends and warnings come from traces, manifests and file names that anyone can write. A
terminal obeys the control characters inside them: ``ESC ] 0 ; … BEL`` retitles the window, ``ESC [2J``
clears the screen, a newline or a carriage return forges a line ("all good"), a bidi override reorders
what follows. :func:`clean` shows every such character escaped (``\\x1b``, ``\\n``, ``\\u202e``), and
:func:`console` is a rich Console that cleans every string it renders (table cells included) and never
reads rich markup in them (``[/red]`` in a path is text, not an error). Plain lines go through
:func:`echo`. A profiled program's own output (torchrun's workers) does not pass here: it is its own.

``dpprof … | head`` closes the pipe early: :func:`guard_streams` turns stdout/stderr into streams that,
once the reader has gone, discard what follows instead of raising, so a command finishes (its files are
written) and exits normally.
"""

from __future__ import annotations

import contextlib
import io
import os
import re
import sys
from collections.abc import Iterator
from typing import IO, Any

from rich.console import Console
from rich.text import Text

#: C0 controls (tab and newline included: one field, one line), DEL, C1 controls, lone surrogates (undecodable
#: bytes of a file name), and the Unicode line separators and bidirectional controls that reorder text.
_UNSAFE = re.compile("[\x00-\x1f\x7f-\x9f\u061c\u200e\u200f\u2028\u2029\u202a-\u202e\u2066-\u2069\ud800-\udfff]")


def _escape(m: re.Match[str]) -> str:
    c = ord(m.group())
    return {9: "\\t", 10: "\\n", 13: "\\r"}.get(c) or (f"\\x{c:02x}" if c < 0x100 else f"\\u{c:04x}")


def clean(text: Any) -> str:
    """``str(text)`` with every control character shown escaped (``\\x1b``), so a terminal shows it as text."""
    s = text if isinstance(text, str) else str(text)
    return _UNSAFE.sub(_escape, s)


class SafeConsole(Console):
    """A rich Console whose every string (printed, or a table cell) is cleaned and read without markup."""

    def render_str(self, text: str, **kwargs: Any) -> Text:
        return super().render_str(clean(text), **kwargs)


def console(*, stderr: bool = False, file: IO[str] | None = None, width: int | None = None) -> Console:
    """The console every dpprof command prints with (no markup, no highlighting, no emoji codes)."""
    return SafeConsole(file=file, stderr=stderr, width=width, markup=False, highlight=False, emoji=False,
                       soft_wrap=False)


def echo(*parts: Any, err: bool = False, sep: str = " ") -> None:
    """Print one line of ``parts`` (each cleaned) to stdout, or stderr with ``err``."""
    print(sep.join(clean(p) for p in parts), file=sys.stderr if err else sys.stdout, flush=err)


class _PipeSafe(io.TextIOBase):
    """A text stream that writes to ``stream`` until its reader has gone, then discards quietly."""

    def __init__(self, stream: IO[str]) -> None:
        self._stream = stream
        self.broken = False

    def _gone(self) -> None:
        # Point the descriptor at /dev/null: what the original stream still buffers (and the interpreter's
        # flush at exit) goes nowhere instead of raising again.
        self.broken = True
        with contextlib.suppress(OSError, ValueError):
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, self._stream.fileno())
            os.close(devnull)

    def write(self, s: str) -> int:
        if not self.broken:
            try:
                return self._stream.write(s)
            except BrokenPipeError:
                self._gone()
        return len(s)

    def flush(self) -> None:
        if not self.broken:
            try:
                self._stream.flush()
            except BrokenPipeError:
                self._gone()

    def isatty(self) -> bool:
        return not self.broken and self._stream.isatty()

    def fileno(self) -> int:
        return self._stream.fileno()

    def writable(self) -> bool:
        return True

    @property
    def encoding(self) -> str:  # type: ignore[override]  # TextIOBase declares it read-only
        return getattr(self._stream, "encoding", None) or "utf-8"

    @property
    def buffer(self) -> Any:  # binary writes (the HTML of ``--out -``) go through the same guard
        return _BinaryPipeSafe(self)


class _BinaryPipeSafe:
    def __init__(self, text: _PipeSafe) -> None:
        self._text = text

    def write(self, data: bytes) -> int:
        t = self._text
        if not t.broken:
            try:
                t._stream.flush()
                return t._stream.buffer.write(data)  # type: ignore[attr-defined]
            except BrokenPipeError:
                t._gone()
        return len(data)

    def flush(self) -> None:
        self._text.flush()


@contextlib.contextmanager
def guard_streams() -> Iterator[None]:
    """While inside, a closed stdout/stderr pipe ends printing quietly instead of raising BrokenPipeError."""
    old = sys.stdout, sys.stderr
    if not isinstance(sys.stdout, _PipeSafe):
        sys.stdout = _PipeSafe(sys.stdout)
    if not isinstance(sys.stderr, _PipeSafe):
        sys.stderr = _PipeSafe(sys.stderr)
    try:
        yield
    finally:
        with contextlib.suppress(BrokenPipeError, OSError, ValueError):
            sys.stdout.flush()
        sys.stdout, sys.stderr = old
