"""A trace's events a chunk at a time, for the two passes of the merge (``dpprof.perfetto.scan`` and
``dpprof.perfetto.rewrite``): never the whole file, unless it cannot be split while read.

The streaming split is the loader's (``dpprof.trace.decode.split_stream``). A file it cannot split (minified
JSON, several gzip members, a cut that fell inside an event) is read whole, like the loader does; which way a
file is read is decided by the first pass, so that both passes see the same events.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import msgspec

from dpprof.errors import TraceError
from dpprof.trace import decode as D

#: Events per chunk when a file had to be read whole.
WHOLE_CHUNK = 4_000


class Unsplittable(Exception):
    """The file cannot be read chunk by chunk: read it whole."""


class Scanned(msgspec.Struct, gc=False):
    """What the first pass needs of an event; ``args`` and unknown keys are skipped by the decoder."""

    ph: Any = None
    cat: Any = None
    pid: Any = None
    tid: Any = None
    ts: Any = None
    dur: Any = None
    id: Any = None
    name: Any = None


_SCAN = msgspec.json.Decoder(list[Scanned])
_RAWS = msgspec.json.Decoder(list[msgspec.Raw])
_FIELDS = tuple(Scanned.__struct_fields__)


def decode_generic(buf: bytes | bytearray | memoryview) -> Any:
    """Any JSON text -> Python objects; bad UTF-8 replaced, NaN/Infinity literals accepted (json's reading).

    Raises msgspec.DecodeError when the text is not JSON at all.
    """
    try:
        return msgspec.json.decode(buf)
    except msgspec.DecodeError:
        text = bytes(buf).decode("utf-8", errors="replace")
        try:
            return json.loads(text)
        except (ValueError, RecursionError):
            raise msgspec.DecodeError("not JSON") from None


def decode_scanned(buf: bytes | memoryview) -> list[Scanned]:
    """An array of events -> Scanned (a non-object element is left out)."""
    try:
        return _SCAN.decode(buf)
    except (msgspec.ValidationError, UnicodeDecodeError):
        data = decode_generic(buf)
        return [Scanned(**{k: ev.get(k) for k in _FIELDS}) for ev in data if isinstance(ev, dict)]


def decode_pairs(buf: bytes | memoryview) -> tuple[list[Scanned], list[msgspec.Raw]] | None:
    """Each event's first-pass fields beside its text, not decoded further (so that only the events a selection
    keeps are); None when the chunk needs the tolerant path. The chunk is copied: the Raw views outlive ``buf``."""
    data = bytes(buf)
    try:
        return _SCAN.decode(data), _RAWS.decode(data)
    except (msgspec.ValidationError, msgspec.DecodeError, UnicodeDecodeError):
        return None


def chunks(path: Path, whole: bool, decode: Callable[[bytes | memoryview], list[Any]],
           max_inflate: int | None = None) -> Iterator[list[Any]]:
    """The file's ``traceEvents`` a chunk at a time, each decoded by ``decode``; a gzip file inflates at most to
    ``dpprof.trace.inflate.inflate_limit`` (``max_inflate``: ``--max-inflate``), as the analysis reads it.

    ``whole=False``: streamed; raises ``Unsplittable`` when the file cannot be (nothing yielded is wrong, but
    the caller must start again with ``whole=True``). ``whole=True``: read at once (a ``TraceError`` when it is
    not a trace at all).
    """
    if not whole:
        try:
            for last, buf in D.split_stream(path, max_inflate):
                if last:
                    doc = decode_generic(buf)
                    events = doc.get("traceEvents") if isinstance(doc, dict) else None
                    if not isinstance(events, list):
                        raise Unsplittable
                    yield decode(msgspec.json.encode(events))
                else:
                    yield decode(buf)
        except (D.NotStreamable, msgspec.DecodeError, RecursionError):
            raise Unsplittable from None
        return
    try:
        data = decode_generic(D.read_bytes(path, max_inflate))
    except msgspec.DecodeError:
        raise TraceError(f"{path}: not valid JSON (truncated or corrupt file)") from None
    events = data if isinstance(data, list) else data.get("traceEvents") if isinstance(data, dict) else None
    if not isinstance(events, list):
        raise TraceError(f"{path}: no traceEvents list (not a Chrome/Kineto trace)")
    for i in range(0, len(events), WHOLE_CHUNK):
        yield decode(msgspec.json.encode(events[i:i + WHOLE_CHUNK]))
