"""Trace bytes -> typed event Structs: reading (gunzip), splitting into chunks, typed and tolerant decoding.

msgspec decodes straight into Structs holding only the fields the analysis uses (unknown keys such as
``Input Dims`` are skipped by the decoder without building Python objects). The events are decoded a
chunk at a time so that only one chunk's Python objects are alive at once, which bounds memory.

Splitting: a literal newline byte cannot occur inside a JSON string, so in pretty-printed traces
(Kineto writes one event per few lines) ``},<newline>  {`` only ever separates two objects, and with the
indentation of the array's first event, two events. The streaming
split reads the file (gunzipping as it goes) a piece at a time and cuts the ``traceEvents`` text at such
separators, writing each chunk's brackets into the read buffer (no Python object per event, no copy of the
text, never the whole file in memory). A cut that is not between two events leaves a chunk with
unbalanced brackets, which msgspec always rejects; then, as for any file without newlines between its
events, the file is read whole and split the slow way (``list[msgspec.Raw]``: one Raw view per event).
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any, TypeAlias, Union

import msgspec

from dpprof.errors import TraceError
from dpprof.fileio import open_input, read_input
from dpprof.trace.inflate import GZIP_MAGIC, PIECE_BYTES, gunzip, gunzip_pieces, inflate_limit

#: JSON text as read: bytes, or the bytearray an inflated gzip file grew into (never copied to bytes).
Buffer: TypeAlias = bytes | bytearray


class _Args(msgspec.Struct, gc=False):
    # -1 when absent, so that a column is one int64 pass (None, from an explicit null, takes the slow pass).
    external_id: int | None = msgspec.field(default=-1, name="External id")
    correlation: int | None = -1
    device: int | None = -1
    stream: int | None = -1
    bytes: int | float | None = None


class _ArgsWide(_Args, gc=False):
    """The args of chunks that carry collective metadata or peer-copy ends (``_WIDE_NAMES``): few do, and every
    field is a slot to fill in every event's args, so the other chunks keep the narrow ``_Args``."""

    # Collective metadata: libkineto copies it from ``record_param_comms`` onto the NCCL kernel
    # (``ChromeTraceLogger::appendCollectiveArgs`` in libkineto/src/output_json.cpp); ``Seq`` and ``Comms Id``
    # only in newer versions and only when c10d set a sequence number (torch/csrc/profiler/util.cpp
    # ``saveNcclMeta``: ``Comms Id`` is a hash of the group name, that number and the group's ranks, the same on
    # every participant); ``Src Rank``/``Dst Rank`` (the global rank of a recv's sender / a send's receiver,
    # ``groupRanks[rank]`` there) on point-to-point ops.
    collective: str | None = msgspec.field(default=None, name="Collective name")
    in_nelems: int | float | None = msgspec.field(default=None, name="In msg nelems")
    out_nelems: int | float | None = msgspec.field(default=None, name="Out msg nelems")
    dtype: str | None = None
    pg_name: str | int | None = msgspec.field(default=None, name="Process Group Name")
    seq: int | None = msgspec.field(default=None, name="Seq")
    comms_id: int | str | None = msgspec.field(default=None, name="Comms Id")  # a size_t: may pass int64
    src_rank: int | str | None = msgspec.field(default=None, name="Src Rank")
    dst_rank: int | str | None = msgspec.field(default=None, name="Dst Rank")
    # Peer copies (CUPTI memcpy2 records) name both ends instead of ``device``: the copy runs on
    # ``fromDevice``'s stream for torch's cross-device copies (aten/src/ATen/native/cuda/Copy.cu).
    from_device: int | None = msgspec.field(default=None, name="fromDevice")
    to_device: int | None = msgspec.field(default=None, name="toDevice")


class Event(msgspec.Struct, tag_field="ph", tag="X", gc=False, kw_only=True):
    """A complete event (``ph: X``): every span the analysis uses."""

    cat: str | None = None
    name: str  # an event without a name cannot be classified: it is skipped and counted
    pid: int | str | None = None
    tid: int | str | None = None
    ts: float | None = None
    dur: float | None = None
    args: _Args | None = None


class EventWide(Event, tag="X", gc=False, kw_only=True):
    """An Event of a chunk decoded with the wide args (``_ArgsWide``)."""

    args: _ArgsWide | None = None  # type: ignore[assignment]  # a subclass of the narrow args


NO_ARGS = _Args()
NO_ARGS_WIDE = _ArgsWide()
#: Events whose args the wide decode reads: ``record_param_comms`` (collective metadata), NCCL/RCCL kernels (the
#: copy of it libkineto writes) and peer copies (both ends). A chunk naming one is decoded again, wide.
_WIDE_NAMES = re.compile(r"^record_param_comms$|^(?:void\s+)?(?:\w+::)*(?:nccl|rccl)|memcpy.*(?:PtoP|P2P|Peer)", re.I)


def _phase_struct(tag: str, fields: bool) -> type[Any]:  # Any: its fields are known only at run time
    # Other Chrome phases decode into small Structs; tagging on "ph" lets msgspec skip their keys and lets
    # the loader split phases by type. Flow fields (cat/ts/tid/id) are decoded only when needed.
    spec = [("cat", str | None, None), ("ts", float | None, None), ("tid", int | str | None, None),
            ("id", int | str | None, None)] if fields else []
    return msgspec.defstruct(f"_Phase_{tag}", spec, tag_field="ph", tag=tag, gc=False)


#: Every phase of the Chrome trace event format besides X; an unknown phase sends the file to the tolerant path.
_PHASES = "BEiICbneSTpsftPNODMVvRc()"
_LIGHT = {tag: _phase_struct(tag, fields=False) for tag in _PHASES}
_FULL = {tag: _phase_struct(tag, fields=True) for tag in _PHASES}
FLOW_START, FLOW_END = _FULL["s"], _FULL["f"]
# Unions of the run-time-built phase Structs: a static checker cannot spell them, so mypy sees them as Any.
_AnyEvent: TypeAlias = Union[(Event, *_LIGHT.values())]  # type: ignore[valid-type]  # noqa: UP007 (built at run time)
_AnyEventWide: TypeAlias = Union[(EventWide, *_LIGHT.values())]  # type: ignore[valid-type]  # noqa: UP007
_AnyEventFull: TypeAlias = Union[(EventWide, *_FULL.values())]  # type: ignore[valid-type]  # noqa: UP007


class Trace(msgspec.Struct):
    """The file's metadata (its events are decoded apart, chunk by chunk).

    The header fields are decoded as plain JSON and checked field by field by ``dpprof.trace.metadata``: a value of
    the wrong type there must cost only that field (named in a warning), not the typed decode of the whole file.
    """

    traceEvents: list[_AnyEvent] | None = None  # noqa: N815 (Kineto's key)
    distributedInfo: Any = None  # noqa: N815
    baseTimeNanoseconds: Any = None  # noqa: N815
    displayTimeUnit: Any = None  # noqa: N815
    deviceProperties: Any = None  # noqa: N815


class _FlowTrace(msgspec.Struct):
    traceEvents: list[_AnyEventFull] | None = None  # noqa: N815


class _RawTrace(Trace):
    traceEvents: list[msgspec.Raw] | None = None  # noqa: N815


#: Events decoded per chunk on the slow split: bounds the Python objects alive at once. Measured on a 78 MB
#: rank trace (339k events): 50k -> 184 MB peak RSS, 5k -> 143 MB and also ~15 % less CPU (cache-friendly).
CHUNK_EVENTS = 4_000
#: JSON bytes per chunk on the streaming split (about 4,500 Kineto events of ~230 bytes); bytes per read.
CHUNK_BYTES = 1 << 20
_TAIL_BYTES = 1 << 16
_RAW_DECODER = msgspec.json.Decoder(_RawTrace)
_CHUNK_DECODER = msgspec.json.Decoder(list[_AnyEvent])
_CHUNK_DECODER_WIDE = msgspec.json.Decoder(list[_AnyEventWide])
_FLOW_DECODER = msgspec.json.Decoder(_FlowTrace)
_EVENTS_KEY = b'"traceEvents"'
_EVENTS_OPEN = re.compile(rb'"traceEvents"[ \t\r\n]*:[ \t\r\n]*\[')
#: The array's "[", then whitespace holding a newline, then the first event's "{".
_FIRST_EVENT = re.compile(rb"\[([ \t\r]*\n[ \t\r\n]*)\{")


def read_bytes(path: Path, max_inflate: int | None = None) -> Buffer:
    """Raw JSON bytes of a trace, gunzipped when the file is gzip (by magic, not by name).

    Only a regular file is read; a gzip file inflates at most to ``inflate_limit`` (``dpprof.trace.inflate``).
    """
    data = read_input(path, TraceError)
    raw: Buffer = gunzip(data, inflate_limit(len(data), max_inflate), path) if data[:2] == GZIP_MAGIC else data
    if raw[:3] == b"\xef\xbb\xbf":  # a UTF-8 byte-order mark (editors on Windows) is not JSON
        raw = raw[3:]
    return raw


class NotStreamable(Exception):
    """The file cannot be split while it is read (not newline-separated, unreadable...)."""


def _pieces(path: Path, max_inflate: int | None) -> Iterator[bytes]:
    """The file's JSON text, PIECE_BYTES at a time (gunzipped as it is read when the file is gzip)."""
    with open_input(path, TraceError) as fh:
        try:
            first = fh.read(PIECE_BYTES)
            if first[:2] != GZIP_MAGIC:
                while first:
                    yield first
                    first = fh.read(PIECE_BYTES)
                return
            compressed = first + fh.read()
        except OSError:
            raise NotStreamable from None
    yield from gunzip_pieces(compressed, inflate_limit(len(compressed), max_inflate), path, PIECE_BYTES)


def split_stream(path: Path, max_inflate: int | None = None) -> Iterator[tuple[bool, Any]]:
    """Read the file and cut its ``traceEvents`` into JSON arrays of whole events as it goes.

    Yields (False, array) per chunk, then once (True, document holding the metadata and the last events).
    An array is a memoryview valid until the next item is asked for. Raises NotStreamable when the file
    cannot be split this way; when a cut fell inside an event, decoding that array raises
    ``msgspec.DecodeError`` (see the module docstring). Memory: about two chunks of text, not the file.
    """
    pending = bytearray()
    pieces = _pieces(path, max_inflate)
    head = b""
    for piece in pieces:  # the metadata before the events: a few kB in Kineto traces
        pending += piece
        m = _EVENTS_OPEN.search(pending)
        if m is not None:
            head = bytes(pending[:m.end() - 1])
            del pending[:m.end() - 1]  # pending[0] is now the array's "["
            break
        if len(pending) > 4 * CHUNK_BYTES:
            raise NotStreamable
    if head.startswith(b"\xef\xbb\xbf"):  # a UTF-8 byte-order mark (editors on Windows) is not JSON
        head = head[3:]
    first = _FIRST_EVENT.match(pending)
    if not head or head.count(_EVENTS_KEY) != 1 or first is None:
        raise NotStreamable
    try:  # the key must be the top object's: nested deeper, "[]}" would not close the document
        msgspec.json.decode(head + b"[]}")
    except (msgspec.DecodeError, RecursionError):
        raise NotStreamable from None
    # Events start on a new line indented like the first one; objects nested in events are indented deeper.
    indent = first.group(1)[first.group(1).rfind(b"\n") + 1:]
    separator = re.compile(rb"\},[ \t\r\n]*\n" + re.escape(indent) + rb"\{")
    eof = False
    while not eof:
        more = next(pieces, None)
        if more is None:
            eof = True
        else:
            pending += more
        while len(pending) > CHUNK_BYTES:
            # Cut near the end of what was read, so that little text is left to move to the buffer's front.
            sep = (separator.search(pending, max(CHUNK_BYTES, len(pending) - _TAIL_BYTES))
                   or separator.search(pending, CHUNK_BYTES))
            if sep is None:
                if len(pending) > 8 * CHUNK_BYTES:
                    raise NotStreamable  # no newline between events: minified JSON
                break
            end = sep.start() + 1  # index of the comma after the chunk's last "}"
            # The array is written in place: "[" already at 0, the comma becomes "]"; no copy of the text.
            pending[end] = 0x5D
            with memoryview(pending) as view, view[:end + 1] as array:
                yield False, array
            del pending[:end]
            pending[0] = 0x5B  # the old comma opens the next array
    # A chunk that decodes holds whole events of the array, so a second top-level "traceEvents" (the last one
    # wins for msgspec) can only be in this last part.
    if pending.find(_EVENTS_KEY) >= 0:
        raise NotStreamable
    doc = head + pending
    ensure_complete(doc, path)  # the events before it decoded: a cut here is the file's end
    yield True, doc


class _Nothing(msgspec.Struct):
    """Decoding into a Struct without fields checks the whole JSON text and builds nothing."""


_CHECK_DECODER = msgspec.json.Decoder(_Nothing)


def ensure_complete(doc: Buffer, path: Path) -> None:
    """TraceError when the JSON object in ``doc`` ends before the document does (a cut-short file).

    Scans the text without building it (~1 GB/s), so a truncated 800 MB trace costs its text, not the
    gigabytes of Python objects a full decode would build before reaching the cut. Other faults (NaN
    literals, a bare array) are left to the decoders.
    """
    try:
        _CHECK_DECODER.decode(doc)
    except msgspec.ValidationError:
        return  # not an object at the top (Chrome's array form): the generic decode judges it
    except msgspec.DecodeError as exc:
        if "truncated" in str(exc):
            raise TraceError(f"{path}: not valid JSON (truncated: the text ends inside the document)") from None
    except RecursionError:
        return


def decode_head(doc: Buffer) -> _RawTrace:
    """The metadata and the remaining events (as Raw views) of a document. Raises msgspec errors."""
    return _RAW_DECODER.decode(doc)


_WIDE_CACHE: dict[str, bool] = {}


def needs_wide(names: Iterable[str]) -> bool:
    """Whether a chunk naming these events must be decoded with the wide args (``_WIDE_NAMES``)."""
    for n in names:
        hit = _WIDE_CACHE.get(n)
        if hit is None:
            hit = _WIDE_CACHE[n] = bool(_WIDE_NAMES.search(n)) if len(_WIDE_CACHE) < 100_000 else True
        if hit:
            return True
    return False


def decode_chunk(buf: bytes | memoryview, wide: bool = False) -> tuple[list[Any], int, bool]:
    """Decode one JSON array of events: (events, events that could not be used, tolerant?).

    Typed first (``wide``: with the wide args); when one event breaks the typed decode, every event of the array
    is converted on its own with lax typing (always wide). Raises ``msgspec.DecodeError`` when ``buf`` is not JSON.
    """
    try:
        return (_CHUNK_DECODER_WIDE if wide else _CHUNK_DECODER).decode(buf), 0, False
    except (msgspec.ValidationError, RecursionError, UnicodeDecodeError):
        # Invalid UTF-8 inside a name should not cost the events: replace the bad bytes.
        events, bad = convert_tolerant(msgspec.json.decode(bytes(buf).decode("utf-8", errors="replace")))
        return events, bad, True


def decode_tolerant(path: Path, raw: Buffer) -> tuple[Trace, list[Any], int]:
    """Generic decode, then convert each event on its own with lax typing ("12" -> 12)."""
    ensure_complete(raw, path)
    try:
        data = msgspec.json.decode(raw)
    except (msgspec.DecodeError, RecursionError):
        try:
            # Invalid UTF-8 inside a name should not cost the whole file: replace the bad bytes.
            data = json.loads(raw.decode("utf-8", errors="replace"))
        except RecursionError:
            raise TraceError(f"{path}: JSON nested too deeply to read (recursion limit)") from None
        except ValueError:
            raise TraceError(f"{path}: not valid JSON (truncated or corrupt file)") from None
    if isinstance(data, list):  # a bare JSON array of events is valid Chrome trace format
        data = {"traceEvents": data}
    if not isinstance(data, dict) or not isinstance(data.get("traceEvents"), list):
        raise TraceError(f"{path}: no traceEvents list (not a Chrome/Kineto trace)")
    raw_events = data.pop("traceEvents")
    meta = {k: v for k, v in data.items() if k in ("distributedInfo", "baseTimeNanoseconds",
                                                   "displayTimeUnit", "deviceProperties")}
    doc = Trace(**meta)  # plain values: checked by dpprof.trace.metadata
    events, bad = convert_tolerant(raw_events)
    return doc, events, bad


def convert_tolerant(raw_events: list[Any]) -> tuple[list[Any], int]:
    """Convert generic event dicts one by one with lax typing; (events, how many could not be used)."""
    events: list[Any] = []
    bad = 0
    for ev in raw_events:
        if not isinstance(ev, dict):
            bad += 1
            continue
        try:
            events.append(msgspec.convert(ev, _AnyEventFull, strict=False))
        except msgspec.ValidationError:
            args = ev.get("args")
            # A bad value inside args should not cost the event its time: keep it without args.
            try:
                ev2 = dict(ev, args=None) if args is not None else ev
                events.append(msgspec.convert(ev2, _AnyEventFull, strict=False))
            except msgspec.ValidationError:
                bad += 1
    return events, bad


def decode_flows(path: Path, max_inflate: int | None = None) -> list[Any]:
    """Every event of the file, flow events with their fields ([] when the file does not decode)."""
    try:
        return _FLOW_DECODER.decode(read_bytes(path, max_inflate)).traceEvents or []
    except msgspec.DecodeError:
        return []
