"""Every file dpprof reads or writes goes through here.

Reading (:func:`open_input`): only regular files are opened. A FIFO would block forever, ``/dev/zero``
never ends, a socket cannot be read: they are refused up front with one line, before any read.

Writing (:func:`atomic_open` and the helpers on it): a reader never sees a half-written file and a failed
write keeps the old one; and dpprof writes only where it was told and only regular files:

* a device node, a FIFO, a socket or a directory at the output path is refused, never replaced;
* inside a run directory (``within``), no symbolic link is followed: a ``merged/`` that links elsewhere
  is refused, so a run never makes dpprof write outside itself;
* an explicit output that is a symbolic link is written at the link's target (the link stays);
* within :func:`command_scope` (every CLI command), a file the command has read is never replaced by
  one of its outputs (``report T.json.gz --out T.json.gz``), unless the writer says it rewrites it;
* ``-`` means standard output;
* SIGTERM (like SIGINT) unwinds the command, so the temporary file of a write in progress is removed.
"""

from __future__ import annotations

import contextlib
import errno
import gzip
import io
import os
import signal
import stat
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

from dpprof.errors import DpprofError, Terminated

STDOUT = "-"
#: Most bytes dpprof reads from a JSON sidecar of a run: ``manifest.json``, ``nodes/*.json``, ``sweep.json``, an
#: NVML header line. Real ones are a few kB (a manifest with every field: ~20 kB); a 64 MB manifest cost 823 MB
#: of memory and 16 s to decode. Above it a file is treated as absent, with a warning.
MAX_SIDECAR_BYTES = 16 << 20
#: (st_dev, st_ino) -> path of every file read since command_scope() began; None outside a scope.
_inputs: dict[tuple[int, int], str] | None = None


def _kind(mode: int) -> str:
    for test, name in ((stat.S_ISFIFO, "a FIFO (named pipe)"), (stat.S_ISCHR, "a character device"),
                       (stat.S_ISBLK, "a block device"), (stat.S_ISSOCK, "a socket"), (stat.S_ISDIR, "a directory")):
        if test(mode):
            return name
    return "not a regular file"


def _describe(exc: OSError, path: Path) -> str:
    if exc.errno == errno.ENOSPC:
        return f"cannot write {path}: no space left on device"
    if exc.errno in (errno.EROFS, errno.EACCES, errno.EPERM):
        return f"cannot write {path}: {os.strerror(exc.errno)}"
    return f"cannot write {path}: {exc.strerror or exc}"


# --- reading ----------------------------------------------------------------------------------------

def check_input(path: str | os.PathLike[str], error: type[DpprofError] = DpprofError) -> os.stat_result:
    """``stat`` of ``path`` (links followed) when it is a regular file; ``error`` (one line) otherwise."""
    try:
        st = os.stat(path)
    except OSError as exc:
        raise error(f"{path}: cannot read: {exc.strerror or exc}") from None
    if not stat.S_ISREG(st.st_mode):
        raise error(f"{path}: is {_kind(st.st_mode)}, not a regular file: refused (not read)")
    return st


def open_input(path: str | os.PathLike[str], error: type[DpprofError] = DpprofError) -> IO[bytes]:
    """Open a regular file for binary reading; ``error`` (one line) for anything else, nothing read.

    Opened non-blocking and checked again on the descriptor, so a file swapped for a FIFO after the
    first check cannot block either.
    """
    check_input(path, error)
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
    except OSError as exc:
        raise error(f"{path}: cannot read: {exc.strerror or exc}") from None
    st = os.fstat(fd)
    if not stat.S_ISREG(st.st_mode):
        os.close(fd)
        raise error(f"{path}: is {_kind(st.st_mode)}, not a regular file: refused (not read)")
    os.set_blocking(fd, True)
    remember_input(path, st)
    return open(fd, "rb")


class InputTooLarge(DpprofError):
    """A file above the size a reader accepts (``read_input(max_bytes=...)``): refused before it is read."""


def too_large(what: str | os.PathLike[str], size: int, max_bytes: int) -> str:
    """The one line that says ``what`` (a file, a line) is above ``max_bytes`` and was not read."""
    return f"{what}: {size:,} bytes, above dpprof's limit of {max_bytes:,} bytes for it: ignored, as if absent"


def read_input(path: str | os.PathLike[str], error: type[DpprofError] = DpprofError,
               max_bytes: int | None = None) -> bytes:
    """All bytes of a regular file (see :func:`open_input`).

    ``max_bytes``: a larger file raises :class:`InputTooLarge` before anything is read (its size from ``fstat``;
    one that grows while read is stopped one byte past the limit).
    """
    with open_input(path, error) as fh:
        try:
            if max_bytes is None:
                return fh.read()
            size = os.fstat(fh.fileno()).st_size
            data = fh.read(max_bytes + 1) if size <= max_bytes else b""
        except OSError as exc:
            raise error(f"{path}: cannot read: {exc.strerror or exc}") from None
    if size > max_bytes or len(data) > max_bytes:
        raise InputTooLarge(too_large(path, max(size, len(data)), max_bytes))
    return data


def remember_input(path: str | os.PathLike[str], st: os.stat_result | None = None) -> None:
    """Record ``path`` as read by the current command: no output of it may replace it."""
    if _inputs is None:
        return
    with contextlib.suppress(OSError):
        st = st or os.stat(path)
        _inputs[(st.st_dev, st.st_ino)] = str(path)


@contextlib.contextmanager
def command_scope() -> Iterator[None]:
    """One CLI command: its inputs are protected from its outputs, and SIGTERM unwinds it (temp files removed)."""
    global _inputs
    saved = _inputs
    _inputs = {}
    old_handler: Any = None
    with contextlib.suppress(ValueError):  # not the main thread: leave signals alone
        old_handler = signal.signal(signal.SIGTERM, _terminate)
    try:
        yield
    finally:
        _inputs = saved
        if old_handler is not None:
            signal.signal(signal.SIGTERM, old_handler)


def _terminate(signum: int, frame: Any) -> None:
    raise Terminated(signum)


def sigterm_unwinds(handler: Any) -> bool:
    """Whether ``handler`` is :func:`command_scope`'s (SIGTERM unwinds the command): a command that records its
    own end on SIGTERM (``dpprof run``) may replace it."""
    return handler is _terminate


# --- writing ----------------------------------------------------------------------------------------

def is_stdout(path: str | os.PathLike[str] | None) -> bool:
    return path is not None and os.fspath(path) == STDOUT


def _no_links_below(path: Path, within: Path) -> None:
    """Refuse ``path`` unless it lies inside ``within`` through real directories (no symbolic link)."""
    try:
        rel = path.relative_to(within)
    except ValueError:
        raise DpprofError(f"{path}: outside the run directory {within}: not written") from None
    if ".." in rel.parts:
        raise DpprofError(f"{path}: leaves the run directory {within}: not written")
    cur = within
    for part in rel.parts:
        cur = cur / part
        if cur.is_symlink():
            raise DpprofError(f"{cur}: is a symbolic link inside the run directory: dpprof does not follow "
                              "links out of a run (nothing written)")


def output_target(path: str | os.PathLike[str], within: str | os.PathLike[str] | None = None,
                  replace_input: bool = False) -> Path:
    """The file that writing ``path`` will replace; DpprofError (one line) when it must not be written.

    ``within``: the run directory the output belongs to (no link followed below it). Otherwise a final
    symbolic link is followed to its target. The target must not exist or be a regular file, and must not
    be a file the current command has read (unless ``replace_input``: a deliberate rewrite).
    """
    path = Path(path)
    if within is not None:
        _no_links_below(path, Path(within))
        target = path
    else:
        target = Path(os.path.realpath(path)) if path.is_symlink() else path
    try:
        st = os.stat(target)
    except FileNotFoundError:
        return target
    except OSError as exc:
        raise DpprofError(_describe(exc, path)) from None
    if not stat.S_ISREG(st.st_mode):
        raise DpprofError(f"{path}: is {_kind(st.st_mode)}: dpprof writes only regular files (nothing written)")
    source = _inputs.get((st.st_dev, st.st_ino)) if _inputs is not None and not replace_input else None
    if source is not None:
        raise DpprofError(f"{path}: is an input of this command ({source}): not overwritten")
    return target


def _make_dirs(folder: Path, within: Path | None) -> None:
    if within is None:
        folder.mkdir(parents=True, exist_ok=True)
        return
    d = within
    for part in folder.relative_to(within).parts:  # one level at a time; an existing link is refused
        d = d / part
        with contextlib.suppress(FileExistsError):
            os.mkdir(d)
        if d.is_symlink() or not d.is_dir():
            raise DpprofError(f"{d}: not a directory inside the run directory (nothing written)")


@contextlib.contextmanager
def _stdout(binary: bool) -> Iterator[IO]:
    sys.stdout.flush()
    yield sys.stdout.buffer if binary else sys.stdout
    sys.stdout.flush()


@contextlib.contextmanager
def atomic_open(path: str | os.PathLike[str], mode: str = "w", compress: bool | None = None, *,
                within: str | os.PathLike[str] | None = None, replace_input: bool = False) -> Iterator[IO]:
    """Open a temporary file beside ``path``; on success it is fsynced and renamed onto ``path``.

    ``compress`` gzips the content (default: when ``path`` ends in ``.gz``). ``-`` writes to standard
    output. ``within`` / ``replace_input``: see :func:`output_target`. On any error the temporary file is
    removed, ``path`` keeps its previous content, and an ``OSError`` becomes a ``DpprofError``.
    """
    binary = "b" in mode
    if is_stdout(path):
        with _stdout(binary) as out:
            yield out
        return
    target = output_target(path, within, replace_input)
    if compress is None:
        compress = target.suffix == ".gz"
    try:
        _make_dirs(target.parent, Path(within) if within is not None else None)
        fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    except OSError as exc:
        raise DpprofError(_describe(exc, Path(path))) from None
    try:
        with os.fdopen(fd, "wb") as raw:
            with contextlib.ExitStack() as stack:
                sink: IO[bytes] = raw
                if compress:
                    gz = gzip.GzipFile(fileobj=raw, mode="wb", compresslevel=6, mtime=0)
                    sink = stack.enter_context(gz)  # type: ignore[arg-type]  # GzipFile is a binary IO
                if binary:
                    yield sink
                else:
                    text = io.TextIOWrapper(sink, encoding="utf-8", newline="\n")
                    yield text
                    text.flush()
                    text.detach()
            raw.flush()
            os.fsync(raw.fileno())
            os.fchmod(raw.fileno(), 0o666 & ~UMASK)  # mkstemp makes 0600; files get the usual mode
        os.replace(tmp, target)
    except OSError as exc:
        _unlink(tmp)
        raise DpprofError(_describe(exc, Path(path))) from None
    except BaseException:
        _unlink(tmp)
        raise


def _read_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


UMASK = _read_umask()  # read once at import: os.umask is process-wide and not thread-safe


def _unlink(path: str) -> None:
    with contextlib.suppress(OSError):
        os.unlink(path)


def write_bytes_atomic(path: str | os.PathLike[str], data: bytes | bytearray, **where: Any) -> None:
    """Write ``data`` to ``path`` atomically (gzipped when the name ends in ``.gz``; ``-``: stdout).

    ``where``: ``within`` / ``replace_input`` of :func:`atomic_open`.
    """
    with atomic_open(path, "wb", **where) as fh:
        fh.write(data)


def write_text_atomic(path: str | os.PathLike[str], text: str, **where: Any) -> None:
    """Write ``text`` (UTF-8) to ``path`` atomically (``-``: stdout)."""
    write_bytes_atomic(path, text.encode("utf-8"), **where)
