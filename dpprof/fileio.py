"""Atomic file writing: a reader never sees a half-written file, and a failed write keeps the old one."""

from __future__ import annotations

import contextlib
import errno
import gzip
import io
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import IO

from dpprof.errors import DpprofError


def _describe(exc: OSError, path: Path) -> str:
    if exc.errno == errno.ENOSPC:
        return f"cannot write {path}: no space left on device"
    if exc.errno in (errno.EROFS, errno.EACCES, errno.EPERM):
        return f"cannot write {path}: {os.strerror(exc.errno)}"
    return f"cannot write {path}: {exc.strerror or exc}"


@contextlib.contextmanager
def atomic_open(path: str | os.PathLike[str], mode: str = "w", compress: bool | None = None) -> Iterator[IO]:
    """Open a temporary file beside ``path``; on success it is fsynced and renamed onto ``path``.

    ``compress`` gzips the content (default: when ``path`` ends in ``.gz``). On any error the temporary
    file is removed, ``path`` keeps its previous content, and an ``OSError`` becomes a ``DpprofError``.
    """
    path = Path(path)
    if compress is None:
        compress = path.suffix == ".gz"
    binary = "b" in mode
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    except OSError as exc:
        raise DpprofError(_describe(exc, path)) from None
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
            os.fchmod(raw.fileno(), 0o666 & ~_UMASK)  # mkstemp makes 0600; files get the usual mode
        os.replace(tmp, path)
    except OSError as exc:
        _unlink(tmp)
        raise DpprofError(_describe(exc, path)) from None
    except BaseException:
        _unlink(tmp)
        raise


def _read_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


_UMASK = _read_umask()  # read once at import: os.umask is process-wide and not thread-safe


def _unlink(path: str) -> None:
    with contextlib.suppress(OSError):
        os.unlink(path)


def write_bytes_atomic(path: str | os.PathLike[str], data: bytes) -> None:
    """Write ``data`` to ``path`` atomically (gzipped when the name ends in ``.gz``)."""
    with atomic_open(path, "wb") as fh:
        fh.write(data)


def write_text_atomic(path: str | os.PathLike[str], text: str) -> None:
    """Write ``text`` (UTF-8) to ``path`` atomically."""
    write_bytes_atomic(path, text.encode("utf-8"))
