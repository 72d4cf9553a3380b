"""Generate a large multi-rank trace directory from a real torch trace, for the analyze benchmarks.

Each rank file repeats the source trace's events K times (K chosen to reach ``--rank-mb`` MB of JSON),
copy k shifted in time by k x the source's span (+1 ms) so ``ProfilerStep#N`` numbers continue, and with
every id that links events offset per copy (correlation, External id, flow ids, Sequence number,
Ev Idx), so links stay inside one copy. Metadata events (``ph: M``), the profiler span and the global
instants are written once. Each rank gets its own ``distributedInfo`` (``"rank": R``, world size) and
the file is named ``rank{R}.{baseTimeNanoseconds}.pt.trace.json[.gz]``.

The events are never decoded into Python objects in bulk: the source's text (torch's own formatting,
which HTA needs to find ``"rank": R``) is turned once into a format template whose only holes are the
integer parts of the numbers that change, and each copy is one ``str.format`` call written straight to
the file. Usage: ``python benchmarks/make_large_dir.py OUT --ranks 4 --rank-mb 83 [--gzip]``.
"""

from __future__ import annotations

import argparse
import contextlib
import gzip
import json
import re
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from dpprof.errors import DpprofError  # noqa: E402
from dpprof.fileio import atomic_open  # noqa: E402

DEFAULT_SOURCE = REPO / "tests" / "data" / "h200" / "dp_dup00.pt.trace.json.gz"
DEFAULT_OUT = REPO / "benchmarks" / "data"
#: Gap between two copies, µs: keeps the last step of copy k and the first of copy k+1 apart.
COPY_GAP_US = 1000
#: Events written once, not per copy: metadata, the profiler's own span and its global instants.
_ONCE_PH = {"M", "i", "I"}
# Kineto writes one event per block "  {\n ... \n  }" separated by ",\n"; the inner args close at 4 spaces.
_BLOCK_SEP = re.compile(r"\n  \},\n  \{\n")
# Only the integer part of a number is a hole; the fraction stays literal, so shifted times stay exact.
_HOLES = re.compile(
    r'(?P<key>"ts": |"id": |"correlation": |"External id": |"Sequence number": |"Ev Idx": |'
    r'"name": "ProfilerStep#)(?P<num>\d+)'
)
_KIND = {'"ts": ': "ts", '"id": ': "id", '"correlation": ': "id", '"External id": ': "id",
         '"Sequence number": ': "seq", '"Ev Idx": ': "idx", '"name": "ProfilerStep#': "step"}
_DIST_LINE = re.compile(r'^[ \t]*"distributedInfo": .*,\n', re.MULTILINE)


@dataclass(frozen=True)
class Source:
    """One source trace made ready to repeat: header/footer text and a per-copy template."""

    path: Path
    header: str  # everything up to and including '"traceEvents": [\n'
    template: str  # the repeated events, str.format holes for the changing integers
    base: tuple[int, ...]  # the source's value of each hole
    kinds: tuple[str, ...]  # ts | id | seq | idx | step, per hole
    deltas: dict[str, int]  # per kind: how much one copy adds
    once: tuple[dict, ...]  # events written once (decoded; few)
    once_text: tuple[str, ...]
    footer: str  # '\n  ],' and the rest
    backend: str
    base_time_ns: int
    copy_bytes: int  # size of one copy of the events, bytes


def _read_text(path: Path) -> str:
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rt", encoding="utf-8") as fh:
            return fh.read()
    except (OSError, EOFError, UnicodeDecodeError) as exc:
        raise DpprofError(f"{path}: cannot read source trace: {exc}") from None


def load_source(path: Path) -> Source:
    """Split a torch-exported trace into header, repeatable events and once-only events."""
    text = _read_text(path)
    start = text.find('"traceEvents": [\n')
    end = text.rfind("\n  ],")
    if start < 0 or end < 0:
        raise DpprofError(f"{path}: not in torch's export format (no '\"traceEvents\": [' block)")
    start += len('"traceEvents": [\n')
    body = text[start:end].strip("\n")
    if not (body.startswith("  {\n") and body.endswith("\n  }")):
        raise DpprofError(f"{path}: not in torch's export format (events not one per block)")
    blocks = _BLOCK_SEP.split(body[4:-4])
    try:
        events = [json.loads("{" + b + "}") for b in blocks]
        declared = len(json.loads(text)["traceEvents"])
    except ValueError as exc:
        raise DpprofError(f"{path}: cannot split events in torch's format: {exc}") from None
    if declared != len(events):
        raise DpprofError(f"{path}: split {len(events)} blocks but the trace has {declared} events")
    rep_blocks: list[str] = []
    once: list[dict] = []
    once_text: list[str] = []
    for ev, block in zip(events, blocks, strict=True):
        if ev.get("ph") in _ONCE_PH or ev.get("cat") == "Trace":
            once.append(ev)
            once_text.append("  {\n" + block + "\n  }")
        else:
            if str(ev.get("ts", "0")).startswith("-"):
                raise DpprofError(f"{path}: negative timestamps are not supported")
            rep_blocks.append("  {\n" + block + "\n  }")
    if not rep_blocks:
        raise DpprofError(f"{path}: no events to repeat")
    rep_text = ",\n".join(rep_blocks)
    base: list[int] = []
    kinds: list[str] = []

    def hole(m: re.Match[str]) -> str:
        base.append(int(m.group("num")))
        kinds.append(_KIND[m.group("key")])
        return m.group("key") + "{}"

    template = _HOLES.sub(hole, rep_text.replace("{", "{{").replace("}", "}}"))
    xs = [e for e in events if e.get("ph") == "X" and e.get("cat") != "Trace"]
    t0 = min(float(e["ts"]) for e in xs)
    t1 = max(float(e["ts"]) + float(e.get("dur", 0)) for e in xs)
    by_kind = {k: [v for v, kk in zip(base, kinds, strict=True) if kk == k] for k in _KIND.values()}
    steps = by_kind["step"]
    deltas = {
        "ts": int(t1 - t0) + 1 + COPY_GAP_US,
        "id": max(by_kind["id"], default=0) + 1,
        "seq": max(by_kind["seq"], default=0) + 1,
        "idx": max(by_kind["idx"], default=0) + 1,
        "step": (max(steps) - min(steps) + 1) if steps else 0,
    }
    head = text[:start]
    dist = re.search(r'"distributedInfo": (\{.*\}),\n', head)
    backend = json.loads(dist.group(1)).get("backend", "nccl") if dist else "nccl"
    m = re.search(r'"baseTimeNanoseconds": (\d+)', head)
    return Source(
        path=path, header=head, template=template, base=tuple(base), kinds=tuple(kinds), deltas=deltas,
        once=tuple(once), once_text=tuple(once_text), footer=text[end:], backend=backend,
        base_time_ns=int(m.group(1)) if m else 0, copy_bytes=len(rep_text.encode("utf-8")),
    )


def _header_for(src: Source, rank: int, world: int) -> str:
    """The source header with this rank's ``distributedInfo`` (torch's ``"rank": R`` spacing)."""
    info = {"backend": src.backend, "rank": rank, "world_size": world, "pg_count": 1,
            "pg_config": [{"pg_name": "0", "pg_desc": "default_pg", "backend_config": f"cuda:{src.backend}",
                           "pg_size": world, "ranks": list(range(world))}]}
    line = f'      "distributedInfo": {json.dumps(info)},\n'
    if _DIST_LINE.search(src.header):
        return _DIST_LINE.sub(lambda _: line, src.header, count=1)
    at = src.header.find('  "displayTimeUnit"')
    if at < 0:
        at = src.header.find('  "traceEvents"')
    return src.header[:at] + line + src.header[at:]


def _copies(src: Source, copies: int) -> Iterator[str]:
    """The text of each copy of the repeated events (copy 0 is the source's own values)."""
    offsets = [src.deltas[k] for k in src.kinds]
    for k in range(copies):
        values = [b + k * o for b, o in zip(src.base, offsets, strict=True)]
        yield src.template.format(*values)


def _once_events(src: Source, copies: int) -> Iterator[str]:
    """Once-only events; the profiler span and the window-end instant stretch over all copies."""
    extra = (copies - 1) * src.deltas["ts"]
    for ev, text in zip(src.once, src.once_text, strict=True):
        if ev.get("cat") == "Trace" and "dur" in ev:
            text = re.sub(r'"dur": (\d+)', lambda m: f'"dur": {int(m.group(1)) + extra}', text, count=1)
        elif ev.get("ph") in ("i", "I") and "End" in str(ev.get("name", "")):
            text = re.sub(r'"ts": (\d+)', lambda m: f'"ts": {int(m.group(1)) + extra}', text, count=1)
        yield text


def write_rank(src: Source, path: Path, rank: int, world: int, copies: int, gzip_level: int | None) -> int:
    """Write one rank file atomically; returns its uncompressed size in bytes."""
    size = 0
    with atomic_open(path, "wb", compress=False) as raw, contextlib.ExitStack() as stack:
        sink: IO[bytes] = raw
        if gzip_level is not None:
            sink = stack.enter_context(gzip.GzipFile(fileobj=raw, mode="wb", compresslevel=gzip_level, mtime=0))

        def put(s: str) -> None:
            nonlocal size
            b = s.encode("utf-8")
            size += len(b)
            sink.write(b)

        put(_header_for(src, rank, world))
        for k, chunk in enumerate(_copies(src, copies)):
            put(chunk if k == 0 else ",\n" + chunk)
        for text in _once_events(src, copies):
            put(",\n" + text)
        put(src.footer)
    return size


def make_large_dir(out: Path, ranks: int, rank_mb: float, sources: list[Path] | None = None,
                   gzip_level: int | None = None) -> dict:
    """Write ``ranks`` rank files of about ``rank_mb`` MB (10^6 bytes) of JSON each into ``out``.

    Rank R repeats ``sources[R % len(sources)]``. Returns a description (sizes in bytes, counts).
    Files already in ``out`` that look like rank traces are replaced; nothing else is written there,
    because HTA reads every ``*.json``/``*.gz`` in the folder as a trace.
    """
    if ranks < 1 or rank_mb <= 0:
        raise DpprofError("--ranks must be >= 1 and --rank-mb > 0")
    loaded = [load_source(Path(p)) for p in (sources or [DEFAULT_SOURCE])]
    out.mkdir(parents=True, exist_ok=True)
    for old in out.glob("rank*.pt.trace.json*"):
        old.unlink()
    suffix = ".pt.trace.json.gz" if gzip_level is not None else ".pt.trace.json"
    files = []
    t0 = time.perf_counter()
    for r in range(ranks):
        src = loaded[r % len(loaded)]
        copies = max(1, round(rank_mb * 1e6 / src.copy_bytes))
        path = out / f"rank{r}.{src.base_time_ns}{suffix}"
        size = write_rank(src, path, r, ranks, copies, gzip_level)
        files.append({"path": path.name, "json_bytes": size, "file_bytes": path.stat().st_size,
                      "copies": copies, "source": src.path.name})
    return {"dir": str(out), "ranks": ranks, "files": files,
            "json_bytes": sum(f["json_bytes"] for f in files),
            "file_bytes": sum(f["file_bytes"] for f in files),
            "seconds": round(time.perf_counter() - t0, 2)}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("out", nargs="?", type=Path, help=f"output folder (default {DEFAULT_OUT}/r<R>-<MB>mb)")
    p.add_argument("--ranks", type=int, default=4, help="number of rank files (default 4)")
    p.add_argument("--rank-mb", type=float, default=83.0, help="JSON MB (10^6 bytes) per rank (default 83)")
    p.add_argument("--source", type=Path, action="append",
                   help=f"source trace, repeatable: rank R uses source R mod N (default {DEFAULT_SOURCE.name})")
    p.add_argument("--gzip", nargs="?", type=int, const=1, default=None, metavar="LEVEL",
                   help="write .json.gz (compression level, default 1) instead of plain .json")
    args = p.parse_args(argv)
    out = args.out or DEFAULT_OUT / f"r{args.ranks}-{args.rank_mb:g}mb{'-gz' if args.gzip is not None else ''}"
    try:
        info = make_large_dir(out, args.ranks, args.rank_mb, args.source, args.gzip)
    except DpprofError as exc:
        print(f"make_large_dir: error: {exc}", file=sys.stderr)
        return 2
    print(f"{info['dir']}: {info['ranks']} ranks, {info['json_bytes'] / 1e6:.1f} MB of JSON "
          f"({info['file_bytes'] / 1e6:.1f} MB on disk) in {info['seconds']:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
