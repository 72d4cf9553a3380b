"""Bounded gunzip: a gzip file inflates only as far as a limit, so a 4 MB "gzip bomb" cannot cost 4 GB.

The limit is ``max(1 GiB, 50 x the compressed size)`` unless the user gives ``--max-inflate BYTES``:
Kineto traces compress 10-20x (a 78 MB trace gzips to ~6 MB), so 50x leaves room for any real trace while
a bomb (1000x for zeros or spaces) is stopped after at most the limit's worth of output, read a piece at a
time. Several gzip members and trailing zero padding are read as the ``gzip`` module reads them.
python-isal's inflate is used when installed (~2.5x faster than zlib's, same output).
"""

from __future__ import annotations

import re
import zlib
from collections.abc import Iterator
from typing import Any

from dpprof.errors import TraceError

try:
    from isal import isal_zlib
except ImportError:  # pragma: no cover - depends on the environment
    isal_zlib = None  # type: ignore[assignment]
_ZLIB: Any = isal_zlib or zlib
_INFLATE_ERRORS: tuple[type[Exception], ...] = (zlib.error, *((isal_zlib.error,) if isal_zlib else ()))

INFLATE_FLOOR_BYTES = 1 << 30
INFLATE_RATIO = 50
GZIP_MAGIC = b"\x1f\x8b"
PIECE_BYTES = 1 << 20
_STEP = 1 << 16
_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([kmgt]?)(i?b?)\s*$", re.IGNORECASE)


def inflate_limit(compressed_bytes: int, max_inflate: int | None = None) -> int:
    """Most bytes a gzip file of ``compressed_bytes`` may inflate to (``max_inflate`` overrides the rule)."""
    if max_inflate is not None:
        return max_inflate
    return max(INFLATE_FLOOR_BYTES, INFLATE_RATIO * compressed_bytes)


def gunzip_pieces(data: bytes, limit: int, path: object, piece: int = PIECE_BYTES) -> Iterator[bytes]:
    """The inflated content of gzip ``data``, at most ``piece`` bytes at a time, every member in turn.

    Raises TraceError (one line naming ``path``) past ``limit`` bytes, on a corrupt stream, and when the data
    ends before the end-of-stream marker (a cut-short file). The compressed bytes are fed ``_STEP`` at a
    time, so a highly compressed input is not copied again for every piece of output.
    """
    view = memoryview(data)
    n, pos, total = len(view), 0, 0
    d = _ZLIB.decompressobj(31)  # 31: gzip header and trailer
    while True:
        fed = bytes(view[pos:pos + _STEP])
        try:
            out = d.decompress(fed, piece)
        except _INFLATE_ERRORS as exc:
            raise TraceError(f"{path}: not a readable gzip file (corrupt compressed data: {exc})") from None
        used = len(fed) - len(d.unconsumed_tail) - (len(d.unused_data) if d.eof else 0)
        pos += used
        if out:
            total += len(out)
            if total > limit:
                raise TraceError(f"{path}: inflates to more than {limit:,} bytes ({n:,} compressed): refused "
                                 "as a possible gzip bomb (--max-inflate BYTES allows more)")
            yield out
        if d.eof:
            rest = bytes(view[pos:])
            pos += len(rest) - len(rest.lstrip(b"\0"))  # the gzip module skips zero padding after a member
            if pos >= n:
                return
            if view[pos:pos + 2] != GZIP_MAGIC:
                raise TraceError(f"{path}: not a readable gzip file (trailing bytes after the compressed data)")
            d = _ZLIB.decompressobj(31)
        elif not out and not used:
            raise TraceError(f"{path}: truncated gzip file (compressed data ended before the end-of-stream marker)")


def gunzip(data: bytes, limit: int, path: object) -> bytearray:
    """All of :func:`gunzip_pieces` in one buffer (grown in place: no second copy of the content)."""
    out = bytearray()
    for p in gunzip_pieces(data, limit, path):
        out += p
    return out  # every reader of the text takes bytes-like objects


def parse_size(text: str) -> int:
    """``"4G"``, ``"512MiB"``, ``"1000000"`` -> bytes (K/M/G/T are powers of 1024). ValueError otherwise."""
    m = _SIZE.match(text)
    if not m:
        raise ValueError(f"not a size: {text!r} (e.g. 2G, 512M, 1000000)")
    value = float(m.group(1)) * 1024 ** " KMGT".index((m.group(2) or " ").upper())
    if not 1 <= value < 2**63:
        raise ValueError(f"size out of range: {text!r}")
    return int(value)


def add_read_options(p: Any) -> None:
    """``--max-inflate BYTES`` for every command that reads traces (argparse parser or group)."""
    import argparse

    def size(text: str) -> int:
        try:
            return parse_size(text)
        except ValueError as exc:
            raise argparse.ArgumentTypeError(str(exc)) from None

    p.add_argument("--max-inflate", type=size, default=None, metavar="BYTES",
                   help="most bytes a .gz trace may inflate to (default: 1 GiB or 50x its compressed size, "
                   "whichever is larger; stops gzip bombs), e.g. 8G")
